"""Storage quotas per owner: bytes of result files and job logs, and imported rows.

Two checks. At submit (`storage_quota_check`, in the creating transaction beside the
job quotas of jobs/quotas.py), an owner already at a quota gets QuotaExceeded, a 429.
While a job runs, the worker holds it to what is left (`result_budget_for`,
`import_budget_for`): a job that would pass a quota raises StorageQuotaExceeded, fails
with that message and keeps nothing (jobs/services/run.py removes its result files, the
import deletes its rows). Held bytes are summed from `Job.result_bytes`, written at each
finish, and `Job.log_bytes`, kept up to date as log lines are kept and dropped
(jobs/services/logs.py); imported rows are counted. Jobs running side by side each get
what was left when they started, so together they may pass a quota by at most one
budget each.

A limit of 0 turns a quota off; owners with `jobs.bypass_quotas` are exempt. Storage
frees as retention purges the owner's old jobs (jobs/services/retention.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import F, Min, Q, Sum
from django.utils import timezone

from jobs.exceptions import JobError
from jobs.kinds import size_text
from jobs.models import TERMINAL_STATES, ImportedContact, Job
from jobs.owners import Owner, owner_of_user
from jobs.quotas import QuotaExceeded

# When storage frees is when retention purges the owner's oldest held job; without
# retention nothing frees it by itself, so a client is told to come back in a day.
STORAGE_RETRY_AFTER_KEPT = 86_400  # seconds


class StorageQuotaExceeded(JobError):
    """A running job would pass a storage quota; its message is for users."""


# What counts in the result storage quota: a job's result files and its kept log lines.
HOLDS_RESULT_BYTES = Q(result_bytes__gt=0) | Q(log_bytes__gt=0)


def result_bytes_held(*, owner: Owner, exclude: Job | None = None) -> int:
    """Bytes of the owner's result files and job logs."""
    jobs = Job.objects.filter(owner.jobs_filter())
    if exclude is not None:
        jobs = jobs.exclude(pk=exclude.pk)
    return int(jobs.aggregate(held=Sum(F("result_bytes") + F("log_bytes")))["held"] or 0)


def imported_rows_held(*, owner: Owner, exclude: Job | None = None) -> int:
    jobs = Job.objects.filter(owner.jobs_filter())
    if exclude is not None:
        jobs = jobs.exclude(pk=exclude.pk)
    return ImportedContact.objects.filter(job__in=jobs.values("pk")).count()


# --- at submit ---------------------------------------------------------------------


def storage_quota_check(*, owner: Owner) -> None:
    """Raises QuotaExceeded when `owner` already holds a storage quota's worth."""
    if owner.bypasses_quotas:
        return
    bytes_limit = settings.JOB_QUOTA_RESULT_BYTES
    if bytes_limit:
        held = result_bytes_held(owner=owner)
        if held >= bytes_limit:
            raise QuotaExceeded(
                f"Your jobs' result files and logs take {size_text(held)}, at or over your result storage quota of "
                f"{size_text(bytes_limit)} (JOB_QUOTA_RESULT_BYTES); they free as old jobs are purged.",
                retry_after=_storage_retry_after(owner, HOLDS_RESULT_BYTES),
            )
    rows_limit = settings.JOB_QUOTA_IMPORT_ROWS
    if rows_limit:
        rows = imported_rows_held(owner=owner)
        if rows >= rows_limit:
            raise QuotaExceeded(
                f"Your imports hold {rows:,} rows, at or over your imported rows quota of {rows_limit:,} "
                "(JOB_QUOTA_IMPORT_ROWS); they free as old jobs are purged.",
                retry_after=_storage_retry_after(owner, Q(imported_contacts__isnull=False)),
            )


def _storage_retry_after(owner: Owner, holding: Q) -> int:
    """Seconds until the owner's oldest job holding storage passes its retention age."""
    days = settings.JOB_RETENTION_DAYS if owner.user_id else settings.JOB_RETENTION_DAYS_ANONYMOUS
    if not days:
        return STORAGE_RETRY_AFTER_KEPT
    jobs = Job.objects.filter(owner.jobs_filter(), holding, state__in=TERMINAL_STATES)
    oldest = jobs.aggregate(oldest=Min("finished_at"))["oldest"]
    if oldest is None:  # held by jobs still running: they end, then age
        return STORAGE_RETRY_AFTER_KEPT
    frees_at = oldest + timedelta(days=days)
    return max(1, math.ceil((frees_at - timezone.now()).total_seconds()))


# --- while a job runs --------------------------------------------------------------


@dataclass(frozen=True)
class ResultBudget:
    """What one job's result files may hold: the quota less the owner's other jobs'."""

    limit: int  # the owner's quota, for the message
    held: int  # bytes of the owner's other jobs: their result files and logs

    def check(self, used: int) -> None:
        """Raises StorageQuotaExceeded once this job's files hold `used` bytes past it."""
        if self.held + used > self.limit:
            raise StorageQuotaExceeded(
                f"The job stopped: its result would pass your result storage quota of {size_text(self.limit)} "
                f"(your other jobs' files and logs hold {size_text(self.held)}); its files were removed."
            )


@dataclass(frozen=True)
class ImportBudget:
    """How many rows one import may keep: the quota less the owner's other jobs' rows."""

    limit: int
    held: int

    def check(self, rows: int) -> None:
        """Raises StorageQuotaExceeded when keeping `rows` rows would pass it."""
        if self.held + rows > self.limit:
            raise StorageQuotaExceeded(
                f"The import stopped: it would pass your imported rows quota of {self.limit:,} rows "
                f"(your other imports hold {self.held:,}); none of its rows were kept."
            )


def job_owner(job: Job) -> Owner:
    """The job's owner with their rights, as read now (on the worker)."""
    if job.owner_user_id:
        return owner_of_user(get_user_model().objects.get(pk=job.owner_user_id))
    return Owner(token=job.owner_token)


def result_budget_for(job: Job) -> ResultBudget | None:
    """The job's result budget; None when no quota applies."""
    limit = settings.JOB_QUOTA_RESULT_BYTES
    if not limit:
        return None
    owner = job_owner(job)
    if owner.bypasses_quotas:
        return None
    return ResultBudget(limit=limit, held=result_bytes_held(owner=owner, exclude=job))


def import_budget_for(job: Job) -> ImportBudget | None:
    """The import's row budget; None when no quota applies."""
    limit = settings.JOB_QUOTA_IMPORT_ROWS
    if not limit:
        return None
    owner = job_owner(job)
    if owner.bypasses_quotas:
        return None
    return ImportBudget(limit=limit, held=imported_rows_held(owner=owner, exclude=job))
