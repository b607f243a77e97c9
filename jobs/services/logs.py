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
from django.db import transaction
from django.db.models import F

from jobs.logs import LogLevel
from jobs.models import Job, JobLogLine, JobState


@dataclass(frozen=True)
class PendingLine:
    t: datetime
    level: LogLevel
    text: str


@dataclass(frozen=True)
class AppendedBatch:
    """What a batch became: its kept lines (numbered), and the log's counts after it."""

    lines: list[JobLogLine]
    total: int
    dropped: int


def job_log_append(*, job_id: uuid.UUID, attempt: int, lines: list[PendingLine]) -> AppendedBatch | None:
    """Keeps a batch of a running job's lines; None when the row is no longer this run's
    (ended, or replaced after its worker was taken for lost): its lines are not kept."""
    if not lines:
        return None
    keep_max = settings.JOB_LOG_MAX_LINES
    skipped = max(0, len(lines) - keep_max)  # older than the last JOB_LOG_MAX_LINES of this very batch
    kept_lines = lines[skipped:]
    new_bytes = sum(len(line.text.encode()) for line in kept_lines)
    with transaction.atomic():
        claimed = Job.objects.filter(pk=job_id, state=JobState.RUNNING, attempts=attempt).update(
            log_total=F("log_total") + len(lines), log_bytes=F("log_bytes") + new_bytes
        )
        if not claimed:
            return None
        total, dropped = Job.objects.filter(pk=job_id).values_list("log_total", "log_dropped").get()
        first = total - len(kept_lines) + 1
        rows = [
            JobLogLine(job_id=job_id, n=first + index, t=line.t, level=line.level, text=line.text)
            for index, line in enumerate(kept_lines)
        ]
        JobLogLine.objects.bulk_create(rows)
        # Lines are dropped oldest first, so the kept ones are always those above `dropped`.
        cutoff = total - keep_max
        if cutoff > dropped:
            stale = JobLogLine.objects.filter(job_id=job_id, n__lte=cutoff)
            gone_bytes = sum(len(text.encode()) for text in stale.values_list("text", flat=True))
            stale.delete()
            dropped = cutoff
            Job.objects.filter(pk=job_id).update(log_dropped=dropped, log_bytes=F("log_bytes") - gone_bytes)
    return AppendedBatch(lines=rows, total=total, dropped=dropped)
