"""Retention: jobs that ended long enough ago are deleted with their result files and
uploads (JOB_RETENTION_DAYS; jobs/tasks.py `purge_finished`, `manage.py jobs purge`)."""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

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


def job_purge_finished(*, older_than: timedelta) -> PurgeReport:
    """Deletes the jobs that ended more than `older_than` ago, their result files and uploads.

    Only terminal jobs: a queued or running job is never touched, however old. Result
    directories older than that whose job no longer exists go too (their user was
    deleted with the jobs, or an earlier purge stopped before its files).
    """
    cutoff = timezone.now() - older_than
    ended_before = Q(state__in=TERMINAL_STATES) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, updated_at__lt=cutoff)
    )
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
    logger.info("purge: %d jobs that ended before %s, %d result directories", jobs, cutoff.isoformat(), directories)
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
