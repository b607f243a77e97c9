"""What the service tests share: rows as the services leave them, a listener on the
real channel layer, a running job, a run whose worker went silent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.progress import ProgressUpdate
from jobs.services import RunningJob, job_start

OWNER = Owner(token="a" * 32)
SOMEONE_ELSE = Owner(token="b" * 32)
FRAME_TIMEOUT = 5.0  # seconds for a published frame to come back through the test Redis


def update(current: float, total: float = 10, message: str = "") -> ProgressUpdate:
    return ProgressUpdate(current=current, total=total, message=message, rate=None, eta_seconds=None, at=time.time())


def new_job(*, state: JobState = JobState.QUEUED, owner: Owner = OWNER) -> Job:
    """A row as job_create leaves it, without handing it to a worker."""
    now = timezone.now()
    return Job.objects.create(
        owner_token=owner.token or "",
        kind="sleep",
        params={"steps": 3, "step_seconds": 0},
        state=state,
        seq=1,
        created_at=now,
        updated_at=now,
    )


def fresh(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


class Listener:
    """A channel in some groups of the real channel layer (Redis pub/sub)."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer = layer
        self.channel = channel

    async def job(self) -> dict[str, Any]:
        message = await asyncio.wait_for(self.layer.receive(self.channel), timeout=FRAME_TIMEOUT)
        assert message["type"] == "job.frame"
        frame = json.loads(message["text"])
        assert frame["type"] == "job"
        assert frame["job"]["seq"] == message["seq"]
        assert frame["job"]["id"] == message["job_id"]
        job: dict[str, Any] = frame["job"]
        return job


@pytest.fixture
async def listen(redis_server: Any) -> AsyncIterator[Callable[[str], Any]]:
    layer = get_channel_layer()
    assert layer is not None
    joined: list[tuple[str, str]] = []

    async def join(group: str) -> Listener:
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        joined.append((group, channel))
        return Listener(layer, channel)

    yield join
    for group, channel in joined:
        await layer.group_discard(group, channel)


def running_job() -> RunningJob:
    job = new_job()
    started = job_start(job_id=job.id, task_id="task-fast")
    assert started is not None
    return RunningJob(started)


def lost_run(*, attempts: int = 1, silent_for: float = 3600, cancel_requested: bool = False) -> Job:
    """A running job whose worker went silent `silent_for` seconds ago, mid-way."""
    job = new_job(state=JobState.RUNNING)
    long_ago = timezone.now() - timedelta(seconds=silent_for)
    Job.objects.filter(pk=job.pk).update(
        attempts=attempts,
        heartbeat_at=long_ago,
        started_at=long_ago,
        cancel_requested=cancel_requested,
        seq=7,
        has_progress=True,
        progress_current=2,
        progress_total=3,
        progress_message="step 2 of 3",
    )
    return fresh(job)
