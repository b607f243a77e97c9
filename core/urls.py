from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, JsonResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from core.api_errors import errors_response
from core.health import healthz
from core.metrics import metrics
from jobs import views
from jobs.api import api
from notifications.sse import job_events


@csrf_exempt  # it changes nothing: a POST to a wrong path learns that, not that its CSRF token is missing
def api_not_found(request: HttpRequest) -> JsonResponse:
    return errors_response(404, "path", f"No API endpoint at {request.path}.")


urlpatterns = [
    path("", views.index, name="index"),
    path("jobs/<str:job_id>/", views.job_detail, name="job-detail"),
    path("staff/jobs/", views.staff_jobs, name="staff-jobs"),
    path("api/jobs/<str:job_id>/events/", job_events, name="job-events"),
    path("api/", api.urls),
    re_path(r"^api/", api_not_found),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
