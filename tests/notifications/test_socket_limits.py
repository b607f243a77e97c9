"""The bounds on what a client may make a daphne hold, on a real daphne started as the
Procfile starts it (core/daphne_limits.py): a message over the bound is refused at its
frame header, however slowly its payload comes, and daphne's memory stays flat."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils import timezone
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from core.daphne_limits import WEBSOCKET_MAX_MESSAGE_BYTES
from jobs.models import Job, JobState
from notifications.socket_quota import address_slots_key
from notifications.sse import STREAM_START_SECONDS
from tests.live_daphne import DaphneProcess, session_owner_token
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10.0  # seconds for a handshake, frame or close on this shared machine
CLAIMED = 1024 * 1024  # the payload length the slow frame's header claims
CHUNK = 512  # bytes of payload per write ...
CHUNK_EVERY = 0.02  # ... this many seconds apart: a client trickling a big frame
SENT_MAX = 64 * 1024  # payload bytes the client gives up after if daphne never refuses
SLOW_SOCKETS = 50  # slow 1 MiB frames at once, for daphne's memory
SLOW_CHUNKS = 96  # 4 KiB writes per slow socket: 384 KiB each, 19 MiB in all, if daphne kept taking them
RSS_GROWTH_MAX = 8 * 1024 * 1024  # bytes daphne may grow by meanwhile


@pytest.fixture
def daphne(live_server_env: dict[str, str], tmp_path: Path) -> Iterator[DaphneProcess]:
    server = DaphneProcess(env=live_server_env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


def new_session(daphne: DaphneProcess) -> str:
    with httpx.Client(base_url=daphne.url, timeout=TIMEOUT) as client:
        assert client.get("/").status_code == 200  # the page creates the anonymous session
        return client.cookies["sessionid"]


def open_raw_socket(daphne: DaphneProcess, path: str, sessionid: str | None) -> socket.socket:
    """A WebSocket handshake over a plain socket; returns it right after the 101."""
    sock = socket.create_connection(("127.0.0.1", daphne.port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    cookie = f"Cookie: sessionid={sessionid}\r\n" if sessionid else ""
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{daphne.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {daphne.url}\r\n{cookie}\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, f"closed during the handshake: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame_header(length: int) -> bytes:
    """A client's text frame header claiming `length` bytes of payload, masked with a zero
    key (RFC 6455 allows any): the payload goes as it is, valid UTF-8, so nothing but its
    size can make daphne refuse it."""
    return bytes((0x81, 0x80 | 127)) + struct.pack(">Q", length) + bytes(4)


def server_closed(received: bytes) -> bool:
    """Whether the server's frames so far (unmasked, RFC 6455 5.2) hold a close frame."""
    at = 0
    while at + 2 <= len(received):
        opcode, size = received[at] & 0x0F, received[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = int.from_bytes(received[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(received[at : at + 8], "big"), at + 8
        if opcode == 0x8:
            return True
        at += size
    return False


def trickle_until_refused(sock: socket.socket) -> tuple[int, bool]:
    """Sends the header of a 1 MiB frame, then its payload slowly; (payload bytes sent,
    whether daphne refused it: a close frame, or the connection closed or dropped)."""
    sock.sendall(frame_header(CLAIMED))
    sock.setblocking(False)
    sent = 0
    received = b""
    try:
        while sent < SENT_MAX:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    return sent, True
                received += chunk
                if server_closed(received):
                    return sent, True
            except BlockingIOError:
                pass
            sock.sendall(b"x" * CHUNK)
            sent += CHUNK
            time.sleep(CHUNK_EVERY)  # the slow client itself, not a wait for the server
    except (BrokenPipeError, ConnectionResetError):
        return sent, True
    return sent, False


def test_a_1_mib_frame_sent_slowly_is_refused_after_a_few_kib(daphne: DaphneProcess) -> None:
    sock = open_raw_socket(daphne, "/ws/jobs/", new_session(daphne))
    try:
        sent, refused = trickle_until_refused(sock)
    finally:
        sock.close()
    print(f"daphne refused the 1 MiB frame after {sent} payload bytes")
    assert refused, f"daphne took {sent} bytes of a frame claiming {CLAIMED} and kept the socket open"
    assert sent <= 8 * 1024


def refused_now(sock: socket.socket, received: bytearray) -> bool:
    """Whether daphne has closed or dropped this connection (reads what waits, never blocks)."""
    try:
        while chunk := sock.recv(65536):
            received.extend(chunk)
    except BlockingIOError:
        return server_closed(bytes(received))
    except ConnectionResetError:
        return True
    return True  # EOF


def test_many_slow_1_mib_frames_leave_daphnes_memory_flat(daphne: DaphneProcess) -> None:
    sessionid = new_session(daphne)
    rss_before = daphne.rss()
    socks = [open_raw_socket(daphne, "/ws/jobs/", sessionid) for _ in range(SLOW_SOCKETS)]
    try:
        for sock in socks:
            sock.sendall(frame_header(CLAIMED))
            try:
                for _ in range(SLOW_CHUNKS):
                    sock.sendall(b"x" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused already
            sock.setblocking(False)
        received = [bytearray() for _ in socks]
        pending = set(range(SLOW_SOCKETS))

        def all_refused() -> bool:
            pending.difference_update({i for i in pending if refused_now(socks[i], received[i])})
            return not pending

        everyone_refused = wait_until(all_refused, timeout=TIMEOUT)
        rss_after = daphne.rss()
    finally:
        for sock in socks:
            sock.close()
    growth = rss_after - rss_before
    print(
        f"{SLOW_SOCKETS - len(pending)} of {SLOW_SOCKETS} slow 1 MiB frames refused; RSS grew {growth / 2**20:.1f} MiB"
    )
    assert everyone_refused, f"{len(pending)} sockets still open with a 1 MiB frame in progress"
    assert growth < RSS_GROWTH_MAX


async def test_a_message_at_the_bound_reaches_the_consumer_which_closes_1009(daphne: DaphneProcess) -> None:
    sessionid = await asyncio.to_thread(new_session, daphne)
    async with connect(
        f"{daphne.ws_url}/ws/jobs/",
        origin=Origin(daphne.url),
        additional_headers={"Cookie": f"sessionid={sessionid}"},
        open_timeout=TIMEOUT,
        max_size=None,
    ) as ws:
        await asyncio.wait_for(ws.recv(), TIMEOUT)  # the snapshot
        await ws.send("x" * WEBSOCKET_MAX_MESSAGE_BYTES)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1009, (ws.close_code, ws.close_reason)


# --- cookieless sockets --------------------------------------------------------------

COOKIELESS = 500  # sockets without a session, from one address
COOKIELESS_AT_ONCE = 50  # handshakes in flight
COOKIELESS_RSS_MAX = 16 * 1024 * 1024  # bytes daphne may grow by for all of them


def vm_rss(pid: int) -> int:
    """Resident memory from /proc/<pid>/status (VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def close_code_of(daphne: DaphneProcess, path: str, cookie: dict[str, str]) -> int | None:
    """The code the server closed the socket with, after whatever frames it sent first."""
    async with connect(
        f"{daphne.ws_url}{path}", origin=Origin(daphne.url), additional_headers=cookie, open_timeout=TIMEOUT
    ) as ws:
        try:
            while True:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed:
            return ws.close_code


async def test_500_cookieless_sockets_from_one_address_close_4401_with_daphnes_memory_flat(
    daphne: DaphneProcess,
) -> None:
    async with connect(f"{daphne.ws_url}/ws/jobs/", origin=Origin(daphne.url), open_timeout=TIMEOUT) as warm:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(warm.recv(), TIMEOUT)
    rss_before = vm_rss(daphne.pid)
    gate = asyncio.Semaphore(COOKIELESS_AT_ONCE)

    async def one(index: int) -> int | None:
        async with gate:
            return await close_code_of(daphne, "/ws/jobs/" if index % 2 else f"/ws/jobs/{uuid.uuid4()}/", {})

    codes = await asyncio.gather(*(one(index) for index in range(COOKIELESS)))
    rss_after = vm_rss(daphne.pid)
    growth = rss_after - rss_before
    print(f"{codes.count(4401)} of {COOKIELESS} cookieless sockets closed 4401; VmRSS grew {growth / 2**20:.1f} MiB")
    assert codes == [4401] * COOKIELESS
    assert growth < COOKIELESS_RSS_MAX


# --- streams per client address and per owner ------------------------------------------

PER_IP = 5  # STREAM_QUOTA_PER_IP for these tests
PER_OWNER = 3  # JOB_QUOTA_SOCKETS for these tests


QUOTA_REDIS_DB = 7  # the quota tests' daphne counts in a database of its own: the session's
# other daphnes (the shared live server) hold sockets from 127.0.0.1 too


@pytest.fixture
def quota_redis(redis_server: Any) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{QUOTA_REDIS_DB}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def quota_daphne(live_server_env: dict[str, str], tmp_path: Path, quota_redis: Any) -> Iterator[DaphneProcess]:
    env = {
        **live_server_env,
        "REDIS_URL": live_server_env["REDIS_URL"].rsplit("/", 1)[0] + f"/{QUOTA_REDIS_DB}",
        "STREAM_QUOTA_PER_IP": str(PER_IP),
        "JOB_QUOTA_SOCKETS": str(PER_OWNER),
    }
    server = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    server.start()
    yield server
    server.stop()


async def visitor_with_job(daphne: DaphneProcess) -> tuple[dict[str, str], str]:
    """A new anonymous visitor's cookie header and a queued job of theirs."""
    sessionid = await asyncio.to_thread(new_session, daphne)
    token = await asyncio.to_thread(session_owner_token, sessionid=sessionid, env=daphne.env)
    now = timezone.now()
    job = await Job.objects.acreate(
        owner_token=token, kind="sleep", params={"steps": 1}, state=JobState.QUEUED, seq=1, created_at=now,
        updated_at=now,
    )  # fmt: skip
    return {"Cookie": f"sessionid={sessionid}"}, str(job.id)


async def open_stream(stack: AsyncExitStack, daphne: DaphneProcess, cookie: dict[str, str], path: str) -> Any:
    """An open WebSocket past its first frame, held until `stack` closes."""
    ws = await stack.enter_async_context(
        connect(f"{daphne.ws_url}{path}", origin=Origin(daphne.url), additional_headers=cookie, open_timeout=TIMEOUT)
    )
    await asyncio.wait_for(ws.recv(), TIMEOUT)
    return ws


async def open_sse(stack: AsyncExitStack, http: httpx.AsyncClient, cookie: dict[str, str], job_id: str) -> int:
    """The status of an event stream of the job; a 200 one stays open until `stack` closes."""
    response = await stack.enter_async_context(http.stream("GET", f"/api/jobs/{job_id}/events/", headers=cookie))
    if response.status_code == 200:
        # The iterator is kept until the stack closes: a collected one closes the response.
        events = stack.enter_context(_Kept(response.aiter_bytes())).iterator
        await asyncio.wait_for(anext(events), TIMEOUT)  # the first event: it is streaming
    else:
        await response.aread()
    return response.status_code


class _Kept:
    """Holds an object for the life of an exit stack."""

    def __init__(self, iterator: Any) -> None:
        self.iterator = iterator

    def __enter__(self) -> _Kept:
        return self

    def __exit__(self, *exc: object) -> None:
        del self.iterator


async def test_streams_past_the_address_quota_close_4429_and_sse_gets_429(quota_daphne: DaphneProcess) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient(base_url=quota_daphne.url, timeout=TIMEOUT) as http:
        visitors = [await visitor_with_job(quota_daphne) for _ in range(PER_IP + 1)]
        for cookie, _ in visitors[: PER_IP - 1]:  # a fresh cookie each: no owner is near their own quota
            await open_stream(stack, quota_daphne, cookie, "/ws/jobs/")
        cookie, job_id = visitors[PER_IP - 1]
        assert await open_sse(stack, http, cookie, job_id) == 200  # the address's last slot, taken by SSE
        late_cookie, late_job = visitors[PER_IP]
        assert await close_code_of(quota_daphne, "/ws/jobs/", late_cookie) == 4429
        assert await close_code_of(quota_daphne, f"/ws/jobs/{late_job}/", late_cookie) == 4429
        response = await http.get(f"/api/jobs/{late_job}/events/", headers=late_cookie)
        assert response.status_code == 429, response.text
        assert "per address" in response.json()["errors"]["__all__"][0]
        assert response.headers["Retry-After"].isdigit()
    # Every stream closed: the address's slots are free again.
    async with AsyncExitStack() as stack:
        await open_stream(stack, quota_daphne, late_cookie, "/ws/jobs/")


async def test_sse_streams_count_in_the_owners_quota(quota_daphne: DaphneProcess) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient(base_url=quota_daphne.url, timeout=TIMEOUT) as http:
        cookie, job_id = await visitor_with_job(quota_daphne)
        for _ in range(PER_OWNER - 1):
            assert await open_sse(stack, http, cookie, job_id) == 200
        await open_stream(stack, quota_daphne, cookie, "/ws/jobs/")  # the owner's last slot
        assert await open_sse(stack, http, cookie, job_id) == 429
        assert await close_code_of(quota_daphne, "/ws/jobs/", cookie) == 4429


async def test_event_streams_whose_client_leaves_at_once_give_their_slots_back(
    quota_daphne: DaphneProcess, quota_redis: Any
) -> None:
    # The client sends its request and hangs up without reading: depending on when the
    # hang-up lands, the view is still running, or its stream has not started (whose own
    # `finally` then never runs), or it has. Every time, the slot must come back.
    cookie, job_id = await visitor_with_job(quota_daphne)
    host, port = "127.0.0.1", int(quota_daphne.url.rsplit(":", 1)[1])
    request = (
        f"GET /api/jobs/{job_id}/events/ HTTP/1.1\r\nHost: {host}:{port}\r\nCookie: {cookie['Cookie']}\r\n\r\n"
    ).encode()
    for attempt in range(3 * PER_IP):
        with socket.create_connection((host, port), timeout=TIMEOUT) as raw:
            raw.sendall(request)
            if attempt % 3 == 1:
                raw.recv(1)  # the answer has begun: the stream is under way
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, at once
    key = address_slots_key("127.0.0.1")
    assert wait_until(lambda: quota_redis.zcard(key) == 0, timeout=STREAM_START_SECONDS + TIMEOUT), quota_redis.zrange(
        key, 0, -1
    )
    async with AsyncExitStack() as stack, httpx.AsyncClient(base_url=quota_daphne.url, timeout=TIMEOUT) as http:
        for _ in range(PER_OWNER):  # the owner's whole quota is free again, too
            assert await open_sse(stack, http, cookie, job_id) == 200
