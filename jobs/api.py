"""The JSON API (docs/contract.md#http), on django-ninja: typed schemas give the OpenAPI document.

Every error answers `{"errors": {"<field>": ["<message>"]}}` naming what was wrong.
Session auth applies CSRF to every unsafe request, anonymous visitors included
(ninja's own session auth checks it only for signed-in users).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.middleware.csrf import get_token
from ninja import Field, NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError, ValidationError
from ninja.security import APIKeyCookie
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from core.api_errors import errors_body, errors_response
from core.client_address import client_address
from core.whole_numbers import BIGINT_DIGITS, is_whole_number
from jobs.body_limits import MULTIPART, MULTIPART_OVERHEAD, largest_file_param
from jobs.downloads import LogTextResponse, result_download
from jobs.exceptions import JobAlreadyFinished, JobNotEnded, JobNotFound
from jobs.kinds import ParamsInvalid, UnknownKind, kind_get, kind_list, size_text
from jobs.logs import LOG_PAGE_MAX, LogPage
from jobs.notify_options import (
    ANONYMOUS_NOTIFY_MESSAGE,
    NO_NOTIFY,
    NOTIFY_FIELD,
    NotifyInvalid,
    NotifyOptions,
    notify_options_parse,
)
from jobs.owners import Owner, owner_from_request
from jobs.quotas import QuotaExceeded
from jobs.selectors import job_get_visible, job_list_visible, job_log_page, job_log_text, job_queue_position
from jobs.serializers import JobPayload, job_payload
from jobs.services import job_cancel, job_retry, job_submit

MAX_PAGE_SIZE = 100
JSON_FIELDS = ("kind", "params", NOTIFY_FIELD)
MULTIPART_FIELDS = ("kind", "params", NOTIFY_FIELD)

# --- auth ------------------------------------------------------------------------


class SessionOwnerAuth(APIKeyCookie):
    """Every visitor is an owner: a user, or an anonymous session (created only by a
    request that creates a job: `_submit`)."""

    param_name = settings.SESSION_COOKIE_NAME

    def __call__(self, request: HttpRequest) -> Any:
        # Before the CSRF check, which reads (and stores) the whole multipart body.
        _refuse_oversized_upload(request)
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, key: str | None) -> Owner:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            get_token(request)  # hands API clients the csrftoken cookie for their POSTs
        return owner_from_request(request)


api = NinjaAPI(
    title="jobstream API",
    version="1.0",
    description="Start slow jobs, follow their progress, fetch their results. "
    "Live updates: WebSocket /ws/jobs/<id>/ and /ws/jobs/, or Server-Sent Events at "
    "/api/jobs/<id>/events/.",
    urls_namespace="api",
    openapi_url="/openapi.json",
    docs_url="/docs",
    auth=SessionOwnerAuth(),
)


class UploadRefused(Exception):
    """A multipart body refused before it is read; answered `status` naming `field`."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def _refuse_oversized_upload(request: HttpRequest) -> None:
    """Raises UploadRefused for a multipart body larger than any kind's file could make
    it, or without a Content-Length (which Django's parser needs)."""
    if request.method != "POST" or request.content_type != MULTIPART:
        return
    largest = largest_file_param()
    if largest is None:
        return  # no kind takes a file: the view answers 415
    try:
        size = int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        raise UploadRefused(400, "body", "Send multipart/form-data with a Content-Length header.") from None
    if size > largest.limit + MULTIPART_OVERHEAD:
        raise UploadRefused(
            413, "file", f"The upload is {size_text(size)}; a file may be at most {largest.limit_text}."
        )


def _owner(request: HttpRequest) -> Owner:
    owner = request.auth  # type: ignore[attr-defined]
    assert isinstance(owner, Owner)
    return owner


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    for error in exc.errors:
        names = [str(part) for part in error.get("loc", ()) if part not in ("query", "body", "path")]
        errors.setdefault(names[-1] if names else "request", []).append(str(error.get("msg", "Invalid value.")))
    return JsonResponse({"errors": errors}, status=400)


@api.exception_handler(UploadRefused)
def on_upload_refused(request: HttpRequest, exc: UploadRefused) -> HttpResponse:
    return errors_response(exc.status, exc.field, exc.message)


# The parse of a multipart body happens in the CSRF check (it looks for the token among
# the fields), so its failures arrive here, not in the view.
@api.exception_handler(MultiPartParserError)
def on_multipart_error(request: HttpRequest, exc: MultiPartParserError) -> HttpResponse:
    return errors_response(400, "body", f"Malformed multipart/form-data: {exc}.")


@api.exception_handler(RequestDataTooBig)
def on_request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 1024
    return errors_response(413, "body", f"The fields of the body (files aside) are larger than {limit} KiB.")


@api.exception_handler(TooManyFieldsSent)
@api.exception_handler(TooManyFilesSent)
def on_too_many_parts(request: HttpRequest, exc: Exception) -> HttpResponse:
    return errors_response(400, "body", f"Too many fields or files: {exc}.")


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if exc.status_code == 403:
        return errors_response(
            403, "csrf", "CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header."
        )
    return errors_response(exc.status_code, "request", str(exc))


# --- schemas ---------------------------------------------------------------------
# A job's schema is its one declaration, jobs/serializers.py JobPayload.

JobOrErrors = JobPayload | dict[str, Any]  # a job, or {"errors": …}


class ErrorsOut(Schema):
    errors: dict[str, list[str]]


class NotifyIn(Schema):
    model_config = {"extra": "forbid"}

    email: bool = Field(False, description="Email me the outcome and a link when it ends (signed-in users only).")


class JobCreateIn(Schema):
    kind: str = Field(..., description="A name from /api/job-kinds/.")
    params: dict[str, Any] = Field(default_factory=dict, description="Fits the kind's JSON Schema.")
    notify: NotifyIn | None = Field(None, description="How to be told when the job ends.")


class JobUploadIn(Schema):
    kind: str = Field(..., description="A kind with a file parameter (`format: binary` in its schema).")
    params: str = Field("{}", description="The other parameters, as a JSON object in a string.")
    notify: str | None = Field(None, description='As in JSON, in a string: {"email": true}.')
    file: str = Field(
        ..., json_schema_extra={"format": "binary"}, description="The file; named for the kind's file parameter."
    )


class JobPageOut(Schema):
    count: int
    next: str | None
    previous: str | None
    results: list[JobPayload]


class JobKindOut(Schema):
    name: str
    title: str
    description: str
    params_schema: dict[str, Any] = Field(..., alias="schema", description="JSON Schema of params.")


class PageQuery(Schema):
    page: int = Field(1, ge=1)
    page_size: int = Field(settings.JOB_LIST_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)


def _whole_number(value: object) -> object:
    """A query value as ASCII digits, few enough for int(): pydantic's own parse of an
    int also takes " 5", "+5", "1_000" and "5.0"."""
    if isinstance(value, str) and not is_whole_number(value):
        raise PydanticCustomError(
            "whole_number", "Must be a whole number of at most {digits} digits.", {"digits": BIGINT_DIGITS}
        )
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]


class LogPageQuery(Schema):
    after: WholeNumber = Field(0, ge=0, description="Lines numbered above this: the `next` of the page before.")
    limit: WholeNumber = Field(LOG_PAGE_MAX, ge=1, le=LOG_PAGE_MAX, description="Lines at most.")


def _job_out(job: Any, owner: Owner) -> JobPayload:
    return job_payload(job, staff=owner.views_all, queue_position=job_queue_position(job=job))


def _visible_job_or_404(owner: Owner, job_id: str) -> Any:
    job = job_get_visible(owner=owner, job_id=job_id)
    if job is None:
        raise JobNotFound()
    return job


@api.exception_handler(JobNotFound)
def on_job_not_found(request: HttpRequest, exc: JobNotFound) -> HttpResponse:
    return errors_response(404, "id", "No job with this id.")


# --- endpoints -------------------------------------------------------------------


@api.get("/job-kinds/", response=list[JobKindOut], by_alias=True, summary="The kinds of job and their parameters")
def list_job_kinds(request: HttpRequest) -> list[dict[str, Any]]:
    return [{"name": k.name, "title": k.title, "description": k.description, "schema": k.schema()} for k in kind_list()]


@api.post(
    "/jobs/",
    response={201: JobPayload, 400: ErrorsOut, 413: ErrorsOut, 415: ErrorsOut, 429: ErrorsOut},
    exclude_unset=True,
    summary="Start a job",
    description="429 when the owner is over a quota (jobs at once, jobs per minute, result bytes, imported rows), "
    "with `Retry-After` in seconds. "
    "A kind with a file parameter (csv_import) takes multipart/form-data: the fields kind, params (a JSON object "
    "in a string) and the file; 413 when the file is over its limit. "
    '`notify`: `{"email": true}` mails a signed-in owner the outcome and a link when the job ends, once; '
    "400 naming notify for an anonymous visitor or a user without an email address.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": JobCreateIn.model_json_schema()},
                MULTIPART: {"schema": JobUploadIn.model_json_schema()},
            },
        }
    },
)
def create_job(request: HttpRequest, response: HttpResponse) -> Status[JobOrErrors]:
    if request.content_type == MULTIPART:
        return _create_job_from_upload(request, response)
    if request.content_type != "application/json":
        return Status(
            415,
            errors_body(
                "content_type",
                f"Send application/json (multipart/form-data for a kind with a file), "
                f"not {request.content_type or 'nothing'}.",
            ),
        )
    try:
        raw = request.body
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 1024
        return Status(413, errors_body("body", f"The body is larger than {limit} KiB."))
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        return Status(400, errors_body("body", f"Malformed JSON: {exc}."))
    except RecursionError:  # "[[[[…" nested deeper than the parser's stack, well within 64 KiB
        return Status(400, errors_body("body", "Malformed JSON: nested too deeply."))
    if not isinstance(body, dict):
        return Status(400, errors_body("body", 'Must be a JSON object like {"kind": "...", "params": {...}}.'))
    errors: dict[str, list[str]] = {
        str(key): [f"Unknown field; send only {', '.join(JSON_FIELDS)}."] for key in body if key not in JSON_FIELDS
    }
    if "kind" not in body:
        errors["kind"] = ["This field is required."]
    notify = _notify_or_errors(body.get(NOTIFY_FIELD), errors)
    if errors:
        return Status(400, {"errors": errors})
    return _submit(request, response, kind=body["kind"], params=body.get("params", {}), notify=notify)


def _notify_or_errors(value: object, errors: dict[str, list[str]]) -> NotifyOptions:
    """The request's `notify` field; a malformed one is added to `errors`."""
    try:
        return notify_options_parse(value)
    except NotifyInvalid as exc:
        errors.update(exc.errors)
        return NO_NOTIFY


def _create_job_from_upload(request: HttpRequest, response: HttpResponse) -> Status[JobOrErrors]:
    """POST /api/jobs/ as multipart/form-data: the fields kind and params (JSON), and the files."""
    kind_name = request.POST.get("kind")
    try:
        kind = kind_get(kind_name)
    except UnknownKind as exc:
        if kind_name is None:
            return Status(
                415,
                errors_body(
                    "content_type",
                    "multipart/form-data is taken only for a kind with a file parameter, named in the field 'kind'; "
                    "other kinds take application/json.",
                ),
            )
        return Status(400, errors_body("kind", str(exc)))
    if not kind.file_params:
        return Status(
            415,
            errors_body("content_type", f"Kind '{kind.name}' takes no file: send application/json, not {MULTIPART}."),
        )
    errors: dict[str, list[str]] = {
        str(key): [f"Unknown field; send only {', '.join(MULTIPART_FIELDS)} and the file."]
        for key in request.POST
        if key not in MULTIPART_FIELDS
    }
    for key in (*MULTIPART_FIELDS, *request.FILES):
        values = request.FILES.getlist(key) if key in request.FILES else request.POST.getlist(key)
        if len(values) > 1:
            errors[key] = [f"Send one '{key}', not {len(values)}."]
    try:
        params = json.loads(request.POST.get("params") or "{}", parse_constant=_reject_constant)
    except ValueError as exc:
        errors["params"] = [f"Malformed JSON: {exc}."]
    except RecursionError:
        errors["params"] = ["Malformed JSON: nested too deeply."]
    notify = NO_NOTIFY
    if (notify_text := request.POST.get(NOTIFY_FIELD)) is not None:
        try:
            notify = _notify_or_errors(json.loads(notify_text, parse_constant=_reject_constant), errors)
        except (ValueError, RecursionError) as exc:
            errors[NOTIFY_FIELD] = [f'Malformed JSON: {exc}; send an object like {{"email": true}} in a string.']
    if errors:
        return Status(400, {"errors": errors})
    return _submit(request, response, kind=kind.name, params=params, files=request.FILES.dict(), notify=notify)


def _submit(
    request: HttpRequest,
    response: HttpResponse,
    *,
    kind: Any,  # checked by job_submit: an unknown kind or a non-string is answered 400
    params: object,
    files: dict[str, Any] | None = None,
    notify: NotifyOptions = NO_NOTIFY,
) -> Status[JobOrErrors]:
    owner = _owner(request)
    if notify.email and owner.user_id is None:  # refused before the anonymous session starts
        return Status(400, {"errors": NotifyInvalid(ANONYMOUS_NOTIFY_MESSAGE).errors})
    if owner.user_id is None and not owner.token:
        owner = owner_from_request(request, create=True)  # a first job: the anonymous session starts here
    try:
        job = job_submit(
            owner=owner, kind=kind, params=params, files=files, client_address=client_address(request), notify=notify
        )
    except QuotaExceeded as exc:
        response["Retry-After"] = str(exc.retry_after)
        return Status(429, errors_body("__all__", str(exc)))
    except UnknownKind as exc:
        return Status(400, errors_body("kind", str(exc)))
    except ParamsInvalid as exc:
        return Status(exc.status, {"errors": exc.errors})
    response["Location"] = f"/api/jobs/{job.id}/"
    return Status(201, _job_out(job, owner))


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed in JSON")


@api.get("/jobs/", response={200: JobPageOut, 400: ErrorsOut}, exclude_unset=True, summary="My jobs, newest first")
def list_jobs(request: HttpRequest, query: Query[PageQuery]) -> Status[dict[str, Any]]:
    owner = _owner(request)
    jobs = job_list_visible(owner=owner)
    count = jobs.count()
    pages = max(1, -(-count // query.page_size))
    if query.page > pages:
        return Status(400, errors_body("page", f"Page {query.page} does not exist; there are {pages}."))
    start = (query.page - 1) * query.page_size
    results = [_job_out(job, owner) for job in jobs[start : start + query.page_size]]

    def link(page: int) -> str:
        return request.build_absolute_uri(f"{request.path}?page={page}&page_size={query.page_size}")

    return Status(
        200,
        {
            "count": count,
            "next": link(query.page + 1) if query.page < pages else None,
            "previous": link(query.page - 1) if query.page > 1 else None,
            "results": results,
        },
    )


@api.get("/jobs/{job_id}/", response={200: JobPayload, 404: ErrorsOut}, exclude_unset=True, summary="One job")
def get_job(request: HttpRequest, job_id: str) -> JobPayload:
    owner = _owner(request)
    return _job_out(_visible_job_or_404(owner, job_id), owner)


@api.post(
    "/jobs/{job_id}/cancel/",
    response={202: JobPayload, 404: ErrorsOut, 409: ErrorsOut},
    exclude_unset=True,
    summary="Ask a job to stop",
)
def cancel_job(request: HttpRequest, job_id: str) -> Status[JobOrErrors]:
    owner = _owner(request)
    try:
        job = job_cancel(owner=owner, job_id=job_id)
    except JobAlreadyFinished as exc:
        return Status(409, errors_body("state", str(exc)))
    return Status(202, _job_out(job, owner))


@api.post(
    "/jobs/{job_id}/retry/",
    response={201: JobPayload, 400: ErrorsOut, 404: ErrorsOut, 409: ErrorsOut, 429: ErrorsOut},
    exclude_unset=True,
    summary="Run a job again",
    description="A new job of the same kind, parameters and uploaded file, owned by the job's owner (staff "
    "retrying another's job start it for that owner, within that owner's quotas). 409 while the job is queued "
    "or running; 400 when its file is gone or its parameters no longer pass the kind's checks; 429 over a "
    "quota, with `Retry-After` in seconds.",
)
def retry_job(request: HttpRequest, response: HttpResponse, job_id: str) -> Status[JobOrErrors]:
    owner = _owner(request)
    job = _visible_job_or_404(owner, job_id)
    try:
        retried = job_retry(job=job, client_address=client_address(request))
    except JobNotEnded as exc:
        return Status(409, errors_body("state", str(exc)))
    except QuotaExceeded as exc:
        response["Retry-After"] = str(exc.retry_after)
        return Status(429, errors_body("__all__", str(exc)))
    except UnknownKind as exc:
        return Status(400, errors_body("kind", str(exc)))
    except ParamsInvalid as exc:  # a stored file now over its limit too: the request itself was fine
        return Status(400, {"errors": exc.errors})
    response["Location"] = f"/api/jobs/{retried.id}/"
    return Status(201, _job_out(retried, owner))


@api.get(
    "/jobs/{job_id}/result/",
    response={200: None, 404: ErrorsOut},
    summary="The file a job produced",
    openapi_extra={"responses": {200: {"description": "The file", "content": {"application/octet-stream": {}}}}},
)
def get_job_result(request: HttpRequest, job_id: str) -> Any:
    job = _visible_job_or_404(_owner(request), job_id)
    if not job.result_file:
        return Status(404, errors_body("result", "This job has no result file."))
    media_root = Path(settings.MEDIA_ROOT).resolve()
    path = (media_root / job.result_file.name).resolve()
    if media_root not in path.parents or not path.is_file():
        return Status(404, errors_body("result", "The result file is gone."))
    return result_download(path, media_root=media_root)


@api.get(
    "/jobs/{job_id}/log/",
    response={200: LogPage, 400: ErrorsOut, 404: ErrorsOut},
    summary="A page of the job's log",
    description="Kept lines numbered above `after`, oldest first, at most `limit`; `next` is the `after` of the "
    "following page, null when no kept line follows. A job keeps its last JOB_LOG_MAX_LINES lines.",
)
def get_job_log(request: HttpRequest, job_id: str, query: Query[LogPageQuery]) -> Any:
    for name in LogPageQuery.model_fields:  # ninja would take one of them silently
        if len(values := request.GET.getlist(name)) > 1:
            return Status(400, errors_body(name, f"Send one '{name}', not {len(values)}."))
    job = _visible_job_or_404(_owner(request), job_id)
    return job_log_page(job_id=job.id, after=query.after, limit=query.limit)


@api.get(
    "/jobs/{job_id}/log.txt",
    response={200: None, 404: ErrorsOut},
    summary="The job's whole kept log as text",
    openapi_extra={
        "responses": {
            200: {"description": "One `<t> <LEVEL> <text>` per line", "content": {"text/plain": {}}},
        }
    },
)
def get_job_log_text(request: HttpRequest, job_id: str) -> Any:
    job = _visible_job_or_404(_owner(request), job_id)
    return LogTextResponse(job_log_text(job_id=job.id), filename=f"job-{job.id}.log")
