"""`/healthz`: the database, the channel layer over Redis, the broker and a worker.

200 with each check's result, or 503 naming the checks that failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

CHECK_TIMEOUT = 2  # seconds per check: a health probe must answer quickly


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_channel_layer() -> None:
    async def round_trip() -> None:
        layer = get_channel_layer()
        assert layer is not None
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "health.ping"})
        await asyncio.wait_for(layer.receive(channel), CHECK_TIMEOUT)

    async_to_sync(round_trip)()


def check_broker() -> None:
    from celery_app import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT)


def check_worker() -> None:
    from celery_app import app

    if not app.control.ping(timeout=CHECK_TIMEOUT):
        raise RuntimeError("no worker answered a ping")


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "redis": check_channel_layer,
    "broker": check_broker,
    "worker": check_worker,
}


def healthz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        started = time.monotonic()
        try:
            check()
        except Exception as exc:
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            results[name] = {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
    failed = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "ok" if not failed else "failing", "failed": failed, "checks": results}
    return JsonResponse(body, status=503 if failed else 200)
