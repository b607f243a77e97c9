"""Processes a fault test owns: a daphne it can kill and start again on the same port,
and a Celery worker. (The session's `live_server` is shared by many tests, so nothing
may stop it; these are per test.) Each is stopped by its PID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from core.daphne_limits import daphne_command
from core.redis_local import free_port
from tests.conftest import ROOT
from tests.processes import stop_process
from tests.waiting import wait_until

START_TIMEOUT = 30.0  # seconds for daphne to answer HTTP after it is started


class DaphneProcess:
    """daphne serving core.asgi on one port for its whole life, across restarts."""

    def __init__(self, *, env: dict[str, str], log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log = log
        self.extra_args = extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> int:
        """Resident memory of the daphne process, in bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def start(self) -> None:
        command = daphne_command("core.asgi:application", port=self.port, extra=self.extra_args)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if not wait_until(self.answers, timeout=START_TIMEOUT, interval=0.05):
            self.stop()
            raise RuntimeError(f"daphne did not answer within {START_TIMEOUT:.0f} s:\n{self.log.read_text()[-3000:]}")

    def answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"daphne exited:\n{self.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/job-kinds/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no goodbye to any socket, as when the process crashes."""
        if self.process is not None:
            stop_process(self.process, sig=signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


def start_celery_worker(
    *, env: dict[str, str], log: Path, pool: str = "threads", concurrency: int = 4
) -> subprocess.Popen[bytes]:
    celery = str(Path(sys.executable).parent / "celery")
    command = [celery, "-A", "celery_app", "worker", "-P", pool, "-c", str(concurrency), "-l", "INFO"]
    env = {**env, "CELERY_WORKER_CONCURRENCY": str(concurrency)}  # JOB_QUOTA_RUNNING's default follows the slots
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def session_owner_token(*, sessionid: str, env: dict[str, str]) -> str:
    """The anonymous owner's token in a session that daphne (run with `env`) created:
    its data is signed with that process's SECRET_KEY, not this one's."""
    from django.contrib.sessions.backends.db import SessionStore
    from django.test.utils import override_settings

    from jobs.owners import SESSION_OWNER_KEY

    with override_settings(SECRET_KEY=env["SECRET_KEY"]):
        token: str = SessionStore(session_key=sessionid).load()[SESSION_OWNER_KEY]
    return token
