"""A throwaway jobstream for benchmarks: its own Redis, database, daphne(s) and worker(s).

    with Stack(daphnes=2, workers=2, env={"PROGRESS_MAX_RATE": "50"}) as stack:
        stack.base_urls, stack.ws_urls, stack.pids()

Everything it starts listens on loopback only and is stopped by its PID on exit.
PostgreSQL (`database="postgres"`) creates and drops a database of its own on the
server at 127.0.0.1:5432.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from core.daphne_limits import daphne_command  # noqa: E402
from core.redis_local import RedisProcess, free_port, start_redis  # noqa: E402

START_TIMEOUT = 60.0  # seconds for every daphne and worker to answer
POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0..1) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def stop_process(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"{name} (pid {process.pid}) did not stop on SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=5)


class Stack:
    def __init__(
        self,
        *,
        daphnes: int = 1,
        workers: int = 1,
        worker_pool: str = "threads",
        worker_concurrency: int = 8,
        database: str = "sqlite",
        beat: bool = False,
        env: dict[str, str] | None = None,
        asgi: str = "core.asgi:application",
    ) -> None:
        self.daphnes = daphnes
        self.workers = workers
        self.worker_pool = worker_pool
        self.worker_concurrency = worker_concurrency
        self.database = database
        self.beat = beat
        self.extra_env = env or {}
        self.asgi = asgi
        self.workdir = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
        self.redis: RedisProcess | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.base_urls: list[str] = []
        self.ws_urls: list[str] = []
        self.env: dict[str, str] = {}
        self._pg_name: str | None = None

    # --- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        self.redis = start_redis()
        env = {
            **os.environ,
            "DATABASE_URL": self._database_url(),
            "REDIS_URL": self.redis.url,
            "DEBUG": "true",
            "MEDIA_ROOT": str(self.workdir / "media"),
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            # One benchmark session owns hundreds of jobs and thousands of sockets: the
            # per-owner quotas (0 = off) would refuse the load being measured.
            "JOB_QUOTA_ACTIVE": "0",
            "JOB_QUOTA_PER_MINUTE": "0",
            "JOB_QUOTA_SOCKETS": "0",
            "JOB_QUOTA_RUNNING": "0",
            "JOB_QUOTA_PER_IP": "0",  # every benchmark client comes from 127.0.0.1
            "STREAM_QUOTA_PER_IP": "0",  # every bench client comes from 127.0.0.1
            **self.extra_env,
        }
        for name in ("DJANGO_ALLOW_ASYNC_UNSAFE", "DJANGO_SETTINGS_MODULE"):
            env.pop(name, None)
        self.env = env
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        for index in range(self.daphnes):
            port = free_port()
            self.base_urls.append(f"http://127.0.0.1:{port}")
            self.ws_urls.append(f"ws://127.0.0.1:{port}")
            self.spawn(
                f"daphne{index}",
                daphne_command(self.asgi, port=port),
            )
        celery = str(Path(sys.executable).parent / "celery")
        for index in range(self.workers):
            self.spawn(
                f"worker{index}",
                [
                    celery, "-A", "celery_app", "worker", "-n", f"bench{index}@%h",
                    "-P", self.worker_pool, "-c", str(self.worker_concurrency), "-E", "-l", "WARNING",
                ],
            )  # fmt: skip
        if self.beat:  # the sweeper and re-dispatch of jobs the broker lost (jobs.sweep)
            schedule = str(self.workdir / "beat-schedule")
            self.spawn("beat", [celery, "-A", "celery_app", "beat", "-s", schedule, "-l", "WARNING"])
        self._wait_ready()

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env or self.env, stdout=out, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def close(self) -> None:
        for name, process in reversed(list(self.processes.items())):
            stop_process(process, name)
        if self.redis is not None:
            self.redis.stop()
        if self._pg_name:
            _postgres_admin(f'DROP DATABASE IF EXISTS "{self._pg_name}" WITH (FORCE)')
        shutil.rmtree(self.workdir, ignore_errors=True)

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def daphne_pids(self) -> list[int]:
        return [self.processes[f"daphne{index}"].pid for index in range(self.daphnes)]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # --- helpers -----------------------------------------------------------------

    def _database_url(self) -> str:
        if self.database == "sqlite":
            return f"sqlite:///{self.workdir / 'bench.sqlite3'}"
        if self.database == "postgres":
            self._pg_name = f"jobstream_bench_{uuid.uuid4().hex[:8]}"
            _postgres_admin(f'CREATE DATABASE "{self._pg_name}"')
            return f"postgres://postgres@127.0.0.1:5432/{self._pg_name}"
        raise ValueError(f"database must be sqlite or postgres, not {self.database!r}")

    def _wait_ready(self) -> None:
        """Every daphne answers HTTP and every worker answers a Celery ping."""
        deadline = time.monotonic() + START_TIMEOUT
        pending_web = set(self.base_urls)
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited at start:\n{self.log(name)[-2000:]}")
            for url in list(pending_web):
                try:
                    if httpx.get(f"{url}/api/job-kinds/", timeout=2).status_code == 200:
                        pending_web.discard(url)
                except httpx.HTTPError:
                    pass
            if not pending_web and self._workers_answering() >= self.workers:
                return
            time.sleep(0.2)  # polling starting processes, outside any event loop
        raise RuntimeError(f"the stack did not start within {START_TIMEOUT:.0f} s (logs in {self.workdir})")

    def _workers_answering(self) -> int:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "celery"), "-A", "celery_app", "inspect", "ping", "--timeout", "1"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        return result.stdout.count("pong")


@contextmanager
def django_here(env: dict[str, str] | None = None) -> Iterator[RedisProcess]:
    """Django in this process, on a Redis (free port) and a migrated throwaway SQLite
    database of its own, both gone on the way out; `env` adds to the environment."""
    import logging

    redis = start_redis()
    workdir = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
    try:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "core.settings",
                "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
                "REDIS_URL": redis.url,
                "MEDIA_ROOT": str(workdir / "media"),
                "LOG_LEVEL": "WARNING",
                "DEBUG": "true",  # as these figures were always measured; off, the settings would need a SECRET_KEY
                **(env or {}),
            }
        )
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            os.environ.pop(name, None)  # both follow REDIS_URL
        import django
        from django.core.management import call_command
        from django.db import connections

        django.setup()
        call_command("migrate", interactive=False, verbosity=0)
        connections.close_all()
        yield redis
    finally:
        # The publisher's cancel listener outlives the measurement; its reconnect
        # warning after Redis stops says nothing about it.
        logging.getLogger("notifications.publish").setLevel(logging.ERROR)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.encode())


def new_session(base_url: str) -> tuple[dict[str, str], str]:
    """(cookies, csrf token) of a fresh anonymous visitor: GET / creates both."""
    response = httpx.get(f"{base_url}/", timeout=10)
    response.raise_for_status()
    cookies = dict(response.cookies)
    return cookies, cookies["csrftoken"]


def submit_job(base_url: str, cookies: dict[str, str], csrf: str, kind: str, params: dict[str, Any]) -> str:
    response = httpx.post(
        f"{base_url}/api/jobs/",
        json={"kind": kind, "params": params},
        headers={"X-CSRFToken": csrf},
        cookies=cookies,
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["id"])
