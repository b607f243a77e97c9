"""core/compat/daphne.py in a real daphne: the canaries of the daphne patches (each socket of a
probe application reports what the patches find in daphne's own objects), the unsent bound
dropping a watcher that stops reading, and daphne's pings closing a socket that never answers."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from autobahn.websocket.protocol import WebSocketProtocol as AutobahnProtocol
from daphne import http_protocol
from daphne.http_protocol import WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from django.utils import timezone
from twisted.web import http
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from core.compat import daphne as compat_daphne
from core.daphne_limits import WEBSOCKET_MAX_MESSAGE_BYTES, daphne_command
from core.redis_local import free_port
from jobs.models import Job, JobState
from jobs.progress import ProgressUpdate
from jobs.services import RunningJob, job_finish
from tests.conftest import ROOT
from tests.core.compat.probe_asgi import (
    LIMITED_BYTES,
    LIMITED_PATH,
    STREAM_BYTES,
    STREAM_PATH,
    STREAMED_PATH,
)
from tests.core.compat.upstream import changed_sources
from tests.live_daphne import DaphneProcess, session_owner_token
from tests.processes import stop_process
from tests.waiting import async_wait_until, wait_until

FRAME_TIMEOUT = 5.0  # seconds for a frame to reach a client through daphne
WRITTEN = "a frame written straight to the socket, é"  # multi-byte UTF-8 on purpose

# The daphne code the patches rely on, as it was when they were written: the close path
# they take over, and the `send` daphne builds for each connection (partial(handle_reply, protocol)).
UPSTREAM = {
    "WebSocketProtocol.serverClose": (WebSocketProtocol.serverClose, "8302150efac698d6"),
    "Server.create_application": (Server.create_application, "f1e300b4ecf636c8"),
    # The body limit answers through the reply path and finish, before process() runs.
    "WebRequest.handle_reply": (WebRequest.handle_reply, "3e14b239c2602d95"),
    "WebRequest.finish": (WebRequest.finish, "7e03ef03e35b5b66"),
    "WebRequest.process": (WebRequest.process, "e9babd1c97ce710b"),
    # Back-pressure: daphne's send, and the producer path Twisted pauses and resumes through.
    "Server.handle_reply": (inspect.unwrap(Server.handle_reply), "9d9dbaea6de0657a"),
    "Request.registerProducer": (http.Request.registerProducer, "2be6d77997f6ae8e"),
    "Request.unregisterProducer": (http.Request.unregisterProducer, "c0a13b6c3993e12c"),
    "HTTPChannel.registerProducer": (http.HTTPChannel.registerProducer, "b154c18c3e856edd"),
    "HTTPChannel.pauseProducing": (http.HTTPChannel.pauseProducing, "8fe306cf284ba8e7"),
    "HTTPChannel.resumeProducing": (http.HTTPChannel.resumeProducing, "561ac237d3468e84"),
    "HTTPChannel.stopProducing": (http.HTTPChannel.stopProducing, "4a69f745d6382f0a"),
    # sends-unbounded: daphne's send, and autobahn's check of an outgoing message's size
    "WebSocketProtocol.serverSend": (WebSocketProtocol.serverSend, "345f21330d2a18ce"),
    "autobahn WebSocketProtocol.sendMessage": (AutobahnProtocol.sendMessage, "048d6bcf0d712309"),
}


def test_the_daphne_code_the_patches_rely_on_is_as_they_were_written_against() -> None:
    assert not changed_sources(UPSTREAM), "re-read core/compat/daphne.py against this daphne"


def test_daphnes_request_leaves_the_body_hooks_to_twisted() -> None:
    source = inspect.getsource(http_protocol)  # the patch replaces them on WebRequest; daphne defines neither
    assert "def gotLength" not in source and "def handleContentChunk" not in source


# --- canaries: the patches in a real daphne ------------------------------------------------


@pytest.fixture(scope="module")
def probe_daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """daphne serving tests/core/compat/probe_asgi.py, as `make run` serves core.asgi."""
    port = free_port()
    log = tmp_path_factory.mktemp("probe") / "daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            daphne_command("tests.core.compat.probe_asgi:application", port=port),
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the probe daphne exited:\n{log.read_text()}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_until(answers, timeout=30), log.read_text()
    yield f"ws://127.0.0.1:{port}/"
    stop_process(process)


async def test_a_socket_of_a_real_daphne_takes_a_frame_written_straight_to_its_transport(probe_daphne: str) -> None:
    async with ws_connect(probe_daphne) as socket_:
        await socket_.send(WRITTEN)
        first = await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT)
        facts = json.loads(await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT))
    assert facts["protocol"] == "daphne.ws_protocol.WebSocketProtocol", (
        "daphne's send is no longer partial(handle_reply)"
    )
    assert facts["written"] is True, "autobahn's protocol state says the frame must go its own way"
    assert first == WRITTEN  # the prebuilt frame is a text frame the client reads, before the reply sent after it
    assert facts["write_patched"] is True and facts["unsent_bytes"] == 0
    assert facts["max_unsent_bytes"] == compat_daphne.MAX_UNSENT_BYTES


@pytest.mark.parametrize("code", [1009, 1000, 4404, 4429])
async def test_a_real_daphne_closes_with_the_code_the_application_gives(probe_daphne: str, code: int) -> None:
    async with ws_connect(probe_daphne) as socket_:
        await socket_.send(WRITTEN)
        await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT)
        await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT)
        await socket_.send(str(code))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code


# --- the body limit in a real daphne (the probe holds LIMITED_PATH to LIMITED_BYTES) ------

BODY_TIMEOUT = 5.0  # seconds for an answer about a body


def probe_address(probe_daphne: str) -> tuple[str, int]:
    host, port = probe_daphne.removeprefix("ws://").rstrip("/").split(":")
    return host, int(port)


def http_exchange(probe_daphne: str, request: bytes, *, body_chunks: tuple[bytes, ...] = ()) -> bytes:
    """Sends a request (and body pieces), returns what daphne sent until it closed or went quiet."""
    with socket.create_connection(probe_address(probe_daphne)) as sock:
        sock.sendall(request)
        for piece in body_chunks:
            sock.sendall(piece)
        sock.settimeout(BODY_TIMEOUT)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received and received.count(b"HTTP/1.1 ") >= 2:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def head(path: str, length: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{connection}{length}\r\n\r\n".encode()


def chunked(body: bytes, piece: int = 8192) -> tuple[bytes, ...]:
    slices = [body[i : i + piece] for i in range(0, len(body), piece)]
    pieces = tuple(b"%x\r\n%s\r\n" % (len(part), part) for part in slices)
    return (*pieces, b"0\r\n\r\n")


def test_a_real_daphne_refuses_a_declared_length_over_the_limit_before_any_body(probe_daphne: str) -> None:
    started = time.monotonic()
    answer = http_exchange(probe_daphne, head(LIMITED_PATH, f"Content-Length: {LIMITED_BYTES + 1}"))
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.endswith(f"over, declared {LIMITED_BYTES + 1}".encode())
    assert time.monotonic() - started < BODY_TIMEOUT  # it closed: no wait for the body


def test_a_real_daphne_passes_bodies_within_the_limit_and_keeps_the_connection(probe_daphne: str) -> None:
    # A body at the limit, declared, then one chunked on the same connection.
    body = b"b" * LIMITED_BYTES
    second = head(LIMITED_PATH, "Transfer-Encoding: chunked")
    answer = http_exchange(
        probe_daphne, head(LIMITED_PATH, f"Content-Length: {len(body)}") + body + second, body_chunks=chunked(body)
    )
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer
    assert answer.count(str(LIMITED_BYTES).encode()) == 2


def test_a_real_daphne_cuts_a_chunked_body_at_the_limit(probe_daphne: str) -> None:
    answer = http_exchange(
        probe_daphne, head(LIMITED_PATH, "Transfer-Encoding: chunked"), body_chunks=chunked(b"c" * 2 * LIMITED_BYTES)
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    assert answer.endswith(b"over, declared None")


def test_a_real_daphne_leaves_paths_without_a_limit_alone(probe_daphne: str) -> None:
    body = b"u" * 2 * LIMITED_BYTES
    answer = http_exchange(probe_daphne, head("/free/", f"Content-Length: {len(body)}", close=True) + body)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(str(len(body)).encode()), answer


# --- back-pressure in a real daphne (the probe streams STREAM_BYTES at STREAM_PATH) --------

STALL_SETTLE = 1.0  # seconds without progress after which the probe's stream counts as held


def streamed(probe_daphne: str) -> dict[str, int]:
    host, port = probe_address(probe_daphne)
    counts: dict[str, int] = httpx.get(f"http://{host}:{port}{STREAMED_PATH}").json()
    return counts


def held_at(probe_daphne: str, *, timeout: float) -> int:
    """The bytes the probe has sent once they stop growing for STALL_SETTLE seconds."""
    deadline = time.monotonic() + timeout
    last, since = streamed(probe_daphne)["sent"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = streamed(probe_daphne)["sent"]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= STALL_SETTLE:
            return now
    raise AssertionError(f"the probe's stream never stopped growing (at {last} bytes)")


def test_a_real_daphne_holds_a_streaming_application_while_its_client_does_not_read(probe_daphne: str) -> None:
    before = streamed(probe_daphne)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect(probe_address(probe_daphne))
    try:
        sock.sendall(f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        held = held_at(probe_daphne, timeout=30) - before["sent"]
        # The kernel's buffers, Twisted's 64 KiB and a chunk: far from the whole stream.
        assert held < STREAM_BYTES // 4, f"the application sent {held} bytes to a client that reads nothing"
        received = 0
        sock.settimeout(BODY_TIMEOUT)
        while received < STREAM_BYTES:  # reading lets it go on, to the end
            chunk = sock.recv(1 << 20)
            assert chunk, "daphne closed the stream"
            received += len(chunk)
    finally:
        sock.close()
    assert wait_until(lambda: streamed(probe_daphne)["finished"] == before["finished"] + 1, timeout=BODY_TIMEOUT)


def test_a_real_daphne_lets_a_held_application_go_when_its_client_leaves(probe_daphne: str) -> None:
    before = streamed(probe_daphne)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.connect(probe_address(probe_daphne))
    sock.sendall(f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    held_at(probe_daphne, timeout=30)
    sock.close()
    # Its sends return once the connection is gone, so the application is not stuck forever.
    assert wait_until(lambda: streamed(probe_daphne)["finished"] == before["finished"] + 1, timeout=BODY_TIMEOUT)


def test_the_daphne_patches_are_active_with_the_pinned_version() -> None:
    for patch in compat_daphne.PATCHES:
        assert patch.apply(), patch
    assert WebSocketProtocol.max_unsent_bytes == compat_daphne.MAX_UNSENT_BYTES


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
                frame = json.loads(text)
                if frame["type"] == "job":  # not the log's backfill after the first one
                    seqs.append(frame["job"]["seq"])

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


# --- sends past the incoming limit ---------------------------------------------------

SNAPSHOT_JOBS = 6  # jobs of one owner, each with PAD in its params: a snapshot of ~20 KB


async def test_a_snapshot_over_the_incoming_message_limit_reaches_the_client(daphne: DaphneProcess) -> None:
    async with httpx.AsyncClient(base_url=daphne.url, timeout=FRAME_TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200
        sessionid = client.cookies["sessionid"]
    token = await asyncio.to_thread(session_owner_token, sessionid=sessionid, env=daphne.env)
    now = timezone.now()
    for _ in range(SNAPSHOT_JOBS):
        await Job.objects.acreate(
            owner_token=token, kind="sleep", params={"steps": 1, "pad": PAD}, state=JobState.QUEUED, seq=1,
            created_at=now, updated_at=now,
        )  # fmt: skip
    cookie = {"Cookie": f"sessionid={sessionid}"}
    async with ws_connect(
        f"{daphne.ws_url}/ws/jobs/", origin=Origin(daphne.url), additional_headers=cookie, max_size=None
    ) as socket_:
        text = str(await asyncio.wait_for(socket_.recv(), FRAME_TIMEOUT))
    assert len(text.encode()) > 3 * WEBSOCKET_MAX_MESSAGE_BYTES
    assert len(json.loads(text)["jobs"]) == SNAPSHOT_JOBS
    assert "PayloadExceededError" not in daphne.log.read_text(errors="replace")


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
