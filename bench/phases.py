"""Where the time of a bench/fanout.py run goes: CPU, frames and latency per phase.

A run is cut in phases at moments the clients observe (every time here is
`time.time()`, the clock of the worker's `updated_at` and of the clients' receive times):

  boot    from the worker's start (its process spawned) until the first frame: the
          worker imports and connects, daphne has nothing to send
  start   then until every job's first report (its first tick) has reached every
          socket watching it: each job's start transaction and running frame, while
          the first jobs already tick
  steady  then until the first terminal change (the earliest terminal frame's
          `updated_at`): ticks only
  ends    then until the last socket closed: the terminal frames, the last ticks of the
          jobs still running, and every socket's close

and "window" is all of them together. CPU comes from a `CpuTimeline` (psutil's
`cpu_times` of each process every PHASE_SAMPLE_SECONDS), interpolated at the cuts;
frames are every frame the clients received after the worker started (running, ticks
including warm-up, terminal; never the snapshot sent at accept), each counted in the
phase it was received in, with its latency (receive time - `updated_at`).

For the steady ticks it also measures the bursts: per interval of the clock's grid
(multiples of 1 / rate since the epoch), how far apart the reports made in it were
(`updated_at`) and how far apart the sockets received them. When every job ticks at
the same instant, the last socket of a burst waits for daphne to write all the others
first.
"""

from __future__ import annotations

import bisect
import math
import statistics
import threading
import time
from collections import defaultdict
from typing import Any

import psutil

from bench.stack import percentile
from bench.ws_clients import TERMINAL, WatcherResult

PHASE_SAMPLE_SECONDS = 0.05  # a phase lasts from about half a second to several seconds
PHASES = ("boot", "start", "steady", "ends")
GROUPS = ("daphne", "nginx", "worker", "clients", "redis")  # the processes, in the order they are shown


class CpuTimeline:
    """user + system CPU seconds of named groups of processes, sampled by a thread of its own."""

    def __init__(self, pids: dict[str, list[int]], interval: float = PHASE_SAMPLE_SECONDS) -> None:
        self.interval = interval
        self._processes = {name: [psutil.Process(pid) for pid in group] for name, group in pids.items()}
        self._last: dict[int, float] = {}  # per pid, so a process that exits keeps what it used
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)

    def add(self, name: str, pids: list[int]) -> None:
        """Another group, sampled from now on (its CPU before counts as none)."""
        processes = [psutil.Process(pid) for pid in pids]
        self.samples[name] = [(time.time(), self._total(processes))]
        self._processes = {**self._processes, name: processes}  # a new dict: the thread may be iterating

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = time.time()
        for name, processes in self._processes.items():
            self.samples[name].append((now, self._total(processes)))

    def _total(self, processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                self._last[process.pid] = times.user + times.system
            except psutil.NoSuchProcess:
                pass
            total += self._last.get(process.pid, 0.0)
        return total

    def at(self, name: str, when: float) -> float:
        """CPU seconds of `name` at `when`, interpolated between the samples around it."""
        samples = self.samples[name]
        if not samples:
            return 0.0
        index = bisect.bisect_left(samples, (when, float("-inf")))
        if index == 0:
            return samples[0][1]
        if index == len(samples):
            return samples[-1][1]
        (t0, c0), (t1, c1) = samples[index - 1], samples[index]
        return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1

    def between(self, name: str, start: float, end: float) -> float:
        return max(0.0, self.at(name, end) - self.at(name, start))


def _ms(value: float) -> float:
    return round(value, 2)


def _latency_figures(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": _ms(statistics.median(latencies)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(max(latencies)),
    }


def _cuts(watchers: list[WatcherResult], started: float, stopped: float) -> tuple[list[float], dict[str, Any]]:
    """[started, end of boot, of start, of steady, of ends] and how each cut was found."""
    first_tick: dict[str, tuple[float, float]] = {}  # job -> (lowest tick seen, its last receive)
    first_terminal: float | None = None
    for watcher in watchers:
        for _, current, state, latency, received in watcher.frames[1:]:
            if state == "running" and current is not None:
                lowest = first_tick.get(watcher.job_id)
                if lowest is None or current < lowest[0]:
                    first_tick[watcher.job_id] = (current, received)
                elif current == lowest[0]:
                    first_tick[watcher.job_id] = (current, max(received, lowest[1]))
            elif state in TERMINAL:
                produced = received - latency / 1000
                first_terminal = produced if first_terminal is None else min(first_terminal, produced)
    closed = [w.closed_at for w in watchers if w.closed_at is not None]
    all_closed = len(closed) == len(watchers) and bool(closed)
    end = max(closed) if all_closed else stopped
    first_frame = min((frame[4] for w in watchers for frame in w.frames[1:] if frame[4] >= started), default=started)
    start_end = max((received for _, received in first_tick.values()), default=started)
    steady_end = first_terminal if first_terminal is not None else end
    boot_end = min(first_frame, end)
    start_end = min(max(start_end, boot_end), end)
    steady_end = min(max(steady_end, start_end), end)
    how = {
        "boot_ends_at": "the first frame after the worker's start",
        "start_ends_at": "every job's first tick at its last socket",
        "steady_ends_at": "the first terminal change" if first_terminal is not None else "no terminal frame: the end",
        "ends_end_at": "the last socket closed" if all_closed else "the run stopped the clients (not all closed)",
    }
    return [started, boot_end, start_end, steady_end, end], how


def _bursts(watchers: list[WatcherResult], start: float, end: float, interval: float) -> dict[str, Any]:
    """For the intervals of the clock's grid wholly inside [start, end): how far apart the
    reports made in one interval were, and how far apart their frames reached the sockets."""
    by_slot: defaultdict[int, list[tuple[float, float]]] = defaultdict(list)  # slot -> (updated_at, received)
    by_frame: defaultdict[tuple[str, int], list[float]] = defaultdict(list)  # (job, seq) -> receipts
    for watcher in watchers:
        for seq, current, state, latency, received in watcher.frames[1:]:
            if state == "running" and current is not None:
                made = received - latency / 1000
                by_slot[math.floor(made / interval)].append((made, received))
                by_frame[(watcher.job_id, seq)].append(received)
    reports: list[float] = []
    receipts: list[float] = []
    bursts: list[float] = []
    sizes: list[int] = []
    for frames in by_slot.values():
        produced = [p for p, _ in frames]
        receipt_times = [r for _, r in frames]
        if min(receipt_times) < start or max(receipt_times) >= end:
            continue
        reports.append((max(produced) - min(produced)) * 1000)
        receipts.append((max(receipt_times) - min(receipt_times)) * 1000)
        bursts.append((max(receipt_times) - min(produced)) * 1000)
        sizes.append(len(frames))
    per_frame = [
        (max(times) - min(times)) * 1000
        for times in by_frame.values()
        if len(times) > 1 and start <= min(times) and max(times) < end
    ]

    def median(values: list[float]) -> float | None:
        return _ms(statistics.median(values)) if values else None

    return {
        "intervals": len(sizes),
        "socket_frames_per_interval": round(statistics.median(sizes)) if sizes else None,
        "reports_spread_ms": median(reports),
        "receipts_spread_ms": median(receipts),
        "first_report_to_last_receipt_ms": median(bursts),
        "first_report_to_last_receipt_max_ms": _ms(max(bursts)) if bursts else None,
        "frame_sockets_spread_ms": median(per_frame),
    }


def split(
    watchers: list[WatcherResult],
    timeline: CpuTimeline,
    *,
    connect: tuple[float, float],
    started: float,
    stopped: float,
    interval: float,
) -> dict[str, Any]:
    """The phases of one run: a row each, one for the window, and before them one for
    the sockets' connect (the snapshots, while the jobs waited for a worker); the cuts
    and the bursts."""
    cuts, how = _cuts(watchers, started, stopped)
    cpu_of = {group: round(timeline.between(group, *connect), 3) for group in GROUPS if group in timeline.samples}
    snapshots = sum(1 for w in watchers if w.frames and connect[0] <= w.frames[0][4] <= connect[1])
    connect_row: dict[str, Any] = {
        "phase": "connect",
        "from_s": round(connect[0] - started, 3),
        "seconds": round(connect[1] - connect[0], 3),
        "cpu_s": cpu_of,
        "frames": snapshots,
        "daphne_us_per_frame": None,  # a handshake's cost, not a frame's: see connect_daphne_ms_per_socket
        "closes": 0,
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }
    received: list[tuple[float, float]] = sorted(
        (frame[4], frame[3]) for watcher in watchers for frame in watcher.frames[1:] if frame[4] >= started
    )
    times = [r for r, _ in received]
    closes = sorted(w.closed_at for w in watchers if w.closed_at is not None)
    rows: list[dict[str, Any]] = []
    spans = [*zip(PHASES, cuts, cuts[1:], strict=False), ("window", cuts[0], cuts[-1])]
    for name, start, end in spans:
        last = name in ("ends", "window")  # the last cut belongs to the phase that ends there
        lo = bisect.bisect_left(times, start)
        hi = bisect.bisect_right(times, end) if last else bisect.bisect_left(times, end)
        latencies = [latency for _, latency in received[lo:hi]]
        cpu = {group: round(timeline.between(group, start, end), 3) for group in GROUPS if group in timeline.samples}
        frames = hi - lo
        rows.append(
            {
                "phase": name,
                "from_s": round(start - started, 3),
                "seconds": round(end - start, 3),
                "cpu_s": cpu,
                "frames": frames,
                "daphne_us_per_frame": round(cpu["daphne"] * 1e6 / frames, 1) if frames else None,
                "closes": (bisect.bisect_right(closes, end) if last else bisect.bisect_left(closes, end))
                - bisect.bisect_left(closes, start),
                **_latency_figures(latencies),
            }
        )
    steady = rows[PHASES.index("steady")]
    per_interval = {
        group: round(cpu_s * 1000 * interval / steady["seconds"], 2) if steady["seconds"] else None
        for group, cpu_s in steady["cpu_s"].items()
    }
    return {
        "connect": {
            **connect_row,
            "sockets": len(watchers),
            "connect_daphne_ms_per_socket": round(cpu_of["daphne"] * 1000 / snapshots, 2) if snapshots else None,
        },
        "rows": rows,
        "cuts": how,
        "bursts": {**_bursts(watchers, cuts[2], cuts[3], interval), "steady_cpu_ms_per_interval": per_interval},
    }


def print_phases(phases: dict[str, Any]) -> None:
    groups = [group for group in GROUPS if group in phases["rows"][0]["cpu_s"]]
    header = (
        f"{'phase':<7} {'from s':>7} {'seconds':>8} "
        + " ".join(f"{group + ' CPU s':>13}" for group in groups)
        + f" {'frames':>8} {'µs/frame':>9} {'closes':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    print("phases (daphne µs of CPU per frame received; latency of the frames received in the phase):")
    print(header)
    for row in [phases["connect"], *phases["rows"]]:

        def cell(value: object, width: int) -> str:
            return f"{'n/a' if value is None else value:>{width}}"

        print(
            f"{row['phase']:<7} {row['from_s']:>7} {row['seconds']:>8} "
            + " ".join(cell(row["cpu_s"].get(group), 13) for group in groups)
            + f" {row['frames']:>8} {cell(row['daphne_us_per_frame'], 9)} {row['closes']:>7} "
            f"{cell(row['p50_ms'], 8)} {cell(row['p99_ms'], 8)} {cell(row['max_ms'], 8)}"
        )
    b = phases["bursts"]
    print(
        f"steady ticks, per interval of the clock ({b['intervals']} whole intervals, medians): "
        f"{b['socket_frames_per_interval']} socket frames; the reports made over {b['reports_spread_ms']} ms, "
        f"received over {b['receipts_spread_ms']} ms; first report to last receipt "
        f"{b['first_report_to_last_receipt_ms']} ms (max {b['first_report_to_last_receipt_max_ms']} ms); "
        f"one frame's first to last socket {b['frame_sockets_spread_ms']} ms; CPU ms per interval "
        + ", ".join(f"{group} {value}" for group, value in b["steady_cpu_ms_per_interval"].items())
    )
    c = phases["connect"]
    print(
        f"connect: {c['frames']} of {c['sockets']} snapshots, {c['connect_daphne_ms_per_socket']} ms of daphne CPU each"
    )
    print("cuts: " + "; ".join(f"{key.replace('_', ' ')} {value}" for key, value in phases["cuts"].items()))
