"""`GET /metrics`: Prometheus's text format (docs/contract.md#metrics).

The database figures (jobs/metrics.py) are the same on every web process; the stream
figures (notifications/stream_metrics.py) and the process's own CPU and memory are this
process's, so Prometheus scrapes each daphne directly, not through the balancer.

Who may read it: a user with `jobs.view_metrics` (superusers have it), or a scraper
sending `Authorization: Bearer $METRICS_TOKEN`; with METRICS_TOKEN unset no token is
accepted. Anyone else gets 404, as for a path that does not exist.
"""

from __future__ import annotations

import hmac

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from core.api_errors import method_not_allowed_response
from jobs.metrics import JobsCollector
from notifications.stream_metrics import StreamsCollector

PERMISSION = "jobs.view_metrics"
BEARER = "Bearer "

registry = CollectorRegistry()
registry.register(JobsCollector())
registry.register(StreamsCollector())
ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...


def _has_token(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token is None or not header.startswith(BEARER):
        return False
    return hmac.compare_digest(header[len(BEARER) :].strip().encode(), token.encode())


async def _may_read(request: HttpRequest) -> bool:
    if _has_token(request):
        return True
    user = await request.auser()
    return bool(user.is_authenticated and await user.ahas_perm(PERMISSION))


def _exposition() -> bytes:
    # Its own thread, not the one every sync view of the process shares: the database
    # figures read the whole Job table, which must not hold up pages meanwhile.
    close_old_connections()
    try:
        return generate_latest(registry)
    finally:
        close_old_connections()


@csrf_exempt  # it changes nothing; a POST gets the 404 or 405 a GET's rules give, not a CSRF 403
async def metrics(request: HttpRequest) -> HttpResponse:
    if not await _may_read(request):
        raise Http404("No page here.")
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed_response(request.method, ["GET", "HEAD"])
    body = await sync_to_async(_exposition, thread_sensitive=False)()
    # The 0.0.4 text format every Prometheus reads; jobstream's names need no escaping.
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)
