"""`/healthz`: the database, the channel layer over Redis, the broker and a worker.

200 with each check's result, or 503 naming the checks that failed:

    {"status": "failing", "failed": ["worker"],
     "checks": {"database": {"ok": true, "ms": 0.4}, ..., "worker": {"ok": false, "error": "..."}}}

An async view: the checks run side by side in threads (the worker after the broker,
through which it is asked), each bounded, so a probe answers within a few seconds
whatever hangs, and a slow probe never holds the thread that runs daphne's
synchronous views.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

from celery_app import app

CHECK_TIMEOUT = 2  # seconds per check: a health probe must answer quickly
# A check that overruns its own timeouts (a connect the OS holds on to) is abandoned
# after this, and counts as failed.
CHECK_DEADLINE = CHECK_TIMEOUT + 1
ERROR_MAX_LENGTH = 200  # characters of a failed check's error in the body: enough to act on

CheckResult = dict[str, object]  # {"ok": true, "ms": 1.2} or {"ok": false, "error": "..."}


class CheckFailed(Exception):
    """A check ran and found its part unhealthy (the message says how)."""


def check_database() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        # An executor thread's connection is never closed by Django's request cycle.
        connection.close()


def check_channel_layer() -> None:
    """A message through the channel layer and back: Redis pub/sub, as sockets use it.

    On an event loop of its own, closed at the end: channels-redis flushes a loop's
    layer (its subscriptions and connections) when the loop closes, so no probe
    leaves a subscription behind in daphne's layer.
    """

    async def round_trip() -> None:
        layer = get_channel_layer()
        if layer is None:
            raise CheckFailed("CHANNEL_LAYERS has no default layer")
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        message = await layer.receive(channel)
        if message.get("type") != "health.ping":
            raise CheckFailed(f"the channel layer answered {message!r}")

    async def bounded() -> None:
        await asyncio.wait_for(round_trip(), CHECK_TIMEOUT)

    asyncio.run(bounded())


def check_broker() -> None:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)


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


def run_named(name: str, check: Callable[[], None]) -> dict[str, CheckResult]:
    return {name: run_check(check)}


def run_broker_then_worker() -> dict[str, CheckResult]:
    """The worker is asked through the broker: with the broker down it is not asked."""
    broker = run_check(check_broker)
    if not broker["ok"]:
        return {"broker": broker, "worker": {"ok": False, "error": "not asked: the broker did not answer"}}
    return {"broker": broker, "worker": run_check(check_worker)}


# What runs side by side: each chain's check names, its function, its deadline in seconds.
CHAINS: tuple[tuple[tuple[str, ...], Callable[[], dict[str, CheckResult]], float], ...] = (
    (("database",), partial(run_named, "database", check_database), CHECK_DEADLINE),
    (("redis",), partial(run_named, "redis", check_channel_layer), CHECK_DEADLINE),
    (("broker", "worker"), run_broker_then_worker, 2 * CHECK_DEADLINE),
)


async def _run_chain(
    names: tuple[str, ...], run: Callable[[], dict[str, CheckResult]], deadline: float
) -> dict[str, CheckResult]:
    try:
        return await asyncio.wait_for(asyncio.to_thread(run), deadline)
    except TimeoutError:
        return {name: {"ok": False, "error": f"no answer within {deadline:g} s"} for name in names}


async def health_report() -> dict[str, CheckResult]:
    """Every check's result, by name, in CHECK_NAMES order."""
    results: dict[str, CheckResult] = {}
    for part in await asyncio.gather(*(_run_chain(*chain) for chain in CHAINS)):
        results.update(part)
    return {name: results[name] for name in CHECK_NAMES}


async def healthz(request: HttpRequest) -> JsonResponse:
    results = await health_report()
    failed = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "ok" if not failed else "failing", "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if failed else 200)
