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
"""

from __future__ import annotations

import logging
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

PATCHES = (UNSENT_BOUND, WRITE_THROUGH)
