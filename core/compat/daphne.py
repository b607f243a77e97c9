"""daphne: close code 1009, a bound on each WebSocket's unsent bytes, sends past the incoming
limit, request bodies checked before they are read, and its protocol behind `send`.

- Close code 1009 (safety: the contract). A client frame over 4 KiB closes with 1009,
  RFC 6455's "message too big" (docs/contract.md#close-codes). daphne hands an
  application's close to autobahn's `sendClose`, which takes only 1000 and 3000-4999 from
  an application and raises on anything else: the consumer would die with a traceback
  and the client see 1011.
  `serverClose` sends the codes `sendClose` refuses as autobahn does when it fails a
  connection itself (a close frame, at once); 1000 and 3000-4999 keep daphne's path.
- The unsent bound (safety). daphne's WebSocketProtocol carries `max_unsent_bytes`, which
  the patched Twisted write enforces (core/compat/twisted.py). HTTP responses carry none.
- Request bodies checked before they are read (safety). daphne starts the application
  only once Twisted has the whole body (`WebRequest.process`), spooled to memory or a
  temporary file, so every size check ran after the body was in. `WebRequest.gotLength`,
  called once the headers are in, asks the product's limit for the method, path and
  content type (`limit_request_bodies`): a `Content-Length` over it is answered 413 at
  once, and `handleContentChunk` cuts a chunked body with 413 the moment it passes it.
  The connection then drops the rest and closes (core/compat/twisted.py).
- Back-pressure for HTTP responses (safety). daphne writes every body chunk an
  application sends to Twisted at once, and Twisted buffers what the client does not
  take: a download to a client that never reads was held in memory whole. Each
  streaming response's request gets a push producer (`Drain`, Twisted's public
  `registerProducer`); Twisted pauses it when the connection's buffer passes its
  `bufferSize` (64 KiB) and resumes it once drained, and daphne's `send`
  (`Server.handle_reply`) returns only while it is not paused. The application (Django
  awaits each `send`) so waits for the client, and a connection holds at most about
  one buffer and one chunk. A request registered while its channel already waits for
  its transport (`HTTPChannel._waitingForTransport`) starts paused.

- Sends unbounded (safety). daphne runs with `--websocket-max-message-size` a little over
  the contract's 4 KiB (core/daphne_limits.py), and autobahn's `sendMessage` applies that
  incoming limit to what the server sends too: a snapshot or job frame over 5 KiB would
  raise `PayloadExceededError` in the consumer. daphne's `serverSend` lifts the limit for
  its own send; what a client sends stays bound.
- The protocol behind a send (speed). daphne gives each connection's application
  `functools.partial(Server.handle_reply, protocol)` as its `send`; `daphne_protocol`
  finds the protocol there, so a consumer can write a prebuilt frame to it
  (core/compat/autobahn.py) instead of going through daphne's reply handler.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.web import http

from core.compat import twisted
from core.compat.patch import Upstream

logger = logging.getLogger(__name__)

# The pinned release series: written against 4.2.3, tested with it.
UPSTREAM = Upstream("daphne", package="daphne", tested="~=4.2.3")

# Unsent bytes past which a WebSocket is dropped. About a thousand progress frames: a
# client that far behind shows stale bars anyway and is better served by a reconnect and
# a fresh snapshot, and a thousand such clients cost daphne at most 1 GiB.
MAX_UNSENT_BYTES = 1024 * 1024


def _application_close_code(code: int) -> bool:
    """A code autobahn's sendClose takes from an application (RFC 6455 7.4)."""
    return code == 1000 or 3000 <= code <= 4999


def _install_close_codes() -> None:
    stock_server_close = WebSocketProtocol.serverClose

    @functools.wraps(stock_server_close)
    def server_close(self: Any, code: int | None = None) -> None:
        if code is not None and not _application_close_code(code):
            self.sendCloseFrame(code=code, isReply=False)
        else:
            stock_server_close(self, code)

    WebSocketProtocol.serverClose = server_close


CLOSE_CODES = UPSTREAM.safety(
    "close-codes",
    changes="WebSocketProtocol.serverClose sends codes sendClose refuses (1009) as a close frame of their own",
    why="a socket closed with 1009 (a client frame over 4 KiB) would crash its consumer and reach the client as 1011",
    install=_install_close_codes,
)


def _install_unsent_bound() -> None:
    twisted.UNSENT_BOUND.apply()
    WebSocketProtocol.max_unsent_bytes = MAX_UNSENT_BYTES


UNSENT_BOUND = UPSTREAM.safety(
    "unsent-bound",
    changes=f"WebSocketProtocol.max_unsent_bytes = {MAX_UNSENT_BYTES}, enforced by the patched Twisted write",
    why="a WebSocket client that stops reading would make daphne buffer every frame sent to it, without limit",
    install=_install_unsent_bound,
)


# --- request bodies checked before they are read ------------------------------------


@dataclass(frozen=True)
class TooLarge:
    """The body of a 413 answer."""

    content_type: str
    body: bytes


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request's body may have, and its answer when it has more:
    `refusal(declared)` gets the declared `Content-Length`, or None for a chunked body
    cut at the limit."""

    max_bytes: int
    refusal: Callable[[int | None], TooLarge]


# (method, path, content type without parameters, lowercase) -> the limit, or None for none
BodyLimitFor = Callable[[str, str, str], BodyLimit | None]

_body_limit_for: BodyLimitFor | None = None


def limit_request_bodies(limit_for: BodyLimitFor) -> None:
    """Every request daphne serves from now on is held to `limit_for`'s limit."""
    global _body_limit_for
    if BODY_LIMIT.apply():
        _body_limit_for = limit_for


def _limit_of(request: Any, line: tuple[bytes, bytes, bytes]) -> BodyLimit | None:
    limit_for = _body_limit_for
    if limit_for is None:
        return None
    method, target, _version = line
    content_type = (request.requestHeaders.getRawHeaders(b"content-type") or [b""])[0]
    return limit_for(
        method.decode("ascii", "replace").upper(),
        unquote(urlsplit(target).path.decode("ascii", "replace")),
        content_type.split(b";", 1)[0].strip().decode("ascii", "replace").lower(),
    )


def _refuse(request: Any, limit: BodyLimit, declared: int | None) -> None:
    """Answers 413 through daphne's own reply path, and drops the rest of the body."""
    channel = request.channel
    line = twisted.request_line(channel)
    assert line is not None
    request.method, request.uri, request.clientproto = line
    request.path = line[1].split(b"?", 1)[0]
    request.jobstream_body_refused = True
    request.requestHeaders.removeHeader(b"expect")  # no "100 Continue" after the answer
    if hasattr(request.client, "host") and hasattr(request.client, "port"):
        request.client_addr = [str(request.client.host), request.client.port]
    twisted.refuse_request_body(channel)
    channel.persistent = False  # what follows on this connection is the refused body
    answer = limit.refusal(declared)
    headers = [
        (b"content-type", answer.content_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
        (b"connection", b"close"),
    ]
    logger.info(
        "refused the body of %s %s: %s bytes, over %d",
        request.method.decode("ascii", "replace"),
        request.path.decode("ascii", "replace"),
        declared if declared is not None else "more than that in chunks",
        limit.max_bytes,
    )
    request.handle_reply({"type": "http.response.start", "status": 413, "headers": headers})
    request.handle_reply({"type": "http.response.body", "body": answer.body})


def _install_body_limit() -> None:
    twisted.REQUEST_BODY.apply()
    stock_got_length = WebRequest.gotLength
    stock_handle_content_chunk = WebRequest.handleContentChunk

    def got_length(self: Any, length: int | None) -> None:
        line = twisted.request_line(self.channel) if isinstance(self.channel, http.HTTPChannel) else None
        limit = None if length == 0 or line is None else _limit_of(self, line)
        if limit is not None and length is not None and length > limit.max_bytes:
            stock_got_length(self, 0)  # an empty content file, which nothing fills
            _refuse(self, limit, length)
            return
        self.jobstream_body_limit = limit
        stock_got_length(self, length)

    def handle_content_chunk(self: Any, data: bytes) -> None:
        if self.jobstream_body_refused:
            return
        limit = self.jobstream_body_limit
        if limit is not None:
            self.jobstream_body_received += len(data)
            if self.jobstream_body_received > limit.max_bytes:
                _refuse(self, limit, None)
                return
        stock_handle_content_chunk(self, data)

    WebRequest.jobstream_body_limit = None
    WebRequest.jobstream_body_received = 0
    WebRequest.jobstream_body_refused = False
    WebRequest.gotLength = got_length
    WebRequest.handleContentChunk = handle_content_chunk


BODY_LIMIT = UPSTREAM.safety(
    "body-limit",
    changes="WebRequest.gotLength answers 413 from a Content-Length over the path's limit, "
    "handleContentChunk cuts a chunked body at it",
    why="daphne reads a request's whole body into memory or a temporary file before the application "
    "can check its size, so one client could make the process spool any amount",
    install=_install_body_limit,
)


# --- back-pressure for HTTP responses ------------------------------------------------


class Drain:
    """A streaming response's push producer (Twisted's IPushProducer): paused by Twisted
    while the connection's buffer is full, and what daphne's send waits on."""

    def __init__(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def paused(self) -> bool:
        return not self._flowing.is_set()

    def pauseProducing(self) -> None:
        self._flowing.clear()

    def resumeProducing(self) -> None:
        self._flowing.set()

    def stopProducing(self) -> None:
        self._flowing.set()  # the connection is gone: daphne drops what comes next

    async def flowing(self) -> None:
        await self._flowing.wait()


def _drain_of(request: Any) -> Drain | None:
    """The request's Drain, registered on its first streamed chunk; None once it is gone."""
    drain: Drain | None = request.jobstream_drain
    if drain is None and request.channel is not None and not request.finished and request.producer is None:
        drain = request.jobstream_drain = Drain()
        if getattr(request.channel, "_waitingForTransport", False):
            drain.pauseProducing()  # the transport already paused the channel; it resumes us when it drains
        request.registerProducer(drain, True)
    return drain


def _install_back_pressure() -> None:
    stock_handle_reply = Server.handle_reply

    @functools.wraps(stock_handle_reply)
    async def handle_reply(self: Any, protocol: Any, message: dict[str, Any]) -> None:
        if not isinstance(protocol, WebRequest) or message.get("type") != "http.response.body":
            await stock_handle_reply(self, protocol, message)
            return
        if not message.get("more_body", False):
            drain = protocol.jobstream_drain
            if drain is not None and protocol.producer is drain and protocol.channel is not None:
                protocol.unregisterProducer()
            await stock_handle_reply(self, protocol, message)
            return
        drain = _drain_of(protocol)
        await stock_handle_reply(self, protocol, message)
        if drain is not None and drain.paused:
            await drain.flowing()

    WebRequest.jobstream_drain = None
    Server.handle_reply = handle_reply


BACK_PRESSURE = UPSTREAM.safety(
    "http-back-pressure",
    changes="Server.handle_reply registers a push producer on a streaming response's request and returns "
    "only while Twisted has not paused it",
    why="a response to a client that does not read would be buffered in daphne whole (a 49 MB result per connection)",
    install=_install_back_pressure,
)


def _install_sends_unbounded() -> None:
    stock_server_send = WebSocketProtocol.serverSend

    @functools.wraps(stock_server_send)
    def server_send(self: Any, content: Any, binary: bool = False) -> None:
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0  # autobahn: 0 is no limit; the reactor runs nothing else meanwhile
        try:
            stock_server_send(self, content, binary)
        finally:
            self.maxMessagePayloadSize = limit

    WebSocketProtocol.serverSend = server_send


SENDS_UNBOUNDED = UPSTREAM.safety(
    "sends-unbounded",
    changes="WebSocketProtocol.serverSend sends with maxMessagePayloadSize lifted (0) for that one sendMessage",
    why="autobahn's sendMessage bounds outgoing messages by the incoming limit (--websocket-max-message-size): "
    "every snapshot or job frame over it would crash its consumer",
    install=_install_sends_unbounded,
)


def daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, when that send is daphne's own;
    None behind anything else (a test's communicator, another server) or with the patch off."""
    if not PROTOCOL_BEHIND_SEND.active:
        return None
    if isinstance(send, functools.partial) and getattr(send.func, "__name__", "") == "handle_reply" and send.args:
        protocol = send.args[0]
        if isinstance(protocol, WebSocketProtocol):
            return protocol
    return None


PROTOCOL_BEHIND_SEND = UPSTREAM.speed(
    "protocol-behind-send",
    changes="a consumer finds daphne's WebSocketProtocol in its send (partial(Server.handle_reply, protocol))",
    why="each frame then goes through daphne's reply handler and autobahn's framing, socket by socket",
)

PATCHES = (CLOSE_CODES, UNSENT_BOUND, SENDS_UNBOUNDED, BODY_LIMIT, BACK_PRESSURE, PROTOCOL_BEHIND_SEND)
