"""daphne's bound on what a client may send in one WebSocket message, for every place
that starts daphne.

The contract allows a client frame of 4 KiB (4096 bytes; docs/contract.md#close-codes),
checked by the consumer, which closes a bigger one with 1009. By default daphne lets a
message of up to 1 MiB be buffered before the consumer sees it; with this bound autobahn
refuses a bigger message at its frame header, before the payload is read (the
connection is dropped). The 1 KiB of headroom keeps frames just over 4 KiB on the
consumer's path, with its clean 1009, so the contract's limit is decided in one place.

The Python starters (tests, bench/) build their command with `daphne_command`; the Procfile,
docker-compose.yml and the Dockerfile repeat the number, and tests/core/test_daphne_limits.py
checks every starter carries it. Server-to-client messages are not bound by it
(core/compat/daphne.py, "sends-unbounded").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

CLIENT_FRAME_MAX_BYTES = 4096  # the contract's limit, enforced by notifications/consumers.py
WEBSOCKET_MAX_MESSAGE_BYTES = CLIENT_FRAME_MAX_BYTES + 1024  # daphne's --websocket-max-message-size
DAPHNE_LIMIT_ARGS = ("--websocket-max-message-size", str(WEBSOCKET_MAX_MESSAGE_BYTES))


def daphne_command(application: str, *, port: int, host: str = "127.0.0.1", extra: Sequence[str] = ()) -> list[str]:
    """`python -m daphne` serving `application` on host:port, with the limits above."""
    return [sys.executable, "-m", "daphne", *DAPHNE_LIMIT_ARGS, *extra, "-b", host, "-p", str(port), application]
