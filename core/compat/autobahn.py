"""autobahn: plain debug-log labels, and a job frame framed once and written straight.

- Plain log labels (speed). autobahn builds the labels of its debug log lines (`hltype`,
  `hlval`: names and values coloured through click) before it calls `log.debug`, for
  every frame sent and every connect, read and close, debug logging on or off. The
  modules daphne uses get plain ones: the same names uncoloured, and a value label that
  is the value itself, rendered only by a log line that is written (the stock label
  formats a Twisted `Failure` for every closed connection).
- Framed once (speed). A job frame goes to every socket watching the job as the same
  text; through autobahn each socket pays `sendMessage`, `sendFrame` and `sendData`
  (type checks, encoding, header, counters). `FrameCache` frames the text once per
  message (RFC 6455) and `write_frame` writes the bytes to the socket's transport
  itself, when autobahn would do nothing more: the connection open, no message half
  sent, no compression, fragmentation, timings or frame logging. This reads the state
  of autobahn's `WebSocketProtocol` (`state`, `send_state`, `_perMessageCompress`,
  `autoFragmentSize`, `trackedTimings`, `logFrames`, `logOctets`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autobahn.twisted import websocket as autobahn_twisted
from autobahn.websocket import protocol as autobahn_protocol

from core.compat.patch import Upstream

# The pinned release series: written against 26.10.2, tested with it.
UPSTREAM = Upstream("autobahn", package="autobahn", tested="~=26.10.2")
STATE_OPEN = autobahn_protocol.WebSocketProtocol.STATE_OPEN
SEND_STATE_GROUND = autobahn_protocol.WebSocketProtocol.SEND_STATE_GROUND  # no message half sent
LABELLED_MODULES = (autobahn_protocol, autobahn_twisted)  # the modules daphne's sockets run through


def plain_type_label(obj: Any) -> str:
    """autobahn's `hltype` without the colours: `<module.qualname>` of a function or class."""
    return f"<{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}>"


def plain_value_label(value: Any, color: str = "white", bold: bool = True) -> Any:
    """autobahn's `hlval` without the colours: the value itself, made text only by a log
    line that is written (every `hlval` in these modules is a keyword of a log call)."""
    return value


def _install_plain_labels() -> None:
    for module in LABELLED_MODULES:
        module.hltype = plain_type_label  # type: ignore[attr-defined]
        module.hlval = plain_value_label  # type: ignore[attr-defined]


PLAIN_LOG_LABELS = UPSTREAM.speed(
    "plain-log-labels",
    changes="hltype/hlval in autobahn.websocket.protocol and autobahn.twisted.websocket give plain labels",
    why="autobahn colours a debug label through click for every frame, connect and close, logged or not",
    install=_install_plain_labels,
)


# --- framed once -------------------------------------------------------------------


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
    """Writes a prebuilt text frame straight to the socket's transport; False, writing
    nothing, when autobahn must decide itself (or the patch is off)."""
    if (
        not FRAMED_ONCE.active
        or protocol.state != STATE_OPEN
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


def is_open(protocol: Any) -> bool:
    """Whether the socket still takes frames: once a close has begun, a send raises."""
    return bool(protocol.state == STATE_OPEN)


FRAMED_ONCE = UPSTREAM.speed(
    "framed-once",
    changes="a job frame is framed once per process and written to each socket's transport, skipping sendMessage",
    why="each socket then frames the same text again through sendMessage, sendFrame and sendData",
)

PATCHES = (PLAIN_LOG_LABELS, FRAMED_ONCE)
