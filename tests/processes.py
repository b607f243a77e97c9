"""Processes a test starts: stopped by their PID (SIGTERM first, SIGKILL if they linger),
and a Redis a test may stop and start again on the same port."""

from __future__ import annotations

import signal
import subprocess

from core.redis_local import RedisProcess, start_redis

STOP_TIMEOUT = 10.0  # seconds for a process to exit on SIGTERM before it is killed


def stop_process(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


class RestartableRedis:
    """A redis-server on a fixed port that a test may stop and start again."""

    def __init__(self) -> None:
        self.process: RedisProcess = start_redis()
        self.port = self.process.port
        self.url = self.process.url

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process = start_redis(port=self.port)

    def restart(self) -> None:
        self.stop()
        self.start()
