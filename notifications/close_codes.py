"""Lets the consumers close a socket with 1009 through daphne.

DESIGN.md closes a socket whose client sent a frame over 4 KiB with 1009, the code
RFC 6455 gives "message too big". daphne passes an application's close to autobahn's
`sendClose`, which takes only 1000 and 3000-4999 from an application and raises on
anything else: the consumer died in daphne with a traceback and the client saw 1011.
`install()` sends the protocol codes listed here as autobahn does when it fails a
connection itself: a close frame, straight away. Everything else keeps daphne's path.
"""

from __future__ import annotations

from typing import Any

# Codes from the protocol's range (1001-2999) that the consumers send (notifications/consumers.py).
PROTOCOL_CLOSE_CODES = frozenset({1009})

_installed = False


def install() -> None:
    """Patches daphne's WebSocketProtocol.serverClose once per process."""
    global _installed
    if _installed:
        return
    from daphne.ws_protocol import WebSocketProtocol

    stock_server_close = WebSocketProtocol.serverClose

    def server_close(self: Any, code: int | None = None) -> None:
        if code in PROTOCOL_CLOSE_CODES:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            stock_server_close(self, code)

    WebSocketProtocol.serverClose = server_close
    _installed = True
