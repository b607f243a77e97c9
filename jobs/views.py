"""The pages: `/` (the form and my jobs) and `/jobs/<id>/` (one job). Thin: services do the work."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie

from core.client_address import client_address
from jobs.forms import KindForm, params_form
from jobs.kinds import ParamsInvalid, kind_get, kind_list
from jobs.models import JobState
from jobs.notify_options import NotifyOptions
from jobs.owners import can_view_all, owner_from_request
from jobs.quotas import QuotaExceeded
from jobs.selectors import job_get_visible, job_list_recent_for_owner, job_queue_position
from jobs.serializers import job_payload
from jobs.services import job_submit

NOTIFY_EMAIL_INPUT = "notify_email"  # the form's "Email me when it ends" checkbox


def notify_email_offer(request: HttpRequest) -> dict[str, object] | None:
    """What the form says about "Email me when it ends": None for an anonymous visitor
    (nobody to mail), else the address (empty: the account has none, and the form says so)
    and whether the box is ticked."""
    if not request.user.is_authenticated:
        return None
    return {
        "input": NOTIFY_EMAIL_INPUT,
        "address": getattr(request.user, "email", "") or "",
        "checked": request.method == "POST" and request.POST.get(NOTIFY_EMAIL_INPUT) == "on",
    }


@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    owner = owner_from_request(request, create=True)  # the first visit (or a job posted) creates the anonymous owner
    kind_form = KindForm(request.POST or None)
    posted = request.method == "POST"
    forms = {
        kind.name: params_form(kind, request.POST if posted else None, request.FILES if posted else None)
        for kind in kind_list()
    }
    status = 200
    retry_after: int | None = None
    if request.method == "POST":
        if kind_form.is_valid():
            kind = kind_get(kind_form.cleaned_data["kind"])
            form = forms[kind.name]
            if form.is_valid():
                uploads = {param.name for param in kind.file_params}
                params = {name: value for name, value in form.cleaned_data.items() if name not in uploads}
                files = {name: value for name, value in form.cleaned_data.items() if name in uploads}
                try:
                    job = job_submit(
                        owner=owner,
                        kind=kind.name,
                        params=params,
                        files=files,
                        client_address=client_address(request),
                        notify=NotifyOptions(email=request.POST.get(NOTIFY_EMAIL_INPUT) == "on"),
                    )
                except QuotaExceeded as exc:
                    kind_form.add_error(None, str(exc))
                    retry_after = exc.retry_after
                except ParamsInvalid as exc:
                    for field, messages in exc.errors.items():
                        for message in messages:
                            form.add_error(field if field in form.fields else None, message)
                else:
                    return redirect(f"/#job-{job.id}")
        status = 400 if retry_after is None else 429
    # A first visit starts on a kind that runs as it is (no file to choose first).
    startable = [kind.name for kind in kind_list() if not kind.file_params] or [kind_list()[0].name]
    selected = kind_form.data.get("kind") if kind_form.is_bound else startable[0]
    # "Edit and run" (`/?edit=<job id>`): the form starts as that job was started. A job
    # one may not see, or of a kind no longer registered, is ignored: the plain form.
    editing = None if posted else job_get_visible(owner=owner, job_id=request.GET.get("edit"))
    if editing is not None and editing.kind in forms:
        uploads = {param.name for param in kind_get(editing.kind).file_params}  # a file cannot be prefilled
        forms[editing.kind].initial = {name: value for name, value in editing.params.items() if name not in uploads}
        selected = editing.kind
    else:
        editing = None
    jobs = [
        job_payload(job, staff=owner.views_all, queue_position=job_queue_position(job=job))
        for job in job_list_recent_for_owner(owner=owner)
    ]
    context = {
        "kind_form": kind_form,
        "kinds": [(kind, forms[kind.name]) for kind in kind_list()],
        "selected_kind": selected,
        "editing": editing,
        "jobs": jobs,
        "flower_url": settings.FLOWER_URL,
        "notify_email": notify_email_offer(request),
    }
    response = render(request, "jobs/index.html", context, status=status)
    if retry_after is not None:
        response["Retry-After"] = str(retry_after)
    return response


@ensure_csrf_cookie
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    owner = owner_from_request(request)
    job = job_get_visible(owner=owner, job_id=job_id)
    if job is None:
        raise Http404("No job with this id.")
    payload = job_payload(job, staff=owner.views_all, queue_position=job_queue_position(job=job))
    return render(request, "jobs/detail.html", {"job": payload, "flower_url": settings.FLOWER_URL})


def staff_jobs(request: HttpRequest) -> HttpResponse:
    """The staff live view: every queued and running job (fed by `/ws/staff/jobs/`)."""
    if not request.user.is_authenticated:
        return redirect(f"{settings.LOGIN_URL}?next={request.path}")
    if not can_view_all(request.user):
        raise Http404("No such page.")  # for anyone without jobs.view_all_jobs the page does not exist
    return render(request, "jobs/staff.html", {"states": JobState.choices})
