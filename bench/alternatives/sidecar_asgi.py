"""bench.asgi's application plus the one endpoint the Node.js side-car asks on every connect.

`GET /sidecar/owner/` with the visitor's cookies answers `{"owner_group": …,
"session_group": …}` (the channel-layer groups of notifications/groups.py, which name
the Redis channels the side-car subscribes to), or 401 `{"errors": …}` when the cookie
names no session holding an owner. The side-car learns who the visitor is the way
daphne's consumer does, from Django's own session store (so any SESSION_ENGINE works),
in one request, and reads the snapshot from the product's API.

Bench-only: the product's URLs are untouched; daphne serves this module instead of
bench.asgi when compare.py runs the side-car.
"""

from __future__ import annotations

import json
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from bench.asgi import application as jobstream_application
from jobs.owners import owner_from_scope
from notifications.groups import owner_group
from notifications.sessions import session_group_of

OWNER_PATH = "/sidecar/owner/"

Scope = dict[str, Any]


def _session_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, _, cookie = part.strip().partition("=")
            if key == settings.SESSION_COOKIE_NAME and cookie:
                return cookie
    return None


def _owner_groups(session_key: str | None) -> dict[str, str] | None:
    """The groups of the session's owner, or None (sync: the session store may query the database)."""
    if session_key is None:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    owner = owner_from_scope({"session": store})
    group = session_group_of(store)
    if owner is None or group is None or store.session_key is None:
        return None
    return {"owner_group": owner_group(owner.key), "session_group": group}


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def application(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http" or scope["path"] != OWNER_PATH:
        await jobstream_application(scope, receive, send)
        return
    if scope["method"] != "GET":
        await _answer(send, 405, {"errors": {"method": ["Only GET."]}})
        return
    groups = await database_sync_to_async(_owner_groups)(_session_key(scope))
    if groups is None:
        await _answer(send, 401, {"errors": {"session": ["No session with an owner."]}})
        return
    await _answer(send, 200, groups)
