"""`/healthz`: green with a worker; 503 naming the worker, Redis and the broker, or the
database, when that part is missing. The failing cases run a real daphne pointed at
a Redis with no worker, a port where nothing listens, or a database that cannot open.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from core.health import CHECK_NAMES, CHECK_TIMEOUT
from core.redis_local import RedisProcess, free_port, start_redis
from tests.processes import stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
# The slowest failing probe: the broker's connect timeout, then the worker's chain is
# cut; the checks run side by side, so well under the sum of their timeouts.
FAILING_PROBE_MAX_SECONDS = 10


# --- all green --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_healthz_is_green_with_a_worker(worker: Any) -> None:
    response = Client().get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok" and body["failed"] == []
    assert list(body["checks"]) == list(CHECK_NAMES)
    assert all(check["ok"] and check["ms"] >= 0 for check in body["checks"].values())


@pytest.mark.django_db(transaction=True)
def test_healthz_answers_as_soon_as_one_worker_replies(worker: Any) -> None:
    # Without `limit=1` the ping waits its whole timeout for more workers.
    Client().get("/healthz")  # connections warm
    started = time.monotonic()
    response = Client().get("/healthz")
    assert response.status_code == 200, response.json()
    assert time.monotonic() - started < CHECK_TIMEOUT


# --- one part missing, in a real daphne ----------------------------------------------


def _get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Daphne:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "core.asgi:application"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"daphne exited at start:\n{self.log.read_text()}")
        try:  # a static file: it needs neither the database nor Redis
            with urllib.request.urlopen(f"{self.url}/static/jobs/jobstream.css", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def daphne_with(live_server_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Starts daphne with these environment changes (the test database and media otherwise)."""
    started: list[Daphne] = []

    def start(**changes: str) -> Daphne:
        env = {**live_server_env, **changes}
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        server = Daphne(env, tmp_path / f"daphne-{len(started)}.log")
        started.append(server)
        assert wait_until(server.answers, timeout=30), server.log.read_text()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def lonely_daphne(live_server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """daphne on a Redis of its own that no worker listens on; (daphne, that Redis)."""
    redis_process = start_redis()
    env = {**live_server_env, "REDIS_URL": redis_process.url}
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    server = Daphne(env, tmp_path_factory.mktemp("lonely") / "daphne.log")
    try:
        assert wait_until(server.answers, timeout=30), server.log.read_text()
        yield server, redis_process
    finally:
        server.stop()
        redis_process.stop()


def test_healthz_names_the_worker_when_none_answers(lonely_daphne: tuple[Daphne, RedisProcess]) -> None:
    server, _ = lonely_daphne
    status, body = _get_json(f"{server.url}/healthz")
    assert status == 503, body
    assert body["status"] == "failing"
    assert body["failed"] == ["worker"]
    assert "no worker answered a ping" in body["checks"]["worker"]["error"]
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"] and body["checks"]["database"]["ok"]


def test_healthz_probes_leave_no_subscription_behind(lonely_daphne: tuple[Daphne, RedisProcess]) -> None:
    import redis

    server, redis_process = lonely_daphne
    for _ in range(2):
        assert _get_json(f"{server.url}/healthz")[1]["checks"]["redis"]["ok"]
    client = redis.Redis.from_url(redis_process.url)
    try:
        assert client.pubsub_channels() == []  # each round trip's channel went with its event loop
    finally:
        client.close()


def test_healthz_names_redis_broker_and_worker_when_redis_is_down(daphne_with: Any) -> None:
    server = daphne_with(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    started = time.monotonic()
    status, body = _get_json(f"{server.url}/healthz")
    assert time.monotonic() - started < FAILING_PROBE_MAX_SECONDS
    assert status == 503, body
    assert body["failed"] == ["redis", "broker", "worker"]
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["worker"]["error"] == "not asked: the broker did not answer"
    assert body["checks"]["redis"]["error"] and body["checks"]["broker"]["error"]


def test_healthz_names_the_database_when_it_cannot_open(
    daphne_with: Any, redis_server: RedisProcess, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-directory" / "db.sqlite3"
    server = daphne_with(REDIS_URL=redis_server.url, DATABASE_URL=f"sqlite:///{missing}")
    status, body = _get_json(f"{server.url}/healthz")
    assert status == 503, body
    assert "database" in body["failed"]
    assert "OperationalError" in body["checks"]["database"]["error"]
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"]
