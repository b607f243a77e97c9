"""Event-stream watchers for bench/fanout.py's machinery: bench/ws_clients.py's processes,
plan and results, with SSE streams (`GET <base>/sse/jobs/<id>/`) in place of sockets.

A stream counts as open once its first event (the job's state at connect) arrived, as a
socket does with its snapshot; on a thread-per-request server a stream past the thread
count waits for a free thread, and its first event comes late or never. HTTP/1.0, so the
server ends the body by closing (no chunked encoding to undo).
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType

from bench.ws_clients import (
    CLOSE_TIMEOUT,
    CONNECT_CONCURRENCY,
    CONNECT_RETRIES,
    CONNECT_TIMEOUT,
    CONTEXT,
    OPENED,
    READY,
    STOP_POLL_SECONDS,
    TERMINAL,
    ClientPlan,
    ClientProcess,
    ClientResult,
    Frame,
    WatcherResult,
    raise_fd_limit,
)

HTTP_OK = 200


class _Stream(asyncio.Protocol):
    """One event stream on a bare transport: the head, then each event's `data:` kept raw."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.first: asyncio.Future[None] = loop.create_future()  # the first event, or the end
        self.closed: asyncio.Future[None] = loop.create_future()
        self.closed_at: float | None = None
        self.buffer = b""
        self.head_done = False
        self.status: int | None = None
        self.raw: list[tuple[float, bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        received = time.time()
        self.buffer += data
        if not self.head_done:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            self.head_done = True
            self.status = int(head.split(b" ", 2)[1])
            self.buffer = rest
            if self.status != HTTP_OK and self.transport is not None:
                self.transport.close()
                return
        while b"\n\n" in self.buffer:
            event, _, self.buffer = self.buffer.partition(b"\n\n")
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    self.raw.append((received, line[6:]))
                    if not self.first.done():
                        self.first.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.time()
        if not self.first.done():
            self.first.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)


def _request(plan: ClientPlan, job_id: str) -> bytes:
    host = plan.ws_url.split("://", 1)[1]
    return (
        f"GET /sse/jobs/{job_id}/ HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
        f"Origin: {plan.origin}\r\nCookie: {plan.cookie}\r\n\r\n"
    ).encode()


async def _watch(plan: ClientPlan, result: WatcherResult, gate: asyncio.Semaphore, on_open: asyncio.Event) -> None:
    host, port = plan.ws_url.split("://", 1)[1].split(":")
    loop = asyncio.get_running_loop()
    request = _request(plan, result.job_id)
    attempt = 0
    while True:
        try:
            async with gate:
                _, stream = await asyncio.wait_for(
                    loop.create_connection(lambda: _Stream(request), host, int(port)), CONNECT_TIMEOUT
                )
            break
        except Exception as exc:  # refused or timed out: retried as an EventSource would
            attempt += 1
            result.retries = attempt
            if attempt > CONNECT_RETRIES:
                result.error = repr(exc)
                on_open.set()
                return
            await asyncio.sleep(random.uniform(0.5, 1.0) * attempt)
    try:
        await stream.first
        if stream.raw:
            result.connected_at = stream.raw[0][0]
        elif stream.status not in (None, HTTP_OK):
            result.error = f"HTTP {stream.status}"
        else:
            result.error = "closed before its first event"
        on_open.set()
        await stream.closed
    except asyncio.CancelledError:
        if stream.transport is not None:
            stream.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(stream.closed), CLOSE_TIMEOUT)
        except TimeoutError:
            if stream.transport is not None:
                stream.transport.abort()
    finally:
        result.closed_at = stream.closed_at
        result.close_code = stream.status
        result.raw = stream.raw


def _parse_frames(result: WatcherResult) -> None:
    for received, data in result.raw:
        job = json.loads(data)
        progress = job["progress"]
        produced = datetime.fromisoformat(job["updated_at"]).timestamp()
        frame: Frame = (
            job["seq"],
            progress["current"] if progress else None,
            job["state"],
            (received - produced) * 1000,
            received,
        )
        result.frames.append(frame)
        if job["state"] in TERMINAL:
            result.terminal_at = received
    result.raw = []


async def _run(plan: ClientPlan, stop: EventType, conn: Connection) -> ClientResult:
    plan_at = time.time()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    results = [WatcherResult(job_id=job_id) for job_id in plan.job_ids]
    events = [asyncio.Event() for _ in results]
    tasks = {
        asyncio.create_task(_watch(plan, result, gate, event)) for result, event in zip(results, events, strict=True)
    }
    opened_sent = False
    opened_at = plan_at
    pending = tasks
    while pending:
        if not opened_sent and all(event.is_set() for event in events):
            opened_sent, opened_at = True, time.time()
            conn.send(OPENED)
        if stop.is_set() or time.time() > plan.deadline:
            for task in pending:
                task.cancel()
            break
        _, pending = await asyncio.wait(pending, timeout=STOP_POLL_SECONDS)
    await asyncio.gather(*tasks, return_exceptions=True)
    if not opened_sent:
        conn.send(OPENED)
    for result in results:
        _parse_frames(result)
    return ClientResult(watchers=results, connect_seconds=opened_at - plan_at)


def sse_client_main(conn: Connection, stop: EventType) -> None:
    raise_fd_limit()
    gc.disable()  # as bench/ws_clients.py: a full collection over the kept frames would show as server latency
    conn.send(READY)
    plan: ClientPlan = conn.recv()
    conn.send(asyncio.run(_run(plan, stop, conn)))
    conn.close()


class SseClientProcess(ClientProcess):
    """A spawned process of event-stream watchers, driven like bench/ws_clients.py's."""

    def __init__(self, stop: EventType) -> None:
        self.conn, child_conn = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=sse_client_main, args=(child_conn, stop), daemon=True)
        self.process.start()
        child_conn.close()
        self.result = None
        self.opened = False
