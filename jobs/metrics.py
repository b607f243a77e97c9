"""The figures of /metrics that come from the database (docs/contract.md#metrics): read at
scrape time from the Job table in one query (jobs/selectors.py `job_figures`), so every
web process answers the same, whichever one Prometheus asks.

- `jobstream_jobs_total{kind,state}`: jobs that reached a state. Every job was queued;
  `running` counts those a worker started (a job run again after its worker was lost
  counts once); a terminal state counts the jobs that ended in it.
- `jobstream_jobs{state}`: jobs queued and running now.
- `jobstream_queue_wait_seconds{kind}`: from submission to the (last) start, per job that started.
- `jobstream_run_seconds{kind,state}`: from the start to the end, per job that ended after starting.

Counters and histograms count the rows that exist: retention's purge lowers them, which
Prometheus reads as a counter reset (docs/deploy.md#metrics).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.kinds import kind_list
from jobs.models import TERMINAL_STATES, JobState
from jobs.selectors import DurationCounts, job_figures

# Seconds. A job waits from well under a second (a free worker) to an hour (a long line);
# it runs from a second to the 2 h hard limit of the longest kind (jobs/kinds.py).
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0)
LIVE_STATES = (JobState.QUEUED, JobState.RUNNING)  # what jobstream_jobs reports
TERMINAL_ORDER = tuple(state for state in JobState.values if state in TERMINAL_STATES)


def _buckets(bounds: Sequence[float], counts: DurationCounts) -> list[tuple[str, float]]:
    return [
        *((repr(float(bound)), at_most) for bound, at_most in zip(bounds, counts.at_most, strict=True)),
        ("+Inf", counts.count),
    ]


def _add(into: DurationCounts | None, counts: DurationCounts) -> DurationCounts:
    if into is None:
        return counts
    return DurationCounts(
        at_most=[a + b for a, b in zip(into.at_most, counts.at_most, strict=True)],
        count=into.count + counts.count,
        total=into.total + counts.total,
    )


class JobsCollector(Collector):
    """The database figures, read once per scrape."""

    def collect(self) -> Iterator[Metric]:
        rows = job_figures(wait_bounds=QUEUE_WAIT_BUCKETS, run_bounds=RUN_BUCKETS)
        # Every registered kind has its series from the start (at 0), so a rate over the
        # first job of a kind sees it appear rather than a series born with it.
        kinds = sorted({kind.name for kind in kind_list()} | {row.kind for row in rows})
        reached: dict[tuple[str, str], int] = {(kind, state): 0 for kind in kinds for state in JobState.values}
        now: dict[str, int] = dict.fromkeys(LIVE_STATES, 0)
        waits: dict[str, DurationCounts | None] = defaultdict(lambda: None)
        runs: dict[tuple[str, str], DurationCounts] = {}
        for row in rows:
            reached[(row.kind, JobState.QUEUED)] += row.jobs
            reached[(row.kind, JobState.RUNNING)] += row.started
            if row.state in TERMINAL_STATES:
                reached[(row.kind, row.state)] += row.jobs
                runs[(row.kind, row.state)] = row.run_time
            elif row.state in now:
                now[row.state] += row.jobs
            waits[row.kind] = _add(waits[row.kind], row.queue_wait)

        total = CounterMetricFamily(
            "jobstream_jobs", "Jobs that reached a state (every job was queued).", labels=["kind", "state"]
        )
        for (kind, state), count in reached.items():
            total.add_metric([kind, state], count)
        yield total

        gauge = GaugeMetricFamily("jobstream_jobs", "Jobs queued and running now.", labels=["state"])
        for state, count in now.items():
            gauge.add_metric([state], count)
        yield gauge

        empty_wait = DurationCounts(at_most=[0] * len(QUEUE_WAIT_BUCKETS), count=0, total=0.0)
        wait = HistogramMetricFamily(
            "jobstream_queue_wait_seconds", "From a job's submission to its start.", labels=["kind"]
        )
        for kind in kinds:
            counts = waits[kind] or empty_wait
            wait.add_metric([kind], _buckets(QUEUE_WAIT_BUCKETS, counts), sum_value=counts.total)
        yield wait

        empty_run = DurationCounts(at_most=[0] * len(RUN_BUCKETS), count=0, total=0.0)
        run = HistogramMetricFamily(
            "jobstream_run_seconds",
            "From a job's start to its end, by the state it ended in.",
            labels=["kind", "state"],
        )
        for kind in kinds:
            for state in TERMINAL_ORDER:
                counts = runs.get((kind, state), empty_run)
                run.add_metric([kind, state], _buckets(RUN_BUCKETS, counts), sum_value=counts.total)
        yield run
