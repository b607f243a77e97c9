"""An ASGI application for the canary tests: daphne serves it as it serves core.asgi, with
the web process's patches applied, and each socket reports what the patches found in the
real daphne (tests/core/compat/test_daphne.py). A socket's first client frame is a text to
write straight to it; the next one, a close code to close with. Over HTTP, bodies sent to
LIMITED_PATH are held to LIMITED_BYTES and answered with the length the application got;
STREAM_PATH answers STREAM_BYTES in chunks, and STREAMED_PATH says how many bytes of them
the application has handed to daphne's send so far, and how many streams ended."""

from __future__ import annotations

import json
import os
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django.setup()

from core.compat import autobahn, twisted, web  # noqa: E402
from core.compat.daphne import BodyLimit, TooLarge, daphne_protocol, limit_request_bodies  # noqa: E402

LIMITED_PATH = "/limited/"
LIMITED_BYTES = 100_000


def body_limit(method: str, path: str, content_type: str) -> BodyLimit | None:
    if path != LIMITED_PATH:
        return None
    return BodyLimit(LIMITED_BYTES, lambda declared: TooLarge("text/plain", f"over, declared {declared}".encode()))


STREAM_PATH = "/stream/"
STREAMED_PATH = "/streamed/"
STREAM_CHUNK = 64 * 1024
STREAM_BYTES = 256 * STREAM_CHUNK  # 16 MiB
_streamed = {"sent": 0, "finished": 0}

web.install()
limit_request_bodies(body_limit)


async def stream(send: Any) -> None:
    length = str(STREAM_BYTES).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    for index in range(STREAM_BYTES // STREAM_CHUNK):
        await send({"type": "http.response.body", "body": bytes([index % 256]) * STREAM_CHUNK, "more_body": True})
        _streamed["sent"] += STREAM_CHUNK
    await send({"type": "http.response.body"})
    _streamed["finished"] += 1


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == STREAM_PATH:
        await receive()
        await stream(send)
        return
    if scope["type"] == "http" and scope["path"] == STREAMED_PATH:
        await receive()
        body = json.dumps(_streamed).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] == "http":
        received = 0
        while True:
            message = await receive()
            received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = str(received).encode() if received else b"probe"
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    straight = (await receive()).get("text") or ""  # the text to write straight to the socket
    protocol = daphne_protocol(send)
    facts: dict[str, Any] = {
        "protocol": None if protocol is None else f"{type(protocol).__module__}.{type(protocol).__name__}"
    }
    if protocol is not None:
        facts["written"] = autobahn.write_frame(protocol, autobahn.text_frame(straight))
        facts["max_unsent_bytes"] = getattr(protocol, "max_unsent_bytes", None)
        facts["write_patched"] = type(protocol.transport).write is twisted.write
        facts["unsent_bytes"] = twisted.unsent_bytes(protocol.transport)
    await send({"type": "websocket.send", "text": json.dumps(facts)})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        code = int(message.get("text") or 1000)
        await send({"type": "websocket.close", "code": code})
