"""The pages: `/` (the form and my jobs) and `/jobs/<id>/` (one job). Thin: services do the work."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import ensure_csrf_cookie

from jobs.forms import KindForm, params_form
from jobs.kinds import ParamsInvalid, kind_get, kind_list
from jobs.owners import owner_from_request
from jobs.selectors import job_get_visible, job_list_recent_for_owner, job_queue_position
from jobs.services import job_create
from notifications.events import job_payload


@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    owner = owner_from_request(request)  # the first visit creates the anonymous owner
    kind_form = KindForm(request.POST or None)
    forms = {kind.name: params_form(kind, request.POST if request.method == "POST" else None) for kind in kind_list()}
    status = 200
    if request.method == "POST":
        if kind_form.is_valid():
            kind = kind_get(kind_form.cleaned_data["kind"])
            form = forms[kind.name]
            if form.is_valid():
                try:
                    job = job_create(owner=owner, kind=kind.name, params=form.cleaned_data)
                except ParamsInvalid as exc:
                    for field, messages in exc.errors.items():
                        for message in messages:
                            form.add_error(field if field in form.fields else None, message)
                else:
                    return redirect(f"/#job-{job.id}")
        status = 400
    selected = kind_form.data.get("kind") if kind_form.is_bound else kind_list()[0].name
    jobs = [
        job_payload(job, staff=owner.is_staff, queue_position=job_queue_position(job=job))
        for job in job_list_recent_for_owner(owner=owner)
    ]
    context = {
        "kind_form": kind_form,
        "kinds": [(kind, forms[kind.name]) for kind in kind_list()],
        "selected_kind": selected,
        "jobs": jobs,
        "flower_url": settings.FLOWER_URL,
    }
    return render(request, "jobs/index.html", context, status=status)


@ensure_csrf_cookie
def job_detail(request: HttpRequest, job_id: str) -> HttpResponse:
    owner = owner_from_request(request)
    job = job_get_visible(owner=owner, job_id=job_id)
    if job is None:
        raise Http404("No job with this id.")
    payload = job_payload(job, staff=owner.is_staff, queue_position=job_queue_position(job=job))
    return render(request, "jobs/detail.html", {"job": payload, "flower_url": settings.FLOWER_URL})
