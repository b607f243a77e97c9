"""Retention: jobs that ended long enough ago are deleted with their result files and
uploads (JOB_RETENTION_DAYS for signed-in owners' jobs, JOB_RETENTION_DAYS_ANONYMOUS for
anonymous owners'; jobs/tasks.py `purge_finished`, `manage.py jobs purge`)."""

from __future__ import annotations

import logging
import operator
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path
from typing import Literal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from jobs.models import TERMINAL_STATES, Job
from jobs.uploads import uploads_root

logger = logging.getLogger(__name__)

PURGE_BATCH = 500  # rows per delete: short write transactions and a bounded list of ids


@dataclass(frozen=True)
class PurgeReport:
    jobs: int  # rows deleted
    directories: int  # result and upload directories removed: the purged jobs' and orphans'


@dataclass(frozen=True)
class RetentionAges:
    """How long finished jobs are kept; None keeps them for ever."""

    signed_in: timedelta | None
    anonymous: timedelta | None


def retention_ages() -> RetentionAges:
    """The ages from the settings (0 days keeps them)."""
    days, anonymous_days = settings.JOB_RETENTION_DAYS, settings.JOB_RETENTION_DAYS_ANONYMOUS
    return RetentionAges(
        signed_in=timedelta(days=days) if days else None,
        anonymous=timedelta(days=anonymous_days) if anonymous_days else None,
    )


def _ended_before(cutoff: datetime) -> Q:
    return Q(state__in=TERMINAL_STATES) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, updated_at__lt=cutoff)
    )


def job_purge_finished(
    *, older_than: timedelta | None, anonymous_older_than: timedelta | Literal["same"] | None = "same"
) -> PurgeReport:
    """Deletes the jobs that ended more than `older_than` ago (`anonymous_older_than` for
    anonymous owners' jobs, unless "same"), their result files and uploads; None keeps them.

    Only terminal jobs: a queued or running job is never touched, however old. Result
    directories older than the longer age whose job no longer exists go too (their user
    was deleted with the jobs, or an earlier purge stopped before its files).
    """
    now = timezone.now()
    anonymous = older_than if isinstance(anonymous_older_than, str) else anonymous_older_than
    ages = RetentionAges(signed_in=older_than, anonymous=anonymous)
    rules = [
        Q(owner_user__isnull=is_anonymous) & _ended_before(now - age)
        for is_anonymous, age in ((False, ages.signed_in), (True, ages.anonymous))
        if age is not None
    ]
    if not rules:
        return PurgeReport(jobs=0, directories=0)
    ended_before = reduce(operator.or_, rules)
    cutoff = now - max(age for age in (ages.signed_in, ages.anonymous) if age is not None)
    results_root = Path(settings.MEDIA_ROOT) / "results"
    roots = (results_root, uploads_root())
    jobs = directories = 0
    while True:
        ids = list(Job.objects.filter(ended_before).values_list("pk", flat=True)[:PURGE_BATCH])
        if not ids:
            break
        with transaction.atomic():
            _, per_model = Job.objects.filter(ended_before, pk__in=ids).delete()
        deleted = per_model.get(Job._meta.label, 0)
        jobs += deleted
        if deleted < len(ids):  # another purge took some: their files are its to remove
            ids = list(set(ids) - set(Job.objects.filter(pk__in=ids).values_list("pk", flat=True)))
        # Files after rows: a row whose file is gone answers 404; a file without a row
        # would be an orphan until the next purge.
        directories += sum(_remove_result_dir(root / str(job_id)) for root in roots for job_id in ids)
        if not deleted:
            break
    directories += sum(_remove_orphan_result_dirs(root, cutoff=cutoff) for root in roots)
    logger.info(
        "purge: %d jobs that ended over %s ago (anonymous owners': %s), %d result directories",
        jobs,
        ages.signed_in or "never",
        ages.anonymous or "never",
        directories,
    )
    return PurgeReport(jobs=jobs, directories=directories)


def _remove_result_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        shutil.rmtree(path)
    except OSError:
        logger.warning("purge: could not remove %s", path, exc_info=True)
        return False
    return True


def _remove_orphan_result_dirs(results_root: Path, *, cutoff: datetime) -> int:
    """Removes `results/<job id>/` directories last changed before `cutoff` whose job is gone."""
    if not results_root.is_dir():
        return 0
    old: dict[uuid.UUID, Path] = {}
    for entry in results_root.iterdir():
        try:
            job_id = uuid.UUID(entry.name)
        except ValueError:
            continue  # not a job's directory: never ours to remove
        if str(job_id) == entry.name and entry.is_dir() and entry.stat().st_mtime < cutoff.timestamp():
            old[job_id] = entry
    removed = 0
    candidates = list(old)
    for start in range(0, len(candidates), PURGE_BATCH):
        batch = candidates[start : start + PURGE_BATCH]
        existing = set(Job.objects.filter(pk__in=batch).values_list("pk", flat=True))
        removed += sum(_remove_result_dir(old[job_id]) for job_id in batch if job_id not in existing)
    return removed
