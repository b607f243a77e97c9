"""Submitting a job (jobs/services/submit.py): create validates and saves it with seq 1,
publishes it queued, and dispatches it by task name once committed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async

from celery_app import app
from jobs.kinds import ParamsInvalid, UnknownKind, kind_get
from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services import DISPATCH_RETRY_POLICY, job_create, job_dispatch
from jobs.task_names import RUN_JOB_TASK
from jobs.tasks import run_job
from notifications.groups import owner_group
from tests.jobs.services.conftest import OWNER, fresh, new_job

# --- create -----------------------------------------------------------------------


@pytest.mark.django_db
def test_job_create_saves_a_queued_job_with_seq_1_and_cleaned_params() -> None:
    job = job_create(owner=OWNER, kind="primes", params={"limit": 1000.0})
    saved = fresh(job)
    assert saved.state == JobState.QUEUED
    assert saved.seq == 1
    assert saved.params == {"limit": 1000}
    assert saved.owner_token == OWNER.token and saved.owner_user is None
    assert saved.has_progress is False and saved.started_at is None


@pytest.mark.django_db
def test_job_create_from_text_parses_form_values() -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": "4", "step_seconds": ""}, from_text=True)
    assert fresh(job).params == {"steps": 4, "step_seconds": 0.5}


@pytest.mark.django_db
def test_job_create_of_unknown_kind_saves_nothing() -> None:
    with pytest.raises(UnknownKind):
        job_create(owner=OWNER, kind="nope", params={})
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_job_create_with_bad_params_saves_nothing() -> None:
    with pytest.raises(ParamsInvalid) as raised:
        job_create(owner=OWNER, kind="primes", params={"limit": 0})
    assert set(raised.value.errors) == {"limit"}
    assert not Job.objects.exists()


@pytest.mark.django_db(transaction=True)
async def test_job_create_publishes_the_queued_job_to_its_owner_group(listen: Callable[[str], Any]) -> None:
    owner = Owner(token=uuid.uuid4().hex)
    listener = await listen(owner_group(owner.key))
    job = await sync_to_async(job_create)(owner=owner, kind="sleep", params={"steps": 1, "step_seconds": 0})
    frame = await listener.job()
    assert (frame["id"], frame["seq"], frame["state"]) == (str(job.id), 1, "queued")
    assert frame["queue_position"] >= 1
    assert "error_detail" not in frame  # frames go to owners, never with the traceback


# --- dispatch --------------------------------------------------------------------


@pytest.mark.django_db
def test_job_dispatch_by_name_sends_the_message_the_tasks_own_apply_async_would() -> None:
    job = new_job()
    kind = kind_get(job.kind)
    sent: list[tuple[str, Any, dict[str, Any]]] = []

    def capture(producer: Any, name: str, message: Any, **options: Any) -> None:
        sent.append((name, message, options))

    with (
        mock.patch.object(app.amqp, "send_task_message", capture),
        mock.patch.object(type(app.backend), "on_task_call") as result_subscriptions,
    ):
        assert job_dispatch(job_id=job.id) is True
        run_job.apply_async(  # the call dispatch made before it sent by name
            args=(str(job.id), job.requeues),
            task_id=str(job.id),
            soft_time_limit=kind.soft_time_limit,
            time_limit=kind.time_limit,
            retry=True,
            retry_policy=DISPATCH_RETRY_POLICY,
        )
    (by_name, name_message, name_options), (by_task, task_message, task_options) = sent
    assert by_name == by_task == RUN_JOB_TASK
    assert name_message.headers == task_message.headers  # id, time limits, ignore_result …
    assert (name_message.properties, name_message.body) == (task_message.properties, task_message.body)
    assert name_message.headers["timelimit"] == [kind.time_limit, kind.soft_time_limit]
    # The task's serializer is the app's, which the producer uses when none is named.
    name_options.pop("serializer", None)
    task_options.pop("serializer", None)
    assert name_options == task_options
    result_subscriptions.assert_not_called()  # nothing waits for a job's result
    assert fresh(job).dispatched_at is not None
