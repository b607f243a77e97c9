"""A WSGI app that holds one thread per event stream, as a sync Django SSE view would.

For bench/capacity.py, served by gunicorn's `gthread` worker:

- `GET /events?seconds=30`: `text/event-stream`; a comment at once, then one every
  0.5 s for `seconds` (a sync view waiting on its job between frames);
- `GET /active`: `{"active": N}`, the streams being served right now.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

STREAM_SECONDS = 30.0  # default length of a stream
STREAM_SECONDS_MAX = 300.0  # a typo in a query string must not hold a thread for hours
TICK_SECONDS = 0.5  # between comments; also how soon a closed client frees its thread

StartResponse = Callable[..., Any]

_lock = threading.Lock()
_active = 0


def _stream(seconds: float) -> Iterator[bytes]:
    global _active
    with _lock:
        _active += 1
    try:
        yield b": connected\n\n"
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(TICK_SECONDS)  # the thread is held, doing nothing, like a sync SSE view
            yield b": tick\n\n"
    finally:  # also on a closed client: the server closes the iterator when a write fails
        with _lock:
            _active -= 1


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/active":
        with _lock:
            return _json(start_response, "200 OK", {"active": _active})
    if path == "/events":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            seconds = min(float(query.get("seconds", [STREAM_SECONDS])[0]), STREAM_SECONDS_MAX)
        except ValueError:
            return _json(start_response, "400 Bad Request", {"errors": {"seconds": ["Must be a number."]}})
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
        return _stream(seconds)
    return _json(start_response, "404 Not Found", {"errors": {"path": [f"No route {path!r}."]}})
