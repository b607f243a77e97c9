"""Cancelling a job: a queued job ends at once; a running one is asked to stop and ends
at its reporter's next call."""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from celery_app import app
from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.selectors import job_get_visible
from jobs.services.fair_share import job_release_held_on_commit
from jobs.services.transitions import job_transition
from notifications.publish import publisher

logger = logging.getLogger(__name__)


def job_cancel(*, owner: Owner, job_id: object) -> Job:
    """Asks a job to stop: a queued job is cancelled at once; a running one at its
    next progress call. Raises JobNotFound, or JobAlreadyFinished for a terminal job."""
    job = job_get_visible(owner=owner, job_id=job_id)
    if job is None:
        raise JobNotFound()
    if job.state == JobState.QUEUED:
        now = timezone.now()
        cancelled = job_transition(
            job_id=job.id, from_states={JobState.QUEUED}, state=JobState.CANCELLED, finished_at=now, updated_at=now
        )
        if cancelled is not None:
            transaction.on_commit(lambda: task_revoke(task_id=str(job.id)))
            # Its owner's jobs behind it in line move up a place.
            job_release_held_on_commit(owner_user_id=job.owner_user_id, owner_token=job.owner_token)
            logger.info("job %s (kind %s): cancelled while queued", job.id, job.kind)
            return cancelled
    elif job.state == JobState.RUNNING and job.cancel_requested:
        return job  # asked already: a repeated cancel frame costs no write and no second signal
    with transaction.atomic():
        asked = Job.objects.filter(pk=job.id, state=JobState.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    if not asked:
        raise JobAlreadyFinished(job.state)
    transaction.on_commit(lambda: publisher.send_cancel(str(job.id)))
    logger.info("job %s (kind %s): cancel requested while running", job.id, job.kind)
    return job


def task_revoke(*, task_id: str) -> None:
    """Tells the workers to drop a cancelled job's task. Only an optimisation: the task
    also checks the job's state before it starts (`job_start`)."""
    try:
        app.control.revoke(task_id)
    except Exception:
        logger.warning("revoke of task %s failed; the start check still stops it", task_id, exc_info=True)
