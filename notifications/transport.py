"""daphne's socket writes: straight to the kernel, and never an unbounded backlog.

Write-through. Twisted's TCP transport never sends inside `write()`: it buffers the
bytes, registers the socket for writability (an `epoll_ctl` through asyncio's
`add_writer`), sends on the next pass of the loop and unregisters again (a second
`epoll_ctl`). A progress frame fanned out to N sockets paid that round for each
socket; profiled under bench/fanout.py it was about 40 % of daphne's CPU per frame
sent. So `write()` tries `socket.send()` at once when nothing is waiting in the
buffer; whatever the kernel does not take (a slow reader with a full send buffer)
goes down Twisted's usual buffered path, so order is unchanged.

A bound. Twisted buffers whatever the kernel does not take, without limit, and daphne
has no back-pressure to the application: a WebSocket client that stops reading (a
frozen tab, a phone gone into a tunnel) made daphne hold every frame sent to it since.
Once a WebSocket's unsent bytes pass MAX_UNSENT_BYTES the connection is aborted: the
client reconnects and starts again from a snapshot, which is all a job stream needs
(every frame carries the job's whole state). HTTP responses are left alone: a result
download is written by Django faster than a slow client reads it, and must not be cut.
A reader that vanished without a word is found by daphne's pings (`--ping-interval`,
`--ping-timeout` in the Procfile and docker-compose.yml).

Log labels. autobahn builds the labels of its debug log lines (`hltype`, `hlval`:
qualified names and values coloured through click) before it calls `log.debug`, on
every frame sent, whether or not debug logging is on: about 10 % of daphne's CPU per
frame in bench/fanout.py. Its WebSocket protocol gets plain labels instead (the same
names and values, uncoloured, as the stock ones give with click absent).

TLS connections keep the stock path. Twisted is pinned in requirements.txt; the
attributes used here are those of its `FileDescriptor` and `tcp.Connection`.
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet.abstract import FileDescriptor

logger = logging.getLogger(__name__)

# Unsent bytes past which a WebSocket is dropped. About a thousand progress frames: a
# client that far behind shows stale bars anyway and is better served by a reconnect
# and a fresh snapshot; and a thousand such clients cost daphne at most 1 GiB.
MAX_UNSENT_BYTES = 1024 * 1024

_installed = False


def unsent_bytes(connection: Any) -> int:
    """Bytes written to a Twisted connection and not yet taken by the kernel."""
    return len(connection.dataBuffer) - connection.offset + connection._tempDataLen


def write(connection: Any, data: bytes) -> None:
    """`tcp.Connection.write`, once installed: to the kernel at once when nothing is
    buffered; bounded to MAX_UNSENT_BYTES for protocols that ask for it."""
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
        if not unsent and not connection.TLS and not connection.disconnecting:
            try:
                sent = connection.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the buffered path meets the same error and closes as usual
            if sent == len(data):
                return
            data = data[sent:]
    FileDescriptor.write(connection, data)


def plain_type_label(obj: Any) -> str:
    """autobahn's `hltype` without the colours: `<module.qualname>` of a function or class."""
    return f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}>"


def install() -> None:
    """Patches twisted.internet.tcp.Connection.write and autobahn's log labels once per
    process, and bounds the unsent bytes of daphne's WebSockets."""
    global _installed
    if _installed:
        return
    from autobahn.websocket import protocol as autobahn_protocol
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet import tcp

    tcp.Connection.write = write  # type: ignore[method-assign]
    autobahn_protocol.hltype = plain_type_label
    autobahn_protocol.hlval = lambda value, color="white", bold=True: str(value)
    WebSocketProtocol.max_unsent_bytes = MAX_UNSENT_BYTES
    _installed = True
