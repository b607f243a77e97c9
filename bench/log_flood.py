"""Job logs under load (issue 14): one job writing 1,000 log lines a second beside 100 ticking jobs.

Two rounds in one run, each on a fresh stack (bench/stack.py: its own Redis, SQLite, one
daphne running bench.asgi, one Celery worker with a thread per job), PROGRESS_MAX_RATE at
its default of 10 (the log frames' limit):

  without  `tickers` `ticker` jobs at `rate` Hz (spread phases, as bench/fanout.py's
           default load), one watcher socket each on /ws/jobs/<id>/
  with     the same, plus one `log_flood` job (bench/kinds.py) writing `log_rate` lines a
           second (ten `report.log()` calls every 10 ms, and a `report()` each time), watched
           by `log_watchers` more sockets on /ws/jobs/<id>/

    .venv/bin/python bench/log_flood.py                  # 100 tickers @ 10 Hz, 1,000 lines/s, 20 log watchers, 15 s
    .venv/bin/python bench/log_flood.py --tickers 2 --log-watchers 2 --seconds 2   # a smoke run

As in bench/fanout.py the jobs wait queued while every socket opens (each gets the queued
snapshot, and its log backfill: one empty frame), then the worker starts and they all
start together; sockets close after their job's terminal frame.

Measured, per round:
- the ticking jobs: progress latency (client receive `time.time()` - the frame's
  `updated_at`) p50/p99/max over each job's ticks after its first second; frames lost
  (window seqs not received, bench/fanout.py's `analyse`); ticks the reporter coalesced
  (10 Hz ticks against a limit of 10 frames/s: a tick less than 100 ms after the previous
  frame, its sleep having overslept less, waits for the next tick);
- the log job, per watcher: live log frames a second (over the job's run, and the most in
  any 1 s of receive times), lines a second delivered, lines lost (1..total not received)
  and duplicated, lines out of order, log frames after the terminal frame, lines per frame
  and the largest frame (the contract: at most 64 KiB); the newest and
  the oldest line of each frame from its `t` (the kind's `report.log()`) to the receive
  (the flusher's 100 ms wait included);
- CPU seconds of daphne, the worker, the clients and Redis from the worker's start to the
  last socket's close (psutil, sampled every 50 ms, bench/phases.py).

Bounded: sockets close at nominal + DEADLINE_SLACK, or GRACE_SECONDS after the API shows
every job terminal. Prints each round, a side-by-side table and one JSON line, and writes
the figures to --out (default bench/results/log_flood.json). Everything it started is
stopped by its PID on the way out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.fanout import (  # noqa: E402
    BENCH_ASGI,
    GRACE_SECONDS,
    POLL_AFTER,
    SAMPLE_SECONDS,
    analyse,
    client_count,
    fetch_jobs,
    start_worker,
    submit_tickers,
)
from bench.phases import CpuTimeline  # noqa: E402
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

TICKERS = 100
RATE_HZ = 10  # the ticking jobs' reports a second
LOG_RATE = 1_000  # the log job's lines a second (issue 14)
LOG_WATCHERS = 20
SECONDS = 15  # measured seconds per job, warm-up excluded
WARMUP = 1.0  # seconds of each job's ticks not counted, while the jobs start
PROGRESS_MAX_RATE = 10  # the default, said aloud: log frames a second per job at most
DEADLINE_SLACK = 30.0  # seconds past nominal before a round gives up on what is left
CONNECT_BUDGET = 60.0  # seconds for every socket to get its snapshot
LOG_FLOOD_KIND = "log_flood"  # bench/kinds.py; not imported here: it needs Django set up
DEFAULT_OUT = ROOT / "bench" / "results" / "log_flood.json"


@dataclass(frozen=True)
class Shape:
    tickers: int
    rate_hz: int
    log_rate: int
    log_watchers: int
    seconds: int
    warmup: float

    @property
    def warmup_ticks(self) -> int:
        return round(self.rate_hz * self.warmup)

    @property
    def reports(self) -> int:
        return self.rate_hz * self.seconds + self.warmup_ticks

    @property
    def job_seconds(self) -> float:
        return self.seconds + self.warmup

    @property
    def log_lines(self) -> int:
        return round(self.log_rate * self.job_seconds)


# --- the log watchers ----------------------------------------------------------------------


def _most_in_a_second(times: list[float]) -> int:
    """The most of `times` (sorted) inside any 1 s span."""
    return max((bisect_right(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


def log_figures(watchers: list[WatcherResult], *, total: int, ran: tuple[float, float] | None) -> dict[str, Any]:
    """The log job's delivery, per watcher and over all of them; `total` the lines it wrote
    (the API's count), `ran` its (started_at, finished_at)."""
    per_watcher: list[dict[str, Any]] = []
    newest: list[float] = []
    oldest: list[float] = []
    for watcher in watchers:
        tally = watcher.log_tally
        live = [frame for frame in watcher.logs[1:] if frame[3]]  # the first is the backfill
        times = sorted(frame[0] for frame in live)
        seconds = (ran[1] - ran[0]) if ran else (times[-1] - times[0] if len(times) > 1 else 0.0)
        received_in_range = tally.distinct if tally.lowest == 1 and (tally.highest or 0) <= total else None
        per_watcher.append(
            {
                "error": watcher.error,
                "backfill_lines": watcher.logs[0][3] if watcher.logs else None,
                "frames": len(live),
                "frames_per_s": round(len(live) / seconds, 2) if seconds else None,
                "most_frames_in_1s": _most_in_a_second(times),
                "lines_per_s": round(tally.distinct / seconds, 1) if seconds else None,
                "lines": tally.distinct,
                "lost": total - tally.distinct if received_in_range is not None else total,
                "duplicated": tally.duplicates,
                "out_of_order": tally.out_of_order,
                "after_terminal": tally.after_terminal,
                "got_terminal": watcher.terminal_at is not None,
            }
        )
        newest.extend(frame[6] for frame in live)
        oldest.extend(frame[7] for frame in live)

    def worst(key: str) -> Any:
        values = [row[key] for row in per_watcher if row[key] is not None]
        return max(values) if values else None

    def ms(values: list[float], fraction: float) -> float | None:
        return round(percentile(values, fraction), 1) if values else None

    rates = [row["frames_per_s"] for row in per_watcher if row["frames_per_s"] is not None]
    line_rates = [row["lines_per_s"] for row in per_watcher if row["lines_per_s"] is not None]
    return {
        "watchers": len(watchers),
        "failed_sockets": sum(1 for w in watchers if w.error is not None),
        "lines_written": total,
        "log_seconds": round(ran[1] - ran[0], 2) if ran else None,
        "frames_per_s_median": round(statistics.median(rates), 2) if rates else None,
        "frames_per_s_max": max(rates) if rates else None,
        "most_frames_in_1s": worst("most_frames_in_1s"),
        "lines_per_s_median": round(statistics.median(line_rates), 1) if line_rates else None,
        "lines_lost_max": worst("lost"),
        "lines_duplicated_max": worst("duplicated"),
        "lines_out_of_order_max": worst("out_of_order"),
        "frames_after_terminal": sum(row["after_terminal"] for row in per_watcher),
        "sockets_without_terminal": sum(1 for row in per_watcher if not row["got_terminal"]),
        "largest_frame_bytes": max((frame[8] for w in watchers for frame in w.logs), default=None),
        "lines_per_frame_median": round(
            statistics.median(frame[3] for w in watchers for frame in w.logs[1:] if frame[3]), 1
        )
        if any(frame[3] for w in watchers for frame in w.logs[1:])
        else None,
        "newest_line_p50_ms": ms(newest, 0.5),
        "newest_line_p99_ms": ms(newest, 0.99),
        "oldest_line_p50_ms": ms(oldest, 0.5),
        "oldest_line_p99_ms": ms(oldest, 0.99),
        "per_watcher": per_watcher,
    }


def _log_counts(base_url: str, cookies: dict[str, str], job_id: str) -> tuple[int, int]:
    """(total, dropped) of a job's log, from the API."""
    response = httpx.get(f"{base_url}/api/jobs/{job_id}/log/", params={"limit": 1}, cookies=cookies, timeout=30)
    response.raise_for_status()
    body = response.json()
    return int(body["total"]), int(body["dropped"])


def _ran(job: dict[str, Any] | None) -> tuple[float, float] | None:
    from datetime import datetime

    if not job or not job.get("started_at") or not job.get("finished_at"):
        return None
    return datetime.fromisoformat(job["started_at"]).timestamp(), datetime.fromisoformat(job["finished_at"]).timestamp()


# --- one round -------------------------------------------------------------------------------


def run_round(shape: Shape, *, with_log: bool) -> dict[str, Any]:
    env = {"PROGRESS_MAX_RATE": str(PROGRESS_MAX_RATE)}
    stop = new_stop_event()
    clients: list[ClientProcess] = []
    log_id: str | None = None
    with Stack(env=env, workers=0, daphnes=1, asgi=BENCH_ASGI) as stack:
        try:
            base_url, ws_url = stack.base_urls[0], stack.ws_urls[0]
            cookies, csrf = new_session(base_url)
            cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
            params = {"reports": shape.reports, "rate_hz": shape.rate_hz}
            ticker_ids = submit_tickers(base_url, cookies, csrf, shape.tickers, params, aligned=False)
            sockets = list(ticker_ids)
            if with_log:
                log_params = {"lines": shape.log_lines, "rate_hz": shape.log_rate}
                log_id = submit_job(base_url, cookies, csrf, LOG_FLOOD_KIND, log_params)
                sockets += [log_id] * shape.log_watchers
            processes = client_count(len(sockets))
            clients = [ClientProcess(stop) for _ in range(processes)]
            for client in clients:
                client.wait_ready()
            submitted = time.time()
            assert stack.redis is not None
            timeline = CpuTimeline(
                {
                    "daphne": [stack.pids()["daphne0"]],
                    "clients": [client.process.pid for client in clients if client.process.pid is not None],
                    "redis": [stack.redis.process.pid],
                }
            )
            timeline.start()
            deadline = submitted + CONNECT_BUDGET + shape.job_seconds + DEADLINE_SLACK + GRACE_SECONDS
            for index, client in enumerate(clients):
                plan = ClientPlan(
                    ws_url=ws_url, origin=base_url, cookie=cookie, job_ids=sockets[index::processes], deadline=deadline
                )
                client.start(plan)
            while not all(client.poll_opened() for client in clients) and time.time() < submitted + CONNECT_BUDGET:
                time.sleep(SAMPLE_SECONDS / 5)  # plain sync loop: no event loop here
            opened = time.time()

            jobs = len(ticker_ids) + (1 if with_log else 0)
            start_worker(stack, jobs, aligned=False)
            timeline.add("worker", [stack.pids()["worker0"]])
            released = time.time()
            stop_at = released + shape.job_seconds + DEADLINE_SLACK
            next_poll = released + shape.job_seconds + POLL_AFTER
            job_set = {*ticker_ids, *([log_id] if log_id else [])}
            all_terminal = False
            while not all(client.poll_result() for client in clients):
                now = time.time()
                if not all_terminal and now >= next_poll:
                    api_jobs = fetch_jobs(base_url, cookies)
                    all_terminal = all(api_jobs[job_id]["state"] in TERMINAL for job_id in job_set)
                    if all_terminal:
                        stop_at = min(stop_at, now + GRACE_SECONDS)
                    next_poll = now + 1.0
                if now >= stop_at:
                    stop.set()
                    break
                time.sleep(SAMPLE_SECONDS)
            for client in clients:
                if not client.poll_result(RESULT_TIMEOUT):
                    raise RuntimeError(f"client process {client.process.pid} handed back no results")
            timeline.stop()
            timed_out = stop.is_set() and not all_terminal
            api_jobs = {job_id: job for job_id, job in fetch_jobs(base_url, cookies).items() if job_id in job_set}
            log_counts = _log_counts(base_url, cookies, log_id) if log_id else None
        finally:
            stop.set()
            for client in clients:
                client.kill()

    watchers = [watcher for client in clients if client.result for watcher in client.result.watchers]
    ticker_set = set(ticker_ids)
    ticker_watchers = [w for w in watchers if w.job_id in ticker_set]
    delivery, latencies = analyse(ticker_watchers, api_jobs, shape.warmup_ticks, shape.reports - shape.warmup_ticks)
    closed = [w.closed_at for w in watchers if w.closed_at is not None]
    end = max(closed) if closed else time.time()
    # Every frame after the snapshots: job frames (running, ticks, terminal) and live log frames.
    received = [f[4] for w in watchers for f in w.frames[1:]] + [f[0] for w in watchers for f in w.logs[1:]]
    first_frame = min((t for t in received if t >= released), default=end)
    frames = sum(1 for t in received if t >= released)
    daphne_running = timeline.between("daphne", first_frame, end)
    figures: dict[str, Any] = {
        "round": "with" if with_log else "without",
        "tickers": shape.tickers,
        "rate_hz": shape.rate_hz,
        "seconds": shape.seconds,
        "watchers": len(sockets),
        "client_processes": processes,
        "connect_s": round(opened - submitted, 2),
        "jobs_finished": sum(1 for job in api_jobs.values() if job["state"] in TERMINAL),
        "jobs": len(job_set),
        "timed_out": timed_out,
        "ticks_p50_ms": round(statistics.median(latencies), 2) if latencies else None,
        "ticks_p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "ticks_max_ms": round(max(latencies), 2) if latencies else None,
        "frames_expected": delivery.expected,
        "frames_delivered": delivery.delivered,
        "frames_lost": delivery.expected - delivery.delivered,
        "reporter_coalesced": delivery.reporter_coalesced,
        "out_of_order": delivery.out_of_order,
        "failed_sockets": delivery.failed_sockets,
        "window_s": round(end - released, 2),
        **{f"{group}_cpu_s": round(timeline.between(group, released, end), 2) for group in timeline.samples},
        "boot_s": round(first_frame - released, 2),  # the worker imports and connects; no frame yet
        "boot_cpu_s": {group: round(timeline.between(group, released, first_frame), 2) for group in timeline.samples},
        "frames_received": frames,
        "daphne_us_per_frame": round(daphne_running * 1e6 / frames, 1) if frames else None,
    }
    if log_id is not None and log_counts is not None:
        total, dropped = log_counts
        log_watchers = [w for w in watchers if w.job_id == log_id]
        figures["log"] = {
            **log_figures(log_watchers, total=total, ran=_ran(api_jobs.get(log_id))),
            "dropped_from_database": dropped,
            "state": api_jobs[log_id]["state"] if log_id in api_jobs else None,
        }
    return figures


# --- output ----------------------------------------------------------------------------------


def _fmt(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(figure, one cell per round) for the side-by-side table."""

    def each(get: Any) -> list[str]:
        return [get(run) for run in runs]

    def log(key: str) -> Any:
        return lambda run: _fmt(run["log"][key]) if "log" in run else "n/a"

    return [
        ("ticking jobs: progress p50 / p99 / max ms", each(
            lambda r: f"{_fmt(r['ticks_p50_ms'])} / {_fmt(r['ticks_p99_ms'])} / {_fmt(r['ticks_max_ms'])}")),
        ("ticking jobs: frames lost / expected", each(
            lambda r: f"{_fmt(r['frames_lost'])} / {_fmt(r['frames_expected'])}")),
        ("ticking jobs: ticks coalesced by the reporter", each(lambda r: _fmt(r["reporter_coalesced"]))),
        ("log job: lines written (kept in the database: the last 10,000)", each(log("lines_written"))),
        ("log job: log frames/s per watcher, median / highest", each(
            lambda r: f"{_fmt(r['log']['frames_per_s_median'])} / {_fmt(r['log']['frames_per_s_max'])}"
            if "log" in r else "n/a")),
        ("log job: most log frames a watcher received in any 1 s", each(log("most_frames_in_1s"))),
        ("log job: lines/s delivered per watcher (median)", each(log("lines_per_s_median"))),
        ("log job: lines per log frame (median); the largest frame, bytes", each(
            lambda r: f"{_fmt(r['log']['lines_per_frame_median'])}; {_fmt(r['log']['largest_frame_bytes'])}"
            if "log" in r else "n/a")),
        ("log job: lines lost / duplicated, worst watcher", each(
            lambda r: f"{_fmt(r['log']['lines_lost_max'])} / {_fmt(r['log']['lines_duplicated_max'])}"
            if "log" in r else "n/a")),
        ("log job: lines out of order / log frames after the terminal frame", each(
            lambda r: f"{_fmt(r['log']['lines_out_of_order_max'])} / {_fmt(r['log']['frames_after_terminal'])}"
            if "log" in r else "n/a")),
        ("log job: a frame's newest line, written → received, p50 / p99 ms", each(
            lambda r: f"{_fmt(r['log']['newest_line_p50_ms'])} / {_fmt(r['log']['newest_line_p99_ms'])}"
            if "log" in r else "n/a")),
        ("log job: a frame's oldest line, written → received, p50 / p99 ms", each(
            lambda r: f"{_fmt(r['log']['oldest_line_p50_ms'])} / {_fmt(r['log']['oldest_line_p99_ms'])}"
            if "log" in r else "n/a")),
        ("CPU s daphne / worker / clients / redis", each(
            lambda r: f"{_fmt(r['daphne_cpu_s'])} / {_fmt(r['worker_cpu_s'])} / {_fmt(r['clients_cpu_s'])} / "
            f"{_fmt(r['redis_cpu_s'])}")),
        ("window: the worker's start to the last close, s (its boot, no frame yet)", each(
            lambda r: f"{_fmt(r['window_s'])} ({_fmt(r['boot_s'])})")),
        ("frames received (job and log); daphne µs of CPU per frame after the boot", each(
            lambda r: f"{_fmt(r['frames_received'])}; {_fmt(r['daphne_us_per_frame'])}")),
        ("jobs finished / sockets", each(lambda r: f"{r['jobs_finished']}/{r['jobs']} jobs, {r['watchers']} sockets")),
    ]  # fmt: skip


def print_table(runs: list[dict[str, Any]]) -> None:
    names = [f"{run['round']} the log job" for run in runs]
    print("\n| figure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(runs))
    for figure, cells in table_rows(runs):
        print(f"| {figure} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickers", type=int, default=TICKERS, help="ticking jobs, one watcher each")
    parser.add_argument("--rate", type=int, default=RATE_HZ, help="the ticking jobs' reports a second")
    parser.add_argument("--log-rate", type=int, default=LOG_RATE, help="the log job's lines a second")
    parser.add_argument("--log-watchers", type=int, default=LOG_WATCHERS, help="sockets on the log job")
    parser.add_argument("--seconds", type=int, default=SECONDS, help="measured seconds per job")
    parser.add_argument("--warmup", type=float, default=WARMUP, help="seconds of each job's ticks not counted")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file for the figures")
    args = parser.parse_args(argv)

    raise_fd_limit()
    shape = Shape(args.tickers, args.rate, args.log_rate, args.log_watchers, args.seconds, args.warmup)
    started = time.monotonic()
    runs = []
    for with_log in (False, True):
        figures = run_round(shape, with_log=with_log)
        summary = {k: v for k, v in figures.items() if k != "log"}
        if "log" in figures:
            summary["log"] = {k: v for k, v in figures["log"].items() if k != "per_watcher"}
        print(json.dumps(summary))
        runs.append(figures)
    print(
        f"\n{shape.tickers} ticker jobs @ {shape.rate_hz} Hz ({shape.reports} reports each, the first "
        f"{shape.warmup_ticks} not counted), one watcher each; with the log job: {shape.log_lines:,} lines at "
        f"{shape.log_rate:,}/s, {shape.log_watchers} watchers; PROGRESS_MAX_RATE={PROGRESS_MAX_RATE}"
    )
    print_table(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": vars(args) | {"out": str(args.out)}, "runs": runs}))
    print(f"figures in {args.out}; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
