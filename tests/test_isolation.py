"""Owner isolation and CSRF, as tables.

tests/jobs/test_api.py checks that another owner's job answers 404 on each API path
and the page (two anonymous visitors, two users), and tests/notifications/ does the
sockets for anonymous visitors. What this file adds:

- every surface both ways, so a surface that hid a job from everyone would fail too:
  the owner gets the job, the other owner gets a 404 (or a 4404 close, or nothing on
  their stream), for each pair: two anonymous visitors, two users, and each across;
- surfaces not covered elsewhere: a result file that exists, the job list and the
  index page, the owner stream's snapshot and frames for users, a cancel frame, and
  the admin's job list and change page for visitors who are not staff;
- the CSRF cases tests/jobs/test_api.py and tests/jobs/test_forms.py leave out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from core.asgi import application
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY
from jobs.progress import ProgressUpdate
from jobs.services import job_report_progress

FRAME_TIMEOUT = 5.0  # seconds for one frame or close
ORIGIN = b"http://127.0.0.1"

Response = Any  # the test client's response


# --- owners ----------------------------------------------------------------------


@dataclass
class Visitor:
    client: Client
    user: User | None

    @property
    def session_key(self) -> str:
        return str(self.client.cookies["sessionid"].value)

    def owner_fields(self) -> dict[str, Any]:
        """The Job fields that make this visitor its owner."""
        if self.user is not None:
            return {"owner_user": self.user}
        return {"owner_token": self.client.session[SESSION_OWNER_KEY]}


_names = iter(range(1_000_000))


def visitor(kind: str, *, csrf: bool = False) -> Visitor:
    """`anonymous`: a session from a first GET /; `user`: a signed-in user (not staff)."""
    client = Client(enforce_csrf_checks=csrf)
    user = None
    if kind == "user":
        user = User.objects.create_user(f"user{next(_names)}", password="pw-for-tests-only")
        client.force_login(user)
    assert client.get("/").status_code == 200  # the session (and owner token) and the csrftoken cookie
    return Visitor(client, user)


PAIRS = [("anonymous", "anonymous"), ("user", "user"), ("anonymous", "user"), ("user", "anonymous")]
PAIR_IDS = [f"{owner}-vs-{other}" for owner, other in PAIRS]


def make_job(owner: Visitor, *, state: JobState = JobState.QUEUED, with_file: bool = False) -> Job:
    now = timezone.now()
    job = Job.objects.create(
        kind="report",
        params={"rows": 1},
        state=state,
        seq=2,
        created_at=now,
        updated_at=now,
        finished_at=now if state != JobState.QUEUED and state != JobState.RUNNING else None,
        **owner.owner_fields(),
    )
    if with_file:
        path = Path(settings.MEDIA_ROOT) / "results" / str(job.id) / "sales-report.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("order_id\n1\n")
        job.result_file = path.relative_to(settings.MEDIA_ROOT).as_posix()
        job.save(update_fields=["result_file"])
    return job


# --- HTTP: every surface, both ways -----------------------------------------------


def read_all(response: Response) -> bytes:
    if not getattr(response, "streaming", False):
        return bytes(response.content)
    if response.is_async:

        async def read() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return async_to_sync(read)()
    try:
        return b"".join(response.streaming_content)
    finally:
        response.close()


@dataclass(frozen=True)
class Surface:
    state: JobState
    with_file: bool
    # (owner's or other's client, job) -> (status, body)
    request: Callable[[Client, Job], Response]
    owner_status: int
    hidden_status: int
    # the job's id appears in the body for its owner (listings), else it is just reachable
    listing: bool = False


def _get(path: str) -> Callable[[Client, Job], Response]:
    return lambda client, job: client.get(path.format(id=job.id))


def _post(path: str) -> Callable[[Client, Job], Response]:
    return lambda client, job: client.post(path.format(id=job.id))


SURFACES: dict[str, Surface] = {
    "api-detail": Surface(JobState.QUEUED, False, _get("/api/jobs/{id}/"), 200, 404),
    "api-cancel": Surface(JobState.QUEUED, False, _post("/api/jobs/{id}/cancel/"), 202, 404),
    "api-result-file": Surface(JobState.SUCCEEDED, True, _get("/api/jobs/{id}/result/"), 200, 404),
    "sse-events": Surface(JobState.SUCCEEDED, False, _get("/api/jobs/{id}/events/"), 200, 404),
    "html-job-page": Surface(JobState.QUEUED, False, _get("/jobs/{id}/"), 200, 404),
    "api-job-list": Surface(JobState.QUEUED, False, _get("/api/jobs/"), 200, 200, listing=True),
    "html-index": Surface(JobState.QUEUED, False, _get("/"), 200, 200, listing=True),
}


@pytest.mark.django_db(transaction=True)  # SSE reads through database_sync_to_async
@pytest.mark.parametrize("surface_name", list(SURFACES))
@pytest.mark.parametrize(("owner_kind", "other_kind"), PAIRS, ids=PAIR_IDS)
def test_http_surface_shows_a_job_to_its_owner_only(surface_name: str, owner_kind: str, other_kind: str) -> None:
    surface = SURFACES[surface_name]
    owner, other = visitor(owner_kind), visitor(other_kind)
    job = make_job(owner, state=surface.state, with_file=surface.with_file)

    # The other owner first: a cancel they could make would show in the owner's answer.
    hidden = surface.request(other.client, job)
    hidden_body = read_all(hidden)
    assert hidden.status_code == surface.hidden_status, hidden_body
    assert str(job.id).encode() not in hidden_body
    if surface.hidden_status == 404 and surface_name.startswith(("api", "sse")):
        assert json.loads(hidden_body) == {"errors": {"id": ["No job with this id."]}}
    job.refresh_from_db()
    assert job.state == surface.state and job.seq == 2  # untouched

    shown = surface.request(owner.client, job)
    shown_body = read_all(shown)
    assert shown.status_code == surface.owner_status, shown_body
    if surface.listing or surface_name in ("api-detail", "api-cancel", "sse-events", "html-job-page"):
        assert str(job.id).encode() in shown_body
    if surface.with_file:
        assert shown_body == b"order_id\n1\n"


# --- WebSockets: both ways --------------------------------------------------------


async def open_socket(path: str, session_key: str) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1"), (b"origin", ORIGIN), (b"cookie", f"sessionid={session_key}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected, f"handshake to {path} refused"
    return communicator


async def next_output(communicator: WebsocketCommunicator) -> dict[str, Any]:
    output: dict[str, Any] = await communicator.receive_output(timeout=FRAME_TIMEOUT)
    if output["type"] == "websocket.send":
        frame: dict[str, Any] = json.loads(output["text"])
        return frame
    return output


def progress(current: float) -> ProgressUpdate:
    return ProgressUpdate(current=current, total=10, message="step", rate=None, eta_seconds=None, at=0.0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("owner_kind", "other_kind"), PAIRS, ids=PAIR_IDS)
async def test_job_socket_streams_to_its_owner_and_closes_4404_for_another(owner_kind: str, other_kind: str) -> None:
    owner, other = await database_sync_to_async(visitor)(owner_kind), await database_sync_to_async(visitor)(other_kind)
    job = await database_sync_to_async(make_job)(owner)

    theirs = await open_socket(f"/ws/jobs/{job.id}/", other.session_key)
    assert await next_output(theirs) == {"type": "websocket.close", "code": 4404}

    mine = await open_socket(f"/ws/jobs/{job.id}/", owner.session_key)
    frame = await next_output(mine)
    assert frame["type"] == "job" and frame["job"]["id"] == str(job.id)
    await mine.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("owner_kind", "other_kind"), PAIRS, ids=PAIR_IDS)
async def test_owner_stream_carries_only_the_owners_jobs(owner_kind: str, other_kind: str) -> None:
    owner, other = await database_sync_to_async(visitor)(owner_kind), await database_sync_to_async(visitor)(other_kind)
    job = await database_sync_to_async(make_job)(owner, state=JobState.RUNNING)
    mine = await open_socket("/ws/jobs/", owner.session_key)
    theirs = await open_socket("/ws/jobs/", other.session_key)

    assert [j["id"] for j in (await next_output(mine))["jobs"]] == [str(job.id)]
    assert (await next_output(theirs))["jobs"] == []

    await database_sync_to_async(job_report_progress)(job_id=job.id, update=progress(3))

    frame = await next_output(mine)
    assert frame["type"] == "job" and frame["job"]["id"] == str(job.id)
    assert await theirs.receive_nothing(timeout=0.5)
    await mine.disconnect()
    await theirs.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("owner_kind", "other_kind"), PAIRS, ids=PAIR_IDS)
async def test_cancel_frame_for_another_owners_job_is_refused_as_unknown(owner_kind: str, other_kind: str) -> None:
    owner, other = await database_sync_to_async(visitor)(owner_kind), await database_sync_to_async(visitor)(other_kind)
    job = await database_sync_to_async(make_job)(owner)
    theirs = await open_socket("/ws/jobs/", other.session_key)
    await next_output(theirs)

    await theirs.send_json_to({"type": "cancel", "id": str(job.id)})

    assert await next_output(theirs) == {"type": "error", "error": "No job with this id."}
    assert (await database_sync_to_async(Job.objects.get)(pk=job.id)).state == JobState.QUEUED
    await theirs.disconnect()


# --- the admin ----------------------------------------------------------------------


ADMIN_PATHS = ["/admin/jobs/job/", "/admin/jobs/job/{id}/change/"]
# who, and what the admin answers them: 302 to its login page, or 403 for staff
# without the permission to view jobs
OUTSIDERS = {"anonymous": 302, "user": 302, "the-jobs-owner": 302, "staff-without-permissions": 403}


def outsider_client(name: str, owner: Visitor) -> Client:
    if name == "the-jobs-owner":
        return owner.client
    if name == "staff-without-permissions":
        client = Client()
        client.force_login(User.objects.create_user("clerk", password="pw-for-tests-only", is_staff=True))
        return client
    return visitor(name).client


@pytest.mark.django_db
@pytest.mark.parametrize("path", ADMIN_PATHS)
@pytest.mark.parametrize("outsider", list(OUTSIDERS))
def test_admin_job_pages_are_closed_to_everyone_but_staff_with_permission(path: str, outsider: str) -> None:
    owner = visitor("user")
    job = make_job(owner)

    response = outsider_client(outsider, owner).get(path.format(id=job.id))

    assert response.status_code == OUTSIDERS[outsider]
    if response.status_code == 302:
        assert response["Location"].startswith("/admin/login/")
    assert str(job.id) not in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_job_pages_open_to_staff_with_the_view_permission(path: str) -> None:
    job = make_job(visitor("anonymous"))
    clerk = User.objects.create_user("clerk", password="pw-for-tests-only", is_staff=True)
    clerk.user_permissions.add(Permission.objects.get(codename="view_job"))
    client = Client()
    client.force_login(clerk)

    response = client.get(path.format(id=job.id))

    assert response.status_code == 200
    assert str(job.id) in response.content.decode()


# --- CSRF: the cases tests/jobs/test_api.py and test_forms.py leave out ---------------

JOB_BODY = json.dumps({"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}})
FORM = {"kind": "sleep", "sleep-steps": "1", "sleep-step_seconds": "0"}


def unsafe_request(visitor_: Visitor, endpoint: str, token: str | None) -> Response:
    headers: dict[str, Any] = {} if token is None else {"HTTP_X_CSRFTOKEN": token}
    client = visitor_.client
    if endpoint == "api-create":
        return client.post("/api/jobs/", data=JOB_BODY, content_type="application/json", **headers)
    if endpoint == "api-cancel":
        job = make_job(visitor_)
        return client.post(f"/api/jobs/{job.id}/cancel/", **headers)
    assert endpoint == "form-create"
    data = dict(FORM) if token is None else {**FORM, "csrfmiddlewaretoken": token}
    return client.post("/", data)


ALLOWED = {"api-create": 201, "api-cancel": 202, "form-create": 302}
# (owner, endpoint, token): None = no token, "wrong" = a well-formed token not theirs, "right"
CSRF_CASES = [
    ("user", "api-create", "wrong"),
    ("anonymous", "api-cancel", "wrong"),
    ("anonymous", "api-cancel", "right"),
    ("user", "api-cancel", None),
    ("user", "api-cancel", "wrong"),
    ("user", "api-cancel", "right"),
    ("anonymous", "form-create", "wrong"),
    ("user", "form-create", None),
    ("user", "form-create", "wrong"),
    ("user", "form-create", "right"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("owner_kind", "endpoint", "token"), CSRF_CASES, ids=lambda value: str(value))
def test_unsafe_request_needs_the_csrf_token(owner_kind: str, endpoint: str, token: str | None) -> None:
    owner = visitor(owner_kind, csrf=True)
    sent = {None: None, "wrong": "x" * 32, "right": owner.client.cookies["csrftoken"].value}[token]
    jobs_before = Job.objects.count()

    response = unsafe_request(owner, endpoint, sent)

    if token == "right":
        assert response.status_code == ALLOWED[endpoint], response.content
        return
    assert response.status_code == 403
    if endpoint.startswith("api"):
        assert response.json() == {
            "errors": {"csrf": ["CSRF check failed: send the csrftoken cookie's value in the X-CSRFToken header."]}
        }
    created_by_setup = 1 if endpoint == "api-cancel" else 0
    assert Job.objects.count() == jobs_before + created_by_setup
    assert not Job.objects.exclude(state=JobState.QUEUED).exists()  # nothing was cancelled
