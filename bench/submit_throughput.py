"""Submission throughput: jobs accepted per second through `POST /api/jobs/`.

For each database (SQLite, then PostgreSQL on 127.0.0.1:5432 if it answers) and for
1 and 2 daphne processes, starts a throwaway stack (bench/stack.py) with **no
worker**: jobs stay `queued`, so this measures acceptance only (validate, insert the
row, compute the queue position, publish the `queued` frame, and on commit send the
Celery task to the Redis broker; nothing consumes it). Then C concurrent clients
(C = 1, 8, 32), each with its own session (GET / for the cookies, then POSTs with
`X-CSRFToken`), post `sleep` jobs back to back for a fixed time; clients are spread
round-robin over the daphne processes.

    .venv/bin/python bench/submit_throughput.py            # ~90 s on a quiet 2-core machine
    .venv/bin/python bench/submit_throughput.py --quick    # ~60 s

Prints a table and one JSON line per run, and writes every run to --out
(default bench/results/submit.json). The load generator runs on the same machine
(one asyncio process, httpx): its CPU share is reported beside each run, because on
a 2-core machine it competes with daphne for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.stack import Stack, percentile  # noqa: E402

JOB = {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}}
CONCURRENCY = (1, 8, 32)
DAPHNES = (1, 2)
DURATION = 4.0  # seconds of posting per run: 12 runs and 2 stacks stay under 2 minutes
QUICK_DURATION = 2.0
REQUEST_TIMEOUT = 30.0  # seconds: a POST that waits longer counts as an error
POSTGRES_ADDRESS = ("127.0.0.1", 5432)
DEFAULT_OUT = ROOT / "bench" / "results" / "submit.json"
# Production settings, not the stack's DEBUG=true (which keeps every SQL query in memory);
# plain HTTP on loopback, so the cookies must not be Secure.
STACK_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "bench-submit-throughput-not-a-secret-0123456789abcdefghijklmnop",
    "SESSION_COOKIE_SECURE": "false",
    "CSRF_COOKIE_SECURE": "false",
    "LOG_LEVEL": "WARNING",
}


@dataclass
class RunResult:
    database: str
    daphnes: int
    clients: int
    seconds: float
    accepted: int
    errors: int
    jobs_per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_percent: float  # the load generator's CPU time / wall time
    first_error: str | None


@dataclass
class ClientTally:
    latencies_ms: list[float]
    accepted: int = 0
    errors: int = 0
    first_error: str | None = None


# --- one client ------------------------------------------------------------------


async def open_client(base_url: str) -> httpx.AsyncClient:
    """A visitor with a session and a CSRF cookie (the first GET / creates both)."""
    client = httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT)
    (await client.get("/")).raise_for_status()
    # One untimed POST: the first request of a process pays for lazy imports.
    (await post_job(client)).raise_for_status()
    return client


async def post_job(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/api/jobs/", json=JOB, headers={"X-CSRFToken": client.cookies["csrftoken"]})


async def post_until(client: httpx.AsyncClient, stop_at: float, tally: ClientTally) -> None:
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        try:
            response = await post_job(client)
        except httpx.HTTPError as exc:
            tally.errors += 1
            tally.first_error = tally.first_error or repr(exc)
            continue
        if response.status_code == 201:
            tally.accepted += 1
            tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        else:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{response.status_code} {response.text[:200]}"


# --- one run ---------------------------------------------------------------------


async def measure(base_urls: list[str], *, database: str, clients: int, duration: float) -> RunResult:
    opened = await asyncio.gather(*(open_client(base_urls[i % len(base_urls)]) for i in range(clients)))
    tallies = [ClientTally(latencies_ms=[]) for _ in opened]
    try:
        cpu_before, started = time.process_time(), time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(post_until(c, stop_at, t) for c, t in zip(opened, tallies, strict=True)))
        elapsed = time.perf_counter() - started  # includes the requests in flight at stop_at
        cpu = time.process_time() - cpu_before
    finally:
        await asyncio.gather(*(c.aclose() for c in opened))
    latencies = [ms for tally in tallies for ms in tally.latencies_ms]
    accepted = sum(t.accepted for t in tallies)
    return RunResult(
        database=database,
        daphnes=len(base_urls),
        clients=clients,
        seconds=round(elapsed, 2),
        accepted=accepted,
        errors=sum(t.errors for t in tallies),
        jobs_per_second=round(accepted / elapsed, 1),
        p50_ms=round(percentile(latencies, 0.50), 1) if latencies else float("nan"),
        p99_ms=round(percentile(latencies, 0.99), 1) if latencies else float("nan"),
        max_ms=round(max(latencies), 1) if latencies else float("nan"),
        client_cpu_percent=round(100 * cpu / elapsed, 0),
        first_error=next((t.first_error for t in tallies if t.first_error), None),
    )


# --- the whole benchmark ---------------------------------------------------------


def postgres_answers() -> bool:
    try:
        with socket.create_connection(POSTGRES_ADDRESS, timeout=1.0):
            return True
    except OSError:
        return False


def print_row(result: RunResult) -> None:
    print(
        f"{result.database:<9} {result.daphnes:>7} {result.clients:>7} {result.jobs_per_second:>8.1f} "
        f"{result.accepted:>8} {result.errors:>6} {result.p50_ms:>8.1f} {result.p99_ms:>8.1f} "
        f"{result.max_ms:>8.1f} {result.client_cpu_percent:>7.0f}%",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_DURATION:.0f} s per run instead of {DURATION:.0f}"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of posting per run")
    args = parser.parse_args()
    duration = args.duration or (QUICK_DURATION if args.quick else DURATION)

    databases = ["sqlite"]
    if postgres_answers():
        databases.append("postgres")
    else:
        print(f"PostgreSQL: nothing answers on {POSTGRES_ADDRESS[0]}:{POSTGRES_ADDRESS[1]}; skipping it.")

    print(
        f"POST /api/jobs/ acceptance, no worker (jobs stay queued; the task is still sent to the broker "
        f"on commit), {duration:.0f} s per run, {os.cpu_count()} CPUs, load generator on the same machine"
    )
    header = (
        f"{'database':<9} {'daphnes':>7} {'clients':>7} {'jobs/s':>8} {'accepted':>8} {'errors':>6} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'gen CPU':>8}"
    )
    print(header)
    print("-" * len(header))
    results: list[RunResult] = []
    started = time.monotonic()
    for database in databases:
        # One stack per database with the most daphnes; a run with fewer uses the first ones.
        with Stack(daphnes=max(DAPHNES), workers=0, database=database, env=STACK_ENV) as stack:
            for daphnes in DAPHNES:
                for clients in CONCURRENCY:
                    base_urls = stack.base_urls[:daphnes]
                    result = asyncio.run(measure(base_urls, database=database, clients=clients, duration=duration))
                    results.append(result)
                    print_row(result)
    json_lines = [json.dumps({"bench": "submit_throughput", **asdict(r)}) for r in results]
    print()
    print("\n".join(json_lines))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "bench": "submit_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "job": JOB,
        "duration_seconds": duration,
        "workers": 0,
        "note": "acceptance only: no worker runs, jobs stay queued; dispatch to the broker happens on commit",
        "wall_seconds": round(time.monotonic() - started, 1),
        "results": [asdict(r) for r in results],
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten to {args.out} in {document['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
