"""Write-through for daphne's sockets: a frame goes to the kernel when it is written.

Twisted's TCP transport never sends inside `write()`: it buffers the bytes, registers
the socket for writability (an `epoll_ctl` through asyncio's `add_writer`), sends on
the next pass of the loop and unregisters again (a second `epoll_ctl`). A progress
frame fanned out to N sockets paid that round for each socket; profiled under
bench/fanout.py it was about 40 % of daphne's CPU per frame sent.

`install()` makes the plain-TCP `write()` try `socket.send()` at once when nothing is
waiting in the buffer; whatever the kernel does not take (a slow reader with a full
send buffer) goes down Twisted's usual buffered path, so order and back-pressure are
unchanged. TLS connections and closing ones keep the stock path. Twisted is pinned in
requirements.txt; the attributes used here are those of its `FileDescriptor`.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_installed = False


def install() -> None:
    """Patches twisted.internet.tcp.Connection.write once per process."""
    global _installed
    if _installed:
        return
    from twisted.internet import tcp

    stock_write = tcp.Connection.write

    def write(self: Any, data: bytes) -> None:
        if (
            data
            and type(data) is bytes
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the buffered path meets the same error and closes as usual
            if sent == len(data):
                return
            data = data[sent:]
        stock_write(self, data)

    tcp.Connection.write = write  # type: ignore[method-assign]
    _installed = True
