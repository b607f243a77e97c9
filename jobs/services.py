"""Writes to jobs: create, dispatch, run (start, report, finish), cancel, and recovery
from lost workers and lost dispatches.

A state change takes its `seq` from one atomic `UPDATE … SET seq = seq + 1` on the row,
whichever process makes it, and is published after its transaction commits. Progress
frames of a running job take theirs from the worker (`RunningJob`), which writes the
row behind and never runs more than SEQ_WINDOW ahead of it.
"""

from __future__ import annotations

import json
import logging
import operator
import shutil
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial, reduce
from pathlib import Path
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from kombu.exceptions import OperationalError

from jobs.broker import BrokerNotSearchable, broker_queues_for, broker_task_ids_absent
from jobs.exceptions import JobAlreadyFinished, JobCancelled, JobError, JobNotFound
from jobs.heartbeat import Heartbeat
from jobs.kinds import UnknownKind, kind_get
from jobs.models import TERMINAL_STATES, Job, JobState
from jobs.owners import Owner
from jobs.progress import Progress, ProgressUpdate
from jobs.quotas import job_quota_check
from jobs.selectors import job_get_visible, job_queue_position
from jobs.uploads import upload_remove, upload_save, uploads_root
from notifications.publish import ProgressFrames, publish_job_change, publisher

logger = logging.getLogger(__name__)

INTERNAL_ERROR_MESSAGE = "The job stopped because of an internal error."


# --- changing a row --------------------------------------------------------------


def _change(
    job_id: uuid.UUID,
    *,
    from_states: set[str],
    seq_above: int = 0,
    seq_gap: int = 1,
    where: Q | None = None,
    **fields: Any,
) -> Job | None:
    """Applies `fields` and bumps `seq` if the job is in one of `from_states` (and
    matches `where`, when given).

    The new seq is at least `seq_gap` above the row's, and above `seq_above` (the last
    seq a running worker published). Returns the job as changed, or None when it did
    not match. The change is published once its transaction commits.
    """
    with transaction.atomic():
        seq = Greatest(F("seq") + seq_gap, Value(seq_above + 1))
        matching = Job.objects.filter(pk=job_id, state__in=from_states)
        if where is not None:
            matching = matching.filter(where)
        updated = matching.update(seq=seq, **fields)
        if not updated:
            return None
        job = Job.objects.get(pk=job_id)
    job_publish(job)
    return job


def job_publish(job: Job) -> None:
    position = job_queue_position(job=job) if job.state == JobState.QUEUED else None
    transaction.on_commit(lambda: publish_job_change(job, queue_position=position))


# --- create and dispatch ---------------------------------------------------------


def job_create(
    *, owner: Owner, kind: str, params: object, from_text: bool = False, files: Mapping[str, object] | None = None
) -> Job:
    """Validates and saves a job, then hands it to a worker once the row is committed.

    `files` are the uploads of a kind's file parameters: each is saved under the job's
    upload directory before the row is written, and its params hold the stored path.
    Raises UnknownKind or ParamsInvalid (both name the problem) before anything is saved.
    """
    job_kind = kind_get(kind)
    cleaned = job_kind.validate(params, from_text=from_text, files=files)
    job_id = uuid.uuid4()
    try:
        for param in job_kind.file_params:  # before the row: the worker, dispatched on commit, finds them
            cleaned[param.name] = upload_save(job_id=job_id, upload=cleaned[param.name])
        now = timezone.now()
        with transaction.atomic():
            job = Job.objects.create(
                id=job_id,
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
    except BaseException:
        if job_kind.file_params:
            upload_remove(job_id)  # no job, no files: nothing else would ever remove them
        raise
    logger.info("job %s created (kind %s)", job.id, job.kind)
    return job


# kombu retries a failed publish three times by default (0.6 s against a refused
# connection, measured); a submit answers at once instead, and the sweeper sends the
# job once the broker is back (`job_redispatch_undispatched`).
DISPATCH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def job_dispatch(*, job_id: uuid.UUID) -> bool:
    """Sends the job's task to the broker; True when the broker took it.

    A failure is logged and the job stays queued and undispatched (`dispatched_at` null)
    until the sweeper sends it again.
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
            retry=True,
            retry_policy=DISPATCH_RETRY_POLICY,
        )
    except Exception as exc:
        # Expected while the broker is away: one line, not a traceback per job.
        logger.error(
            "job %s (kind %s): dispatch to the broker failed (%r); the sweeper sends it later",
            job.id,
            job.kind,
            exc,
        )
        return False
    Job.objects.filter(pk=job.id, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return True


# --- running ---------------------------------------------------------------------


def job_start(*, job_id: uuid.UUID, task_id: str, redelivered: bool = False) -> Job | None:
    """queued → running, as attempt `attempts + 1`; None when the job must not run.

    A job still `running` when its task arrives `redelivered` (the broker's flag: the
    worker that took the task died before acknowledging it) lost that worker: it runs
    again from the start, or ends once JOB_MAX_ATTEMPTS runs were lost (`cancelled`
    if a cancel was asked for). A running job's task arriving again without the flag is
    a second dispatch of a job running elsewhere: not started.
    """
    seen = Job.objects.filter(pk=job_id).values_list("state", "attempts", "cancel_requested").first()
    if seen is None:
        return None
    state, attempts, cancel_requested = seen
    now = timezone.now()
    start: dict[str, Any] = {
        "state": JobState.RUNNING,
        "attempts": attempts + 1,
        "started_at": now,
        "heartbeat_at": now,
        "updated_at": now,
        "celery_task_id": task_id,
    }
    same_run = Q(attempts=attempts)  # nobody else started or ended it since we looked
    if state == JobState.QUEUED:
        if attempts:  # queued again by the sweeper after its worker was lost
            start.update(_progress_restarted(_restarted_message(attempts + 1)))
        return _change(job_id, from_states={JobState.QUEUED}, where=same_run, **start)
    if state != JobState.RUNNING or not redelivered:
        return None
    if cancel_requested or attempts >= settings.JOB_MAX_ATTEMPTS:
        _job_end_lost(job_id, attempts=attempts, cancelled=cancel_requested, where=same_run)
        return None
    start.update(_progress_restarted(_restarted_message(attempts + 1)))
    job = _change(job_id, from_states={JobState.RUNNING}, where=same_run, seq_gap=OTHER_WRITER_SEQ_GAP, **start)
    if job is not None:
        logger.warning(
            "job %s (kind %s): its worker was lost; running it again (attempt %d of %d)",
            job.id,
            job.kind,
            job.attempts,
            settings.JOB_MAX_ATTEMPTS,
        )
    return job


PROGRESS_FIELDS = (
    "progress_current",
    "progress_total",
    "progress_message",
    "progress_rate",
    "progress_eta_seconds",
    "has_progress",
)
SEQ_WINDOW = 1000  # how far a running worker's published seq may run ahead of its row
# A writer other than the worker running the job (a restart, the sweeper) jumps past
# every seq that worker may have published and not written yet.
OTHER_WRITER_SEQ_GAP = SEQ_WINDOW + 1
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
        self.attempt = job.attempts  # the row is this run's only while it carries this attempt
        self.persisted_seq = job.seq
        self.persisted_at = time.monotonic()
        self.last_update: ProgressUpdate | None = None  # the newest progress published
        self.frames = ProgressFrames(job)

    def report(self, update: ProgressUpdate) -> bool:
        """Publishes one progress update; True when the job must stop."""
        job = self.job
        job.seq += 1
        self.last_update = update
        for name, value in _progress_fields(update).items():
            setattr(job, name, value)
        job.updated_at = datetime.fromtimestamp(update.at, tz=UTC)
        self.frames.publish(job)
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
        # (core/sqlite/base.py) rather than in SQLite's sleeping busy handler.
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


def _progress_fields_of(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in PROGRESS_FIELDS}


def job_finish(
    *,
    job_id: uuid.UUID,
    state: JobState,
    seq_above: int = 0,
    attempt: int | None = None,
    progress: ProgressUpdate | None = None,
    result: Mapping[str, Any] | None = None,
    result_file: str = "",
    error: str = "",
    error_detail: str = "",
) -> Job | None:
    """running → a terminal state, with the last unsent progress in the same write.

    With `attempt`, only while the row still carries it: a run replaced after its
    worker was taken for lost does not end the run that replaced it.
    """
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
    where = None if attempt is None else Q(attempts=attempt)
    return _change(job_id, from_states={JobState.RUNNING}, seq_above=seq_above, where=where, **fields)


def job_run(*, job_id: uuid.UUID, task_id: str, redelivered: bool = False) -> Job | None:
    """Runs a job from start to its terminal state (the body of the Celery task)."""
    job = job_start(job_id=job_id, task_id=task_id, redelivered=redelivered)
    if job is None:
        logger.info("job %s: not started (not queued, or its run was lost once too often)", job_id)
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
    finished = job_finish(
        job_id=job.id, attempt=running.attempt, seq_above=running.job.seq, progress=progress, **outcome
    )
    if finished is None:
        logger.warning(
            "%s: attempt %d was ended or replaced meanwhile; its outcome is dropped", log_context, running.attempt
        )
    return finished


# --- recovery: lost workers, lost dispatches -----------------------------------------

# job_create dispatches right after its commit and gives up within a second (the retry
# policy above); a queued job still undispatched after this long will not be sent by it.
REDISPATCH_AFTER = 5.0  # seconds
SWEEP_BATCH = 500  # jobs a sweep handles per pass: bounded work after a mass failure; the next sweep takes the rest


def job_heartbeat(*, runs: Mapping[uuid.UUID, int]) -> int:
    """Marks these runs (job id → attempt) alive in one UPDATE; the number marked."""
    if not runs:
        return 0
    match = reduce(operator.or_, (Q(pk=job_id, attempts=attempt) for job_id, attempt in runs.items()))
    with transaction.atomic():  # queued with the process's other writes on SQLite, as in persist()
        return Job.objects.filter(match, state=JobState.RUNNING).update(heartbeat_at=timezone.now())


heartbeat = Heartbeat(lambda runs: job_heartbeat(runs=runs))


@dataclass(frozen=True)
class StaleSweep:
    requeued: int  # sent to run again
    failed: int  # lost JOB_MAX_ATTEMPTS times, or silent past its hard time limit
    cancelled: int  # lost after a cancel was asked for


def job_sweep_stale(*, now: datetime | None = None) -> StaleSweep:
    """Resolves running jobs whose worker stopped heartbeating JOB_STALE_AFTER ago.

    Each runs again (queued, then dispatched) while attempts remain, else ends
    `failed` with a clear error (`cancelled` if a cancel was asked for); a job silent
    past its kind's hard time limit was killed by it, and fails saying so. Every UPDATE
    repeats the conditions, so a heartbeat, an end or a restart landing meanwhile wins.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_STALE_AFTER)
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, updated_at__lt=cutoff)
    stale = Job.objects.filter(silent, state=JobState.RUNNING).order_by("created_at")
    requeued = failed = cancelled = 0
    columns = ("pk", "kind", "attempts", "cancel_requested", "started_at")
    for job_id, kind, attempts, cancel_requested, started_at in stale.values_list(*columns)[:SWEEP_BATCH]:
        same_run = silent & Q(attempts=attempts)
        out_of_time = _hard_limit_error(kind, started_at=started_at, now=now)
        if cancel_requested or out_of_time or attempts >= settings.JOB_MAX_ATTEMPTS:
            ended = _job_end_lost(
                job_id, attempts=attempts, cancelled=cancel_requested, where=same_run, error=out_of_time
            )
            if ended is not None and ended.state == JobState.CANCELLED:
                cancelled += 1
            elif ended is not None:
                failed += 1
            continue
        job = _change(
            job_id,
            from_states={JobState.RUNNING},
            where=same_run,
            seq_gap=OTHER_WRITER_SEQ_GAP,
            state=JobState.QUEUED,
            dispatched_at=None,
            started_at=None,
            heartbeat_at=None,
            celery_task_id="",
            updated_at=now,
            **_progress_restarted(
                f"Its worker stopped responding; waiting to run again (attempt {attempts + 1} "
                f"of {settings.JOB_MAX_ATTEMPTS})"
            ),
        )
        if job is None:
            continue
        requeued += 1
        logger.warning(
            "job %s (kind %s): no heartbeat for %g s; its worker is lost, queued to run again (attempt %d of %d)",
            job_id,
            kind,
            settings.JOB_STALE_AFTER,
            attempts + 1,
            settings.JOB_MAX_ATTEMPTS,
        )
        transaction.on_commit(partial(job_dispatch, job_id=job_id))
    return StaleSweep(requeued=requeued, failed=failed, cancelled=cancelled)


def job_redispatch_undispatched(*, now: datetime | None = None) -> int:
    """Sends again the queued jobs the broker never took (it was away at submit, or
    the web process died between commit and dispatch); the number sent."""
    cutoff = (now or timezone.now()) - timedelta(seconds=REDISPATCH_AFTER)
    waiting = Job.objects.filter(state=JobState.QUEUED, dispatched_at__isnull=True, updated_at__lt=cutoff)
    sent = 0
    for job_id in waiting.order_by("created_at").values_list("pk", flat=True)[:SWEEP_BATCH]:
        if not job_dispatch(job_id=job_id):
            break  # the broker is still away: the next sweep tries again
        sent += 1
    if sent:
        logger.info("sent %d job(s) the broker had not taken", sent)
    return sent


def job_resend_lost(*, now: datetime | None = None) -> int:
    """Sends again the queued jobs whose task message the broker took and then lost (a
    Redis without persistence restarted before a worker took it); the number sent.

    Only jobs sent more than JOB_REQUEUE_AFTER seconds ago are looked for, at most
    SWEEP_BATCH of them (the longest waiting first), and the broker is searched only
    when there are some, reading at most jobs.broker.SCAN_LIMIT messages. A job is lost
    when the broker holds no message with its id, waiting or taken by a worker. Should
    one be sent twice all the same, the second message does nothing: `job_start`
    starts a job once, and never one that ended.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.JOB_REQUEUE_AFTER)
    waiting = Job.objects.filter(state=JobState.QUEUED, dispatched_at__lt=cutoff).order_by("dispatched_at")
    candidates: dict[str, tuple[uuid.UUID, str, datetime]] = {
        str(job_id): (job_id, kind, dispatched_at)
        for job_id, kind, dispatched_at in waiting.values_list("pk", "kind", "dispatched_at")[:SWEEP_BATCH]
        if dispatched_at is not None  # always: for the type checker
    }
    if not candidates:
        return 0
    from celery_app import app
    from jobs.tasks import run_job

    try:
        with app.connection_for_read() as broker:
            broker.ensure_connection(max_retries=1)
            queues = broker_queues_for(app=app, task_name=run_job.name)
            absent = broker_task_ids_absent(connection=broker, queues=queues, task_ids=candidates)
    except BrokerNotSearchable as exc:
        logger.warning(
            "%d job(s) queued over %g s; not looked for in the broker: %s",
            len(candidates),
            settings.JOB_REQUEUE_AFTER,
            exc,
        )
        return 0
    except (OperationalError, redis.RedisError, OSError) as exc:
        logger.warning("lost task messages not looked for: the broker did not answer (%r)", exc)
        return 0
    sent = 0
    for job_id, kind, dispatched_at in sorted((candidates[key] for key in absent), key=operator.itemgetter(2)):
        resent_at = timezone.now()
        # Claimed first, on the row as read: a job started, cancelled or sent by another
        # sweep since is left alone.
        claim = Job.objects.filter(pk=job_id, state=JobState.QUEUED, dispatched_at=dispatched_at)
        if not claim.update(dispatched_at=resent_at):
            continue
        if not job_dispatch(job_id=job_id):
            # Back to never sent: `job_redispatch_undispatched` sends it once the broker is back.
            Job.objects.filter(pk=job_id, state=JobState.QUEUED, dispatched_at=resent_at).update(dispatched_at=None)
            break
        sent += 1
        logger.warning(
            "job %s (kind %s): the broker lost its task message (sent %.0f s ago, in no queue, taken by no worker); "
            "sent again",
            job_id,
            kind,
            (resent_at - dispatched_at).total_seconds(),
        )
    return sent


def lost_worker_error(attempts: int) -> str:
    times = "once" if attempts == 1 else f"{attempts} times"
    return f"The worker running this job was lost {times}; giving up."


def _hard_limit_error(kind: str, *, started_at: datetime | None, now: datetime) -> str | None:
    """The error of a run silent past its kind's hard time limit: Celery killed it, and
    another run would be killed the same way."""
    try:
        time_limit = kind_get(kind).time_limit
    except UnknownKind:
        return None
    if started_at is None or (now - started_at).total_seconds() < time_limit:
        return None
    return f"The job ran longer than its hard limit of {time_limit} seconds and was stopped."


def _job_end_lost(
    job_id: uuid.UUID, *, attempts: int, cancelled: bool, where: Q, error: str | None = None
) -> Job | None:
    """running → failed (or cancelled, when asked for) after its last run was lost;
    `error` says why when it was not only lost once too often."""
    now = timezone.now()
    end: dict[str, Any] = {"state": JobState.CANCELLED}
    if not cancelled:
        detail = (
            f"Run {attempts} ended with no word from its worker (killed, out of memory, its host lost, or its hard "
            f"time limit); JOB_MAX_ATTEMPTS is {settings.JOB_MAX_ATTEMPTS}."
        )
        end = {"state": JobState.FAILED, "error": error or lost_worker_error(attempts), "error_detail": detail}
    job = _change(
        job_id,
        from_states={JobState.RUNNING},
        where=where,
        seq_gap=OTHER_WRITER_SEQ_GAP,
        finished_at=now,
        updated_at=now,
        **end,
    )
    if job is not None:
        logger.warning("job %s (kind %s): %s after %d lost run(s)", job.id, job.kind, job.state, attempts)
    return job


def _restarted_message(attempt: int) -> str:
    return f"Restarted after its worker was lost (attempt {attempt} of {settings.JOB_MAX_ATTEMPTS})"


def _progress_restarted(message: str) -> dict[str, Any]:
    """The bar back at 0 (its total kept, when known) with a message saying why."""
    return {
        "progress_current": 0,
        "progress_total": F("progress_total"),
        "progress_message": message[:500],
        "progress_rate": None,
        "progress_eta_seconds": None,
        "has_progress": True,
    }


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


# --- submit within the owner's quotas --------------------------------------------


def job_submit(
    *, owner: Owner, kind: str, params: object, from_text: bool = False, files: Mapping[str, object] | None = None
) -> Job:
    """`job_create` within the owner's quotas (jobs/quotas.py), counted in the same
    transaction as the insert. Raises QuotaExceeded, UnknownKind or ParamsInvalid."""
    with transaction.atomic():
        job_quota_check(owner=owner)
        return job_create(owner=owner, kind=kind, params=params, from_text=from_text, files=files)


# --- retention -------------------------------------------------------------------

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
