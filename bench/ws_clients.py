"""The watcher side of bench/fanout.py: WebSocket clients in processes of their own.

Thousands of sockets receiving thousands of frames a second would saturate the core
of a single Python process and the benchmark would measure the client. So the
watchers are split over a few processes (`ClientProcess`), each one asyncio loop with
the `websockets` library's protocol (sans I/O) on bare asyncio transports. A process
records, per socket, every frame as
(seq, progress current, state, latency ms, receive time), latency being its receive
`time.time()` minus the frame's `job.updated_at` (the worker's `time.time()` at
report: one machine, one clock), and when the socket closed, and hands the lot back to the parent when every socket has
closed or it is told to stop. A socket's `log` frames (bench/log_flood.py) are kept as a
`LogFrame` each, and their line numbers tallied in a `LogTally`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import multiprocessing
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame as Frame_
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

CONNECT_CONCURRENCY = 50  # handshakes in flight per process; daphne drops those it cannot accept within 5 s
CONNECT_RETRIES = 5  # a failed handshake is retried, with backoff and jitter, like a browser's reconnect
CONNECT_TIMEOUT = 30.0  # seconds for one handshake, queueing for the gate included
STOP_POLL_SECONDS = 0.1  # how often a process looks at the parent's stop event
READY_TIMEOUT = 30.0  # seconds for a spawned process to import and report ready
CLOSE_TIMEOUT = 2.0  # seconds for a closing handshake when the parent stops us
RESULT_TIMEOUT = 30.0  # seconds for a stopped process to hand back its frames
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
READY, OPENED = "ready", "opened"  # what a client process tells its parent before the results
CONTEXT = multiprocessing.get_context("spawn")  # no threads or sockets inherited from the parent

# (seq, progress.current or None, state, latency ms, receive time.time()); a socket's
# first frame is the snapshot sent at accept, not a fresh change.
Frame = tuple[int, float | None, str, float, float]
# A `log` frame: (receive time.time(), first n, last n, lines, total, dropped, ms from its
# newest line's `t` to the receive, ms from its oldest line's, its bytes); a socket's first
# is the backfill.
LogFrame = tuple[float, int, int, int, int, int, float, float, int]


@dataclass
class LogTally:
    """The line numbers one socket received, over all its `log` frames."""

    distinct: int = 0
    duplicates: int = 0  # lines received again (the contract: never twice on one socket)
    out_of_order: int = 0  # lines with an n not above the previous line's
    lowest: int | None = None
    highest: int | None = None
    after_terminal: int = 0  # log frames after the terminal job frame (the contract: none)


@dataclass(frozen=True)
class ClientPlan:
    ws_url: str
    origin: str
    cookie: str
    job_ids: list[str]  # one socket per entry, on /ws/jobs/<id>/
    deadline: float  # time.time() after which every socket is closed


@dataclass
class WatcherResult:
    job_id: str
    connected_at: float | None = None  # time.time() when the handshake completed
    error: str | None = None  # why the last handshake failed, if none succeeded
    retries: int = 0  # failed handshakes before the one that worked
    close_code: int | None = None
    closed_at: float | None = None  # time.time() when the connection was lost (closed by either side)
    terminal_at: float | None = None  # time.time() when the terminal frame arrived
    frames: list[Frame] = field(default_factory=list)
    logs: list[LogFrame] = field(default_factory=list)
    log_tally: LogTally = field(default_factory=LogTally)
    raw: list[tuple[float, bytes]] = field(default_factory=list)  # (receive time.time(), text), until parsed


@dataclass
class ClientResult:
    watchers: list[WatcherResult]
    connect_seconds: float  # from the plan's arrival to the last socket having its snapshot


# --- one process ---------------------------------------------------------------------


def raise_fd_limit() -> None:
    """Thousands of sockets need more than the usual soft limit of 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parse(text: bytes, received: float) -> Frame | dict[str, Any] | None:
    """A job frame as a `Frame`, a log frame as its message, anything else None."""
    message = json.loads(text)
    kind = message.get("type")
    if kind == "log":
        return message
    if kind != "job":
        return None
    job = message["job"]
    progress = job["progress"]
    produced = datetime.fromisoformat(job["updated_at"]).timestamp()
    current = progress["current"] if progress else None
    return (job["seq"], current, job["state"], (received - produced) * 1000, received)


class _Socket(asyncio.Protocol):
    """One watcher socket: websockets' own protocol (sans I/O) on a bare asyncio
    transport. A text frame costs a parse and an append; the JSON is read after the
    run. The library's asyncio connection wakes a reader task per frame through a
    queue, which cost the benchmark's clients as much CPU as daphne spent sending."""

    def __init__(self, uri: str, origin: str, cookie: str) -> None:
        self.protocol = ClientProtocol(parse_uri(uri), origin=Origin(origin))
        self.request = self.protocol.connect()
        self.request.headers["Cookie"] = cookie
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.first: asyncio.Future[None] = self.loop.create_future()  # the snapshot, sent at accept
        self.closed_at: float | None = None
        self.raw: list[tuple[float, bytes]] = []  # (receive time.time(), text frame)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.protocol.send_request(self.request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        received = time.time()
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame_):
                if event.opcode is Opcode.TEXT:
                    self.raw.append((received, event.data))
                    if not self.first.done():
                        self.first.set_result(None)
            elif not self.opened.done():  # the handshake's response
                if protocol.handshake_exc is not None:
                    self.opened.set_exception(protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.protocol.close_expected():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.time()
        self.protocol.receive_eof()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Starts the closing handshake (the parent's deadline came)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()
        elif self.transport is not None:
            self.transport.close()


async def _open(plan: ClientPlan, job_id: str) -> _Socket:
    host, port = plan.ws_url.removeprefix("ws://").split(":")
    uri = f"{plan.ws_url}/ws/jobs/{job_id}/"
    loop = asyncio.get_running_loop()
    _, socket = await loop.create_connection(lambda: _Socket(uri, plan.origin, plan.cookie), host, int(port))
    try:
        await socket.opened
    except BaseException:
        if socket.transport is not None:
            socket.transport.close()
        raise
    return socket


async def _watch(plan: ClientPlan, result: WatcherResult, gate: asyncio.Semaphore, on_open: Callable[[], None]) -> None:
    """Follows one socket until it closes; `on_open` once it has its snapshot (or failed)."""
    attempt = 0
    while True:
        try:
            async with gate:
                socket = await asyncio.wait_for(_open(plan, result.job_id), CONNECT_TIMEOUT)
            break
        except Exception as exc:  # refused, timed out, dropped by daphne: retried as a browser would
            attempt += 1
            result.retries = attempt
            if attempt > CONNECT_RETRIES:
                result.error = repr(exc)
                on_open()
                return
            await asyncio.sleep(random.uniform(0.5, 1.0) * attempt)  # backoff with jitter
    result.connected_at = time.time()
    try:
        await asyncio.wait([socket.first, socket.closed], return_when=asyncio.FIRST_COMPLETED)
        on_open()
        await socket.closed
    except asyncio.CancelledError:
        socket.close()
        try:
            await asyncio.wait_for(asyncio.shield(socket.closed), CLOSE_TIMEOUT)
        except TimeoutError:
            if socket.transport is not None:
                socket.transport.abort()
    finally:
        result.close_code = socket.protocol.close_code
        result.closed_at = socket.closed_at
        result.raw = socket.raw


def _parse_frames(result: WatcherResult) -> None:
    """Turns a socket's raw frames into `frames`, once every socket of the process has
    closed: parsing while other sockets still receive would be the client's load."""
    seen: set[int] = set()
    tally = result.log_tally
    for received, text in result.raw:
        frame = _parse(text, received)
        if frame is None:
            continue
        if isinstance(frame, dict):
            _tally_log(result, tally, seen, frame, received, len(text))
            continue
        result.frames.append(frame)
        if frame[2] in TERMINAL:
            result.terminal_at = received
    tally.distinct = len(seen)
    result.raw = []


def _tally_log(
    result: WatcherResult, tally: LogTally, seen: set[int], message: dict[str, Any], received: float, size: int
) -> None:
    """Counts one `log` frame's lines (`seen`: every n so far) and keeps its `LogFrame`."""
    lines = message["lines"]
    if result.terminal_at is not None:
        tally.after_terminal += 1
    for line in lines:
        n = line["n"]
        if n in seen:
            tally.duplicates += 1
        seen.add(n)
        if tally.highest is not None and n <= tally.highest:
            tally.out_of_order += 1
        tally.highest = n if tally.highest is None else max(tally.highest, n)
        tally.lowest = n if tally.lowest is None else min(tally.lowest, n)
    if lines:
        newest = datetime.fromisoformat(lines[-1]["t"]).timestamp()
        oldest = datetime.fromisoformat(lines[0]["t"]).timestamp()
        first, last = lines[0]["n"], lines[-1]["n"]
    else:
        newest = oldest = received
        first = last = 0
    result.logs.append(
        (
            received,
            first,
            last,
            len(lines),
            message["total"],
            message["dropped"],
            (received - newest) * 1000,
            (received - oldest) * 1000,
            size,
        )
    )


async def _run(plan: ClientPlan, stop: EventType, conn: Connection) -> ClientResult:
    plan_at = time.time()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    results = [WatcherResult(job_id=job_id) for job_id in plan.job_ids]
    waiting = len(results)
    opened_at = plan_at

    def on_open() -> None:
        nonlocal waiting, opened_at
        waiting -= 1
        if waiting == 0:
            opened_at = time.time()
            conn.send(OPENED)  # a few bytes: blocking the loop for it is harmless

    if not results:
        conn.send(OPENED)
    tasks = {asyncio.create_task(_watch(plan, result, gate, on_open)) for result in results}
    pending = tasks
    while pending:
        if stop.is_set() or time.time() > plan.deadline:
            for task in pending:
                task.cancel()
            break
        _, pending = await asyncio.wait(pending, timeout=STOP_POLL_SECONDS)
    await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        _parse_frames(result)
    return ClientResult(
        watchers=results,
        connect_seconds=opened_at - plan_at,
    )


def client_main(conn: Connection, stop: EventType) -> None:
    """Entry point of a client process: ready, a plan, "opened" once every socket has
    its snapshot, then the results."""
    raise_fd_limit()
    # The frames a watcher keeps grow to tens of thousands of tuples; a full collection
    # over them paused the whole process for tens of ms near the end of a run, and the
    # pause showed up as server latency. A client's garbage is freed when it exits.
    gc.disable()
    conn.send(READY)
    plan: ClientPlan = conn.recv()
    conn.send(asyncio.run(_run(plan, stop, conn)))
    conn.close()


# --- the parent's handle on one process ------------------------------------------------


def new_stop_event() -> EventType:
    """The event a parent sets to make its client processes close their sockets and report."""
    return CONTEXT.Event()


class ClientProcess:
    """A spawned watcher process; `kill()` stops it by its PID."""

    def __init__(self, stop: EventType) -> None:
        self.conn, child_conn = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=client_main, args=(child_conn, stop), daemon=True)
        self.process.start()
        child_conn.close()
        self.result: ClientResult | None = None
        self.opened = False

    def wait_ready(self) -> None:
        if not self.conn.poll(READY_TIMEOUT) or self.conn.recv() != READY:
            raise RuntimeError(f"client process {self.process.pid} did not start within {READY_TIMEOUT:.0f} s")

    def start(self, plan: ClientPlan) -> None:
        self.conn.send(plan)

    def poll_opened(self) -> bool:
        """True once every socket of the process has its snapshot or has failed."""
        self._receive(0.0)
        return self.opened

    def poll_result(self, timeout: float = 0.0) -> bool:
        """True once the process has handed back its results (kept in `result`)."""
        deadline = time.monotonic() + timeout
        while self.result is None and self._receive(max(0.0, deadline - time.monotonic())):
            pass
        return self.result is not None

    def _receive(self, timeout: float) -> bool:
        if self.result is not None or not self.conn.poll(timeout):
            return False
        message = self.conn.recv()
        if message == OPENED:
            self.opened = True
        else:
            self.result = message
        return True

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        self.conn.close()
