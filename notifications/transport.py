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
frame in bench/fanout.py. Its Twisted adapter does the same for every read and
every connect and close (1-2 % of daphne's CPU while the sockets of finished jobs
close). Both get plain labels instead (the same names and values, uncoloured, as
the stock ones give with click absent); a value label is the value itself, made text
only by a log line that is written.

Framed once. A job frame goes to every socket watching the job as the same text, and
each went through daphne's reply handler and autobahn's `sendMessage`, `sendFrame` and
`sendData` (type checks, encoding, header, counters) per socket. The consumers frame
the text once per message (`FrameCache`) and write the bytes to daphne's socket
themselves (`write_frame`) while the socket is open and nothing special is on
(compression, fragmentation, frame logging: then autobahn's path is kept).

TLS connections keep the stock path. Twisted is pinned in requirements.txt; the
attributes used here are those of its `FileDescriptor` and `tcp.Connection`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from twisted.internet.abstract import FileDescriptor

logger = logging.getLogger(__name__)

# Unsent bytes past which a WebSocket is dropped. About a thousand progress frames: a
# client that far behind shows stale bars anyway and is better served by a reconnect
# and a fresh snapshot; and a thousand such clients cost daphne at most 1 GiB.
MAX_UNSENT_BYTES = 1024 * 1024

_installed = False
STATE_OPEN = AutobahnProtocol.STATE_OPEN
SEND_STATE_GROUND = AutobahnProtocol.SEND_STATE_GROUND  # no message half sent


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


def daphne_protocol(send: Any) -> Any | None:
    """The daphne WebSocketProtocol behind an ASGI `send`, when that send is daphne's own
    (`functools.partial(Server.handle_reply, protocol)`); None behind anything else."""
    from daphne.ws_protocol import WebSocketProtocol

    if isinstance(send, functools.partial) and getattr(send.func, "__name__", "") == "handle_reply" and send.args:
        protocol = send.args[0]
        if isinstance(protocol, WebSocketProtocol):
            return protocol
    return None


def text_frame(text: str) -> bytes:
    """A whole unmasked WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


class FrameCache:
    """The wire frame of the newest message: the subscriber hands one message to every
    member socket in turn, so each message is framed once, not once per socket."""

    __slots__ = ("frame", "message")

    def __init__(self) -> None:
        self.message: object = None
        self.frame = b""

    def frame_of(self, message: Mapping[str, Any]) -> bytes:
        if message is not self.message:
            self.frame = text_frame(message["text"])
            self.message = message
        return self.frame


def write_frame(protocol: Any, frame: bytes) -> bool:
    """Writes a prebuilt text frame straight to daphne's socket, skipping the six calls
    from daphne's reply handler through autobahn's framing. False, writing nothing, when
    autobahn must decide itself: the socket not open, a fragmented or compressed
    message, timings or frame logging on."""
    if (
        protocol.state != STATE_OPEN
        or protocol.send_state != SEND_STATE_GROUND
        or protocol._perMessageCompress is not None
        or protocol.autoFragmentSize
        or protocol.trackedTimings
        or protocol.logFrames
        or protocol.logOctets
    ):
        return False
    protocol.transport.write(frame)
    return True


def plain_type_label(obj: Any) -> str:
    """autobahn's `hltype` without the colours: `<module.qualname>` of a function or class."""
    return f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}>"


def plain_value_label(value: Any, color: str = "white", bold: bool = True) -> Any:
    """autobahn's `hlval` without the colours: the value itself, which the log line
    renders as text only if it is written. (Every `hlval` in the patched modules is a
    keyword argument of a log call; `str()` up front formatted a Twisted `Failure` on
    every closed connection, debug logging on or off.)"""
    return value


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
    from autobahn.twisted import websocket as autobahn_twisted

    for module in (autobahn_protocol, autobahn_twisted):  # its Twisted adapter labels each read and close too
        module.hltype = plain_type_label  # type: ignore[attr-defined]
        module.hlval = plain_value_label  # type: ignore[attr-defined]
    WebSocketProtocol.max_unsent_bytes = MAX_UNSENT_BYTES
    _installed = True
