"""Quotas per owner: jobs active at once and jobs per minute (429 + Retry-After on the
API, an error on the page); jobs active at once per client address, whatever the
cookie (TRUSTED_PROXIES deciding whose X-Forwarded-For is believed); and sockets at
once (accepted, then closed 4429), counted in the real Redis across daphne processes."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.test import Client, override_settings
from django.utils import timezone
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from core.asgi import application
from core.redis_local import start_redis
from jobs.models import Job, JobState
from jobs.owners import SESSION_OWNER_KEY, Owner
from jobs.quotas import ACTIVE_RETRY_AFTER_DEFAULT, QuotaExceeded
from jobs.services import job_submit
from jobs.services import submit as submit_service
from notifications import socket_quota
from notifications.consumers import CLOSE_NORMAL, CLOSE_OVER_QUOTA
from notifications.socket_quota import socket_slots_key
from tests.accounts import BYPASS_QUOTAS, VIEW_ALL_JOBS, user_with
from tests.conftest import LiveServer
from tests.live_daphne import DaphneProcess
from tests.waiting import async_wait_until

QUICK_JOB = {"kind": "sleep", "params": {"steps": 1, "step_seconds": 0}}
FRAME_TIMEOUT = 5.0  # seconds for one frame or close to arrive
ORIGIN = b"http://127.0.0.1"


def post_job(client: Client, body: object = QUICK_JOB) -> Any:
    return client.post("/api/jobs/", data=json.dumps(body), content_type="application/json")


def create(client: Client) -> dict[str, Any]:
    response = post_job(client)
    assert response.status_code == 201, response.content
    job: dict[str, Any] = response.json()
    return job


def user_client(username: str, *codenames: str, is_staff: bool = False) -> Client:
    client = Client()
    client.force_login(user_with(username, *codenames, is_staff=is_staff))
    return client


def racing_submits(submit: Callable[[], object], *, threads: int = 8) -> list[str]:
    """Runs `submit` in `threads` threads released at once; "created" or "refused" (over a
    quota) for each."""
    start = threading.Barrier(threads)
    outcomes: list[str] = []

    def one() -> None:
        try:
            start.wait(timeout=10)
            submit()
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")
        finally:
            connection.close()

    running = [threading.Thread(target=one) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(timeout=60)
    return outcomes


def assert_over_quota(response: Any) -> tuple[str, int]:
    """A 429 in the API's error shape; returns its message and Retry-After."""
    assert response.status_code == 429, response.content
    body = response.json()
    assert set(body) == {"errors"} and set(body["errors"]) == {"__all__"}, body
    [message] = body["errors"]["__all__"]
    return message, int(response["Retry-After"])


def created_ago(job_id: str, seconds: float) -> None:
    Job.objects.filter(pk=job_id).update(created_at=timezone.now() - timedelta(seconds=seconds))


# --- jobs active at once ---------------------------------------------------------


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=2, JOB_QUOTA_PER_MINUTE=0)
def test_post_over_the_active_quota_answers_429_naming_the_limit_and_saves_nothing(client: Client) -> None:
    create(client)
    create(client)

    message, retry_after = assert_over_quota(post_job(client))

    assert "2 jobs queued or running" in message and "(2)" in message
    assert retry_after == ACTIVE_RETRY_AFTER_DEFAULT  # no running job has an ETA yet
    assert Job.objects.count() == 2


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=2, JOB_QUOTA_PER_MINUTE=0)
def test_active_quota_retry_after_is_the_shortest_eta_of_a_running_job(client: Client) -> None:
    first, second = create(client), create(client)
    Job.objects.filter(pk=first["id"]).update(state=JobState.RUNNING, progress_eta_seconds=4.2)
    Job.objects.filter(pk=second["id"]).update(state=JobState.RUNNING, progress_eta_seconds=30)

    _, retry_after = assert_over_quota(post_job(client))

    assert retry_after == 5


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=2, JOB_QUOTA_PER_MINUTE=0)
def test_a_job_that_ends_frees_its_place(client: Client) -> None:
    first = create(client)
    create(client)
    assert post_job(client).status_code == 429

    assert client.post(f"/api/jobs/{first['id']}/cancel/").status_code == 202

    assert post_job(client).status_code == 201


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_the_quota_of_one_owner_leaves_others_alone(client: Client) -> None:
    create(client)
    assert post_job(client).status_code == 429

    assert post_job(Client()).status_code == 201
    assert post_job(user_client("ada")).status_code == 201


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_a_users_sessions_share_one_quota() -> None:
    user = User.objects.create_user("ada", password="pw-for-tests-only")
    laptop, phone = Client(), Client()
    laptop.force_login(user)
    phone.force_login(user)
    create(laptop)

    assert post_job(phone).status_code == 429


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=1)
def test_bypass_quotas_is_exempt() -> None:
    staff = user_client("root", BYPASS_QUOTAS)
    for _ in range(3):
        create(staff)


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_a_staff_flag_alone_is_held_to_the_quotas() -> None:
    clerk = user_client("clerk", is_staff=True)
    create(clerk)
    assert_over_quota(post_job(clerk))


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_view_all_jobs_alone_is_held_to_the_quotas() -> None:
    viewer = user_client("viewer", VIEW_ALL_JOBS, is_staff=True)
    create(viewer)
    assert_over_quota(post_job(viewer))


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_zero_turns_the_quotas_off(client: Client) -> None:
    for _ in range(12):
        create(client)


# --- jobs per minute -------------------------------------------------------------


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=3)
def test_post_over_the_per_minute_quota_answers_429_with_retry_after_until_the_oldest_leaves(client: Client) -> None:
    for age in (45, 30, 10):
        created_ago(create(client)["id"], age)

    message, retry_after = assert_over_quota(post_job(client))

    assert retry_after in (14, 15)  # the job made 45 s ago leaves the minute in 15 s
    assert "3 jobs in the last minute" in message and f"{retry_after} s" in message


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=4)
def test_per_minute_retry_after_waits_for_as_many_jobs_as_are_over(client: Client) -> None:
    for age in (50, 40, 20, 5):
        created_ago(create(client)["id"], age)
    with override_settings(JOB_QUOTA_PER_MINUTE=3):  # lowered while 4 are in the window
        _, retry_after = assert_over_quota(post_job(client))

    assert retry_after in (19, 20)  # two must leave: the second oldest (40 s ago) goes in 20 s


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=2)
def test_jobs_older_than_a_minute_do_not_count(client: Client) -> None:
    created_ago(create(client)["id"], 61)
    created_ago(create(client)["id"], 75)
    create(client)

    assert post_job(client).status_code == 201


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=2)
def test_cancelled_jobs_still_count_against_the_per_minute_quota(client: Client) -> None:
    for _ in range(2):
        assert client.post(f"/api/jobs/{create(client)['id']}/cancel/").status_code == 202

    assert post_job(client).status_code == 429


@pytest.mark.django_db(transaction=True)
@override_settings(JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=3)
def test_concurrent_submissions_cannot_slip_past_the_quota() -> None:
    owner = Owner(token=secrets.token_hex(16))

    outcomes = racing_submits(lambda: job_submit(owner=owner, kind="sleep", params={"steps": 1, "step_seconds": 0}))

    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert Job.objects.filter(owner_token=owner.token).count() == 3


# --- jobs active at once per client address --------------------------------------


def from_address(address: str, **headers: Any) -> Client:
    """A fresh visitor (a cookie of its own) whose requests come from `address`."""
    return Client(REMOTE_ADDR=address, **headers)


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=3, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_jobs_from_one_address_past_the_per_ip_quota_answer_429_naming_it_whatever_the_cookie() -> None:
    first, second = from_address("203.0.113.5"), from_address("203.0.113.5")
    create(first)
    create(first)
    create(second)

    message, retry_after = assert_over_quota(post_job(second))
    assert message == (
        "Your address (203.0.113.5) has 3 jobs queued or running, the most allowed at once from one address (3), "
        "whoever started them; wait for one to end or cancel one."
    )
    assert retry_after == ACTIVE_RETRY_AFTER_DEFAULT
    assert post_job(from_address("203.0.113.5")).status_code == 429  # a fresh cookie buys nothing
    assert post_job(from_address("203.0.113.6")).status_code == 201  # another address is counted apart
    assert Job.objects.filter(client_address="203.0.113.5").count() == 3


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=1, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_a_job_that_ends_frees_its_place_for_its_address() -> None:
    first = from_address("203.0.113.5")
    job = create(first)
    assert post_job(from_address("203.0.113.5")).status_code == 429
    assert first.post(f"/api/jobs/{job['id']}/cancel/").status_code == 202
    assert post_job(from_address("203.0.113.5")).status_code == 201


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=1, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0, TRUSTED_PROXIES=["10.0.0.0/8"])
def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_apart() -> None:
    def via_proxy(forwarded_for: str) -> Client:
        return from_address("10.1.2.3", HTTP_X_FORWARDED_FOR=forwarded_for)

    create(via_proxy("198.51.100.1"))
    create(via_proxy("198.51.100.2"))
    # What the client claimed itself is left of what the proxy appended: not believed.
    assert post_job(via_proxy("198.51.100.2, 198.51.100.1")).status_code == 429
    assert set(Job.objects.values_list("client_address", flat=True)) == {"198.51.100.1", "198.51.100.2"}


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=1, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0, TRUSTED_PROXIES=[])
def test_x_forwarded_for_from_a_peer_that_is_no_trusted_proxy_changes_nothing() -> None:
    create(from_address("203.0.113.5", HTTP_X_FORWARDED_FOR="198.51.100.1"))
    assert post_job(from_address("203.0.113.5", HTTP_X_FORWARDED_FOR="198.51.100.2")).status_code == 429


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=1, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_ipv6_clients_are_counted_by_their_64() -> None:
    create(from_address("2001:db8:1:2::10"))
    assert post_job(from_address("2001:db8:1:2:ffff::99")).status_code == 429
    assert post_job(from_address("2001:db8:1:3::10")).status_code == 201
    assert Job.objects.filter(client_address="2001:db8:1:2::/64").count() == 1


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=1, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_users_who_bypass_quotas_are_exempt_from_the_address_quota() -> None:
    create(from_address("203.0.113.5"))
    staff = user_client("root", "bypass_quotas")
    for _ in range(2):
        create(staff)


@pytest.mark.django_db
@override_settings(JOB_QUOTA_PER_IP=0, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_zero_turns_the_address_quota_off() -> None:
    for _ in range(25):
        create(from_address("203.0.113.5"))


@pytest.mark.django_db(transaction=True)
@override_settings(JOB_QUOTA_PER_IP=3, JOB_QUOTA_ACTIVE=0, JOB_QUOTA_PER_MINUTE=0)
def test_concurrent_submissions_of_many_owners_from_one_address_cannot_slip_past_its_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The jobs must stay active: a worker of this session taking one would end it and free its place.
    monkeypatch.setattr(submit_service, "job_dispatch", lambda *, job_id: True)

    def submit() -> None:
        job_submit(
            owner=Owner(token=secrets.token_hex(16)),
            kind="sleep",
            params={"steps": 1, "step_seconds": 0},
            client_address="192.0.2.7",
        )

    outcomes = racing_submits(submit)

    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert Job.objects.filter(client_address="192.0.2.7").count() == 3


@pytest.fixture
def address_quota_daphne(live_server_env: dict[str, str], transactional_db: None, tmp_path: Path) -> Iterator[str]:
    """daphne with JOB_QUOTA_PER_IP=3 behind a proxy at 127.0.0.1, on a Redis of its own
    that no worker reads: every job it takes stays queued, so active."""
    redis = start_redis()
    env = {**live_server_env, "REDIS_URL": redis.url, "JOB_QUOTA_PER_IP": "3", "TRUSTED_PROXIES": "127.0.0.1"}
    daphne = DaphneProcess(env=env, log=tmp_path / "daphne.log")
    try:
        daphne.start()
        yield daphne.url
    finally:
        daphne.stop()
        redis.stop()


def test_live_daphne_refuses_a_fresh_cookie_past_the_address_quota(address_quota_daphne: str) -> None:
    """Over real sockets: daphne's peer address and the trusted proxy's X-Forwarded-For."""

    def visitor(forwarded_for: str) -> tuple[httpx.Client, dict[str, str]]:
        client = httpx.Client(base_url=address_quota_daphne, timeout=10, headers={"X-Forwarded-For": forwarded_for})
        assert client.get("/").status_code == 200
        return client, {"X-CSRFToken": client.cookies["csrftoken"]}

    first, first_csrf = visitor("198.51.100.1")
    second, second_csrf = visitor("198.51.100.1")
    elsewhere, elsewhere_csrf = visitor("198.51.100.2")
    try:
        for client, csrf in ((first, first_csrf), (first, first_csrf), (second, second_csrf)):
            assert client.post("/api/jobs/", json=QUICK_JOB, headers=csrf).status_code == 201
        refused = second.post("/api/jobs/", json=QUICK_JOB, headers=second_csrf)
        assert refused.status_code == 429, refused.text
        assert "from one address (3)" in refused.json()["errors"]["__all__"][0]
        assert int(refused.headers["Retry-After"]) >= 1
        assert elsewhere.post("/api/jobs/", json=QUICK_JOB, headers=elsewhere_csrf).status_code == 201
    finally:
        for client in (first, second, elsewhere):
            client.close()
    assert Job.objects.filter(client_address="198.51.100.1").count() == 3


# --- the form on / ---------------------------------------------------------------


@pytest.mark.django_db
@override_settings(JOB_QUOTA_ACTIVE=1, JOB_QUOTA_PER_MINUTE=0)
def test_form_over_quota_shows_the_error_on_the_page_and_creates_nothing() -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.get("/").status_code == 200
    token = client.cookies["csrftoken"].value
    data = {"csrfmiddlewaretoken": token, "kind": "sleep", "sleep-steps": "1", "sleep-step_seconds": "0"}
    assert client.post("/", data).status_code == 302

    response = client.post("/", data)

    assert response.status_code == 429
    assert response["Retry-After"] == str(ACTIVE_RETRY_AFTER_DEFAULT)
    html = response.content.decode()
    error = html[html.index('id="form-error"') : html.index("</p>", html.index('id="form-error"'))]
    assert "hidden" not in error
    assert "1 jobs queued or running" in error
    assert 'value="1"' in html  # what the visitor typed is kept
    assert Job.objects.count() == 1


# --- sockets at once (in process, over the real Redis) ---------------------------


@database_sync_to_async
def anonymous_session() -> tuple[Owner, str]:
    owner = Owner(token=secrets.token_hex(16))
    session = SessionStore()
    session[SESSION_OWNER_KEY] = owner.token
    session.save()
    assert session.session_key is not None
    return owner, session.session_key


@database_sync_to_async
def user_session(username: str, *codenames: str, is_staff: bool = False) -> str:
    client = Client()
    client.force_login(user_with(username, *codenames, is_staff=is_staff))
    return str(client.cookies["sessionid"].value)


@database_sync_to_async
def make_job(owner: Owner, state: JobState = JobState.QUEUED) -> Job:
    now = timezone.now()
    return Job.objects.create(
        owner_token=owner.token or "", kind="sleep", params={}, state=state, seq=1, created_at=now, updated_at=now
    )


async def open_socket(path: str, session_key: str) -> WebsocketCommunicator:
    headers = [(b"host", b"127.0.0.1"), (b"origin", ORIGIN), (b"cookie", f"sessionid={session_key}".encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=FRAME_TIMEOUT)
    assert connected, f"handshake to {path} refused"
    return communicator


async def first_output(communicator: WebsocketCommunicator) -> dict[str, Any]:
    output: dict[str, Any] = await communicator.receive_output(timeout=FRAME_TIMEOUT)
    return output


async def admitted(communicator: WebsocketCommunicator) -> bool:
    """True when the socket got its first frame, False when it was closed 4429 instead."""
    output = await first_output(communicator)
    if output["type"] == "websocket.close":
        assert output.get("code") == CLOSE_OVER_QUOTA, output
        return False
    assert output["type"] == "websocket.send", output
    return True


@pytest.fixture
def socket_quota_2() -> Iterator[None]:
    with override_settings(JOB_QUOTA_SOCKETS=2):
        yield


def redis_slots(redis_client: Any, owner_key: str) -> dict[str, float]:
    entries = redis_client.zrange(socket_slots_key(owner_key), 0, -1, withscores=True)
    return {member.decode(): score for member, score in entries}


@pytest.mark.django_db(transaction=True)
async def test_socket_over_the_quota_is_accepted_then_closed_4429(socket_quota_2: None) -> None:
    owner, key = await anonymous_session()
    job = await make_job(owner)
    held = [await open_socket("/ws/jobs/", key), await open_socket(f"/ws/jobs/{job.id}/", key)]
    assert [await admitted(socket) for socket in held] == [True, True]

    for path in ("/ws/jobs/", f"/ws/jobs/{job.id}/"):
        extra = await open_socket(path, key)
        assert await first_output(extra) == {"type": "websocket.close", "code": 4429}

    for socket in held:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_closing_a_socket_frees_its_slot(socket_quota_2: None, redis_client: Any) -> None:
    owner, key = await anonymous_session()
    first, second = await open_socket("/ws/jobs/", key), await open_socket("/ws/jobs/", key)
    assert await admitted(first) and await admitted(second)
    assert len(redis_slots(redis_client, owner.key)) == 2

    await first.disconnect()
    third = await open_socket("/ws/jobs/", key)

    assert await admitted(third)
    await second.disconnect()
    await third.disconnect()
    assert redis_slots(redis_client, owner.key) == {}


@pytest.mark.django_db(transaction=True)
async def test_a_finished_jobs_socket_is_served_even_at_the_quota(socket_quota_2: None) -> None:
    owner, key = await anonymous_session()
    held = [await open_socket("/ws/jobs/", key) for _ in range(2)]
    assert all([await admitted(socket) for socket in held])
    done = await make_job(owner, JobState.SUCCEEDED)

    socket = await open_socket(f"/ws/jobs/{done.id}/", key)

    assert (await first_output(socket))["type"] == "websocket.send"
    assert json.loads((await first_output(socket))["text"])["type"] == "log"  # its log's backfill
    assert await first_output(socket) == {"type": "websocket.close", "code": CLOSE_NORMAL}
    for held_socket in held:
        await held_socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_sockets_of_another_process_count_until_their_entries_expire(
    socket_quota_2: None, redis_client: Any
) -> None:
    owner, key = await anonymous_session()
    slots = socket_slots_key(owner.key)
    now_ms = redis_client.time()[0] * 1000
    redis_client.zadd(slots, {"daphne-b.live": now_ms + 30_000, "daphne-c.crashed": now_ms - 1})

    first = await open_socket("/ws/jobs/", key)
    assert await admitted(first)  # the crashed process's entry expired: it no longer counts
    second = await open_socket("/ws/jobs/", key)
    assert not await admitted(second)  # the live one on daphne-b does
    members = set(redis_slots(redis_client, owner.key))
    assert len(members) == 2 and "daphne-b.live" in members and "daphne-c.crashed" not in members
    await first.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_process_refreshes_the_entries_of_its_open_sockets(
    socket_quota_2: None, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket_quota, "REFRESH_EVERY", 0.2)
    owner, key = await anonymous_session()
    socket = await open_socket("/ws/jobs/", key)
    assert await admitted(socket)
    [first_expiry] = redis_slots(redis_client, owner.key).values()

    async def pushed_back() -> bool:
        return max(redis_slots(redis_client, owner.key).values(), default=0) > first_expiry

    assert await async_wait_until(pushed_back, timeout=5)
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_bypass_quotas_sockets_are_not_counted(socket_quota_2: None, redis_client: Any) -> None:
    key = await user_session("root", BYPASS_QUOTAS)
    sockets = [await open_socket("/ws/jobs/", key) for _ in range(4)]

    assert [await admitted(socket) for socket in sockets] == [True] * 4
    for socket in sockets:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_staff_flag_alone_has_its_sockets_counted(socket_quota_2: None, redis_client: Any) -> None:
    key = await user_session("clerk", VIEW_ALL_JOBS, is_staff=True)
    sockets = [await open_socket("/ws/jobs/", key) for _ in range(3)]

    assert sorted([await admitted(socket) for socket in sockets]) == [False, True, True]  # any two of the three
    for socket in sockets:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_signed_in_users_sockets_are_counted_over_all_their_sessions(socket_quota_2: None) -> None:
    laptop = await user_session("ada")
    user = await database_sync_to_async(User.objects.get)(username="ada")

    @database_sync_to_async
    def second_session() -> str:
        client = Client()
        client.force_login(user)
        return str(client.cookies["sessionid"].value)

    phone = await second_session()
    held = [await open_socket("/ws/jobs/", laptop), await open_socket("/ws/jobs/", phone)]
    assert all([await admitted(socket) for socket in held])

    assert not await admitted(await open_socket("/ws/jobs/", phone))
    for socket in held:
        await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_sockets_are_let_in_when_the_quota_redis_is_unreachable(socket_quota_2: None) -> None:
    from core.redis_local import free_port

    _, key = await anonymous_session()
    with override_settings(REDIS_HOST={"address": f"redis://127.0.0.1:{free_port()}/0"}):  # nothing listens there
        sockets = [await open_socket("/ws/jobs/", key) for _ in range(3)]
        assert [await admitted(socket) for socket in sockets] == [True] * 3
        for socket in sockets:
            await socket.disconnect()


# --- sockets at once, through the live daphne --------------------------------------


async def live_visitor(live_server: LiveServer, secret_key: str) -> tuple[str, Owner]:
    """A fresh visitor of the live server: their session cookie and their owner."""
    async with httpx.AsyncClient(base_url=live_server.url) as client:
        assert (await client.get("/")).status_code == 200
        session_key = client.cookies["sessionid"]

    @database_sync_to_async
    def owner_token() -> str:
        with override_settings(SECRET_KEY=secret_key):  # the live server signs sessions with its own
            return str(SessionStore(session_key=session_key)[SESSION_OWNER_KEY])

    return session_key, Owner(token=await owner_token())


@pytest.mark.django_db(transaction=True)
async def test_live_daphne_closes_a_socket_over_the_quota_4429_counting_other_processes(
    live_server: LiveServer, live_server_env: dict[str, str], redis_client: Any
) -> None:
    quota = settings.JOB_QUOTA_SOCKETS  # the live daphne reads the same environment
    if not quota:
        pytest.skip("JOB_QUOTA_SOCKETS=0 in this environment: the quota is off")
    session_key, owner = await live_visitor(live_server, live_server_env["SECRET_KEY"])
    slots = socket_slots_key(owner.key)
    # quota - 1 sockets of this owner open on other daphne processes, as those record them
    expires = redis_client.time()[0] * 1000 + 60_000
    redis_client.zadd(slots, {f"elsewhere.{n}": expires for n in range(quota - 1)})

    def open_socket_live() -> Any:
        return ws_connect(
            f"{live_server.ws_url}/ws/jobs/",
            origin=live_server.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={session_key}"},
            open_timeout=FRAME_TIMEOUT,
        )

    async def next_type(socket: Any) -> str:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT))
        return str(frame["type"])

    try:
        async with open_socket_live() as last_free:
            assert await next_type(last_free) == "snapshot"
            async with open_socket_live() as over:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(over.recv(), FRAME_TIMEOUT)
                assert over.close_code == CLOSE_OVER_QUOTA == 4429
            redis_client.zrem(slots, "elsewhere.0")  # a socket closes on another process
            async with open_socket_live() as freed:
                assert await next_type(freed) == "snapshot"
    finally:
        redis_client.delete(slots)
