"""Twisted: daphne's socket writes go straight to the kernel, and never grow without bound.

Both patches replace `twisted.internet.tcp.Connection.write` (process-wide, in daphne)
with `write` below, which reads the buffer state of Twisted's `FileDescriptor`
(`dataBuffer`, `offset`, `_tempDataLen`, `_aborting`, `_writeDisconnected`).

- Write-through (speed). Twisted never sends inside `write()`: it buffers the bytes,
  registers the socket for writability (an `epoll_ctl`), sends on the next pass of the
  loop and unregisters (a second `epoll_ctl`). A frame fanned out to N sockets pays
  that round N times. `write()` sends at once when nothing is buffered; what the kernel
  does not take goes down Twisted's buffered path, so the order is kept.
- The unsent-bytes bound (safety). Twisted buffers whatever the kernel does not take,
  and daphne has no back-pressure to the application, so a WebSocket client that stops
  reading would make daphne hold every frame sent to it since. A connection whose protocol
  has `max_unsent_bytes` (daphne's WebSocketProtocol, core/compat/daphne.py) is
  aborted once that many bytes wait; the client reconnects to a fresh snapshot.

TLS connections keep Twisted's path (the bytes go through the TLS layer first).

- A request's head and body (safety), read by daphne's body limit (core/compat/daphne.py):
  `HTTPChannel` calls `Request.gotLength` once every header is in, with the request line
  still in the channel's `_command`, `_path` and `_version`, then hands the body to
  `Request.handleContentChunk` piece by piece through its `_transferDecoder`.
  `refuse_request_body` makes the channel drop every further byte of a refused body and
  close lingering: the answer is flushed, the write side shut, what the client still
  sends is read and dropped for LINGER_SECONDS, then the connection is aborted (a close
  with unread bytes would reset the connection and could lose the answer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor

from core.compat.patch import Upstream

logger = logging.getLogger(__name__)

# The pinned release series: written against 26.10.0, tested with it.
UPSTREAM = Upstream("twisted", package="Twisted", tested="~=26.10.0")


def unsent_bytes(connection: Any) -> int:
    """Bytes written to a Twisted connection and not yet taken by the kernel."""
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def write(connection: Any, data: bytes) -> None:
    """`tcp.Connection.write`, once installed: to the kernel at once when nothing is
    buffered (write-through); bounded for protocols that carry `max_unsent_bytes`."""
    if connection._aborting:
        return  # aborted: its buffer is being dropped, and nothing more may join it
    if data and type(data) is bytes and connection.connected and not connection._writeDisconnected:
        unsent = unsent_bytes(connection)
        limit: int | None = getattr(connection.protocol, "max_unsent_bytes", None)
        if limit is not None and unsent + len(data) > limit:
            logger.warning(
                "dropping the WebSocket of %s: %d bytes unsent (over %d); it reconnects to a fresh snapshot",
                connection.getPeer(),
                unsent + len(data),
                limit,
            )
            connection.abortConnection()
            return
        if _write_through and not unsent and not connection.TLS and not connection.disconnecting:
            try:
                sent = connection.socket.send(data)
            except OSError:
                sent = 0  # would block, or failed: the buffered path meets the same error and closes as usual
            if sent == len(data):
                return
            data = data[sent:]
    FileDescriptor.write(connection, data)


_write_through = False


def _install_write() -> None:
    tcp.Connection.write = write  # type: ignore[method-assign]


def _install_write_through() -> None:
    global _write_through
    _install_write()
    _write_through = True


WRITE_THROUGH = UPSTREAM.speed(
    "write-through",
    changes="tcp.Connection.write sends at once when nothing is buffered",
    why="each write then waits for the next pass of the reactor: two epoll_ctl calls per socket per frame",
    install=_install_write_through,
)

UNSENT_BOUND = UPSTREAM.safety(
    "unsent-bound",
    changes="tcp.Connection.write aborts a connection whose protocol's max_unsent_bytes is exceeded",
    why="a WebSocket client that stops reading would make daphne buffer every frame sent to it, without limit",
    install=_install_write,
)

# --- a request's head and body ----------------------------------------------------

# Seconds a refused request's connection keeps reading (and dropping) what the client
# still sends, so its kernel is not made to reset the connection over the answer.
LINGER_SECONDS = 2.0


def request_line(channel: Any) -> tuple[bytes, bytes, bytes] | None:
    """The method, target and version of the request whose body `channel` is receiving;
    None once the body is complete (or for a channel that is not Twisted's HTTP/1.x)."""
    try:
        return channel._command, channel._path, channel._version
    except AttributeError:
        return None


def _drop(data: bytes = b"") -> None:
    """Takes bytes of a refused body and keeps none of them."""


def refuse_request_body(channel: Any) -> None:
    """Every further byte the channel receives is dropped, and its close lingers."""
    decoder = channel._transferDecoder
    if decoder is not None:  # still in its dataReceived loop: the rest of that read goes nowhere
        decoder.dataCallback = decoder.finishCallback = _drop
    channel.dataReceived = channel.rawDataReceived = _drop  # each later read, and the rest of this one
    channel.loseConnection = lambda: _close_lingering(channel)  # what requestDone calls on a closing connection


def _close_lingering(channel: Any) -> None:
    transport = channel.transport
    if transport is None:
        return
    lose_write: Callable[[], None] | None = getattr(transport, "loseWriteConnection", None)
    if lose_write is None:
        transport.loseConnection()
        return
    lose_write()  # FIN once the answer is flushed; reading goes on
    channel.callLater(LINGER_SECONDS, transport.abortConnection)


REQUEST_BODY = UPSTREAM.safety(
    "request-body",
    changes="a refused request's HTTPChannel drops its body (transfer decoder callbacks, dataReceived) and "
    "closes lingering; the request line is read from the channel at gotLength",
    why="without it a request body is spooled whole before any size check can refuse it",
)

PATCHES = (UNSENT_BOUND, WRITE_THROUGH, REQUEST_BODY)
