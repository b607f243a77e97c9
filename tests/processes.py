"""Stopping a process a test started: by its PID, SIGTERM first, SIGKILL if it lingers."""

from __future__ import annotations

import signal
import subprocess

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
