"""daphne: close code 1009, a bound on each WebSocket's unsent bytes, and its protocol behind `send`.

- Close code 1009 (safety: the contract). A client frame over 4 KiB closes with 1009,
  RFC 6455's "message too big" (docs/contract.md#close-codes). daphne hands an
  application's close to autobahn's `sendClose`, which takes only 1000 and 3000-4999 from
  an application and raises on anything else: the consumer would die with a traceback
  and the client see 1011.
  `serverClose` sends the codes `sendClose` refuses as autobahn does when it fails a
  connection itself (a close frame, at once); 1000 and 3000-4999 keep daphne's path.
- The unsent bound (safety). daphne's WebSocketProtocol carries `max_unsent_bytes`, which
  the patched Twisted write enforces (core/compat/twisted.py). HTTP responses carry none.
- The protocol behind a send (speed). daphne gives each connection's application
  `functools.partial(Server.handle_reply, protocol)` as its `send`; `daphne_protocol`
  finds the protocol there, so a consumer can write a prebuilt frame to it
  (core/compat/autobahn.py) instead of going through daphne's reply handler.
"""

from __future__ import annotations

import functools
from typing import Any

from daphne.ws_protocol import WebSocketProtocol

from core.compat import twisted
from core.compat.patch import Upstream

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

PATCHES = (CLOSE_CODES, UNSENT_BOUND, PROTOCOL_BEHIND_SEND)
