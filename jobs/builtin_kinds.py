"""The job kinds jobstream ships: sleep, primes, report.

Each is a plain function of a reporter and keyword parameters; `register` declares
its parameters once (see jobs/kinds.py).
"""

from __future__ import annotations

import csv
import math
import random
import time
from datetime import date, timedelta
from typing import Any

from jobs.exceptions import JobError
from jobs.kinds import JobKind, Param, Reporter, register

# --- sleep -----------------------------------------------------------------------


def run_sleep(report: Reporter, *, steps: int, step_seconds: float, fail_at_step: int | None = None) -> dict[str, Any]:
    report(current=0, total=steps, message=f"starting {steps} steps")
    for step in range(1, steps + 1):
        if fail_at_step == step:
            raise JobError(f"Failed at step {step}, as asked by fail_at_step.")
        time.sleep(step_seconds)
        report(current=step, total=steps, message=f"step {step} of {steps}")
    return {"steps": steps, "seconds": round(steps * step_seconds, 3)}


register(
    JobKind(
        name="sleep",
        title="Sleep",
        description="Waits step_seconds, steps times, reporting after each step. "
        "Set fail_at_step to see how a failing job looks.",
        run=run_sleep,
        params=(
            Param("steps", "Steps", 1, 1000, default=10),
            Param("step_seconds", "Seconds per step", 0, 5, default=0.5, integer=False),
            Param(
                "fail_at_step",
                "Fail at step",
                1,
                1000,
                required=False,
                help="Optional: the step at which the job fails on purpose.",
            ),
        ),
        soft_time_limit=5400,  # 1000 steps x 5 s, with room to spare
        time_limit=5460,
    )
)

# --- primes ----------------------------------------------------------------------

PRIMES_SEGMENT = 1_000_000  # numbers per sieve segment: about 1 MB of memory, ~20 ms each


def _base_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return [n for n in range(2, limit + 1) if sieve[n]]


def run_primes(report: Reporter, *, limit: int) -> dict[str, Any]:
    """Counts primes below `limit` with a segmented sieve, one report per segment."""
    base = _base_primes(math.isqrt(limit) + 1)
    count = 0
    report(current=0, total=limit, message="sieving")
    for low in range(0, limit, PRIMES_SEGMENT):
        high = min(low + PRIMES_SEGMENT, limit)
        segment = bytearray([1]) * (high - low)
        for p in base:
            if p * p >= high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            segment[start - low :: p] = bytes(len(range(start, high, p)))
        for n in (0, 1):
            if low <= n < high:
                segment[n - low] = 0
        count += segment.count(1)
        report(current=high, total=limit, message=f"checked {high:,} numbers, {count:,} primes")
    return {"count": count, "limit": limit}


register(
    JobKind(
        name="primes",
        title="Count primes",
        description="Counts the primes below limit with a segmented sieve.",
        run=run_primes,
        params=(Param("limit", "Below", 2, 50_000_000, default=5_000_000),),
        soft_time_limit=600,
        time_limit=660,
    )
)

# --- report ----------------------------------------------------------------------

REPORT_REGIONS = ("North", "South", "East", "West", "Central")
REPORT_PRODUCTS = ("Widget", "Gadget", "Gizmo", "Doohickey", "Sprocket", "Flange")


def run_report(report: Reporter, *, rows: int) -> dict[str, Any]:
    """Writes `rows` rows of synthetic sales data as a CSV file, the job's result."""
    rng = random.Random(rows)  # the same parameters give the same file
    path = report.result_path("sales-report.csv")
    revenue = 0.0
    first_day = date(2026, 1, 1)
    report(current=0, total=rows, message="writing rows")
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["order_id", "date", "region", "product", "quantity", "unit_price", "total"])
        for row in range(1, rows + 1):
            quantity = rng.randint(1, 20)
            price = round(rng.uniform(2.0, 250.0), 2)
            total = round(quantity * price, 2)
            revenue += total
            writer.writerow(
                [
                    row,
                    (first_day + timedelta(days=rng.randrange(365))).isoformat(),
                    rng.choice(REPORT_REGIONS),
                    rng.choice(REPORT_PRODUCTS),
                    quantity,
                    f"{price:.2f}",
                    f"{total:.2f}",
                ]
            )
            if row % 1000 == 0 or row == rows:
                report(current=row, total=rows, message=f"wrote {row:,} of {rows:,} rows")
    return {"rows": rows, "revenue": round(revenue, 2), "bytes": path.stat().st_size}


register(
    JobKind(
        name="report",
        title="Sales report (CSV)",
        description="Generates a CSV of synthetic sales data to download.",
        run=run_report,
        params=(Param("rows", "Rows", 1, 1_000_000, default=100_000),),
        soft_time_limit=900,
        time_limit=960,
    )
)

# --- ticker (benchmarks only) ----------------------------------------------------


def run_ticker(report: Reporter, *, reports: int, rate_hz: float, phase: float = 0.0) -> dict[str, Any]:
    """Reports `reports` times at `rate_hz` on a fixed schedule (no drift): the load of
    the streaming benchmarks. Each frame's `updated_at` is its send time. `phase`
    shifts the schedule by that fraction of an interval, so jobs started together can
    tick apart, as independent jobs do."""
    interval = 1.0 / rate_hz
    started = time.monotonic() + phase * interval
    for tick in range(1, reports + 1):
        delay = started + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        report(current=tick, total=reports, message=f"tick {tick}")
    return {"reports": reports, "seconds": round(time.monotonic() - started, 3)}


def register_bench_kinds() -> None:
    register(
        JobKind(
            name="ticker",
            title="Ticker (benchmark)",
            description="Reports progress at a fixed rate; used by bench/.",
            run=run_ticker,
            params=(
                Param("reports", "Reports", 1, 100_000, default=100),
                Param("rate_hz", "Reports per second", 0.1, 1000, default=10, integer=False),
                Param("phase", "Phase (fraction of an interval)", 0, 1, default=0, integer=False),
            ),
            soft_time_limit=3600,
            time_limit=3660,
        )
    )
