"""Reads of jobs. Writes live in jobs/services/."""

from __future__ import annotations

import uuid

from django.db.models import Count, QuerySet

from jobs.models import Job, JobState
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


def job_queue_position(*, job: Job) -> int | None:
    """1-based place in line among queued jobs, oldest first; None unless queued."""
    if job.state != JobState.QUEUED:
        return None
    ahead = Job.objects.filter(state=JobState.QUEUED, created_at__lt=job.created_at).count()
    return ahead + 1


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
