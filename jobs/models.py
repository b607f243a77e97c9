"""The Job: the database row is the source of truth for a job's lifecycle."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # An owner is a signed-in user, or an anonymous visitor identified by a random
    # token kept in their session (never the session key itself: that is a credential
    # and would end up in Redis group names).
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="jobs"
    )
    owner_token = models.CharField(max_length=64, blank=True, default="")
    # Where it was submitted from, as JOB_QUOTA_PER_IP counts it (jobs/quotas.py): the
    # client address (core/client_address.py), an IPv6 one as its /64; empty when unknown.
    client_address = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=64)
    params = models.JSONField(default=dict)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    # Strictly increases with every change, whoever makes it (worker, web, sweeper):
    # clients drop any frame whose seq is not above the last one they showed.
    seq = models.PositiveBigIntegerField(default=0)

    progress_current = models.FloatField(null=True, blank=True)
    progress_total = models.FloatField(null=True, blank=True)
    progress_message = models.CharField(max_length=500, blank=True, default="")
    progress_rate = models.FloatField(null=True, blank=True)
    progress_eta_seconds = models.FloatField(null=True, blank=True)
    has_progress = models.BooleanField(default=False)

    result = models.JSONField(null=True, blank=True)
    result_file = models.FileField(upload_to="results/", blank=True, default="")
    # What the job's result files hold on disk, written at its finish: the result
    # storage quota sums it (jobs/storage_quota.py) instead of walking the files.
    result_bytes = models.PositiveBigIntegerField(default=0)
    # The job's log (jobs/logs.py): lines written so far, how many of them are no longer
    # kept (past JOB_LOG_MAX_LINES), and what the kept ones hold (counted in the result quota).
    log_total = models.PositiveBigIntegerField(default=0)
    log_dropped = models.PositiveBigIntegerField(default=0)
    log_bytes = models.PositiveBigIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True, default="")
    error_detail = models.TextField(blank=True, default="")  # the traceback: logs and staff only

    # "Email me when it ends" (signed-in owners only): the mail goes once, to whichever
    # process stamps notified_at first (jobs/services/notify.py), whatever redeliveries,
    # requeues or sweeps end the job more than once in a run.
    notify_email = models.BooleanField(default=False)
    notified_at = models.DateTimeField(null=True, blank=True)

    celery_task_id = models.CharField(max_length=255, blank=True, default="")
    cancel_requested = models.BooleanField(default=False)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Queued and out of the broker: a worker took its task while its owner already ran
    # JOB_QUOTA_RUNNING jobs (or had that many queued ahead of it), and let it go. It is
    # dispatched again when its owner's line moves (jobs/services/fair_share.py).
    held = models.BooleanField(default=False)
    # How many times a worker started the job: a job whose worker is lost runs again
    # until JOB_MAX_ATTEMPTS. Also the fence of a run: a worker writes its progress and
    # its end only while the row still carries its attempt, so a worker declared lost
    # that comes back can never overwrite the run that replaced it.
    attempts = models.PositiveSmallIntegerField(default=0)
    # Times the sweeper queued it again after its worker was lost; a task message carries
    # the count it was sent with, and one sent before a requeue does nothing.
    requeues = models.PositiveSmallIntegerField(default=0)
    # Refreshed by the worker running the job every JOB_HEARTBEAT_INTERVAL seconds; the
    # sweeper takes a running job whose heartbeat is older than JOB_STALE_AFTER as lost.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner_user", "-created_at"], name="job_user_recent"),
            models.Index(fields=["owner_token", "-created_at"], name="job_token_recent"),
            models.Index(fields=["state", "created_at"], name="job_state_created"),
            models.Index(fields=["client_address", "state"], name="job_address_state"),
        ]
        # Rights beyond one's own jobs, granted to users or groups (superusers have them
        # all); the is_staff flag alone grants neither (jobs/owners.py checks them).
        permissions = [
            ("view_all_jobs", "Can see every job, its traceback and result file, and the live view"),
            ("bypass_quotas", "Can start jobs and open streams past the quotas"),
            ("view_metrics", "Can read the Prometheus figures at /metrics"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def owner_key(self) -> str:
        """The owner as one string: `u.<user id>` or `s.<session token>`."""
        return f"u.{self.owner_user_id}" if self.owner_user_id else f"s.{self.owner_token}"


class ImportedContact(models.Model):
    """One valid row of a `csv_import` job's file; deleted with its job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="imported_contacts")
    line = models.PositiveIntegerField()  # where the row starts in the uploaded file (1 is the header)
    email = models.EmailField(max_length=254)
    name = models.CharField(max_length=200)
    age = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["job", "line"]
        # One row per line of a job's file: a rerun (or a worker taken for lost that
        # comes back) writing a line again changes nothing (bulk_create ignores conflicts).
        constraints = [models.UniqueConstraint(fields=["job", "line"], name="imported_contact_job_line")]

    def __str__(self) -> str:
        return f"{self.email} (line {self.line})"


class JobLogLine(models.Model):
    """One kept line of a job's log (docs/contract.md#job-logs); deleted with its job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    n = models.PositiveBigIntegerField()  # from 1, across the job's attempts
    t = models.DateTimeField()  # when the kind wrote it
    level = models.CharField(max_length=8)
    text = models.TextField()

    class Meta:
        ordering = ["job", "n"]
        constraints = [models.UniqueConstraint(fields=["job", "n"], name="job_log_line_job_n")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.n}"
