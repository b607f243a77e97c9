"""End-to-end fan-out latency, jobstream's publisher beside the naive pattern (issue 4, parts 1-2).

For each scenario (watchers, jobs, reports a second, seconds) and each mode it starts a
throwaway stack (bench/stack.py: own Redis, SQLite, one daphne, one Celery worker with
a thread per job), submits `jobs` ticker jobs from one anonymous session, and opens
watchers/jobs sockets on `/ws/jobs/<id>/` for each job, spread over a few client
processes (bench/ws_clients.py) so the client is not what is measured.

    .venv/bin/python bench/fanout.py                      # every scenario, both modes
    .venv/bin/python bench/fanout.py --quick              # watchers and jobs / 10
    .venv/bin/python bench/fanout.py --scenario 1000w/100j@10Hz --mode ours
    .venv/bin/python bench/fanout.py --scenario 1000w/100j@10Hz --aligned   # lockstep
    .venv/bin/python bench/fanout.py --mode ours --daphnes 2 --proxy --compare   # 2 daphnes behind nginx

Topology:
  direct    (default) the clients talk to the one daphne; with --daphnes N, client
            process i to daphne i mod N (daphne's CPU is the N processes' sum)
  --daphnes N --proxy   N daphnes behind Debian's nginx running deploy/nginx.conf (as
            tests/e2e/test_proxy.py runs it); every socket and request goes through
            nginx, whose CPU is counted beside the daphnes'.
  --compare also 1 daphne direct and, with --proxy, N daphnes direct, in the same run:
            what the second daphne buys, and what nginx costs, apart.

Load shapes:
  spread    (default) `ticker` jobs, job i's ticks i/jobs of an interval after job 0's,
            as independent jobs tick
  lockstep  (--aligned) `lockstep_ticker` jobs (bench/kinds.py): every job ticks on
            the clock's grid, at the same instant, as a batch of identical jobs does;
            daphne runs bench.asgi (the same application, with the benchmarks' kinds)
            and the worker imports bench.kinds. (`ticker` jobs of one phase do not
            tick together: each counts from its own start, and 100 starts take 0.7-0.9 s.)

Modes:
  ours   CHANNEL_LAYER=pubsub, JOBSTREAM_PUBLISHER unset (the defaults)
  naive  CHANNEL_LAYER=core, JOBSTREAM_PUBLISHER=bench.naive_publisher.send_frame: stock RedisChannelLayer and
         async_to_sync(group_send) per update, the usual pattern

Measured:
- The stack starts without a worker, so the jobs wait queued while every socket
  opens (each gets the queued snapshot); then the worker starts (a thread per job) and
  they all start together. Connect time and daphne's CPU during it are reported apart.
- latency = client receive `time.time()` - the frame's `job.updated_at` (the worker's
  `time.time()` at the report call; one machine, one clock), for progress frames in
  the measured window; the snapshot a socket gets at accept is never a sample.
- Warm-up rule: each job reports rate_hz * (seconds + WARMUP) times; its first
  rate_hz * WARMUP ticks (progress.current <= that) are warm-up while the jobs start
  and queues settle, and only later ticks count.
- expected frames: per socket, the job's window frames with a seq above the snapshot
  it got at accept (a socket that opened late was not there for earlier ones; such
  sockets are counted as "late"). The window's seqs come from the stream itself:
  every change takes the next seq, so the window is (seq of the last warm-up tick,
  terminal seq). delivered = distinct window seqs received; lost = the difference.
  A socket that failed to open lost its whole window.
- reporter coalesced: window ticks that never became a frame because the worker fell
  so far behind its schedule that two reports came within 1/PROGRESS_MAX_RATE.
- wall vs nominal: first job started -> last terminal frame received, against the
  time the scenario would take on schedule (the last job's start + reports / rate).
  Also the slowest job's (finished_at - started_at) / (reports / rate).
- CPU seconds of daphne, the worker (its start-up included), the clients and Redis
  over the window (the worker's start to the last socket's close), sampled every 50 ms
  (bench/phases.py); every frame the clients received in it (running frames, every
  tick, terminal frames), and daphne's CPU per such frame, job starts and the closes
  of every socket included; daphne's and the worker's largest resident set.
- Phases (bench/phases.py): the same CPU, frames and latency cut at moments the
  clients observe: boot, start (jobs starting), steady ticks, ends (terminal frames and
  every socket's close), with the connect before them; and the bursts of the steady
  ticks (how far apart the reports of one interval were made and received).

Each run is bounded: sockets close at nominal + DEADLINE_SLACK, or GRACE_SECONDS after
the API shows every job terminal, and whatever was not delivered by then is lost.
Prints a block per run, a side-by-side table, one JSON line per run, and writes every
run's figures with its raw latencies to --out (default bench/results/fanout.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.phases import CpuTimeline, print_phases, split  # noqa: E402
from bench.stack import Stack, new_session, percentile, submit_job  # noqa: E402
from bench.ws_clients import (  # noqa: E402
    RESULT_TIMEOUT,
    TERMINAL,
    ClientPlan,
    ClientProcess,
    WatcherResult,
    new_stop_event,
    raise_fd_limit,
)
from tests.nginx import NginxProcess  # noqa: E402

WARMUP = 1.0  # seconds of ticks per job not counted, while the sockets open
DEADLINE_SLACK = 30.0  # seconds past nominal before a run gives up on what is left (the run budget: 10 min)
POLL_AFTER = 10.0  # seconds past the jobs' nominal end before the API is asked whether they ended
GRACE_SECONDS = 10.0  # after the API shows every job terminal, for a backlog still draining to the sockets
WATCHERS_PER_CLIENT = 500  # sockets per client process (at most one process per core)
CONNECT_BUDGET = 120.0  # seconds for every socket to get its snapshot; then the jobs start anyway
SUBMIT_THREADS = 16  # concurrent POST /api/jobs/ while submitting
SAMPLE_SECONDS = 0.25  # how often CPU/RSS are sampled and the clients polled
API_PAGE_SIZE = 100  # the API's largest page
DEFAULT_OUT = ROOT / "bench" / "results" / "fanout.json"
BENCH_ASGI = "bench.asgi:application"  # the same application, with the benchmarks' kinds registered
LOCKSTEP_KIND = "lockstep_ticker"  # bench/kinds.py; not imported here: it needs Django set up

BASE_ENV = {
    "PROGRESS_MAX_RATE": "1000",  # above every tick rate: each tick is a frame
}
MODES: dict[str, dict[str, str]] = {
    "ours": {"CHANNEL_LAYER": "pubsub", "JOBSTREAM_PUBLISHER": ""},
    "naive": {"CHANNEL_LAYER": "core", "JOBSTREAM_PUBLISHER": "bench.naive_publisher.send_frame"},
}


@dataclass(frozen=True)
class Scenario:
    name: str
    watchers: int
    jobs: int
    rate_hz: int
    seconds: int  # measured seconds per job, warm-up excluded

    def quick(self) -> Scenario:
        watchers, jobs = max(1, self.watchers // 10), max(1, self.jobs // 10)
        return replace(self, name=f"{watchers}w/{jobs}j@{self.rate_hz}Hz", watchers=watchers, jobs=jobs)

    def warmup_ticks(self, warmup: float) -> int:
        return round(self.rate_hz * warmup)

    def reports(self, warmup: float) -> int:
        return self.rate_hz * self.seconds + self.warmup_ticks(warmup)

    def job_seconds(self, warmup: float) -> float:
        return self.reports(warmup) / self.rate_hz


SCENARIOS = [
    Scenario("100w/10j@20Hz", 100, 10, 20, 5),
    Scenario("1000w/100j@10Hz", 1000, 100, 10, 5),
    Scenario("5000w/50j@5Hz", 5000, 50, 5, 5),
]


# --- what serves the sockets ------------------------------------------------------------


@dataclass(frozen=True)
class Front:
    """What the watchers connect to, and whose CPU and memory count as the server's
    (in the figures' `daphne_*` keys; bench/alternatives/compare.py puts other servers there)."""

    name: str
    ws_url: str  # the watchers open <ws_url>/ws/jobs/<id>/ (or what `client` opens)
    pids: list[int]  # the serving processes; the largest resident set of any of them is reported
    client: Callable[[Any], ClientProcess] = ClientProcess  # a watcher process, given the stop event
    connect_budget: float = CONNECT_BUDGET  # seconds the jobs wait for every watcher's first frame
    others: dict[str, list[int]] = field(default_factory=dict)  # more processes whose CPU is reported
    base_url: str = ""  # where the API calls go (empty: the stack's first daphne)
    ws_urls: tuple[str, ...] = ()  # client process i opens ws_urls[i mod n] (empty: ws_url for all)


FrontFactory = Callable[["Stack"], contextlib.AbstractContextManager[Front]]


@contextlib.contextmanager
def daphne_front(stack: Stack) -> Iterator[Front]:
    """The stack's own daphne(s): jobstream as it ships; with several, client process i
    talks to daphne i mod N."""
    yield Front("daphne", stack.ws_urls[0], stack.daphne_pids(), ws_urls=tuple(stack.ws_urls))


NGINX_CONNECTIONS = 16384  # per nginx worker: a proxied socket holds two


@contextlib.contextmanager
def nginx_front(stack: Stack) -> Iterator[Front]:
    """The stack's daphnes behind Debian's nginx running deploy/nginx.conf: every socket
    and API call goes through it; its CPU is counted apart (`nginx`)."""
    workdir = stack.workdir / "nginx"
    workdir.mkdir()
    nginx = NginxProcess(
        upstreams=[url.removeprefix("http://") for url in stack.base_urls],
        media_root=stack.workdir / "media",
        workdir=workdir,
        worker_connections=NGINX_CONNECTIONS,
    )
    nginx.start()
    try:
        yield Front("daphne", nginx.ws_url, stack.daphne_pids(), base_url=nginx.url, others={"nginx": nginx.pids()})
    finally:
        nginx.stop()


@dataclass(frozen=True)
class Topology:
    daphnes: int = 1
    proxy: bool = False

    @property
    def name(self) -> str:
        return f"{self.daphnes}d+nginx" if self.proxy else f"{self.daphnes}d"


DIRECT = Topology()


# --- process meters ----------------------------------------------------------------------


class RssMeter:
    """The largest resident set of a process while sampled (CPU comes from bench/phases.py's timeline)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.max_rss = 0

    def sample(self) -> None:
        with contextlib.suppress(psutil.NoSuchProcess):
            self.max_rss = max(self.max_rss, self.process.memory_info().rss)


# --- the API -------------------------------------------------------------------------------


def fetch_jobs(base_url: str, cookies: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every job of the session, by id, from GET /api/jobs/."""
    jobs: dict[str, dict[str, Any]] = {}
    page = 1
    with httpx.Client(base_url=base_url, cookies=cookies, timeout=30) as client:
        while True:
            response = client.get("/api/jobs/", params={"page": page, "page_size": API_PAGE_SIZE})
            response.raise_for_status()
            body = response.json()
            jobs.update({str(job["id"]): job for job in body["results"]})
            if not body["next"]:
                return jobs
            page += 1


def _timestamp(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


# --- analysis ------------------------------------------------------------------------------


@dataclass
class Delivery:
    expected: int = 0
    delivered: int = 0
    late_sockets: int = 0  # sockets whose snapshot was already inside the window
    failed_sockets: int = 0
    out_of_order: int = 0  # frames with a seq not above the socket's previous one (a contract break)
    reporter_coalesced: int = 0
    unknown_windows: int = 0  # jobs whose window bounds had to be guessed (no frame at either edge)
    by_tick: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))  # tick -> latencies


def _job_window(
    watchers: list[WatcherResult], api_job: dict[str, Any] | None, warmup_ticks: int
) -> tuple[int, int, bool] | None:
    """(first, last) seq of a job's measured window and whether both ends were seen, or None."""
    first: int | None = None
    in_window: list[int] = []
    for watcher in watchers:
        for seq, current, state, _, _ in watcher.frames:
            if state != "running" or current is None:
                continue
            if current == warmup_ticks:
                first = seq + 1
            elif current == warmup_ticks + 1 and first is None:
                first = seq
            if current > warmup_ticks:
                in_window.append(seq)
    exact = first is not None
    if first is None:
        if not in_window:
            return None
        first = min(in_window)
    if api_job is not None and api_job["state"] in TERMINAL:
        last = int(api_job["seq"]) - 1  # the terminal change comes right after the last tick
    elif in_window:
        last, exact = max(in_window), False
    else:
        return None
    return first, last, exact


def analyse(
    watchers: list[WatcherResult], api_jobs: dict[str, dict[str, Any]], warmup_ticks: int, window_ticks: int
) -> tuple[Delivery, list[float]]:
    delivery = Delivery()
    latencies: list[float] = []
    by_job: dict[str, list[WatcherResult]] = defaultdict(list)
    for watcher in watchers:
        by_job[watcher.job_id].append(watcher)
    for job_id, job_watchers in by_job.items():
        window = _job_window(job_watchers, api_jobs.get(job_id), warmup_ticks)
        if window is None:  # nothing of the window reached anyone: all of it is lost
            delivery.expected += window_ticks * len(job_watchers)
            delivery.unknown_windows += 1
            delivery.failed_sockets += sum(1 for w in job_watchers if w.error is not None)
            continue
        first, last, exact = window
        delivery.unknown_windows += 0 if exact else 1
        delivery.reporter_coalesced += max(0, window_ticks - (last - first + 1))
        for watcher in job_watchers:
            if watcher.error is not None or not watcher.frames:
                delivery.failed_sockets += watcher.error is not None
                delivery.expected += last - first + 1
                continue
            snapshot_seq = watcher.frames[0][0]
            delivery.late_sockets += snapshot_seq >= first
            delivery.expected += max(0, last - max(first, snapshot_seq + 1) + 1)
            seen: set[int] = set()
            previous = snapshot_seq
            for seq, current, state, latency, _ in watcher.frames[1:]:
                if seq <= previous:
                    delivery.out_of_order += 1
                    continue
                previous = seq
                if state == "running" and current is not None and current > warmup_ticks and first <= seq <= last:
                    seen.add(seq)
                    latencies.append(latency)
                    delivery.by_tick[int(current)].append(latency)
            delivery.delivered += len(seen)
    return delivery, latencies


# --- one run ---------------------------------------------------------------------------------


def client_count(watchers: int) -> int:
    return max(1, min(os.cpu_count() or 1, math.ceil(watchers / WATCHERS_PER_CLIENT)))


def submit_tickers(
    base_url: str, cookies: dict[str, str], csrf: str, count: int, params: dict[str, Any], *, aligned: bool
) -> list[str]:
    """Job i ticks i/count of an interval after job 0 (independent jobs do not tick
    in step), or, with `aligned`, every job on the clock's grid, at the same instant
    (the burst case, bench/kinds.py)."""

    def one(index: int) -> str:
        if aligned:
            return submit_job(base_url, cookies, csrf, LOCKSTEP_KIND, params)
        return submit_job(base_url, cookies, csrf, "ticker", {**params, "phase": index / count})

    with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
        return list(pool.map(one, range(count)))


def start_worker(stack: Stack, concurrency: int, *, aligned: bool) -> None:
    """The worker, as Stack starts it (a thread per job); the queued jobs start once it is up."""
    celery = str(Path(sys.executable).parent / "celery")
    stack.spawn(
        "worker0",
        [
            celery, "-A", "celery_app", "worker", "-n", "bench0@%h",
            "-P", "threads", "-c", str(concurrency), "-E", "-l", "WARNING",
            "--include",
            "bench.kinds",
        ],
    )  # fmt: skip


def run_once(
    scenario: Scenario,
    mode: str,
    *,
    warmup: float,
    aligned: bool = False,
    asgi: str = BENCH_ASGI,
    front: FrontFactory | None = None,
    topology: Topology = DIRECT,
) -> dict[str, Any]:
    """One scenario in one mode on a fresh stack; the figures, raw latencies included.
    `front` serves the sockets (the stack's daphne(s), or nginx in front of them when
    `topology` says so, unless told otherwise)."""
    front = front or (nginx_front if topology.proxy else daphne_front)
    reports = scenario.reports(warmup)
    warmup_ticks = scenario.warmup_ticks(warmup)
    job_seconds = scenario.job_seconds(warmup)
    env = {**BASE_ENV, **MODES[mode]}
    clients: list[ClientProcess] = []
    stop = new_stop_event()
    # No worker yet: the jobs wait queued while every socket opens, then one starts.
    with Stack(env=env, workers=0, daphnes=topology.daphnes, asgi=asgi) as stack, front(stack) as served:
        try:
            processes = client_count(scenario.watchers)
            clients = [served.client(stop) for _ in range(processes)]
            for client in clients:
                client.wait_ready()
            base_url = served.base_url or stack.base_urls[0]
            ws_urls = served.ws_urls or (served.ws_url,)
            cookies, csrf = new_session(base_url)
            cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())

            submit_started = time.time()
            params = {"reports": reports, "rate_hz": scenario.rate_hz}
            job_ids = submit_tickers(base_url, cookies, csrf, scenario.jobs, params, aligned=aligned)
            submitted = time.time()
            sockets = [job_ids[index % scenario.jobs] for index in range(scenario.watchers)]
            client_deadline = submitted + served.connect_budget + job_seconds + DEADLINE_SLACK + GRACE_SECONDS
            assert stack.redis is not None
            timeline = CpuTimeline(
                {
                    "daphne": served.pids,
                    "clients": [client.process.pid for client in clients if client.process.pid is not None],
                    "redis": [stack.redis.process.pid],
                    **served.others,
                }
            )
            timeline.start()
            for index, client in enumerate(clients):
                client.start(
                    ClientPlan(
                        ws_url=ws_urls[index % len(ws_urls)],
                        origin=base_url,
                        cookie=cookie,
                        job_ids=sockets[index::processes],
                        deadline=client_deadline,
                    )
                )
            while (
                not all(client.poll_opened() for client in clients) and time.time() < submitted + served.connect_budget
            ):
                time.sleep(SAMPLE_SECONDS / 5)
            opened = time.time()

            start_worker(stack, scenario.jobs, aligned=aligned)
            worker_pid = stack.pids()["worker0"]
            timeline.add("worker", [worker_pid])
            server_meters = [RssMeter(pid) for pid in served.pids]
            worker_meter = RssMeter(worker_pid)
            meters = [*server_meters, worker_meter]
            released = time.time()
            deadline = released + job_seconds + DEADLINE_SLACK
            stop_at = deadline
            # The API is asked only once the jobs should long be over (the sockets
            # closing after their terminal frames ends the run before that): a
            # request for 100 jobs runs in daphne's thread pool and, while it holds
            # the GIL, every frame of the measured window waited on it.
            next_poll = released + job_seconds + POLL_AFTER
            all_terminal = False
            stopped: float | None = None  # when the run stopped the clients, if it had to
            job_set = set(job_ids)
            while not all(client.poll_result() for client in clients):
                for meter in meters:
                    meter.sample()
                now = time.time()
                if not all_terminal and now >= next_poll:
                    api_jobs = fetch_jobs(base_url, cookies)
                    all_terminal = all(api_jobs[job_id]["state"] in TERMINAL for job_id in job_set)
                    if all_terminal:
                        stop_at = min(stop_at, now + GRACE_SECONDS)
                    next_poll = now + 1.0
                if now >= stop_at:
                    stop.set()
                    stopped = now
                    break
                time.sleep(SAMPLE_SECONDS)  # plain sync loop: no event loop here
            for client in clients:
                if not client.poll_result(RESULT_TIMEOUT):
                    raise RuntimeError(f"client process {client.process.pid} handed back no results")
            for meter in meters:
                meter.sample()
            timeline.stop()
            finished = time.time()
            stopped = stopped or finished
            timed_out = stop.is_set() and not all_terminal
            api_jobs = {job_id: job for job_id, job in fetch_jobs(base_url, cookies).items() if job_id in job_set}
        finally:
            stop.set()
            for client in clients:
                client.kill()

    watchers = [watcher for client in clients if client.result for watcher in client.result.watchers]
    window_ticks = reports - warmup_ticks
    delivery, latencies = analyse(watchers, api_jobs, warmup_ticks, window_ticks)

    starts = [t for t in (_timestamp(job["started_at"]) for job in api_jobs.values()) if t is not None]
    terminal_received = [w.terminal_at for w in watchers if w.terminal_at is not None]
    first_start = min(starts) if starts else released
    nominal = (max(starts) if starts else released) + job_seconds - first_start
    without_terminal = sum(1 for w in watchers if w.terminal_at is None)
    wall = max(terminal_received) - first_start if terminal_received and not without_terminal else None
    job_ratios = [
        (ended - started) / job_seconds
        for job in api_jobs.values()
        if (started := _timestamp(job["started_at"])) is not None
        and (ended := _timestamp(job["finished_at"])) is not None
    ]
    phases = split(
        watchers,
        timeline,
        connect=(submitted, opened),
        started=released,
        stopped=stopped,
        interval=1 / scenario.rate_hz,
    )
    window = phases["rows"][-1]
    lost = delivery.expected - delivery.delivered

    def ms(value: float) -> float:
        return round(value, 2)

    return {
        "scenario": scenario.name,
        "mode": mode,
        "front": served.name,
        "topology": topology.name,
        "daphnes": topology.daphnes,
        "proxy": topology.proxy,
        "watchers": scenario.watchers,
        "jobs": scenario.jobs,
        "rate_hz": scenario.rate_hz,
        "aligned": aligned,
        "shape": "lockstep" if aligned else "spread",
        "seconds": scenario.seconds,
        "warmup_ticks": warmup_ticks,
        "reports_per_job": reports,
        "client_processes": len(clients),
        "submit_s": round(submitted - submit_started, 2),
        "connect_s": round(opened - submitted, 2),
        "connect_daphne_cpu_s": round(timeline.between("daphne", submitted, opened), 2),
        "connect_clients_cpu_s": round(timeline.between("clients", submitted, opened), 2),
        "failed_sockets": delivery.failed_sockets,
        "late_sockets": delivery.late_sockets,
        "connect_retries": sum(w.retries for w in watchers),
        "frames_expected": delivery.expected,
        "frames_delivered": delivery.delivered,
        "frames_lost": lost,
        "lost_pct": round(100 * lost / delivery.expected, 3) if delivery.expected else None,
        "reporter_coalesced": delivery.reporter_coalesced,
        "out_of_order": delivery.out_of_order,
        "unknown_windows": delivery.unknown_windows,
        "p50_ms": ms(statistics.median(latencies)) if latencies else None,
        "p95_ms": ms(percentile(latencies, 0.95)) if latencies else None,
        "p99_ms": ms(percentile(latencies, 0.99)) if latencies else None,
        "max_ms": ms(max(latencies)) if latencies else None,
        "wall_s": round(wall, 2) if wall is not None else None,
        "nominal_s": round(nominal, 2),
        "wall_over_pct": round(100 * (wall / nominal - 1), 1) if wall is not None else None,
        "slowest_job_ratio": round(max(job_ratios), 3) if job_ratios else None,
        "jobs_finished": sum(1 for job in api_jobs.values() if job["state"] in TERMINAL),
        "timed_out": timed_out,
        "sockets_without_terminal": without_terminal,
        "window_s": window["seconds"],
        "frames_sent": window["frames"],
        "daphne_cpu_s": round(window["cpu_s"]["daphne"], 2),
        "daphne_us_per_frame": window["daphne_us_per_frame"],
        "daphne_max_rss_mb": round(max(meter.max_rss for meter in server_meters) / 2**20, 1),
        "nginx_cpu_s": round(window["cpu_s"]["nginx"], 2) if "nginx" in window["cpu_s"] else None,
        "nginx_us_per_frame": (
            round(window["cpu_s"]["nginx"] * 1e6 / window["frames"], 1)
            if "nginx" in window["cpu_s"] and window["frames"]
            else None
        ),
        "worker_cpu_s": round(window["cpu_s"]["worker"], 2),
        "worker_max_rss_mb": round(worker_meter.max_rss / 2**20, 1),
        "redis_cpu_s": round(window["cpu_s"]["redis"], 2),
        "clients_cpu_s": round(window["cpu_s"]["clients"], 2),
        "others_cpu_s": {
            name: {
                "connect": round(timeline.between(name, submitted, opened), 2),
                "window": round(timeline.between(name, released, stopped), 2),
            }
            for name in served.others
        },
        "phases": phases,
        "close_codes": dict(Counter(str(w.close_code) for w in watchers)),
        "connect_errors": dict(Counter(w.error.split("(")[0] for w in watchers if w.error).most_common(3)),
        "p99_ms_by_tick": {
            tick: ms(percentile(values, 0.99)) for tick, values in sorted(delivery.by_tick.items()) if values
        },
        "latencies_ms": [round(value, 3) for value in latencies],
    }


# --- output ----------------------------------------------------------------------------------


def _fmt(value: object, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value}{suffix}"


def print_run(figures: dict[str, Any]) -> None:
    f = figures
    layer = "pubsub layer, loop publisher" if f["mode"] == "ours" else "core layer, async_to_sync per update"
    where = f"{f['daphnes']} daphne(s) behind nginx" if f["proxy"] else f"{f['daphnes']} daphne(s), direct"
    if f.get("front", "daphne") != "daphne":  # bench/alternatives/compare.py: another server holds the sockets
        where = f"the sockets on {f['front']}"
    print(f"\n== {f['scenario']} · {f['mode']} ({layer}) · {where} ==")
    shape = "lockstep: every job ticks at the same instant" if f["aligned"] else "spread: phases over the interval"
    print(
        f"{f['jobs']} jobs x {f['reports_per_job']} reports @ {f['rate_hz']} Hz, {shape}; "
        f"ticks 1-{f['warmup_ticks']} of each "
        f"job are warm-up, not counted; {f['watchers']} watchers in {f['client_processes']} client process(es)"
    )
    print(
        f"jobs queued, no worker yet, while the sockets opened: "
        f"{f['connect_s']} s (daphne {f['connect_daphne_cpu_s']} CPU s), {f['failed_sockets']} failed "
        f"({f['connect_retries']} handshakes retried), "
        f"{f['late_sockets']} opened after the window began; then the worker started"
    )
    print(
        f"frames: expected {f['frames_expected']}, delivered {f['frames_delivered']}, lost {f['frames_lost']} "
        f"({_fmt(f['lost_pct'], ' %')}); reporter coalesced {f['reporter_coalesced']} ticks; "
        f"out of order {f['out_of_order']}; socket close codes {f['close_codes']}"
        + (f"; connect errors {f['connect_errors']}" if f["connect_errors"] else "")
    )
    print(
        f"latency worker report -> client: p50 {_fmt(f['p50_ms'])} ms, p95 {_fmt(f['p95_ms'])} ms, "
        f"p99 {_fmt(f['p99_ms'])} ms, max {_fmt(f['max_ms'])} ms"
    )
    print(
        f"wall {_fmt(f['wall_s'], ' s')} vs nominal {f['nominal_s']} s ({_fmt(f['wall_over_pct'], ' %')} over); "
        f"slowest job {_fmt(f['slowest_job_ratio'], 'x')} its nominal; "
        f"{f['jobs_finished']}/{f['jobs']} finished{' (TIMED OUT)' if f['timed_out'] else ''}; "
        f"{f['sockets_without_terminal']} sockets stopped before their terminal frame"
    )
    print(
        f"CPU s over the {f['window_s']} s from the worker's start to the last socket's close: "
        f"daphne {f['daphne_cpu_s']} (max RSS {f['daphne_max_rss_mb']} MB), "
        + (f"nginx {f['nginx_cpu_s']} ({f['nginx_us_per_frame']} µs per frame), " if f["proxy"] else "")
        + f"worker {f['worker_cpu_s']} (max RSS {f['worker_max_rss_mb']} MB), redis {f['redis_cpu_s']}, "
        f"clients {f['clients_cpu_s']}; {f['frames_sent']} frames received, "
        f"{_fmt(f['daphne_us_per_frame'])} µs of daphne CPU per frame"
    )
    print_phases(f["phases"])


def print_table(runs: list[dict[str, Any]]) -> None:
    print(
        "\nside by side (latency in ms; lost = frames lost / expected; wall = % over nominal; CPU s and frames "
        "over the worker's start to the last close; µs = daphne CPU per frame, all daphnes; ngx µs = nginx's)"
    )
    header = (
        f"{'scenario':<18} {'shape':<8} {'mode':<6} {'where':<9} {'p50':>8} {'p95':>8} {'p99':>9} {'max':>9} "
        f"{'lost':>14} {'wall':>8} {'daphne':>7} {'nginx':>6} {'worker':>7} {'clients':>7} {'frames':>7} "
        f"{'µs':>6} {'ngx µs':>6}"
    )
    print(header)
    print("-" * len(header))
    by_scenario: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    by_topology: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for f in runs:
        topology = f.get("topology", DIRECT.name)
        by_scenario[(f["scenario"], f["shape"], topology)][f["mode"]] = f
        by_topology[(f["scenario"], f["shape"], f["mode"])][topology] = f
        lost = f"{f['frames_lost']}/{f['frames_expected']}"
        print(
            f"{f['scenario']:<18} {f['shape']:<8} {f['mode']:<6} {topology:<9} {_fmt(f['p50_ms']):>8} "
            f"{_fmt(f['p95_ms']):>8} {_fmt(f['p99_ms']):>9} {_fmt(f['max_ms']):>9} {lost:>14} "
            f"{_fmt(f['wall_over_pct'], '%'):>8} {f['daphne_cpu_s']:>7} {_fmt(f.get('nginx_cpu_s')):>6} "
            f"{f['worker_cpu_s']:>7} {f['clients_cpu_s']:>7} {f['frames_sent']:>7} "
            f"{_fmt(f['daphne_us_per_frame']):>6} {_fmt(f.get('nginx_us_per_frame')):>6}"
        )
    for (name, shape, topology), modes in by_scenario.items():
        ours, naive = modes.get("ours"), modes.get("naive")
        if ours and naive and ours["p99_ms"] and naive["p99_ms"]:
            print(f"{name} {shape} {topology}: p99 ours/naive = {ours['p99_ms'] / naive['p99_ms']:.3f}")
    for (name, shape, mode), topologies in by_topology.items():
        one = topologies.get(DIRECT.name)
        for topology, other in topologies.items():
            if one is None or other is one or not (one["p99_ms"] and other["p99_ms"]):
                continue
            print(
                f"{name} {shape} {mode}: {topology} against 1d: p99 x{other['p99_ms'] / one['p99_ms']:.2f}, "
                f"lost {other['frames_lost']} vs {one['frames_lost']}, CPU per frame (daphnes + nginx) "
                f"{(other['daphne_us_per_frame'] or 0) + (other.get('nginx_us_per_frame') or 0):.1f} µs "
                f"vs {one['daphne_us_per_frame']} µs"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="watchers and jobs divided by 10 (a smoke run)")
    parser.add_argument("--scenario", choices=[s.name for s in SCENARIOS], help="run only this scenario")
    parser.add_argument("--mode", choices=["ours", "naive", "both"], default="both")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds of ticks per job not counted")
    parser.add_argument(
        "--aligned", action="store_true", help="every job ticks at the same instant (bursts), not spread out"
    )
    parser.add_argument("--daphnes", type=int, default=1, help="daphne processes")
    parser.add_argument("--proxy", action="store_true", help="the clients go through nginx (deploy/nginx.conf)")
    parser.add_argument(
        "--compare", action="store_true", help="each scenario also on 1 daphne direct (and N direct) in the same run"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for figures and raw latencies")
    args = parser.parse_args(argv)
    if args.daphnes < 1:
        parser.error("--daphnes: at least 1")
    topologies = [Topology(daphnes=args.daphnes, proxy=args.proxy)]
    if args.compare:
        topologies = sorted({DIRECT, Topology(daphnes=args.daphnes), *topologies}, key=lambda t: (t.proxy, t.daphnes))

    raise_fd_limit()  # daphne inherits it: thousands of sockets
    scenarios = [s for s in SCENARIOS if args.scenario in (None, s.name)]
    if args.quick:
        scenarios = [s.quick() for s in scenarios]
    modes = ["ours", "naive"] if args.mode == "both" else [args.mode]
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    for scenario in scenarios:
        for mode in modes:
            for topology in topologies:
                figures = run_once(scenario, mode, warmup=args.warmup, aligned=args.aligned, topology=topology)
                print_run(figures)
                runs.append(figures)
    print_table(runs)
    for figures in runs:
        print(json.dumps({k: v for k, v in figures.items() if k not in ("latencies_ms", "p99_ms_by_tick", "phases")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(runs))
    print(f"raw latencies of {len(runs)} run(s) in {args.out}; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
