"""Keeping a running job's log lines: one batch in one transaction, fenced by the run.

`job_log_append` numbers a batch from the row's `log_total` (so numbering goes on across
attempts), inserts it, drops what passes JOB_LOG_MAX_LINES, and only then is the batch
published (jobs/log_writer.py): whatever a stream was sent is already in the database, so
a stream that reads the database after joining its group misses no line.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from jobs.logs import LogLevel
from jobs.models import Job, JobLogLine, JobState


@dataclass(frozen=True)
class PendingLine:
    t: datetime
    level: LogLevel
    text: str


@dataclass(frozen=True)
class KeptLine:
    """A line as kept: numbered."""

    n: int
    t: datetime
    level: LogLevel
    text: str


@dataclass(frozen=True)
class AppendedBatch:
    """What a batch became: its kept lines (numbered), and the log's counts after it."""

    lines: list[KeptLine]
    total: int
    dropped: int


def job_log_append(*, job_id: uuid.UUID, attempt: int, lines: list[PendingLine]) -> AppendedBatch | None:
    """Keeps a batch of a running job's lines; None when the row is no longer this run's
    (ended, or replaced after its worker was taken for lost): its lines are not kept.

    Two statements, no ORM round trip (the claim with its RETURNING, one executemany):
    this runs up to PROGRESS_MAX_RATE times a second per logging job, and the ORM's
    bulk_create spent about 45 µs of the worker's CPU per line where this spends a few.
    """
    if not lines:
        return None
    keep_max = settings.JOB_LOG_MAX_LINES
    skipped = max(0, len(lines) - keep_max)  # older than the last JOB_LOG_MAX_LINES of this very batch
    kept_lines = lines[skipped:]
    new_bytes = sum(len(line.text.encode()) for line in kept_lines)
    job_table, line_table = Job._meta.db_table, JobLogLine._meta.db_table
    pk = Job._meta.get_field("id").get_db_prep_value(job_id, connection)
    adapt_time = connection.ops.adapt_datetimefield_value
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {job_table} SET log_total = log_total + %s, log_bytes = log_bytes + %s "
            "WHERE id = %s AND state = %s AND attempts = %s RETURNING log_total, log_dropped",
            [len(lines), new_bytes, pk, JobState.RUNNING, attempt],
        )
        claimed = cursor.fetchone()
        if claimed is None:
            return None
        total, dropped = int(claimed[0]), int(claimed[1])
        first = total - len(kept_lines) + 1
        kept = [KeptLine(first + index, line.t, line.level, line.text) for index, line in enumerate(kept_lines)]
        cursor.executemany(
            f"INSERT INTO {line_table} (job_id, n, t, level, text) VALUES (%s, %s, %s, %s, %s)",
            [(pk, line.n, adapt_time(line.t), line.level, line.text) for line in kept],
        )
        # Lines are dropped oldest first, so the kept ones are always those above `dropped`.
        cutoff = total - keep_max
        if cutoff > dropped:
            stale = JobLogLine.objects.filter(job_id=job_id, n__lte=cutoff)
            gone_bytes = sum(len(text.encode()) for text in stale.values_list("text", flat=True))
            stale.delete()
            dropped = cutoff
            Job.objects.filter(pk=job_id).update(log_dropped=dropped, log_bytes=F("log_bytes") - gone_bytes)
    return AppendedBatch(lines=kept, total=total, dropped=dropped)
