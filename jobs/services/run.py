"""Running a job on a worker: start, progress, heartbeat, finish.

A running job's progress frames take their seq from the worker (`RunningJob`): each is
published at once and the row is written behind, never more than SEQ_WINDOW ahead of
it (jobs/services/transitions.py). Start and finish go through `job_transition`.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial, reduce
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from jobs.exceptions import JobCancelled, JobError
from jobs.heartbeat import Heartbeat
from jobs.kinds import kind_get
from jobs.log_writer import log_writer_for
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.progress import Progress, ProgressUpdate
from jobs.serializers import RunningFrames
from jobs.services.fair_share import job_admit, job_owner, job_release_held_on_commit
from jobs.services.recovery import job_end_lost, progress_restarted
from jobs.services.transitions import OTHER_WRITER_SEQ_GAP, SEQ_WINDOW, job_transition
from jobs.storage_quota import StorageQuotaExceeded, result_budget_for
from notifications.groups import job_groups
from notifications.publish import publish_frame, publisher

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "The job stopped because of an internal error."
RESULT_NOT_KEPT_MESSAGE = "The job's result file could not be kept."
FINISH_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds between tries of a final write: about 15 s in all
PROGRESS_FIELDS = (
    "progress_current",
    "progress_total",
    "progress_message",
    "progress_rate",
    "progress_eta_seconds",
    "has_progress",
)
PERSIST_INTERVAL = 1.0  # seconds between writes of a running job's progress to its row


# --- start -----------------------------------------------------------------------


def job_start(*, job_id: uuid.UUID, task_id: str, redelivered: bool = False, requeues: int | None = None) -> Job | None:
    """queued → running, as attempt `attempts + 1`; None when the job must not run.

    A job still `running` when its task arrives `redelivered` (the broker's flag: the
    worker that took the task died before acknowledging it) lost that worker: it runs
    again from the start, or ends once JOB_MAX_ATTEMPTS runs were lost (`cancelled`
    if a cancel was asked for). A running job's task arriving again without the flag is
    a second dispatch of a job running elsewhere: not started.

    `requeues` is the job's count of the sweeper's requeues when the message was sent
    (None for a message sent before the task carried it). A message sent before the
    sweeper queued the job again (its worker taken for lost) does nothing, whenever it
    arrives: the message the sweeper sent runs the job, and a late redelivery of the old
    one must not restart that run.
    """
    columns = ("state", "attempts", "cancel_requested", "requeues", "owner_user_id", "owner_token")
    seen = Job.objects.filter(pk=job_id).values_list(*columns).first()
    if seen is None:
        return None
    state, attempts, cancel_requested, row_requeues, owner_user_id, owner_token = seen
    if requeues is not None and requeues != row_requeues:
        logger.info(
            "job %s: a message sent before the sweeper queued it again (%d of %d times) does nothing",
            job_id,
            requeues,
            row_requeues,
        )
        return None
    now = timezone.now()
    start: dict[str, Any] = {
        "state": JobState.RUNNING,
        "attempts": attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "updated_at": now,
        "celery_task_id": task_id,
        "held": False,
    }
    same_run = Q(attempts=attempts)  # nobody else started or ended it since we looked
    if state == JobState.QUEUED:
        if attempts:  # queued again by the sweeper after its worker was lost
            start.update(progress_restarted(_restarted_message(attempts + 1)))
        # The owner's running count and the start in one transaction (jobs/services/fair_share.py).
        with transaction.atomic():
            if not job_admit(job_id=job_id, owner=job_owner(owner_user_id=owner_user_id, owner_token=owner_token)):
                return None
            now = timezone.now()  # once admitted: the owner's starts are stamped in the order they happen
            start.update(started_at=now, heartbeat_at=now, updated_at=now)
            return job_transition(job_id=job_id, from_states={JobState.QUEUED}, where=same_run, **start)
    if state != JobState.RUNNING or not redelivered:
        return None
    if cancel_requested or attempts >= settings.JOB_MAX_ATTEMPTS:
        job_end_lost(job_id=job_id, attempts=attempts, cancelled=cancel_requested, where=same_run)
        return None
    start.update(progress_restarted(_restarted_message(attempts + 1)))
    job = job_transition(
        job_id=job_id, from_states={JobState.RUNNING}, where=same_run, seq_gap=OTHER_WRITER_SEQ_GAP, **start
    )
    if job is not None:
        logger.warning(
            "job %s (kind %s): its worker was lost; running it again (attempt %d of %d)",
            job.id,
            job.kind,
            job.attempts,
            settings.JOB_MAX_ATTEMPTS,
        )
    return job


def _restarted_message(attempt: int) -> str:
    return f"Restarted after its worker was lost (attempt {attempt} of {settings.JOB_MAX_ATTEMPTS})"


# --- progress --------------------------------------------------------------------


def _progress_fields(update: ProgressUpdate) -> dict[str, Any]:
    return {
        "progress_current": update.current,
        "progress_total": update.total,
        "progress_message": update.message,
        "progress_rate": update.rate,
        "progress_eta_seconds": update.eta_seconds,
        "has_progress": True,
    }


def _progress_fields_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in PROGRESS_FIELDS}


def job_report_progress(*, job_id: uuid.UUID, update: ProgressUpdate) -> bool:
    """Stores and publishes one progress update now; True when the job must stop.

    The write-through path, for callers outside a worker's run; `job_run` reports
    through `RunningJob`, which publishes first and writes the row behind.
    """
    job = job_transition(
        job_id=job_id,
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
        self.attempt = job.attempts  # the row is this run's only while it carries this attempt
        self.persisted_seq = job.seq
        self.persisted_at = time.monotonic()
        self.last_update: ProgressUpdate | None = None  # the newest progress published
        self.frames = RunningFrames(job)  # what does not change while it runs, built once
        self.job_id = str(job.id)
        self.groups = job_groups(job)

    def report(self, update: ProgressUpdate) -> bool:
        """Publishes one progress update; True when the job must stop."""
        job = self.job
        job.seq += 1
        self.last_update = update
        for name, value in _progress_fields(update).items():
            setattr(job, name, value)
        job.updated_at = datetime.fromtimestamp(update.at, tz=UTC)
        publish_frame(self.groups, self.job_id, job.seq, False, self.frames.text(job))
        if job.seq - self.persisted_seq >= SEQ_WINDOW // 2 or time.monotonic() - self.persisted_at >= PERSIST_INTERVAL:
            return self.persist()
        return False

    def persist(self) -> bool:
        """Writes the newest progress to the row; True when the job must stop."""
        job = self.job
        fields = {
            **_progress_fields_of(job),
            "seq": job.seq,
            "updated_at": job.updated_at,
            "heartbeat_at": connection.ops.adapt_datetimefield_value(timezone.now()),
        }
        column = {field.name: field.column for field in Job._meta.concrete_fields}
        columns = ", ".join(f"{column[name]} = %s" for name in fields)
        pk = Job._meta.get_field("id").get_db_prep_value(job.pk, connection)
        # In a transaction, so that on SQLite it queues with the process's other writes
        # (core/compat/django) rather than in SQLite's sleeping busy handler.
        with transaction.atomic(), connection.cursor() as cursor:
            # One statement, no ORM round trip: this runs about once a second per job.
            # A run replaced after its worker was taken for lost finds another attempt
            # on the row, writes nothing and stops.
            cursor.execute(
                f"UPDATE {Job._meta.db_table} SET {columns} WHERE id = %s AND state = %s AND attempts = %s "
                "RETURNING cancel_requested",
                [*fields.values(), pk, JobState.RUNNING, self.attempt],
            )
            row = cursor.fetchone()
        self.persisted_seq, self.persisted_at = job.seq, time.monotonic()
        return row is None or bool(row[0])


# --- finish ----------------------------------------------------------------------


def job_finish(
    *,
    job_id: uuid.UUID,
    state: JobState,
    seq_above: int = 0,
    attempt: int | None = None,
    progress: ProgressUpdate | None = None,
    result: Mapping[str, Any] | None = None,
    result_file: str = "",
    result_bytes: int = 0,
    error: str = "",
    error_detail: str = "",
    before_commit: Callable[[], None] | None = None,
) -> Job | None:
    """running → a terminal state, with the last unsent progress in the same write.

    With `attempt`, only while the row still carries it: a run replaced after its
    worker was taken for lost does not end the run that replaced it. `before_commit`
    runs in the write's transaction once the row matched (the attempt's files are moved
    into the job's there).
    """
    assert state in TERMINAL_STATES
    now = timezone.now()
    fields: dict[str, Any] = {
        "state": state,
        "finished_at": now,
        "updated_at": now,
        "result": dict(result) if result is not None else None,
        "result_file": result_file,
        "result_bytes": result_bytes,
        "error": error[:500],
        "error_detail": error_detail,
    }
    if progress is not None:
        fields.update(_progress_fields(progress))
    where = None if attempt is None else Q(attempts=attempt)
    job = job_transition(
        job_id=job_id,
        from_states={JobState.RUNNING},
        seq_above=seq_above,
        where=where,
        before_commit=before_commit,
        **fields,
    )
    if job is not None:  # a place of its owner's is free: the next of theirs in line may go
        job_release_held_on_commit(owner_user_id=job.owner_user_id, owner_token=job.owner_token)
    return job


def _job_finish_retrying(log_context: str, **finish: Any) -> Job | None:
    """`job_finish`, tried again on a transient database error (a restart, a dropped
    connection, a lock held too long): a run that ended must not be taken for lost and
    run again because its last write failed once. The heartbeat goes on meanwhile."""
    for delay in (*FINISH_RETRY_DELAYS, None):
        try:
            return job_finish(**finish)
        except (OperationalError, InterfaceError) as exc:
            if delay is None:
                raise
            logger.warning("%s: its final write failed (%r); trying again in %g s", log_context, exc, delay)
            connection.close()  # outside any transaction: the next query opens a fresh connection
            time.sleep(delay)
    raise AssertionError("unreachable")


def attempt_result_dir(job_id: uuid.UUID, attempt: int) -> Path:
    """Where attempt `attempt` of a job writes its files; the finish moves them into the job's."""
    return job_result_dir(job_id) / f"attempt-{attempt}"


def job_result_dir(job_id: uuid.UUID) -> Path:
    return Path(settings.MEDIA_ROOT) / "results" / str(job_id)


def _files_kept(files: list[Path], *, job_id: uuid.UUID) -> list[tuple[Path, Path]]:
    """Each file of an attempt and where the job keeps it."""
    return [(path, job_result_dir(job_id) / path.name) for path in files]


def _move_files(moves: list[tuple[Path, Path]], *, attempt_dir: Path) -> None:
    """Moves an attempt's files into the job's directory and removes what is left of the
    attempt's; again after a retried final write, a file already moved is left where it is."""
    for source, target in moves:
        if source.exists() or not target.exists():
            os.replace(source, target)
    shutil.rmtree(attempt_dir, ignore_errors=True)


# --- the run ---------------------------------------------------------------------


def job_run(*, job_id: uuid.UUID, task_id: str, redelivered: bool = False, requeues: int | None = None) -> Job | None:
    """Runs a job from start to its terminal state (the body of the Celery task)."""
    job = job_start(job_id=job_id, task_id=task_id, redelivered=redelivered, requeues=requeues)
    if job is None:
        logger.info("job %s: not started (held for its owner's line, not queued, or lost once too often)", job_id)
        return None
    heartbeat.add(job.id, attempt=job.attempts)
    try:
        return _job_run_started(job)
    finally:
        heartbeat.discard(job.id)


def _job_run_started(job: Job) -> Job | None:
    job_kind = kind_get(job.kind)
    log_context = f"job {job.id} (kind {job.kind})"
    running = RunningJob(job)
    attempt_dir = attempt_result_dir(job.id, running.attempt)
    budget = result_budget_for(job)
    log = log_writer_for(job_id=job.id, attempt=running.attempt)
    if running.attempt > 1:
        log.log(_restarted_message(running.attempt), "warning")
    reporter = Progress(
        emit=running.report,
        max_rate=settings.PROGRESS_MAX_RATE,
        result_dir=attempt_dir,
        result_check=budget.check if budget is not None else None,
        log=log.log,
    )
    publisher.watch_cancel(str(job.id), reporter.request_cancel)
    logger.info("%s: started", log_context)
    outcome: dict[str, Any] = {"state": JobState.SUCCEEDED}
    moves: list[tuple[Path, Path]] = []
    try:
        if job.cancel_requested:
            raise JobCancelled()
        result = job_kind.run(reporter.as_function(), **job_kind.arguments(job.params)) or {}
        reporter.check_result_size()  # the exact total: the last frame may predate the last bytes
        json.dumps(result, allow_nan=False)  # a result must be plain JSON
        outcome["result"] = result
        if reporter.result_files:
            moves = _files_kept(reporter.result_files, job_id=job.id)
            outcome["result_file"] = moves[0][1].relative_to(Path(settings.MEDIA_ROOT)).as_posix()
    except JobCancelled:
        outcome = {"state": JobState.CANCELLED}
    except JobError as exc:
        outcome = {"state": JobState.FAILED, "error": str(exc)}
        if isinstance(exc, StorageQuotaExceeded):  # nothing partial is kept
            for path in reporter.result_files:
                path.unlink(missing_ok=True)
    except SoftTimeLimitExceeded:
        message = f"The job ran longer than its limit of {job_kind.soft_time_limit} seconds."
        outcome = {"state": JobState.FAILED, "error": message}
    except Exception:
        logger.exception("%s: crashed", log_context)
        outcome = {"state": JobState.FAILED, "error": INTERNAL_ERROR_MESSAGE, "error_detail": traceback.format_exc()}
    finally:
        publisher.unwatch_cancel(str(job.id))
    if outcome["state"] == JobState.FAILED:
        log.log(outcome["error"], "error")
    elif outcome["state"] == JobState.CANCELLED:
        log.log("Cancelled.", "warning")
    log.close()  # every line is kept and published before the terminal frame
    # What the job holds: the files the finish moves in (a run that did not succeed keeps none).
    outcome["result_bytes"] = reporter.result_bytes() if moves else 0
    logger.info("%s: %s %s", log_context, outcome["state"], outcome.get("error", ""))
    # The terminal write carries the newest progress, sent or not: the row may be up to
    # PERSIST_INTERVAL behind what the last frames showed.
    progress = reporter.unsent() or running.last_update
    finish = {"job_id": job.id, "attempt": running.attempt, "seq_above": running.job.seq, "progress": progress}
    if not moves:  # nothing to keep: gone before anyone reads the end
        shutil.rmtree(attempt_dir, ignore_errors=True)
    keep = partial(_move_files, moves, attempt_dir=attempt_dir) if moves else None
    try:
        try:
            finished = _job_finish_retrying(log_context, **finish, **outcome, before_commit=keep)
        except OSError:
            logger.exception("%s: its result file could not be kept", log_context)
            finished = _job_finish_retrying(log_context, **finish, state=JobState.FAILED, error=RESULT_NOT_KEPT_MESSAGE)
    finally:
        shutil.rmtree(attempt_dir, ignore_errors=True)  # a run whose end was dropped: its files go too
    if finished is None:
        logger.warning(
            "%s: attempt %d was ended or replaced meanwhile; its outcome is dropped", log_context, running.attempt
        )
    return finished


# --- heartbeat -------------------------------------------------------------------


def job_heartbeat(*, runs: Mapping[uuid.UUID, int]) -> int:
    """Marks these runs (job id → attempt) alive in one UPDATE; the number marked."""
    if not runs:
        return 0
    match = reduce(operator.or_, (Q(pk=job_id, attempts=attempt) for job_id, attempt in runs.items()))
    with transaction.atomic():  # queued with the process's other writes on SQLite, as in persist()
        return Job.objects.filter(match, state=JobState.RUNNING).update(heartbeat_at=timezone.now())


# This process's runs, marked alive by one thread (jobs/heartbeat.py).
heartbeat = Heartbeat(lambda runs: job_heartbeat(runs=runs))
