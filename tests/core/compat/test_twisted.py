"""core/compat/twisted.py on real TCP sockets: Twisted's own `tcp.Connection` over a
loopback connection, driven by Twisted's in-memory reactor (so the test, not an event
loop, decides when the socket counts as writable). These are also the canaries of the
patch: they read and drive the real FileDescriptor's buffer, and fail when its shape
(`dataBuffer`, `offset`, `_tempDataLen`, `_aborting`) changes."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error, tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web import http

from core.compat import daphne, twisted
from tests.core.compat.upstream import changed_sources

SMALL_BUFFER = 4096  # bytes of kernel buffer on each side, so the kernel soon takes only part

# The Twisted code the patched write stands in front of, as it was when the patch was written.
UPSTREAM = {
    "FileDescriptor.write": (FileDescriptor.write, "3e46c97fc173bc7e"),
    "FileDescriptor.doWrite": (FileDescriptor.doWrite, "a986d7b1b1054e43"),
    "tcp.Connection.writeSomeData": (tcp.Connection.writeSomeData, "2dd0d4209260b94e"),
}

# The HTTP/1.x request parsing the body limit hooks into (core/compat/twisted.py
# `request_line`, `refuse_request_body`; core/compat/daphne.py `BODY_LIMIT`): gotLength after
# every header and the persistence decision, the request line on the channel until the
# body is complete, the body through the transfer decoder's callbacks, and a connection
# that is not persistent closed through loseConnection once the answer is done.
REQUEST_BODY_UPSTREAM = {
    "HTTPChannel.lineReceived": (http.HTTPChannel.lineReceived, "b77ec6f21116e827"),
    "HTTPChannel.allHeadersReceived": (http.HTTPChannel.allHeadersReceived, "979a9a8410f41ad9"),
    "HTTPChannel._maybeChooseTransferDecoder": (http.HTTPChannel._maybeChooseTransferDecoder, "3b92d266a3c7bd2c"),
    "HTTPChannel.allContentReceived": (http.HTTPChannel.allContentReceived, "9f7c990696871a92"),
    "HTTPChannel.requestDone": (http.HTTPChannel.requestDone, "a75a186c66f7d38d"),
    "Request.gotLength": (http.Request.gotLength, "1c389b99da50b0ae"),
    "Request.handleContentChunk": (http.Request.handleContentChunk, "6e942756afb787b4"),
    "_IdentityTransferDecoder.dataReceived": (http._IdentityTransferDecoder.dataReceived, "177b7cf3be44dbf4"),
    "_ChunkedTransferDecoder.__init__": (http._ChunkedTransferDecoder.__init__, "33d2107fa07649a2"),
}


@pytest.fixture(autouse=True)
def _write_through() -> None:
    twisted.WRITE_THROUGH.apply()


class Recording(Protocol):
    lost: Failure | None = None

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


class Bounded(Recording):
    max_unsent_bytes = 64 * 1024  # what install() gives daphne's WebSocketProtocol, scaled down


class Connection(tcp.Connection):
    """Twisted's tcp.Connection, with the patched write as installed in daphne."""

    def getPeer(self) -> Any:
        return "the test's peer"


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (server side, client side) with small buffers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
    yield server, client
    server.close()
    client.close()


def twisted_connection(server: socket.socket, protocol: Protocol) -> tuple[Connection, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    connection = Connection(server, protocol, reactor)  # type: ignore[arg-type]
    connection.connected = True
    return connection, reactor


def read_available(client: socket.socket) -> bytes:
    chunks = []
    while select.select([client], [], [], 0)[0]:
        chunk = client.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_write_goes_to_the_kernel_at_once_when_nothing_is_buffered(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    server, client = sockets
    connection, reactor = twisted_connection(server, Recording())

    connection.write(b"frame 1")

    assert twisted.unsent_bytes(connection) == 0
    assert connection not in reactor.getWriters()  # no round through the reactor
    client.settimeout(1)
    assert client.recv(100) == b"frame 1"


def test_order_is_kept_when_the_kernel_takes_only_part_of_a_write(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    server, client = sockets
    connection, reactor = twisted_connection(server, Recording())
    frames = [b"%06d:" % index + bytes([65 + index % 26]) * 3000 for index in range(300)]  # ~900 KB

    split = False  # a write of which the kernel took some bytes and Twisted kept the rest
    for frame in frames:
        before = twisted.unsent_bytes(connection)
        connection.write(frame)
        split = split or (before == 0 and 0 < twisted.unsent_bytes(connection) < len(frame))

    assert split, "the kernel took every write whole or not at all: no partial send to test"
    assert connection in reactor.getWriters()  # the rest waits for the reactor
    received = bytearray()
    total = sum(map(len, frames))
    while len(received) < total:
        received += read_available(client)
        if connection in reactor.getWriters() and select.select([], [server], [], 0.01)[1]:
            connection.doWrite()  # what the reactor does when the socket is writable
        # A write arriving while Twisted's buffer is non-empty must queue behind it.
        if len(received) > total // 2 and b"late" not in frames[-1]:
            frames.append(b"late frame, after a partial send")
            total += len(frames[-1])
            connection.write(frames[-1])
    assert bytes(received) == b"".join(frames)
    assert twisted.unsent_bytes(connection) == 0


def test_a_bounded_connection_past_its_bound_is_aborted_and_takes_nothing_more(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    server, client = sockets
    protocol = Bounded()
    connection, reactor = twisted_connection(server, protocol)
    frame = b"x" * 4000

    highest = 0
    for _ in range(1000):  # 4 MB at a peer that never reads
        connection.write(frame)
        highest = max(highest, twisted.unsent_bytes(connection))
        if connection._aborting:
            break
    assert connection._aborting, "never aborted"
    assert highest <= Bounded.max_unsent_bytes
    connection.write(frame)  # after the abort: dropped, not buffered
    assert twisted.unsent_bytes(connection) <= Bounded.max_unsent_bytes

    reactor.advance(0)  # Twisted delivers connectionLost on the next turn
    assert protocol.lost is not None and protocol.lost.check(error.ConnectionAborted)
    client.settimeout(2)
    with pytest.raises(ConnectionResetError):  # aborted: a reset, not an orderly close
        while client.recv(65536):
            pass


def test_a_connection_without_a_bound_buffers_as_twisted_does(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    # HTTP responses (a result download) have no bound: Django writes them faster than
    # a slow client reads, and cutting them would break the download.
    server, _ = sockets
    protocol = Recording()
    connection, _ = twisted_connection(server, protocol)

    for _ in range(400):
        connection.write(b"y" * 4000)

    assert twisted.unsent_bytes(connection) > daphne.MAX_UNSENT_BYTES
    assert not connection._aborting and protocol.lost is None


def test_the_patches_are_active_and_tcp_connections_write_through_them() -> None:
    assert twisted.WRITE_THROUGH.active and twisted.UNSENT_BOUND.apply()
    assert tcp.Connection.write is twisted.write


def test_the_twisted_code_the_patch_relies_on_is_as_it_was_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/twisted.py against this Twisted"


def test_the_twisted_request_parsing_the_body_limit_relies_on_is_as_it_was_written_against() -> None:
    assert not changed_sources(REQUEST_BODY_UPSTREAM), "re-read the request-body part of core/compat/twisted.py"
