"""Jobs in Django's admin: a read-only record with two actions, cancel and retry.

Every field is read-only: the worker, the sweeper and the services own every change
(an edit here would bypass `seq` and publishing). The actions go through the same
services as the API, so open pages see their effect live.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from jobs.exceptions import JobAlreadyFinished, JobNotEnded, JobNotFound
from jobs.kinds import ParamsInvalid, UnknownKind
from jobs.models import ImportedContact, Job
from jobs.owners import Owner
from jobs.services import RetryUploadMissing, job_cancel, job_retry

STAFF = Owner(views_all=True)  # the admin sees, and with change permission cancels, every job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "owner", "progress", "duration", "attempts", "created_at")
    list_filter = ("state", "kind", "created_at")
    search_fields = ("id", "kind", "owner_user__username", "owner_token", "celery_task_id", "error")
    date_hierarchy = "created_at"
    ordering = ("-created_at",)
    list_select_related = ("owner_user",)
    readonly_fields = [field.name for field in Job._meta.fields]
    actions = ("cancel_jobs", "retry_jobs")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs start through the form, the API or `manage.py jobs submit`

    @admin.display(description="owner")
    def owner(self, job: Job) -> str:
        if job.owner_user is not None:
            return str(job.owner_user)
        return f"visitor {job.owner_token[:8]}" if job.owner_token else "—"

    @admin.display(description="progress")
    def progress(self, job: Job) -> str:
        if not job.has_progress:
            return "—"
        if job.progress_total:
            return f"{100 * (job.progress_current or 0) / job.progress_total:.1f} %"
        return f"{job.progress_current or 0:g} (total unknown)"

    @admin.display(description="duration")
    def duration(self, job: Job) -> str:
        if job.started_at is None:
            return "—"
        end = job.finished_at or job.updated_at
        seconds = max(0.0, (end - job.started_at).total_seconds())
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        asked, finished = 0, 0
        for job in queryset:
            try:
                job_cancel(owner=STAFF, job_id=job.id)
                asked += 1
            except (JobAlreadyFinished, JobNotFound):
                finished += 1
        if asked:
            self.message_user(request, f"Cancel asked for {asked} job(s); running ones stop at their next report.")
        if finished:
            self.message_user(request, f"{finished} job(s) had already ended.", messages.WARNING)

    @admin.action(description="Retry the selected jobs (a new job with the same parameters)", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        started = 0
        for job in queryset:
            reason = _retry(job)
            if reason is None:
                started += 1
            else:
                self.message_user(request, f"Job {job.id} ({job.kind}) was not retried: {reason}", messages.WARNING)
        if started:
            self.message_user(request, f"Started {started} new job(s) with the same parameters and owner.")


def _retry(job: Job) -> str | None:
    """Runs `job` again (`job_retry`, outside the quotas); None, or why it could not."""
    try:
        job_retry(job=job, within_quotas=False)
    except JobNotEnded:
        return f"it is still {job.state}; only a job that ended can be retried."
    except UnknownKind as exc:
        return str(exc)
    except RetryUploadMissing as exc:
        return (
            f"its uploaded file {exc.stored} is gone (purged, or MEDIA_ROOT is not shared with this "
            "process); ask its owner to upload the file again."
        )
    except ParamsInvalid as exc:
        problems = "; ".join(f"{field}: {' '.join(errors)}" for field, errors in exc.errors.items())
        return f"its parameters no longer pass the kind's checks ({problems})."
    return None


@admin.register(ImportedContact)
class ImportedContactAdmin(admin.ModelAdmin):
    """The rows `csv_import` jobs stored: read-only, as they are the jobs' output."""

    list_display = ("email", "name", "age", "line", "job")
    search_fields = ("email", "name", "job__id")
    list_select_related = ("job",)
    raw_id_fields = ("job",)  # never a select of every job
    readonly_fields = ("job", "line", "email", "name", "age")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False  # rows go with their job (retention purge)
