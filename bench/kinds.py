"""The job kinds of the benchmarks: `ticker` and `lockstep_ticker` (bench/fanout.py), and
`log_flood` (bench/log_flood.py).

`ticker` reports `reports` times at `rate_hz` on a schedule of its own (no drift), counted
from its job's start and shifted by `phase` (a fraction of an interval), so jobs started
together can tick apart, as independent jobs do: the spread load. Each frame's
`updated_at` is its send time.

The lockstep load (`--aligned`): jobs that tick at the same instant.

The `ticker` kind keeps a schedule of its own, counted from its job's start, so jobs
submitted together and given the same phase still tick apart: one worker starts 100
of them over 0.7-0.9 s here (each start is a transaction), and their ticks fall all
over the interval, much as with phases spread on purpose. `lockstep_ticker` ticks on
the machine's clock grid instead (every multiple of the interval since the epoch),
whenever its job started, so every running job reports at the same instant: the burst
a batch of identical jobs driven by one clock makes.

`log_flood` writes `lines` log lines at `rate_hz` a second, also on a schedule of its own
counted from its start: every LOG_FLOOD_TICK seconds it logs the lines due by then (one
`report.log()` call a line) and reports progress (coalesced, as every kind's report is).

The kinds are registered in the processes that need them by importing this module: the
worker with `celery ... worker --include bench.kinds`, daphne through
`bench.asgi:application`, the in-process benchmarks by importing it.
"""

from __future__ import annotations

import math
import time
from typing import Any

from jobs.kinds import JobKind, Param, Reporter, register

TICKER = "ticker"
KIND = "lockstep_ticker"
LOG_FLOOD = "log_flood"
LOG_FLOOD_TICK = 0.01  # seconds between the flood's wake-ups: 10 lines each at 1,000 lines/s
LOG_FLOOD_PAD = "x" * 40  # a line of about 70 characters, as a kind's "fetched page 3 of 40 (…)" is


def run_ticker(report: Reporter, *, reports: int, rate_hz: float, phase: float = 0.0) -> dict[str, Any]:
    """Reports `reports` times at `rate_hz`, `phase` of an interval after the job's start."""
    interval = 1.0 / rate_hz
    started = time.monotonic() + phase * interval
    for tick in range(1, reports + 1):
        delay = started + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        report(current=tick, total=reports, message=f"tick {tick}")
    return {"reports": reports, "seconds": round(time.monotonic() - started, 3)}


def run_lockstep_ticker(report: Reporter, *, reports: int, rate_hz: float) -> dict[str, Any]:
    """Reports `reports` times at `rate_hz`, at the multiples of the interval on
    `time.time()`, the first at least one interval after the start (no drift)."""
    interval = 1.0 / rate_hz
    first = math.ceil(time.time() / interval) + 1
    for tick in range(1, reports + 1):
        delay = (first + tick - 1) * interval - time.time()
        if delay > 0:
            time.sleep(delay)
        report(current=tick, total=reports, message=f"tick {tick}")
    return {"reports": reports}


def run_log_flood(report: Reporter, *, lines: int, rate_hz: float) -> dict[str, Any]:
    """Logs `lines` lines at `rate_hz` (line i due i / rate_hz s after the start), waking
    every LOG_FLOOD_TICK s for the lines due, and reports progress at each wake-up."""
    started = time.monotonic()
    written = 0
    while written < lines:
        due = min(lines, math.floor((time.monotonic() - started) * rate_hz))
        while written < due:
            written += 1
            report.log(f"line {written} of {lines} {LOG_FLOOD_PAD}")
        report(current=written, total=lines, message=f"{written} lines")
        if written < lines:
            time.sleep(LOG_FLOOD_TICK)
    return {"lines": lines, "seconds": round(time.monotonic() - started, 3)}


register(
    JobKind(
        name=KIND,
        title="Lockstep ticker (benchmark)",
        description="Reports progress at a fixed rate on the clock's grid; used by bench/fanout.py --aligned.",
        run=run_lockstep_ticker,
        params=(
            Param("reports", "Reports", 1, 100_000, default=100),
            Param("rate_hz", "Reports per second", 0.1, 1000, default=10, integer=False),
        ),
        soft_time_limit=3600,
    )
)


register(
    JobKind(
        name=TICKER,
        title="Ticker (benchmark)",
        description="Reports progress at a fixed rate; used by bench/.",
        run=run_ticker,
        params=(
            Param("reports", "Reports", 1, 100_000, default=100),
            Param("rate_hz", "Reports per second", 0.1, 1000, default=10, integer=False),
            Param("phase", "Phase (fraction of an interval)", 0, 1, default=0, integer=False),
        ),
        soft_time_limit=3600,
    )
)


register(
    JobKind(
        name=LOG_FLOOD,
        title="Log flood (benchmark)",
        description="Writes log lines at a fixed rate and reports progress; used by bench/log_flood.py.",
        run=run_log_flood,
        params=(
            Param("lines", "Lines", 1, 1_000_000, default=1000),
            Param("rate_hz", "Lines per second", 1, 100_000, default=1000, integer=False),
        ),
        soft_time_limit=3600,
    )
)
