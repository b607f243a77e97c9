"""Submitting a job: validate and save it (within the owner's quotas), then hand it to a
worker once the row is committed."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from celery_app import app
from jobs.kinds import kind_get
from jobs.models import Job
from jobs.notify_options import (
    ANONYMOUS_NOTIFY_MESSAGE,
    NO_ADDRESS_NOTIFY_MESSAGE,
    NO_NOTIFY,
    NotifyInvalid,
    NotifyOptions,
)
from jobs.owners import Owner
from jobs.quotas import client_address_key, job_quota_check
from jobs.services.transitions import job_publish
from jobs.storage_quota import storage_quota_check
from jobs.task_names import RUN_JOB_TASK
from jobs.uploads import upload_remove, upload_save

logger = logging.getLogger(__name__)

# A submit answers at once instead of waiting out kombu's default retries of a failed
# publish; the sweeper sends the job once the broker is back (`job_redispatch_undispatched`).
DISPATCH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}


def job_create(
    *,
    owner: Owner,
    kind: str,
    params: object,
    from_text: bool = False,
    files: Mapping[str, object] | None = None,
    address_key: str = "",
    notify: NotifyOptions = NO_NOTIFY,
) -> Job:
    """Validates and saves a job, then hands it to a worker once the row is committed.

    `files` are the uploads of a kind's file parameters: each is saved under the job's
    upload directory before the row is written, and its params hold the stored path.
    `notify.email` asks for a mail when the job ends (jobs/services/notify.py).
    Raises UnknownKind or ParamsInvalid (both name the problem; NotifyInvalid, a
    ParamsInvalid, for a notify its owner may not ask for) before anything is saved.
    """
    if notify.email:
        notify_email_check(owner=owner)
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
                client_address=address_key,
                kind=job_kind.name,
                params=cleaned,
                notify_email=notify.email,
                seq=1,
                created_at=now,
                updated_at=now,
            )
            job_publish(job=job)
            transaction.on_commit(lambda: job_dispatch(job_id=job.id))
    except BaseException:
        if job_kind.file_params:
            upload_remove(job_id)  # no job, no files: nothing else would ever remove them
        raise
    logger.info("job %s created (kind %s)", job.id, job.kind)
    return job


def job_submit(
    *,
    owner: Owner,
    kind: str,
    params: object,
    from_text: bool = False,
    files: Mapping[str, object] | None = None,
    client_address: str | None = None,
    notify: NotifyOptions = NO_NOTIFY,
) -> Job:
    """`job_create` within the owner's quotas and its client address's (jobs/quotas.py),
    and the owner's storage quotas (jobs/storage_quota.py), counted in the same
    transaction as the insert. Raises QuotaExceeded, UnknownKind or ParamsInvalid."""
    address_key = client_address_key(client_address)
    with transaction.atomic():
        job_quota_check(owner=owner, address_key=address_key)
        storage_quota_check(owner=owner)
        return job_create(
            owner=owner,
            kind=kind,
            params=params,
            from_text=from_text,
            files=files,
            address_key=address_key,
            notify=notify,
        )


def notify_email_check(*, owner: Owner) -> None:
    """Raises NotifyInvalid unless `owner` is a signed-in user with an email address."""
    if owner.user_id is None:
        raise NotifyInvalid(ANONYMOUS_NOTIFY_MESSAGE)
    email = get_user_model().objects.filter(pk=owner.user_id).values_list("email", flat=True).first()
    if not email:
        raise NotifyInvalid(NO_ADDRESS_NOTIFY_MESSAGE)


def job_dispatch(*, job_id: uuid.UUID) -> bool:
    """Sends the job's task to the broker; True when the broker took it.

    A failure is logged and the job stays queued and undispatched (`dispatched_at` null)
    until the sweeper sends it again.
    """
    job = Job.objects.get(pk=job_id)
    job_kind = kind_get(job.kind)
    try:
        # By name, with the options the task's own `apply_async` would add: this module
        # never imports jobs.tasks, which calls it.
        app.send_task(
            RUN_JOB_TASK,
            # A message sent before the sweeper queues the job again does nothing (job_start).
            args=(str(job.id), job.requeues),
            task_id=str(job.id),
            soft_time_limit=job_kind.soft_time_limit,
            time_limit=job_kind.time_limit,
            retry=True,
            retry_policy=DISPATCH_RETRY_POLICY,
            ignore_result=True,  # as the task declares: nothing waits for its result
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
