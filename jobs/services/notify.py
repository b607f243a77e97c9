"""The email of a job's end ("Email me when it ends"): sent at most once per job.

`job_transition` (jobs/services/transitions.py) is the one place a job's state changes,
so every end comes through it: a worker's finish, the sweeper's end of a lost run, the
cancel of a queued job. Once that write commits, the `jobs.notify_ended` task is sent;
the worker that runs it claims the mail with a conditional UPDATE of `notified_at`, and
only the one that stamps it sends. So a redelivered task, a requeue, a second sweep or
a second task can never send a second mail. The mail goes from a worker, not from the
process that ended the job: a cancel from a socket must not wait on an SMTP server in
daphne's one database thread for sockets. A mail that fails is logged and not tried
again (at most once): the job's end is never held up by, or undone by, a mail server.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import partial

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from celery_app import app
from jobs.kinds import UnknownKind, kind_get
from jobs.models import TERMINAL_STATES, Job
from jobs.task_names import NOTIFY_ENDED_TASK

logger = logging.getLogger(__name__)

# A job's end answers at once, as a submit does (jobs/services/submit.py).
DISPATCH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1}
SUBJECT_TEMPLATE = "jobs/email/job_ended_subject.txt"
BODY_TEMPLATE = "jobs/email/job_ended.txt"


@dataclass(frozen=True)
class JobEndedMail:
    subject: str
    body: str
    to: str


def job_notify_on_commit(*, job: Job) -> None:
    """Once the current transaction commits, has a worker mail the owner of `job` (as
    just written) that it ended, if they asked for it and nobody mailed them yet."""
    if job.notify_email and job.state in TERMINAL_STATES and job.notified_at is None:
        transaction.on_commit(partial(job_notify_dispatch, job_id=job.id), robust=True)


def job_notify_dispatch(*, job_id: uuid.UUID) -> bool:
    """Sends the `jobs.notify_ended` task; False, logged, when the broker did not take it."""
    try:
        app.send_task(
            NOTIFY_ENDED_TASK, args=(str(job_id),), ignore_result=True, retry=True, retry_policy=DISPATCH_RETRY_POLICY
        )
    except Exception as exc:
        logger.error("job %s: the task mailing its end could not be sent (%r); no end mail", job_id, exc)
        return False
    return True


def job_notify_ended(*, job_id: uuid.UUID) -> bool:
    """Claims the job's end mail and sends it; True when this call sent it.

    Never raises: a claim lost to another process sends nothing, and a mail that fails
    is logged with the job's id.
    """
    try:
        claimed = Job.objects.filter(
            pk=job_id, notify_email=True, notified_at__isnull=True, state__in=TERMINAL_STATES
        ).update(notified_at=timezone.now())
        if not claimed:
            return False  # another process sent it, or is sending it
        job = Job.objects.select_related("owner_user").get(pk=job_id)
        mail = job_ended_mail(job=job)
        if mail is None:
            logger.warning("job %s (kind %s): its owner has no email address; no end mail sent", job.id, job.kind)
            return False
        send_mail(mail.subject, mail.body, settings.DEFAULT_FROM_EMAIL, [mail.to], fail_silently=False)
    except Exception:
        logger.exception("job %s: the email of its end could not be sent", job_id)
        return False
    logger.info("job %s (kind %s): end mail (%s) sent", job.id, job.kind, job.state)
    return True


def job_ended_mail(*, job: Job) -> JobEndedMail | None:
    """The mail telling the job's owner how it ended; None when the owner has no address."""
    to = job.owner_user.email if job.owner_user is not None else ""
    if not to:
        return None
    context = {"job": job, "title": kind_title(job.kind), "outcome": job.state, "link": job_link(job=job)}
    subject = " ".join(render_to_string(SUBJECT_TEMPLATE, context).split())  # one line: headers take no newline
    return JobEndedMail(subject=subject, body=render_to_string(BODY_TEMPLATE, context), to=to)


def job_link(*, job: Job) -> str:
    """The job's page, absolute: SITE_URL (core/settings.py) and the job's `url`."""
    return f"{settings.SITE_URL}/jobs/{job.id}/"


def kind_title(name: str) -> str:
    """A kind's title; its name for a kind no longer registered (a job outlives its code)."""
    try:
        return kind_get(name).title
    except UnknownKind:
        return name
