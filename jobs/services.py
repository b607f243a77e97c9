"""Writes to jobs: create, dispatch, run (start, report, finish) and cancel.

A state change takes its `seq` from one atomic `UPDATE … SET seq = seq + 1` on the row,
whichever process makes it, and is published after its transaction commits. Progress
frames of a running job take theirs from the worker (`RunningJob`), which writes the
row behind and never runs more than SEQ_WINDOW ahead of it.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from jobs.exceptions import JobAlreadyFinished, JobCancelled, JobError, JobNotFound
from jobs.kinds import kind_get
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.owners import Owner
from jobs.progress import Progress, ProgressUpdate
from jobs.selectors import job_get_visible, job_queue_position
from notifications.publish import publish_job_change, publisher

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "The job stopped because of an internal error."


# --- changing a row --------------------------------------------------------------


def _change(job_id: uuid.UUID, *, from_states: set[str], seq_above: int = 0, **fields: Any) -> Job | None:
    """Applies `fields` and bumps `seq` if the job is in one of `from_states`.

    The new seq is above both the row's and `seq_above` (the last seq a running worker
    published). Returns the job as changed, or None when it was not in those states.
    The change is published once its transaction commits.
    """
    with transaction.atomic():
        seq = Greatest(F("seq") + 1, Value(seq_above + 1))
        updated = Job.objects.filter(pk=job_id, state__in=from_states).update(seq=seq, **fields)
        if not updated:
            return None
        job = Job.objects.get(pk=job_id)
    job_publish(job)
    return job


def job_publish(job: Job) -> None:
    position = job_queue_position(job=job) if job.state == JobState.QUEUED else None
    transaction.on_commit(lambda: publish_job_change(job, queue_position=position))


# --- create and dispatch ---------------------------------------------------------


def job_create(*, owner: Owner, kind: str, params: object, from_text: bool = False) -> Job:
    """Validates and saves a job, then hands it to a worker once the row is committed.

    Raises UnknownKind or ParamsInvalid (both name the problem) before anything is saved.
    """
    job_kind = kind_get(kind)
    cleaned = job_kind.validate(params, from_text=from_text)
    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.create(
            owner_user_id=owner.user_id,
            owner_token="" if owner.user_id else (owner.token or ""),
            kind=job_kind.name,
            params=cleaned,
            seq=1,
            created_at=now,
            updated_at=now,
        )
        job_publish(job)
        transaction.on_commit(lambda: job_dispatch(job_id=job.id))
    logger.info("job %s created (kind %s)", job.id, job.kind)
    return job


def job_dispatch(*, job_id: uuid.UUID) -> bool:
    """Sends the job's task to the broker; True when the broker took it.

    A failure is logged and the job stays queued and undispatched (`dispatched_at` null).
    """
    from jobs.tasks import run_job

    job = Job.objects.get(pk=job_id)
    job_kind = kind_get(job.kind)
    try:
        run_job.apply_async(
            args=(str(job.id),),
            task_id=str(job.id),
            soft_time_limit=job_kind.soft_time_limit,
            time_limit=job_kind.time_limit,
        )
    except Exception:
        logger.exception("job %s (kind %s): dispatch to the broker failed", job.id, job.kind)
        return False
    Job.objects.filter(pk=job.id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return True


# --- running ---------------------------------------------------------------------


def job_start(*, job_id: uuid.UUID, task_id: str) -> Job | None:
    """queued → running; None when the job is not queued (cancelled before it started)."""
    now = timezone.now()
    return _change(
        job_id,
        from_states={JobState.QUEUED},
        state=JobState.RUNNING,
        started_at=now,
        updated_at=now,
        celery_task_id=task_id,
    )


PROGRESS_FIELDS = (
    "progress_current",
    "progress_total",
    "progress_message",
    "progress_rate",
    "progress_eta_seconds",
    "has_progress",
)
SEQ_WINDOW = 1000  # how far a running worker's published seq may run ahead of its row
PERSIST_INTERVAL = 1.0  # seconds between writes of a running job's progress to its row


def _progress_fields(update: ProgressUpdate) -> dict[str, Any]:
    return {
        "progress_current": update.current,
        "progress_total": update.total,
        "progress_message": update.message,
        "progress_rate": update.rate,
        "progress_eta_seconds": update.eta_seconds,
        "has_progress": True,
    }


def job_report_progress(*, job_id: uuid.UUID, update: ProgressUpdate) -> bool:
    """Stores and publishes one progress update now; True when the job must stop.

    The write-through path, for callers outside a worker's run; `job_run` reports
    through `RunningJob`, which publishes first and writes the row behind.
    """
    job = _change(
        job_id,
        from_states={JobState.RUNNING},
        updated_at=datetime.fromtimestamp(update.at, tz=UTC),
        **_progress_fields(update),
    )
    return job is None or job.cancel_requested


class RunningJob:
    """The worker's view of the job it runs: the fast path of progress frames.

    A progress frame takes the next seq from here and is published at once; the row
    is written behind, at most every PERSIST_INTERVAL seconds. So that another writer
    (a sweeper, a redelivered task) can never hand out a seq this worker already
    published, the worker never runs more than SEQ_WINDOW past the row's seq, and
    such writers add SEQ_WINDOW to it.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.persisted_seq = job.seq
        self.persisted_at = time.monotonic()
        self.last_update: ProgressUpdate | None = None  # the newest progress published

    def report(self, update: ProgressUpdate) -> bool:
        """Publishes one progress update; True when the job must stop."""
        job = self.job
        job.seq += 1
        self.last_update = update
        for name, value in _progress_fields(update).items():
            setattr(job, name, value)
        job.updated_at = datetime.fromtimestamp(update.at, tz=UTC)
        publish_job_change(job)
        if job.seq - self.persisted_seq >= SEQ_WINDOW // 2 or time.monotonic() - self.persisted_at >= PERSIST_INTERVAL:
            return self.persist()
        return False

    def persist(self) -> bool:
        """Writes the newest progress to the row; True when the job must stop."""
        job = self.job
        fields = {**_progress_fields_of(job), "seq": job.seq, "updated_at": job.updated_at}
        column = {field.name: field.column for field in Job._meta.concrete_fields}
        columns = ", ".join(f"{column[name]} = %s" for name in fields)
        pk = Job._meta.get_field("id").get_db_prep_value(job.pk, connection)
        with connection.cursor() as cursor:
            # One statement, no ORM round trip: this runs about once a second per job.
            cursor.execute(
                f"UPDATE {Job._meta.db_table} SET {columns} WHERE id = %s AND state = %s RETURNING cancel_requested",
                [*fields.values(), pk, JobState.RUNNING],
            )
            row = cursor.fetchone()
        self.persisted_seq, self.persisted_at = job.seq, time.monotonic()
        return row is None or bool(row[0])


def _progress_fields_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in PROGRESS_FIELDS}


def job_finish(
    *,
    job_id: uuid.UUID,
    state: JobState,
    seq_above: int = 0,
    progress: ProgressUpdate | None = None,
    result: Mapping[str, Any] | None = None,
    result_file: str = "",
    error: str = "",
    error_detail: str = "",
) -> Job | None:
    """running → a terminal state, with the last unsent progress in the same write."""
    assert state in TERMINAL_STATES
    now = timezone.now()
    fields: dict[str, Any] = {
        "state": state,
        "finished_at": now,
        "updated_at": now,
        "result": dict(result) if result is not None else None,
        "result_file": result_file,
        "error": error[:500],
        "error_detail": error_detail,
    }
    if progress is not None:
        fields.update(_progress_fields(progress))
    return _change(job_id, from_states={JobState.RUNNING}, seq_above=seq_above, **fields)


def job_run(*, job_id: uuid.UUID, task_id: str) -> Job | None:
    """Runs a job from start to its terminal state (the body of the Celery task)."""
    job = job_start(job_id=job_id, task_id=task_id)
    if job is None:
        logger.info("job %s: not queued any more, not started", job_id)
        return None
    job_kind = kind_get(job.kind)
    log_context = f"job {job.id} (kind {job.kind})"
    running = RunningJob(job)
    reporter = Progress(
        emit=running.report,
        max_rate=settings.PROGRESS_MAX_RATE,
        result_dir=Path(settings.MEDIA_ROOT) / "results" / str(job.id),
    )
    publisher.watch_cancel(str(job.id), reporter.request_cancel)
    logger.info("%s: started", log_context)
    outcome: dict[str, Any] = {"state": JobState.SUCCEEDED}
    try:
        if job.cancel_requested:
            raise JobCancelled()
        result = job_kind.run(reporter.as_function(), **job.params) or {}
        json.dumps(result, allow_nan=False)  # a result must be plain JSON
        outcome["result"] = result
        if reporter.result_files:
            outcome["result_file"] = reporter.result_files[0].relative_to(Path(settings.MEDIA_ROOT)).as_posix()
    except JobCancelled:
        outcome = {"state": JobState.CANCELLED}
    except JobError as exc:
        outcome = {"state": JobState.FAILED, "error": str(exc)}
    except SoftTimeLimitExceeded:
        message = f"The job ran longer than its limit of {job_kind.soft_time_limit} seconds."
        outcome = {"state": JobState.FAILED, "error": message}
    except Exception:
        logger.exception("%s: crashed", log_context)
        outcome = {"state": JobState.FAILED, "error": INTERNAL_ERROR_MESSAGE, "error_detail": traceback.format_exc()}
    finally:
        publisher.unwatch_cancel(str(job.id))
    logger.info("%s: %s %s", log_context, outcome["state"], outcome.get("error", ""))
    # The terminal write carries the newest progress, sent or not: the row may be up to
    # PERSIST_INTERVAL behind what the last frames showed.
    progress = reporter.unsent() or running.last_update
    return job_finish(job_id=job.id, seq_above=running.job.seq, progress=progress, **outcome)


# --- cancel ----------------------------------------------------------------------


def job_cancel(*, owner: Owner, job_id: object) -> Job:
    """Asks a job to stop: a queued job is cancelled at once; a running one at its
    next progress call. Raises JobNotFound, or JobAlreadyFinished for a terminal job."""
    job = job_get_visible(owner=owner, job_id=job_id)
    if job is None:
        raise JobNotFound()
    now = timezone.now()
    cancelled = _change(
        job.id, from_states={JobState.QUEUED}, state=JobState.CANCELLED, finished_at=now, updated_at=now
    )
    if cancelled is not None:
        transaction.on_commit(lambda: _revoke(str(job.id)))
        logger.info("job %s (kind %s): cancelled while queued", job.id, job.kind)
        return cancelled
    with transaction.atomic():
        asked = Job.objects.filter(pk=job.id, state=JobState.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    if not asked:
        raise JobAlreadyFinished(job.state)
    transaction.on_commit(lambda: publisher.send_cancel(str(job.id)))
    logger.info("job %s (kind %s): cancel requested while running", job.id, job.kind)
    return job


def _revoke(task_id: str) -> None:
    # Only an optimisation: the task also checks the state before it starts.
    from celery_app import app

    try:
        app.control.revoke(task_id)
    except Exception:
        logger.warning("revoke of task %s failed; the start check still stops it", task_id, exc_info=True)
