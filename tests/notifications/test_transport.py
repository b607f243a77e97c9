"""notifications/transport.py on real TCP sockets: Twisted's own `tcp.Connection`
over a loopback connection, driven by Twisted's in-memory reactor (so the test, not
an event loop, decides when the socket counts as writable)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils import timezone
from twisted.internet import error, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin

from jobs.models import Job, JobState
from jobs.progress import ProgressUpdate
from jobs.services import RunningJob, job_finish
from notifications import transport
from tests.live_daphne import DaphneProcess, session_owner_token
from tests.waiting import async_wait_until

SMALL_BUFFER = 4096  # bytes of kernel buffer on each side, so the kernel soon takes only part
FRAME_TIMEOUT = 5.0  # seconds for a frame to reach a client through daphne


class Recording(Protocol):
    lost: Failure | None = None

    def connectionLost(self, reason: Failure = Failure(error.ConnectionDone())) -> None:  # noqa: B008
        self.lost = reason


class Bounded(Recording):
    max_unsent_bytes = 64 * 1024  # what install() gives daphne's WebSocketProtocol, scaled down


class Connection(tcp.Connection):
    """tcp.Connection with the patched write, as install() makes it in daphne."""

    write = transport.write

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

    assert transport.unsent_bytes(connection) == 0
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
        before = transport.unsent_bytes(connection)
        connection.write(frame)
        split = split or (before == 0 and 0 < transport.unsent_bytes(connection) < len(frame))

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
    assert transport.unsent_bytes(connection) == 0


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
        highest = max(highest, transport.unsent_bytes(connection))
        if connection._aborting:
            break
    assert connection._aborting, "never aborted"
    assert highest <= Bounded.max_unsent_bytes
    connection.write(frame)  # after the abort: dropped, not buffered
    assert transport.unsent_bytes(connection) <= Bounded.max_unsent_bytes

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

    assert transport.unsent_bytes(connection) > transport.MAX_UNSENT_BYTES
    assert not connection._aborting and protocol.lost is None


# --- end to end: a watcher that stops reading, beside one that reads -----------------

FLOOD_FRAMES = 8000  # ~4 KB each: ~32 MB at a client that reads none of it
CHUNK = 400  # frames published before waiting for the reading watcher to catch up
CHUNK_TIMEOUT = 5.0  # seconds for the reading watcher to get a chunk's last frame
RSS_GROWTH_MAX = 16 * 1024 * 1024  # bytes daphne may grow by; unbounded, it held the whole flood
PAD = "p" * 3000  # in the job's params, which every frame carries
STALLED_RCVBUF = 4096  # the stalled client's receive buffer: the kernel soon stops taking frames


def stalled_client(daphne: DaphneProcess, path: str, sessionid: str) -> socket.socket:
    """A WebSocket client that completes the handshake, then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect(("127.0.0.1", daphne.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {daphne.url}\r\nCookie: sessionid={sessionid}\r\n\r\n"
        ).encode()
    )
    sock.settimeout(FRAME_TIMEOUT)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave every frame after the headers unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def drain_until_dropped(sock: socket.socket) -> tuple[int, bool]:
    """Reads what the server had sent; (bytes read, whether the server cut the connection)."""
    received = 0
    sock.settimeout(FRAME_TIMEOUT)
    try:
        while chunk := sock.recv(65536):
            received += len(chunk)
    except ConnectionResetError:
        return received, True
    except TimeoutError:
        return received, False
    return received, True


@pytest.fixture
def daphne(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(env=live_server_env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


async def test_a_watcher_that_stops_reading_is_dropped_without_slowing_others_or_growing_daphne(
    daphne: DaphneProcess,
) -> None:
    async with httpx.AsyncClient(base_url=daphne.url, timeout=FRAME_TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200
        sessionid = client.cookies["sessionid"]
    token = await asyncio.to_thread(session_owner_token, sessionid=sessionid, env=daphne.env)
    now = timezone.now()
    job = await Job.objects.acreate(
        owner_token=token,
        kind="sleep",
        params={"steps": FLOOD_FRAMES, "step_seconds": 0, "pad": PAD},
        state=JobState.RUNNING,
        seq=2,
        created_at=now,
        started_at=now,
        updated_at=now,
    )
    path = f"/ws/jobs/{job.id}/"
    stalled = await asyncio.to_thread(stalled_client, daphne, path, sessionid)
    running = RunningJob(job)
    seqs: list[int] = []
    cookie = {"Cookie": f"sessionid={sessionid}"}
    async with ws_connect(f"{daphne.ws_url}{path}", origin=Origin(daphne.url), additional_headers=cookie) as reader:

        async def read() -> None:
            async for text in reader:
                seqs.append(json.loads(text)["job"]["seq"])

        reading = asyncio.create_task(read())
        assert await async_wait_until(lambda: _true(len(seqs) == 1), timeout=FRAME_TIMEOUT)  # the snapshot
        rss_before = daphne.rss()
        message = "m" * 500
        for start in range(0, FLOOD_FRAMES, CHUNK):
            for current in range(start + 1, start + CHUNK + 1):
                update = ProgressUpdate(current, FLOOD_FRAMES, message, None, None, time.time())
                await asyncio.to_thread(running.report, update)
            sent = running.job.seq
            assert await async_wait_until(lambda sent=sent: _true(seqs[-1] == sent), timeout=CHUNK_TIMEOUT), (  # type: ignore[misc]
                f"the reading watcher fell behind: at seq {seqs[-1]} of {sent}"
            )
        rss_after = daphne.rss()
        # Before the terminal frame, after which daphne closes every socket of the job.
        read_bytes, dropped = await asyncio.to_thread(drain_until_dropped, stalled)
        stalled.close()
        await asyncio.to_thread(job_finish, job_id=job.id, state=JobState.SUCCEEDED, seq_above=running.job.seq)
        await asyncio.wait_for(reading, CHUNK_TIMEOUT)  # the socket closes after the terminal frame

    truth = await Job.objects.aget(pk=job.id)
    assert truth.state == JobState.SUCCEEDED
    # The reader got every frame, in order, through to the terminal one.
    assert seqs == [*range(2, 2 + FLOOD_FRAMES + 1), truth.seq], seqs[-5:]
    # The stalled one was cut off long before the flood was through ...
    frame_bytes = len(PAD) + len(message)
    assert dropped, "daphne kept the stalled socket open"
    assert read_bytes < FLOOD_FRAMES * frame_bytes / 4
    assert "dropping the WebSocket" in daphne.log.read_text(errors="replace")
    # ... so daphne never held the flood it could not deliver.
    growth = rss_after - rss_before
    print(f"daphne RSS grew by {growth / 2**20:.1f} MiB while {FLOOD_FRAMES * frame_bytes / 2**20:.0f} MiB were sent")
    assert growth < RSS_GROWTH_MAX, f"daphne grew by {growth / 2**20:.1f} MiB"


async def _true(value: bool) -> bool:
    return value


# --- a client that vanished without a word -------------------------------------------

PING_SECONDS = 1  # daphne's --ping-interval and --ping-timeout here (the Procfile's are 20)
PING_OPCODE = 0x89  # a final ping frame, as the server sends it (unmasked)


@pytest.fixture
def pinging_daphne(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(
        env=live_server_env,
        log=tmp_path / "daphne.log",
        extra_args=("--ping-interval", str(PING_SECONDS), "--ping-timeout", str(PING_SECONDS)),
    )
    server.start()
    yield server
    server.stop()


def test_a_socket_that_never_answers_pings_is_closed(pinging_daphne: DaphneProcess) -> None:
    # A half-open socket (the peer's machine gone) sends nothing and acknowledges
    # nothing; this client reads but never answers a ping, which daphne cannot tell apart.
    with httpx.Client(base_url=pinging_daphne.url, timeout=FRAME_TIMEOUT) as client:
        assert client.get("/").status_code == 200
        sessionid = client.cookies["sessionid"]
    sock = stalled_client(pinging_daphne, "/ws/jobs/", sessionid)
    started = time.monotonic()
    received = b""
    sock.settimeout(10 * PING_SECONDS)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    took = time.monotonic() - started
    assert bytes([PING_OPCODE]) in received, "daphne never pinged"
    # The interval, the timeout, and daphne's 2 s timeout checker, with room to spare.
    assert took < 2 * PING_SECONDS + 2 + 3, f"closed only after {took:.1f} s"


def test_autobahn_log_labels_are_plain_once_installed() -> None:
    from autobahn.websocket import protocol as autobahn_protocol

    from notifications import transport

    transport.install()
    label = autobahn_protocol.hltype(test_autobahn_log_labels_are_plain_once_installed)
    assert label == f"<{__name__}.test_autobahn_log_labels_are_plain_once_installed>"
    assert autobahn_protocol.hlval(1234) == 1234  # no click colour codes, built on every frame sent
    from autobahn.twisted import websocket as autobahn_twisted

    assert autobahn_twisted.hltype(plain_label_target) == f"<{__name__}.plain_label_target>"  # each read and close
    assert autobahn_twisted.hlval(5) == 5
    # A value label is rendered only by a log line that is written: a closed
    # connection's Failure was formatted on every close, debug logging off.
    reason = RendersOnDemand()
    assert autobahn_twisted.hlval(reason) is reason and reason.rendered == 0
    assert f"reason={autobahn_twisted.hlval(reason)}" == "reason=plain"


class RendersOnDemand:
    rendered = 0

    def __str__(self) -> str:
        self.rendered += 1
        return "plain"


def plain_label_target() -> None:
    pass


# --- frames framed once ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    # each length form of RFC 6455 on both sides of its bound (in bytes), and multi-byte UTF-8
    ["", "x" * 125, "x" * 126, "x" * 65535, "x" * 65536, "x" * 200_000, "é" * 100],
)
def test_a_prebuilt_frame_is_the_text_frame_a_websocket_client_reads(text: str) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    reader = StreamReader()
    reader.feed_data(transport.text_frame(text))
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        parsed = done.value
    else:
        raise AssertionError("the frame was incomplete")
    assert parsed.opcode is Opcode.TEXT and parsed.fin and not parsed.rsv1
    assert parsed.data.decode() == text
    assert not reader.buffer  # nothing left over


def test_frame_cache_frames_each_message_once() -> None:
    cache = transport.FrameCache()
    first = {"text": '{"a": 1}'}
    frame = cache.frame_of(first)
    assert cache.frame_of(first) is frame  # the same message, socket after socket
    assert cache.frame_of({"text": '{"a": 2}'}) == transport.text_frame('{"a": 2}')


class FakeProtocol:
    """The attributes of autobahn's WebSocketProtocol that `write_frame` reads."""

    def __init__(self, **overrides: Any) -> None:
        self.state = transport.STATE_OPEN
        self.send_state = transport.SEND_STATE_GROUND
        self._perMessageCompress = None
        self.autoFragmentSize = 0
        self.trackedTimings = None
        self.logFrames = False
        self.logOctets = False
        self.written: list[bytes] = []
        self.transport = self
        self.__dict__.update(overrides)

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_write_frame_writes_to_an_open_plain_socket() -> None:
    protocol = FakeProtocol()
    assert transport.write_frame(protocol, b"\x81\x00")
    assert protocol.written == [b"\x81\x00"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"state": 4},  # closing: autobahn's path raises or drops as it always did
        {"send_state": 1},  # a fragmented message half sent
        {"_perMessageCompress": object()},
        {"autoFragmentSize": 1024},
        {"trackedTimings": object()},
        {"logFrames": True},
        {"logOctets": True},
    ],
)
def test_write_frame_leaves_anything_special_to_autobahn(overrides: dict[str, Any]) -> None:
    protocol = FakeProtocol(**overrides)
    assert not transport.write_frame(protocol, b"\x81\x00")
    assert protocol.written == []


def test_daphne_protocol_is_found_only_behind_daphnes_own_send() -> None:
    import functools

    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    protocol = WebSocketProtocol()
    server = Server.__new__(Server)
    assert transport.daphne_protocol(functools.partial(server.handle_reply, protocol)) is protocol

    async def other_send(message: Any) -> None:
        pass

    assert transport.daphne_protocol(other_send) is None
    assert transport.daphne_protocol(functools.partial(server.handle_reply, object())) is None
