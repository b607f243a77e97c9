"""Connection capacity: idle WebSockets on one daphne, beside a threaded WSGI server.

a) sockets: a throwaway stack (bench/stack.py: its own Redis, SQLite, one daphne, no
   worker); client processes open --sockets owner sockets (`/ws/jobs/`, anonymous
   sessions), each waiting for its snapshot; they are held idle, then every socket
   sends a frame the server must answer (an unknown type gets an error frame), and
   one job is created so the sockets of its owner must receive its frame. Reports
   daphne's resident memory before and after, KB per socket and time to connect.
b) streams: gunicorn `gthread` (1 worker, --threads threads) serving
   bench/wsgi_streams.py, where each event stream holds a thread as a sync Django SSE
   view would; clients in steps (8, 16, 32, 33, 64, 100) and their time to first byte.
c) polling: the same gunicorn serving the real Django app (core.wsgi, SQLite), N
   watchers each polling `GET /api/jobs/<id>/` once a second for --poll-seconds:
   requests/s needed vs served, response time, gunicorn's CPU.

    .venv/bin/python bench/capacity.py [--quick] [--out bench/results/capacity.json]

Loopback only; everything started is stopped by its PID. Prints a table and one JSON
line per part and writes them all to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from bench.stack import Stack, new_session, percentile, stop_process, submit_job  # noqa: E402
from core.redis_local import free_port  # noqa: E402

# --- settings of the run ---------------------------------------------------------------

FULL_SOCKETS = 10_000  # issue 4: at least 10,000 idle sockets per daphne process
QUICK_SOCKETS = 1_000
CLIENT_PROCESSES = 4  # each holds sockets / 4; one asyncio loop per process
# Handshakes in flight per client process. daphne drops a handshake the application has
# not accepted within --websocket_connect_timeout (5 s by default) and each connect costs
# daphne ~10 ms of CPU here, so 4 x 10 in flight keep the queue well under that.
CONNECTS_IN_FLIGHT = 10
ANSWERS_IN_FLIGHT = 200  # per client process, for the check frames (no database behind them)
SESSIONS = 100  # anonymous owners the sockets are spread over (a per-owner quota must not bite)
FULL_HOLD_SECONDS = 10.0
QUICK_HOLD_SECONDS = 3.0
WARMUP_SOCKETS = 20  # opened and closed before the baseline RSS, so imports and pools are in it
CONNECT_TRIES = 2  # a handshake daphne dropped under load is tried once more, as a client reconnects
CONNECT_TIMEOUT = 60.0  # seconds for one socket's handshake and snapshot
ANSWER_TIMEOUT = 20.0  # seconds for one socket's answer to the check frame
PHASE_TIMEOUT = 480.0  # seconds for a client process to finish one phase (10,000 connects at ~50/s on a busy box)

GUNICORN_THREADS = 32
GUNICORN_WORKER_CONNECTIONS = 2048  # above the 1000 watchers, so the default 1000 is not what is measured
GUNICORN_KEEPALIVE = 5  # seconds; above the 1 s poll interval, so watchers keep their connection
FULL_STREAM_STEPS = (8, 16, 32, 33, 64, 100)
QUICK_STREAM_STEPS = (8, 32, 33)
FULL_STREAM_SECONDS = 5.0  # a stream's length: a client past the thread count waits about this long
QUICK_STREAM_SECONDS = 2.0
FIRST_BYTE_FAST = 1.0  # seconds: "served at once"
FULL_WATCHERS = (100, 1000)
QUICK_WATCHERS = (100,)
FULL_POLL_SECONDS = 6.0
QUICK_POLL_SECONDS = 5.0
POLL_INTERVAL = 1.0  # seconds between one watcher's polls
READY_TIMEOUT = 30.0  # seconds for gunicorn to answer
DRAIN_TIMEOUT = 30.0  # seconds for gunicorn to notice closed stream clients


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children started later inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _ms(seconds: list[float], fraction: float) -> float | None:
    return round(percentile(seconds, fraction) * 1000, 2) if seconds else None


def _tree_cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for proc in [process, *process.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


# =====================================================================================
# a) idle sockets on one daphne
# =====================================================================================


@dataclass
class ClientReport:
    """What one client process saw in one phase."""

    ok: int = 0
    failed: int = 0
    retried: int = 0  # handshakes that failed once and succeeded on a second try, as a client reconnects
    seconds: list[float] = field(default_factory=list)  # per socket: connect + snapshot, or answer
    job_frames: int = 0
    job_frames_expected: int = 0
    errors: list[str] = field(default_factory=list)  # a sample


class SocketClient:
    """One client process: holds its share of the sockets and obeys the parent's phases."""

    def __init__(self, ws_url: str, origin: str, cookies: list[str], first_index: int, count: int) -> None:
        self.ws_url = ws_url
        self.origin = origin
        self.cookies = cookies  # a Cookie header per session
        self.indices = range(first_index, first_index + count)
        self.sockets: dict[int, ClientConnection] = {}

    def session_of(self, index: int) -> int:
        return index % len(self.cookies)

    async def connect_all(self) -> ClientReport:
        report = ClientReport()
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)

        async def attempt(index: int) -> ClientConnection:
            socket = await connect(
                f"{self.ws_url}/ws/jobs/",
                origin=self.origin,  # type: ignore[arg-type]
                additional_headers={"Cookie": self.cookies[self.session_of(index)]},
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=None,  # idle means idle: daphne's own pings are still answered
                compression=None,
            )
            frame = json.loads(await asyncio.wait_for(socket.recv(), CONNECT_TIMEOUT))
            if frame.get("type") != "snapshot":
                raise RuntimeError(f"first frame is {frame.get('type')!r}, not a snapshot")
            return socket

        async def one(index: int) -> None:
            async with gate:
                started = time.perf_counter()
                for tries in range(1, CONNECT_TRIES + 1):
                    try:
                        self.sockets[index] = await attempt(index)
                        break
                    except Exception as exc:
                        if tries == CONNECT_TRIES:
                            report.failed += 1
                            if len(report.errors) < 5:
                                report.errors.append(repr(exc))
                            return
                report.ok += 1
                report.retried += tries > 1
                report.seconds.append(time.perf_counter() - started)

        await asyncio.gather(*(one(index) for index in self.indices))
        return report

    async def check_all(self, job_id: str, job_session: int) -> ClientReport:
        """Every socket answers a frame; the sockets of the job's owner got its frame first."""
        report = ClientReport()
        gate = asyncio.Semaphore(ANSWERS_IN_FLIGHT)

        async def one(index: int, socket: ClientConnection) -> None:
            async with gate:
                try:
                    if self.session_of(index) == job_session:
                        report.job_frames_expected += 1
                        while True:
                            frame = json.loads(await asyncio.wait_for(socket.recv(), ANSWER_TIMEOUT))
                            if frame.get("type") == "job" and frame["job"]["id"] == job_id:
                                report.job_frames += 1
                                break
                    started = time.perf_counter()
                    await socket.send(json.dumps({"type": "ping"}))  # not a client frame: answered with an error
                    while True:
                        frame = json.loads(await asyncio.wait_for(socket.recv(), ANSWER_TIMEOUT))
                        if frame.get("type") == "error":
                            break
                except Exception as exc:
                    report.failed += 1
                    if len(report.errors) < 5:
                        report.errors.append(f"socket {index}: {exc!r}")
                    return
                report.ok += 1
                report.seconds.append(time.perf_counter() - started)

        await asyncio.gather(*(one(index, socket) for index, socket in self.sockets.items()))
        return report

    async def close_all(self) -> None:
        await asyncio.gather(*(socket.close() for socket in self.sockets.values()), return_exceptions=True)

    async def serve(self, pipe: Connection) -> None:
        loop = asyncio.get_running_loop()
        pipe.send(("connected", asdict(await self.connect_all())))
        while True:
            command, *args = await loop.run_in_executor(None, pipe.recv)
            if command == "check":
                pipe.send(("checked", asdict(await self.check_all(*args))))
            elif command == "close":
                await self.close_all()
                pipe.send(("closed", {}))
                return


def socket_client_process(
    pipe: Connection, ws_url: str, origin: str, cookies: list[str], first: int, count: int
) -> None:
    """Entry point of a client process (spawned: no state shared with the parent)."""
    try:
        raise_fd_limit()
        asyncio.run(SocketClient(ws_url, origin, cookies, first, count).serve(pipe))
    except BaseException:
        pipe.send(("error", {"traceback": traceback.format_exc()}))
        raise


def _merge(reports: list[dict[str, Any]]) -> ClientReport:
    merged = ClientReport()
    for raw in reports:
        part = ClientReport(**raw)
        merged.ok += part.ok
        merged.failed += part.failed
        merged.retried += part.retried
        merged.seconds += part.seconds
        merged.job_frames += part.job_frames
        merged.job_frames_expected += part.job_frames_expected
        merged.errors += part.errors[: 5 - len(merged.errors)]
    return merged


def _gather(pipes: list[Connection], expected: str) -> list[dict[str, Any]]:
    results = []
    deadline = time.monotonic() + PHASE_TIMEOUT
    for pipe in pipes:
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"a client process did not report {expected!r} within {PHASE_TIMEOUT:.0f} s")
        kind, body = pipe.recv()
        if kind == "error":
            raise RuntimeError(f"a client process failed:\n{body['traceback']}")
        if kind != expected:
            raise RuntimeError(f"a client process reported {kind!r}, expected {expected!r}")
        results.append(body)
    return results


async def _warm_up(ws_url: str, origin: str, cookie: str) -> None:
    sockets = [
        await connect(f"{ws_url}/ws/jobs/", origin=origin, additional_headers={"Cookie": cookie})  # type: ignore[arg-type]
        for _ in range(WARMUP_SOCKETS)
    ]
    for socket in sockets:
        await socket.recv()
        await socket.close()


def _rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


# What serves the sockets: (its WebSocket URL, the process whose memory and CPU are measured).
SocketServer = Callable[[Stack], AbstractContextManager[tuple[str, int]]]


@contextmanager
def stack_daphne(stack: Stack) -> Iterator[tuple[str, int]]:
    yield stack.ws_urls[0], stack.pids()["daphne0"]


def run_sockets(
    total: int,
    hold_seconds: float,
    extra_env: dict[str, str],
    *,
    asgi: str = "core.asgi:application",
    server: SocketServer = stack_daphne,
) -> dict[str, Any]:
    """`server` holds the sockets (the stack's daphne unless told otherwise:
    bench/alternatives/compare.py gives its other servers); its figures are in the `daphne_*` keys."""
    fd_limit = raise_fd_limit()
    if fd_limit < total + 1000:
        print(f"warning: RLIMIT_NOFILE is {fd_limit}; {total} sockets need about {total + 1000}", file=sys.stderr)
    with Stack(daphnes=1, workers=0, env=extra_env, asgi=asgi) as stack, server(stack) as (ws_url, server_pid):
        base_url = stack.base_urls[0]
        daphne = psutil.Process(server_pid)
        sessions = [new_session(base_url) for _ in range(min(SESSIONS, total))]
        cookies = ["; ".join(f"{k}={v}" for k, v in jar.items()) for jar, _ in sessions]
        asyncio.run(_warm_up(ws_url, base_url, cookies[0]))
        rss_before = _rss(daphne)

        context = multiprocessing.get_context("spawn")
        pipes: list[Connection] = []
        processes = []
        share, extra = divmod(total, CLIENT_PROCESSES)
        first = 0
        cpu_start = _tree_cpu_seconds(daphne)
        started = time.perf_counter()
        try:
            for number in range(CLIENT_PROCESSES):
                count = share + (1 if number < extra else 0)
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=socket_client_process,
                    args=(child_end, ws_url, base_url, cookies, first, count),
                    name=f"capacity-client-{number}",
                )
                process.start()
                pipes.append(parent_end)
                processes.append(process)
                first += count
            connected = _merge(_gather(pipes, "connected"))
            connect_wall = time.perf_counter() - started
            connect_cpu = _tree_cpu_seconds(daphne) - cpu_start
            rss_connected = _rss(daphne)
            print(f"  {connected.ok:,} sockets connected in {connect_wall:.1f} s; holding them {hold_seconds:.0f} s")

            cpu_before = daphne.cpu_times()
            time.sleep(hold_seconds)  # the point of the test: sockets sit idle
            cpu_after = daphne.cpu_times()
            idle_cpu = (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system) / hold_seconds
            rss_held = _rss(daphne)

            jar, csrf = sessions[0]
            job_id = submit_job(base_url, jar, csrf, "sleep", {"steps": 1, "step_seconds": 0})
            for pipe in pipes:
                pipe.send(("check", job_id, 0))
            checked = _merge(_gather(pipes, "checked"))
            for pipe in pipes:
                pipe.send(("close",))
            _gather(pipes, "closed")
        finally:
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=5)
        result = {
            "part": "sockets",
            "daphne_processes": 1,
            "sockets_requested": total,
            "sockets_connected": connected.ok,
            "sockets_failed": connected.failed,
            "connects_retried": connected.retried,
            "connect_errors": connected.errors,
            "connect_seconds": round(connect_wall, 2),
            "connects_per_second": round(connected.ok / connect_wall, 1),
            "connect_p50_ms": _ms(connected.seconds, 0.5),
            "connect_p99_ms": _ms(connected.seconds, 0.99),
            "daphne_cpu_ms_per_connect": round(connect_cpu * 1000 / max(connected.ok, 1), 2),
            "hold_seconds": hold_seconds,
            "daphne_idle_cpu_percent": round(idle_cpu * 100, 1),
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_connected_mb": round(rss_connected / 2**20, 1),
            "rss_held_mb": round(rss_held / 2**20, 1),
            "kb_per_socket": round((rss_held - rss_before) / 1024 / max(connected.ok, 1), 1),
            "sockets_answering": checked.ok,
            "sockets_not_answering": checked.failed,
            "check_errors": checked.errors,
            "answer_p50_ms": _ms(checked.seconds, 0.5),
            "answer_p99_ms": _ms(checked.seconds, 0.99),
            "job_frames_received": checked.job_frames,
            "job_frames_expected": checked.job_frames_expected,
            "sessions": len(sessions),
            "fd_limit": fd_limit,
            "target_met": connected.ok >= FULL_SOCKETS and checked.ok == connected.ok,
        }
    return result


def print_sockets(result: dict[str, Any]) -> None:
    rows = [
        (
            "sockets connected / asked (retried)",
            f"{result['sockets_connected']:,} / {result['sockets_requested']:,} ({result['connects_retried']})",
        ),
        ("time to connect all", f"{result['connect_seconds']} s ({result['connects_per_second']}/s)"),
        ("connect + snapshot p50 / p99", f"{result['connect_p50_ms']} / {result['connect_p99_ms']} ms"),
        ("daphne CPU per connect", f"{result['daphne_cpu_ms_per_connect']} ms"),
        (
            "daphne RSS before / connected / held",
            f"{result['rss_before_mb']} / {result['rss_connected_mb']} / {result['rss_held_mb']} MB",
        ),
        ("KB per socket", f"{result['kb_per_socket']}"),
        (f"daphne CPU while idle {result['hold_seconds']:.0f} s", f"{result['daphne_idle_cpu_percent']} %"),
        ("sockets answering after the hold", f"{result['sockets_answering']:,} / {result['sockets_connected']:,}"),
        ("answer p50 / p99", f"{result['answer_p50_ms']} / {result['answer_p99_ms']} ms"),
        ("job frame on the owner's sockets", f"{result['job_frames_received']} / {result['job_frames_expected']}"),
    ]
    for label, value in rows:
        print(f"  {label:<40} {value}")
    for error in result["connect_errors"] + result["check_errors"]:
        print(f"  error: {error}")


# =====================================================================================
# b) event streams on a threaded WSGI server
# =====================================================================================


@contextmanager
def gunicorn(app: str, env: dict[str, str] | None = None, *, spawn: Stack | None = None) -> Iterator[str]:
    """gunicorn gthread with 1 worker serving `app` on loopback; yields its base URL."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", app,
        "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "1",
        "--threads", str(GUNICORN_THREADS), "--worker-connections", str(GUNICORN_WORKER_CONNECTIONS),
        "--keep-alive", str(GUNICORN_KEEPALIVE), "--log-level", "warning",
    ]  # fmt: skip
    if spawn is not None:
        process = spawn.spawn("gunicorn", command, env=env)  # the stack stops it with the rest
    else:
        process = subprocess.Popen(command, cwd=ROOT, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start with code {process.returncode}")
            try:
                httpx.get(f"{base_url}/", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not answer within {READY_TIMEOUT:.0f} s") from None
                time.sleep(0.1)  # a starting process, outside any event loop
        yield base_url
    finally:
        stop_process(process, "gunicorn")


class StreamStep:
    """`clients` streams opened at once and held until each got its first byte or the
    window closed: a stream being served keeps its thread busy for the whole step."""

    def __init__(self, port: int, clients: int, stream_seconds: float, window: float) -> None:
        self.port = port
        self.clients = clients
        self.path = f"/events?seconds={stream_seconds:g}"
        self.window = window
        self.first_bytes: list[float | None] = []
        self.resolved = asyncio.Event()  # every client has its first byte or gave up
        self.over = asyncio.Event()

    def _resolve(self, first_byte: float | None) -> None:
        self.first_bytes.append(first_byte)
        if len(self.first_bytes) == self.clients:
            self.resolved.set()

    async def _client(self, started: float) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self._resolve(None)
            return
        try:
            request = f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            remaining = self.window - (time.perf_counter() - started)
            try:
                data = await asyncio.wait_for(reader.read(1), max(remaining, 0.001))
            except TimeoutError:
                data = b""
            self._resolve(time.perf_counter() - started if data else None)
            await self.over.wait()
        finally:
            writer.close()

    async def run(self) -> list[float | None]:
        started = time.perf_counter()
        clients = [asyncio.create_task(self._client(started)) for _ in range(self.clients)]
        try:
            await asyncio.wait_for(self.resolved.wait(), self.window + 1.0)
        finally:
            self.over.set()
            await asyncio.gather(*clients, return_exceptions=True)
        return self.first_bytes


def _wait_drained(base_url: str) -> None:
    """Until no stream is served any more (closed clients are noticed at the next write)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/active", timeout=DRAIN_TIMEOUT).json()["active"] == 0:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)  # polling a server process, outside any event loop
    raise RuntimeError(f"gunicorn still served streams {DRAIN_TIMEOUT:.0f} s after their clients left")


def run_streams(steps: tuple[int, ...], stream_seconds: float) -> dict[str, Any]:
    window = stream_seconds + 2.0  # long enough for the first client past the threads to be served
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows = []
    with gunicorn("bench.wsgi_streams:app", env) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        for clients in steps:
            _wait_drained(base_url)
            times = asyncio.run(StreamStep(port, clients, stream_seconds, window).run())
            served = sorted(t for t in times if t is not None)
            past_threads = sorted((t if t is not None else float("inf")) for t in times)[GUNICORN_THREADS:]
            rows.append(
                {
                    "clients": clients,
                    "first_byte_within_1s": sum(1 for t in served if t <= FIRST_BYTE_FAST),
                    "first_byte_within_window": len(served),
                    "first_byte_p50_ms": _ms(served, 0.5),
                    "first_byte_max_ms": round(served[-1] * 1000, 1) if served else None,
                    "first_byte_of_client_past_threads_ms": (
                        round(past_threads[0] * 1000, 1) if past_threads and past_threads[0] != float("inf") else None
                    ),
                }
            )
    return {
        "part": "streams",
        "server": f"gunicorn gthread, 1 worker x {GUNICORN_THREADS} threads",
        "threads": GUNICORN_THREADS,
        "stream_seconds": stream_seconds,
        "window_seconds": window,
        "steps": rows,
    }


def print_streams(result: dict[str, Any]) -> None:
    print(f"  {result['server']}; each stream lasts {result['stream_seconds']:g} s; waiting up to "
          f"{result['window_seconds']:g} s for a first byte")  # fmt: skip
    print(f"  {'clients':>7} {'<=1 s':>6} {'in window':>9} {'p50 ms':>8} {'max ms':>8} {'client #33 ms':>13}")
    for row in result["steps"]:
        cells = [row["first_byte_p50_ms"], row["first_byte_max_ms"], row["first_byte_of_client_past_threads_ms"]]
        p50, high, past = ("-" if value is None else f"{value:.0f}" for value in cells)
        print(
            f"  {row['clients']:>7} {row['first_byte_within_1s']:>6} {row['first_byte_within_window']:>9} "
            f"{p50:>8} {high:>8} {past:>13}"
        )


# =====================================================================================
# c) polling the real Django API through the same server
# =====================================================================================


class Watcher:
    """One polling client on one keep-alive connection (reconnects when the server closes it)."""

    def __init__(self, port: int, request: bytes) -> None:
        self.port = port
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        length = next(
            (int(line.split(":", 1)[1]) for line in head.split("\r\n") if line.startswith("content-length:")), None
        )
        if length is None:
            await self.reader.read()  # no length: the body runs to the close
            self.close()
        else:
            await self.reader.readexactly(length)
            if "connection: close" in head:
                self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _poll(port: int, request: bytes, watchers: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures: list[str] = []
    started = time.perf_counter()
    stop_at = started + seconds

    async def watch(number: int) -> None:
        client = Watcher(port, request)
        due = started + POLL_INTERVAL * number / watchers  # spread over the first interval
        try:
            while due < stop_at:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent = time.perf_counter()
                try:
                    status = await asyncio.wait_for(client.get(), max(stop_at + 5 - sent, 0.1))
                    if status != 200:
                        raise RuntimeError(f"status {status}")
                    latencies.append(time.perf_counter() - sent)
                except Exception as exc:
                    client.close()
                    failures.append(repr(exc))
                due = max(due + POLL_INTERVAL, time.perf_counter())  # a late poll does not pile up
        finally:
            client.close()

    await asyncio.gather(*(watch(number) for number in range(watchers)))
    wall = time.perf_counter() - started
    return {"latencies": latencies, "failures": failures, "wall": wall}


def run_polling(watcher_counts: tuple[int, ...], seconds: float, extra_env: dict[str, str]) -> dict[str, Any]:
    raise_fd_limit()
    rows = []
    with Stack(daphnes=0, workers=0) as stack:
        env = {**stack.env, "DJANGO_SETTINGS_MODULE": "core.settings", "DEBUG": "false",
               "SECRET_KEY": uuid.uuid4().hex * 2, "LOG_LEVEL": "WARNING", **extra_env}  # fmt: skip
        with gunicorn("core.wsgi:application", env, spawn=stack) as base_url:
            server = psutil.Process(stack.pids()["gunicorn"])
            jar, csrf = new_session(base_url)
            job_id = submit_job(base_url, jar, csrf, "sleep", {"steps": 1, "step_seconds": 0})
            cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
            request = (
                f"GET /api/jobs/{job_id}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
                f"Cookie: {cookie}\r\n\r\n"
            ).encode()
            port = int(base_url.rsplit(":", 1)[1])
            for watchers in watcher_counts:
                cpu_before, client_before = _tree_cpu_seconds(server), time.process_time()
                outcome = asyncio.run(_poll(port, request, watchers, seconds))
                cpu = (_tree_cpu_seconds(server) - cpu_before) / outcome["wall"]
                client_cpu = (time.process_time() - client_before) / outcome["wall"]
                latencies = outcome["latencies"]
                rows.append(
                    {
                        "watchers": watchers,
                        "requests_per_second_needed": watchers / POLL_INTERVAL,
                        "requests_per_second_served": round(len(latencies) / outcome["wall"], 1),
                        "requests": len(latencies),
                        "failures": len(outcome["failures"]),
                        "failure_sample": outcome["failures"][:3],
                        "p50_ms": _ms(latencies, 0.5),
                        "p99_ms": _ms(latencies, 0.99),
                        "max_ms": _ms(latencies, 1.0),
                        "gunicorn_cpu_percent": round(cpu * 100, 1),
                        "cpu_ms_per_request": round(cpu * outcome["wall"] * 1000 / max(len(latencies), 1), 2),
                        "load_generator_cpu_percent": round(client_cpu * 100, 1),
                        "seconds": round(outcome["wall"], 1),
                    }
                )
    return {
        "part": "polling",
        "server": f"gunicorn gthread, 1 worker x {GUNICORN_THREADS} threads, core.wsgi (DEBUG false, SQLite)",
        "path": "/api/jobs/<id>/",
        "interval_seconds": POLL_INTERVAL,
        "steps": rows,
    }


def print_polling(result: dict[str, Any]) -> None:
    print(f"  {result['server']}; each watcher GETs {result['path']} every {result['interval_seconds']:g} s")
    print(f"  {'watchers':>8} {'req/s need':>10} {'req/s got':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'CPU %':>6} {'CPU ms/req':>10} {'failed':>6}")  # fmt: skip
    for row in result["steps"]:
        print(
            f"  {row['watchers']:>8} {row['requests_per_second_needed']:>10.0f} "
            f"{row['requests_per_second_served']:>9.1f} "
            f"{row['p50_ms']!s:>8} {row['p99_ms']!s:>8} {row['gunicorn_cpu_percent']:>6.1f} "
            f"{row['cpu_ms_per_request']:>10.2f} {row['failures']:>6}"
        )
    for row in result["steps"]:
        for failure in row["failure_sample"]:
            print(f"  failure ({row['watchers']} watchers): {failure}")


# =====================================================================================


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run: 1,000 sockets, 100 watchers")
    parser.add_argument("--sockets", type=int, help="idle sockets to open (default 10,000; 1,000 with --quick)")
    parser.add_argument("--parts", default="sockets,streams,polling", help="comma-separated parts to run")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for daphne and gunicorn"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    args = parser.parse_args()
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    unknown = parts - {"sockets", "streams", "polling"}
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}: choose from sockets, streams, polling")

    extra_env = dict(item.split("=", 1) for item in args.env)
    results: list[dict[str, Any]] = []
    if "sockets" in parts:
        total = args.sockets or (QUICK_SOCKETS if args.quick else FULL_SOCKETS)
        print(f"a) idle WebSockets on one daphne ({total:,} sockets)")
        result = run_sockets(total, QUICK_HOLD_SECONDS if args.quick else FULL_HOLD_SECONDS, extra_env)
        print_sockets(result)
        print(json.dumps(result))
        results.append(result)
    if "streams" in parts:
        print(f"b) event streams on gunicorn gthread ({GUNICORN_THREADS} threads)")
        if args.quick:
            result = run_streams(QUICK_STREAM_STEPS, QUICK_STREAM_SECONDS)
        else:
            result = run_streams(FULL_STREAM_STEPS, FULL_STREAM_SECONDS)
        print_streams(result)
        print(json.dumps(result))
        results.append(result)
    if "polling" in parts:
        print(f"c) polling at {POLL_INTERVAL:g} s through gunicorn gthread ({GUNICORN_THREADS} threads)")
        if args.quick:
            result = run_polling(QUICK_WATCHERS, QUICK_POLL_SECONDS, extra_env)
        else:
            result = run_polling(FULL_WATCHERS, FULL_POLL_SECONDS, extra_env)
        print_polling(result)
        print(json.dumps(result))
        results.append(result)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "capacity", "quick": args.quick, "results": results}, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
