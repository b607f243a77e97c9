"""Worker CPU per progress frame, with as many reporting threads as a busy worker has.

bench/fanout.py runs 100 ticker jobs in one worker (a thread each, 10 reports a second)
and reports the worker's CPU for the whole run, start-up and job ends included. This
isolates the part every frame pays: `threads` threads, each with a real job row
started by `job_start`, drive the `ticker` kind through the same reporter and
`RunningJob` a Celery task uses, so every report is a frame built, published to
Redis and, once a second, written to the row. The process's CPU time over the run,
divided by the reports made, is the cost per frame.

Starts its own Redis (free port) and a throwaway SQLite database, and stops both.

    .venv/bin/python bench/worker_publish.py [--threads 100] [--rate 10] [--seconds 5] [--repeat 3]

Variants (--only picks one), so the cost can be taken apart:
  full      the whole path: the frame built, published and persisted
  no-send   the frame built, not sent (publisher.send_job_frame does nothing)
  no-emit   the reporter's emit does nothing: threads waking on schedule, no frame

Prints µs of CPU per report (best of --repeat), then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.stack import django_here  # noqa: E402

VARIANTS = ("full", "no-send", "no-emit")


def measure(variant: str, threads: int, rate: float, seconds: float) -> dict[str, Any]:
    from bench.kinds import TICKER, run_ticker  # registers the benchmarks' kinds
    from jobs.kinds import Reporter
    from jobs.owners import Owner
    from jobs.progress import Progress
    from jobs.services import RunningJob, job_create, job_start
    from notifications.publish import publisher

    owner = Owner(token="b" * 32)
    reports = max(1, round(rate * seconds))
    runs = []
    for _ in range(threads):
        job = job_create(owner=owner, kind=TICKER, params={"reports": reports, "rate_hz": rate})
        started = job_start(job_id=job.id, task_id=f"bench-{job.id}")
        assert started is not None
        runs.append(RunningJob(started))
    publisher.flush()

    send = publisher.send_job_frame
    if variant == "no-send":
        publisher.send_job_frame = lambda groups, message: None  # type: ignore[method-assign]

    def body(running: RunningJob, phase: float) -> None:
        emit = running.report if variant != "no-emit" else (lambda update: False)
        progress = Progress(emit=emit, max_rate=rate)
        run_ticker(cast(Reporter, progress.as_function()), reports=reports, rate_hz=rate, phase=phase)

    workers = [threading.Thread(target=body, args=(run, i / threads)) for i, run in enumerate(runs)]
    cpu, wall = time.process_time(), time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    publisher.flush()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    publisher.send_job_frame = send  # type: ignore[method-assign]
    total = threads * reports
    return {
        "variant": variant,
        "reports": total,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "us_per_report": round(cpu / total * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100, help="reporting threads (jobs)")
    parser.add_argument("--rate", type=float, default=10.0, help="reports a second per job")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measured run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the best one counts")
    parser.add_argument("--only", choices=VARIANTS, help="measure one variant")
    args = parser.parse_args()

    env = {
        "PROGRESS_MAX_RATE": str(args.rate),
        "JOB_QUOTA_ACTIVE": "0",
        "JOB_QUOTA_PER_MINUTE": "0",
        "JOB_QUOTA_RUNNING": "0",
    }
    with django_here(env):
        rows = []
        for variant in [args.only] if args.only else VARIANTS:
            best = min(
                (measure(variant, args.threads, args.rate, args.seconds) for _ in range(args.repeat)),
                key=lambda row: row["us_per_report"],
            )
            rows.append(best)
            print(
                f"{variant:8s} {best['us_per_report']:8.1f} µs of CPU per report "
                f"({best['reports']} reports, {best['cpu_s']} CPU s in {best['wall_s']} s)",
                flush=True,
            )
        print(json.dumps({"threads": args.threads, "rate_hz": args.rate, "rows": rows}))


if __name__ == "__main__":
    main()
