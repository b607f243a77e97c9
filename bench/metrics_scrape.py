"""What a `/metrics` scrape costs: the database figures' one query (jobs/selectors.py
`job_figures`) and the whole exposition (core/metrics.py), over N jobs in a fresh
SQLite file (kinds, states and durations spread as a busy site's are).

    .venv/bin/python bench/metrics_scrape.py                 # 100,000 jobs
    .venv/bin/python bench/metrics_scrape.py --jobs 1000000

Prints the median and the slowest of --repeat scrapes, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 5000  # rows per bulk insert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="jobstream-metrics-bench-")
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "core.settings",
            "DEBUG": "true",
            "DATABASE_URL": f"sqlite:///{Path(folder) / 'bench.sqlite3'}",
        }
    )
    import django

    django.setup()
    from django.core.management import call_command
    from prometheus_client import generate_latest

    from core.metrics import registry
    from jobs.metrics import QUEUE_WAIT_BUCKETS, RUN_BUCKETS
    from jobs.models import Job, JobState
    from jobs.selectors import job_figures

    call_command("migrate", verbosity=0)
    rng = random.Random(7)
    kinds = ["sleep", "primes", "report", "csv_import", "ticker"]
    terminal = [JobState.SUCCEEDED] * 8 + [JobState.FAILED, JobState.CANCELLED]
    start = datetime(2026, 11, 1, tzinfo=UTC)
    made = time.perf_counter()
    for first in range(0, args.jobs, BATCH):
        rows = []
        for index in range(first, min(first + BATCH, args.jobs)):
            created = start + timedelta(seconds=index)
            state = (
                JobState.QUEUED
                if index % 500 == 0
                else (JobState.RUNNING if index % 500 == 1 else rng.choice(terminal))
            )
            started = None if state == JobState.QUEUED else created + timedelta(seconds=rng.expovariate(1.0))
            finished = (
                started + timedelta(seconds=rng.expovariate(0.05)) if started and state != JobState.RUNNING else None
            )
            rows.append(
                Job(
                    id=uuid.uuid4(),
                    kind=rng.choice(kinds),
                    owner_token=f"t{index % 1000}",
                    state=state,
                    attempts=0 if started is None else 1,
                    params={"steps": 10},
                    created_at=created,
                    started_at=started,
                    finished_at=finished,
                    updated_at=finished or started or created,
                )
            )
        Job.objects.bulk_create(rows)
    print(f"{args.jobs:,} jobs written in {time.perf_counter() - made:.1f} s ({folder})")

    def timed(fn: object) -> list[float]:
        runs = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            fn()  # type: ignore[operator]
            runs.append((time.perf_counter() - began) * 1000)
        return runs

    query = timed(lambda: job_figures(wait_bounds=QUEUE_WAIT_BUCKETS, run_bounds=RUN_BUCKETS))
    whole = timed(lambda: generate_latest(registry))
    size = len(generate_latest(registry))
    print(f"job_figures query : median {statistics.median(query):7.1f} ms, slowest {max(query):7.1f} ms")
    print(
        f"whole scrape      : median {statistics.median(whole):7.1f} ms, slowest {max(whole):7.1f} ms ({size:,} bytes)"
    )


if __name__ == "__main__":
    main()
