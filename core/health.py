"""`/healthz`: the database, Redis (every channel-layer shard and the main Redis), the broker and a worker.

200 with each check's result, or 503 naming the checks that failed:

    {"status": "failing", "failed": ["worker"],
     "checks": {"database": {"ok": true, "ms": 0.4}, ..., "worker": {"ok": false, "error": "..."}}}

Cheap whoever calls it how often: one run of the checks serves every caller of this
process for CACHE_SECONDS (callers that arrive while it runs wait for that same run),
and the runs reuse their connections (a kept pool per Redis host, the broker
connection from Celery's pool). The checks run side by side in threads (the worker
after the broker, through which it is asked), each bounded, so a probe answers within
a few seconds whatever hangs.

A failed check's error text (a database path, a host name) goes to the log, once per
run, and to users with `jobs.view_all_jobs`; anyone else sees which check failed and
a generic error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from celery_app import app
from notifications.publish import blocking_pool, configured_hosts

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 2  # seconds per check: a health probe must answer quickly
# A check that overruns its own timeouts (a connect the OS holds on to) is abandoned
# after this, and counts as failed.
CHECK_DEADLINE = CHECK_TIMEOUT + 1
ERROR_MAX_LENGTH = 200  # characters of a failed check's error: enough to act on
# Seconds one run of the checks answers for: a balancer probing every second, or a
# burst of anonymous calls, costs one run (a worker ping and a few round trips) per window.
CACHE_SECONDS = 2.0
DETAILS_PERMISSION = "jobs.view_all_jobs"  # who sees a failed check's error text
GENERIC_ERROR = "failed; the server log has the details"

CheckResult = dict[str, object]  # {"ok": true, "ms": 1.2} or {"ok": false, "error": "..."}
Report = dict[str, CheckResult]


class CheckFailed(Exception):
    """A check ran and found its part unhealthy (the message says how)."""


def check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # An executor thread's connection is never closed by Django's request cycle.
        connection.close()


# One blocking pool per channel-layer host, kept for the process: a probe reuses its
# connection instead of opening one (and an event loop) per call.
_redis_pools: dict[str, redis.ConnectionPool] = {}
_redis_pools_lock = threading.Lock()


def _redis_pool(host: dict[str, Any]) -> redis.ConnectionPool:
    key = repr(sorted(host.items()))  # the settings may change (tests): a new host, a new pool
    with _redis_pools_lock:
        pool = _redis_pools.get(key)
        if pool is None:
            pool = _redis_pools[key] = blocking_pool(
                {"socket_timeout": CHECK_TIMEOUT, "socket_connect_timeout": CHECK_TIMEOUT, **host}
            )
        return pool


def check_redis() -> None:
    """Every Redis host of the channel layer (one per shard, or the Sentinel master) and
    the main Redis (settings.REDIS_HOST: the socket quotas) answer PING."""
    hosts = configured_hosts()
    if not hosts:
        raise CheckFailed("CHANNEL_LAYERS has no default layer with hosts")
    main: dict[str, Any] = dict(settings.REDIS_HOST)
    for host in hosts if main in hosts else [*hosts, main]:
        redis.Redis(connection_pool=_redis_pool(host)).ping()


def check_broker() -> None:
    # Celery's connection pool: the connection outlives the probe.
    with app.connection_or_acquire() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)
        client = getattr(conn.default_channel, "client", None)  # a Redis broker: a real round trip
        if client is not None:
            client.ping()


def check_worker() -> None:
    # limit=1: answered as soon as one worker replies, not after the whole timeout.
    if not app.control.ping(timeout=CHECK_TIMEOUT, limit=1):
        raise CheckFailed(f"no worker answered a ping within {CHECK_TIMEOUT:g} s")


# --- running them -----------------------------------------------------------------

CHECK_NAMES = ("database", "redis", "broker", "worker")


def run_check(check: Callable[[], None]) -> CheckResult:
    started = time.monotonic()
    try:
        check()
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return {"ok": False, "error": error[:ERROR_MAX_LENGTH]}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


def run_named(name: str, check: Callable[[], None]) -> Report:
    return {name: run_check(check)}


def run_broker_then_worker() -> Report:
    """The worker is asked through the broker: with the broker down it is not asked."""
    broker = run_check(check_broker)
    if not broker["ok"]:
        return {"broker": broker, "worker": {"ok": False, "error": "not asked: the broker did not answer"}}
    return {"broker": broker, "worker": run_check(check_worker)}


# What runs side by side: each chain's check names, its function, its deadline in seconds.
CHAINS: tuple[tuple[tuple[str, ...], Callable[[], Report], float], ...] = (
    (("database",), partial(run_named, "database", check_database), CHECK_DEADLINE),
    (("redis",), partial(run_named, "redis", check_redis), CHECK_DEADLINE),
    (("broker", "worker"), run_broker_then_worker, 2 * CHECK_DEADLINE),
)


async def _run_chain(names: tuple[str, ...], run: Callable[[], Report], deadline: float) -> Report:
    try:
        return await asyncio.wait_for(asyncio.to_thread(run), deadline)
    except TimeoutError:
        return {name: {"ok": False, "error": f"no answer within {deadline:g} s"} for name in names}


async def health_report() -> Report:
    """Every check's result, by name, in CHECK_NAMES order (run now, not cached)."""
    results: Report = {}
    for part in await asyncio.gather(*(_run_chain(*chain) for chain in CHAINS)):
        results.update(part)
    report = {name: results[name] for name in CHECK_NAMES}
    for name, result in report.items():
        if not result["ok"]:
            logger.warning("healthz: the %s check failed: %s", name, result["error"])
    return report


class SharedReport:
    """One run of the checks at a time per process, its report kept for `seconds`.

    Thread-safe and loop-agnostic (daphne has one loop; Django's test client makes one
    per request): the run is a future every caller awaits, started as a task of its own
    so a caller that goes away does not cut it short for the others.
    """

    def __init__(self, run: Callable[[], Awaitable[Report]], *, seconds: float) -> None:
        self._run = run
        self._seconds = seconds
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[Report] | None = None
        self._expires = 0.0
        self.runs = 0  # how many times the checks ran in this process

    async def get(self) -> Report:
        with self._lock:
            future = self._future
            stale = future is None or (future.done() and time.monotonic() >= self._expires)
            if stale:
                future = self._future = concurrent.futures.Future()
                self.runs += 1
        assert future is not None
        if stale:
            asyncio.get_running_loop().create_task(self._fill(future))
        return await asyncio.wrap_future(future)

    async def _fill(self, future: concurrent.futures.Future[Report]) -> None:
        try:
            report = await self._run()
        except BaseException as exc:
            with self._lock:
                self._expires = 0.0  # the next caller runs the checks again
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        with self._lock:
            self._expires = time.monotonic() + self._seconds
        future.set_result(report)

    def clear(self) -> None:
        """Forget the kept report: the next caller runs the checks (tests)."""
        with self._lock:
            self._future = None
            self._expires = 0.0


shared_report = SharedReport(health_report, seconds=CACHE_SECONDS)


def redacted(report: Report) -> Report:
    """The report for a caller without DETAILS_PERMISSION: which checks failed, not why."""
    return {name: result if result["ok"] else {"ok": False, "error": GENERIC_ERROR} for name, result in report.items()}


async def _may_see_details(request: HttpRequest) -> bool:
    user = await request.auser()
    return bool(user.is_authenticated and await user.ahas_perm(DETAILS_PERMISSION))


async def healthz(request: HttpRequest) -> JsonResponse:
    results = await shared_report.get()
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed and not await _may_see_details(request):
        results = redacted(results)
    body = {"status": "ok" if not failed else "failing", "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if failed else 200)
