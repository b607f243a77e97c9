from __future__ import annotations

from django.contrib import admin

from jobs.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "state", "owner_user", "progress_current", "progress_total", "created_at")
    list_filter = ("state", "kind")
    search_fields = ("id", "kind", "owner_user__username", "celery_task_id")
    readonly_fields = [field.name for field in Job._meta.fields]
