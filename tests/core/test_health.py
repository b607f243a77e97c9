"""`/healthz`: green with a worker; 503 naming the worker, Redis and the broker, or the
database, when that part is missing. The failing cases run a real daphne pointed at
a Redis with no worker, a port where nothing listens, or a database that cannot open.
A burst of calls runs the checks once per window (counted in the Redis they ping),
the runs reuse their connections, and only users with `jobs.view_all_jobs` see a
failed check's error text; the log always has it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, override_settings

from core.daphne_limits import daphne_command
from core.health import CACHE_SECONDS, CHECK_NAMES, CHECK_TIMEOUT, GENERIC_ERROR, check_redis, run_check, shared_report
from core.redis_local import RedisProcess, free_port, start_redis
from core.settings import channel_layers_for
from tests.processes import stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
# The slowest failing probe: the broker's connect timeout, then the worker's chain is
# cut; the checks run side by side, so well under the sum of their timeouts.
FAILING_PROBE_MAX_SECONDS = 10
BURST = 50  # concurrent calls


@pytest.fixture(autouse=True)
def _fresh_health_report() -> Iterator[None]:
    """Each test starts without this process's kept report, and leaves none behind."""
    shared_report.clear()
    yield
    shared_report.clear()


class RedisCounters:
    """Counters of a Redis, read over one kept connection (so reading them opens none)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, single_connection_client=True)

    def pings(self) -> int:
        """PING commands served: each run of the checks sends the same number."""
        stats: dict[str, Any] = self.client.info("commandstats")  # type: ignore[assignment]
        return int(stats.get("cmdstat_ping", {}).get("calls", 0))

    def connections(self) -> int:
        stats: dict[str, Any] = self.client.info("stats")  # type: ignore[assignment]
        return int(stats["total_connections_received"])

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def lonely_counters(lonely_daphne: tuple[Any, RedisProcess]) -> Iterator[RedisCounters]:
    counters = RedisCounters(lonely_daphne[1].url)
    yield counters
    counters.close()


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
    shared_report.clear()  # a real run, not the kept report
    started = time.monotonic()
    response = Client().get("/healthz")
    assert response.status_code == 200, response.json()
    assert time.monotonic() - started < CHECK_TIMEOUT


@pytest.mark.django_db(transaction=True)
async def test_concurrent_calls_share_one_run_of_the_checks(redis_server: RedisProcess) -> None:
    counters = RedisCounters(redis_server.url)  # the channel layer's Redis and the broker, in this process
    try:
        runs, pings = shared_report.runs, counters.pings()
        responses = await asyncio.gather(*(AsyncClient().get("/healthz") for _ in range(20)))
        assert {response.status_code for response in responses} <= {200, 503}
        assert shared_report.runs == runs + 1
        # One run PINGs the layer's Redis and the broker once each; twenty unshared runs would
        # PING forty times. The session's Redis also serves other clients of the suite (a
        # worker's broker connection, the publisher's listener), whose own PINGs may land here.
        assert 2 <= counters.pings() - pings < 20
    finally:
        counters.close()


# --- the redis check: every shard and the main Redis ------------------------------------


@pytest.fixture
def second_redis() -> Iterator[RedisProcess]:
    started = start_redis()
    yield started
    started.stop()


def test_the_redis_check_pings_every_shard_and_the_main_redis(
    redis_server: RedisProcess, second_redis: RedisProcess
) -> None:
    main = start_redis()
    counters = [RedisCounters(url) for url in (redis_server.url, second_redis.url, main.url)]
    try:
        before = [c.pings() for c in counters]
        layers = channel_layers_for([redis_server.url, second_redis.url])
        with override_settings(CHANNEL_LAYERS=layers, REDIS_HOST={"address": main.url}):
            assert run_check(check_redis)["ok"]
        assert [c.pings() - b for c, b in zip(counters, before, strict=True)][1:] == [1, 1]
        assert counters[0].pings() > before[0]  # the session's Redis: other clients PING it too
    finally:
        for c in counters:
            c.close()
        main.stop()


def test_the_redis_check_fails_when_one_shard_is_down(redis_server: RedisProcess) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with override_settings(CHANNEL_LAYERS=channel_layers_for([redis_server.url, dead])):
        result = run_check(check_redis)
    assert not result["ok"]
    assert str(result["error"]).startswith("ConnectionError")


def test_the_redis_check_fails_when_the_main_redis_is_down(redis_server: RedisProcess) -> None:
    dead = {"address": f"redis://127.0.0.1:{free_port()}/0"}  # the socket quotas' Redis
    with override_settings(CHANNEL_LAYERS=channel_layers_for(redis_server.url), REDIS_HOST=dead):
        result = run_check(check_redis)
    assert not result["ok"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_checks_error_text_is_for_users_with_view_all_jobs_and_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    users = get_user_model().objects
    superuser = users.create_superuser("health-root", password="unused-password-1")  # has every permission
    staff = users.create_user("health-staff", password="unused-password-2", is_staff=True)  # the flag alone: no
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: the redis check fails for real

    def redis_check(user: Any = None) -> dict[str, Any]:
        client = Client()
        if user is not None:
            client.force_login(user)
        response = client.get("/healthz")
        assert response.status_code == 503
        assert "redis" in response.json()["failed"]
        return dict(response.json()["checks"]["redis"])

    with override_settings(CHANNEL_LAYERS=channel_layers_for(dead)), caplog.at_level(logging.WARNING, "core.health"):
        anonymous, plain_staff, root = redis_check(), redis_check(staff), redis_check(superuser)

    assert anonymous == plain_staff == {"ok": False, "error": GENERIC_ERROR}
    assert str(root["error"]).startswith("ConnectionError")
    assert f"the redis check failed: {root['error']}" in caplog.text  # once: the three calls shared one run
    assert caplog.text.count("the redis check failed") == 1


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
                daphne_command("core.asgi:application", port=self.port),
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
    assert body["checks"]["worker"] == {"ok": False, "error": GENERIC_ERROR}  # anonymous: named, not explained
    assert "the worker check failed: CheckFailed: no worker answered a ping" in server.log.read_text()
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"] and body["checks"]["database"]["ok"]


def _one_run(server: Daphne, counters: RedisCounters) -> int:
    """Calls /healthz until a call runs the checks (the PINGs they send go up); returns how many one run sends."""
    before = counters.pings()
    sent: list[int] = []

    def a_call_runs_the_checks() -> bool:
        _get_json(f"{server.url}/healthz")
        sent.append(counters.pings() - before)
        return sent[-1] > 0

    assert wait_until(a_call_runs_the_checks, timeout=30)
    return sent[-1]


def test_a_burst_of_calls_runs_the_checks_once_per_window(
    lonely_daphne: tuple[Daphne, RedisProcess], lonely_counters: RedisCounters
) -> None:
    server, _ = lonely_daphne
    per_run = _one_run(server, lonely_counters)  # a window starts with this run
    before = lonely_counters.pings()
    started = time.monotonic()

    with ThreadPoolExecutor(BURST) as pool:
        statuses = [status for status, _ in pool.map(lambda _: _get_json(f"{server.url}/healthz"), range(BURST))]
    elapsed = time.monotonic() - started

    assert statuses == [503] * BURST
    runs = (lonely_counters.pings() - before) / per_run
    # The window the first run opened covers the burst's start; each later window, one run at most.
    assert runs <= math.floor(elapsed / CACHE_SECONDS), (runs, elapsed, per_run)
    print(f"burst of {BURST}: {runs:g} runs of the checks in {elapsed:.2f} s; {per_run} PINGs per run")


def test_runs_of_the_checks_reuse_their_connections(
    lonely_daphne: tuple[Daphne, RedisProcess], lonely_counters: RedisCounters
) -> None:
    server, _ = lonely_daphne
    _one_run(server, lonely_counters)  # connections made
    before = lonely_counters.connections()

    for _ in range(3):
        _one_run(server, lonely_counters)

    assert lonely_counters.connections() - before == 0


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
    assert all(body["checks"][name]["error"] == GENERIC_ERROR for name in body["failed"])
    log = server.log.read_text()
    assert "the worker check failed: not asked: the broker did not answer" in log
    assert "the redis check failed: ConnectionError" in log


def test_healthz_names_the_database_when_it_cannot_open(
    daphne_with: Any, redis_server: RedisProcess, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-directory" / "db.sqlite3"
    server = daphne_with(REDIS_URL=redis_server.url, DATABASE_URL=f"sqlite:///{missing}")
    status, body = _get_json(f"{server.url}/healthz")
    assert status == 503, body
    assert "database" in body["failed"]
    # Anonymous: the check named, the error text (a path on the server) only in the log.
    assert body["checks"]["database"] == {"ok": False, "error": GENERIC_ERROR}
    assert "OperationalError" not in json.dumps(body) and str(missing.parent) not in json.dumps(body)
    assert "the database check failed: OperationalError" in server.log.read_text()
    assert body["checks"]["redis"]["ok"] and body["checks"]["broker"]["ok"]
