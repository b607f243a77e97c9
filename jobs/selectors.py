"""Reads of jobs. Writes live in jobs/services/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Case, CharField, Count, F, FloatField, Func, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Cast, Concat
from django.db.models.lookups import LessThanOrEqual

from jobs.logs import BACKFILL_MAX_LINES, LOG_PAGE_MAX, LogLinePayload, LogPage, line_payload, line_text
from jobs.models import Job, JobLogLine, JobState
from jobs.owners import Owner

OWNER_SNAPSHOT_SIZE = 20  # docs/contract.md#websocket: the owner socket's snapshot holds the last 20 jobs


def parse_job_id(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def job_get_visible(*, owner: Owner | None, job_id: object) -> Job | None:
    """The job if this owner may see it (its owner, or one who may see every job); None otherwise."""
    parsed = parse_job_id(job_id)
    if parsed is None or owner is None:
        return None
    queryset = Job.objects.all() if owner.views_all else Job.objects.filter(owner.jobs_filter())
    return queryset.filter(pk=parsed).first()


def job_list_visible(*, owner: Owner) -> QuerySet[Job]:
    """Newest first: every job for one who may see them all, else the owner's own."""
    queryset = Job.objects.all() if owner.views_all else Job.objects.filter(owner.jobs_filter())
    return queryset.order_by("-created_at")


def job_list_recent_for_owner(*, owner: Owner, limit: int = OWNER_SNAPSHOT_SIZE) -> list[Job]:
    return list(Job.objects.filter(owner.jobs_filter()).order_by("-created_at")[:limit])


# --- the line (docs/contract.md#queue_position) -------------------------------------
#
# Under fair share (jobs/services/fair_share.py) an owner's first `free` queued jobs, free
# being JOB_QUOTA_RUNNING less the owner's running jobs, may start as soon as a worker is
# free: they are in the broker, oldest first. The others wait for one of their owner's
# running jobs to end and are then sent to the back of the broker's line. So before a
# job that may start, every job that may start submitted before it goes first; before a
# held job, every job that may start, and its owner's queued jobs ahead of it.

OWNER_KEY = Case(  # Job.owner_key in SQL
    When(owner_user__isnull=False, then=Concat(Value("u."), Cast("owner_user_id", CharField()))),
    default=Concat(Value("s."), "owner_token"),
    output_field=CharField(),
)


def _submitted_before(job: Job) -> Q:
    return Q(created_at__lt=job.created_at) | Q(created_at=job.created_at, pk__lt=job.pk)


def _count_by_owner(jobs: QuerySet[Job]) -> dict[str, int]:
    rows = jobs.order_by().annotate(owner=OWNER_KEY).values("owner").annotate(n=Count("pk"))
    return {row["owner"]: row["n"] for row in rows}


class _Line:
    """Each owner's free places now: the limit less the owner's running jobs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = _count_by_owner(Job.objects.filter(state=JobState.RUNNING))

    def free(self, owner: str) -> int:
        return max(0, self.limit - self.running.get(owner, 0))

    def may_start(self, queued: dict[str, int]) -> int:
        """Of these queued jobs (per owner, each owner's oldest), how many may start now."""
        return sum(min(self.free(owner), count) for owner, count in queued.items())


def job_queue_position(*, job: Job) -> int | None:
    """1-based place in line while queued (the jobs that will start before it, plus
    one), under the fair-share rule; None unless queued."""
    if job.state != JobState.QUEUED:
        return None
    queued = Job.objects.filter(state=JobState.QUEUED)
    limit = settings.JOB_QUOTA_RUNNING
    if not limit:
        return queued.filter(_submitted_before(job)).count() + 1
    line = _Line(limit)
    owner = job.owner_key
    before = _count_by_owner(queued.filter(_submitted_before(job)))
    ahead_of_mine = before.get(owner, 0)
    if ahead_of_mine < line.free(owner):
        return line.may_start(before) + 1
    others = {key: count for key, count in _count_by_owner(queued).items() if key != owner}
    return line.may_start(others) + ahead_of_mine + 1


def job_queue_positions(*, queued: list[Job]) -> dict[uuid.UUID, int]:
    """The places of `queued`: the oldest queued jobs, oldest first (the start of the
    line), as `job_queue_position` counts them, in two queries."""
    limit = settings.JOB_QUOTA_RUNNING
    if not limit:
        return {job.id: index + 1 for index, job in enumerate(queued)}
    line = _Line(limit)
    total = _count_by_owner(Job.objects.filter(state=JobState.QUEUED))
    may_start = line.may_start(total)
    seen: dict[str, int] = {}
    started_before = 0  # jobs that may start, among those before this one
    positions = {}
    for job in queued:
        owner = job.owner_key
        ahead_of_mine = seen.get(owner, 0)
        seen[owner] = ahead_of_mine + 1
        free = line.free(owner)
        if ahead_of_mine < free:
            started_before += 1
            positions[job.id] = started_before
        else:
            positions[job.id] = may_start - min(free, total.get(owner, 0)) + ahead_of_mine + 1
    return positions


STAFF_SNAPSHOT_SIZE = 500  # active jobs in the staff view's snapshot: a queue longer than this is an incident


def job_list_active(*, limit: int = STAFF_SNAPSHOT_SIZE) -> list[Job]:
    """Every queued and running job, oldest first (the order of the queue)."""
    active = Job.objects.filter(state__in=[JobState.QUEUED, JobState.RUNNING])
    return list(active.order_by("created_at")[:limit])


def job_count_by_state() -> dict[str, int]:
    """How many jobs are in each state (every state named, zeros included)."""
    counts = dict.fromkeys(JobState.values, 0)
    for row in Job.objects.values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    return counts


# --- figures for /metrics (jobs/metrics.py) ---------------------------------------


class SecondsBetween(Func):
    """`end - start` in seconds (a float), computed by the database: SQLite's julianday()
    is native, where Django's own datetime subtraction on SQLite calls into Python per row."""

    arity = 2
    output_field = FloatField()
    template = "CAST(EXTRACT(EPOCH FROM (%(expressions)s)) AS double precision)"
    arg_joiner = " - "

    def __init__(self, end: str, start: str) -> None:
        super().__init__(F(end), F(start))

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, template="((julianday(%(expressions)s)) * 86400.0)", arg_joiner=") - julianday("
        )


QUEUE_WAIT = SecondsBetween("started_at", "created_at")  # null until the job starts
RUN_TIME = SecondsBetween("finished_at", "started_at")  # null unless it started and ended


@dataclass(frozen=True)
class DurationCounts:
    """One histogram's figures: how many durations were at most each bound (cumulative,
    in the bounds' order), how many there were, and their sum in seconds."""

    at_most: list[int]
    count: int
    total: float


@dataclass(frozen=True)
class KindStateFigures:
    """The jobs of one kind now in one state."""

    kind: str
    state: str
    jobs: int
    started: int  # of them, those a worker started at least once
    queue_wait: DurationCounts  # created -> (last) start, of those that started
    run_time: DurationCounts  # start -> end, of those that started and ended


def _durations(row: dict[str, Any], name: str, bounds: Sequence[float]) -> DurationCounts:
    return DurationCounts(
        at_most=[row[f"{name}_le_{index}"] for index in range(len(bounds))],
        count=row[f"{name}_count"],
        total=float(row[f"{name}_sum"] or 0.0),
    )


def job_figures(*, wait_bounds: Sequence[float], run_bounds: Sequence[float]) -> list[KindStateFigures]:
    """Per kind and state: the job count and the queue-wait and run-time histograms, in
    one aggregate query over the whole table, so every web process reports the same.

    It reads every row (histograms over all time cannot use an index): linear in the
    table, 0.5-0.7 s per 100,000 jobs on SQLite on a shared 2-core machine
    (bench/metrics_scrape.py measures it),
    and retention (JOB_RETENTION_DAYS) keeps the table bounded."""
    aggregates: dict[str, Any] = {
        "jobs": Count("pk"),
        "started": Count("pk", filter=Q(attempts__gt=0)),
    }
    for name, duration, bounds in (("wait", QUEUE_WAIT, wait_bounds), ("run", RUN_TIME, run_bounds)):
        aggregates[f"{name}_count"] = Count(duration)
        aggregates[f"{name}_sum"] = Sum(duration)
        for index, bound in enumerate(bounds):
            aggregates[f"{name}_le_{index}"] = Count("pk", filter=LessThanOrEqual(duration, float(bound)))
    rows = Job.objects.order_by().values("kind", "state").annotate(**aggregates)
    return [
        KindStateFigures(
            kind=row["kind"],
            state=row["state"],
            jobs=row["jobs"],
            started=row["started"],
            queue_wait=_durations(row, "wait", wait_bounds),
            run_time=_durations(row, "run", run_bounds),
        )
        for row in rows
    ]


# --- logs ------------------------------------------------------------------------


def job_log_counts(*, job_id: uuid.UUID | str) -> tuple[int, int]:
    """(lines written, lines no longer kept) of a job's log."""
    row = Job.objects.filter(pk=job_id).values_list("log_total", "log_dropped").first()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def job_log_lines(*, job_id: uuid.UUID | str, after: int = 0, limit: int | None = None) -> list[LogLinePayload]:
    """Kept lines numbered above `after`, oldest first, at most `limit`."""
    lines = JobLogLine.objects.filter(job_id=job_id, n__gt=after).order_by("n")
    return [line_payload(line) for line in (lines if limit is None else lines[:limit])]


def job_log_page(*, job_id: uuid.UUID | str, after: int, limit: int) -> LogPage:
    """A page of GET /api/jobs/<id>/log/: `limit` kept lines above `after`, and where the next starts."""
    total, dropped = job_log_counts(job_id=job_id)
    lines = job_log_lines(job_id=job_id, after=after, limit=limit + 1)  # one more tells whether a page follows
    more = len(lines) > limit
    lines = lines[:limit]
    if lines:
        total = max(total, lines[-1]["n"])  # a batch written between the two reads
    return {"lines": lines, "total": total, "dropped": dropped, "next": lines[-1]["n"] if more else None}


def job_log_tail(
    *, job_id: uuid.UUID | str, after: int, limit: int = BACKFILL_MAX_LINES, counts: tuple[int, int] | None = None
) -> LogPage:
    """The last `limit` kept lines above `after` (a stream's backfill), oldest first.

    `counts` (written, dropped) from a row read just before spares a query, and a log with
    no kept line above `after` needs none: a socket opens without a trip for a job that
    logs nothing."""
    total, dropped = counts if counts is not None else job_log_counts(job_id=job_id)
    if counts is not None and total <= max(after, dropped):
        return {"lines": [], "total": total, "dropped": dropped, "next": None}
    newest = JobLogLine.objects.filter(job_id=job_id, n__gt=after).order_by("-n")[:limit]
    lines = [line_payload(line) for line in reversed(list(newest))]
    if lines:
        total = max(total, lines[-1]["n"])
    return {"lines": lines, "total": total, "dropped": dropped, "next": None}


def job_log_text(*, job_id: uuid.UUID | str, chunk: int = LOG_PAGE_MAX) -> Iterator[str]:
    """The whole kept log as `log.txt` lines, read `chunk` lines at a time."""
    after = 0
    while True:
        lines = job_log_lines(job_id=job_id, after=after, limit=chunk)
        if not lines:
            return
        yield "".join(line_text(line) for line in lines)
        after = lines[-1]["n"]
