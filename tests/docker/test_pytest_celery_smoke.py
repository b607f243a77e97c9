"""Smoke test of pytest-celery's Docker harness: a Redis broker, a Redis result backend and
a Celery worker, each in its own container, run tasks sent from this process.

It runs in its own pytest call, with the plugin that the main run turns off:

    .venv/bin/pytest -o addopts="" -p tests.environment -p celery tests/docker -m docker -ra    # make docker-smoke

Without the plugin (the main run) it is skipped before any fixture is looked up; without
a Docker engine answering `docker info` it is skipped before any container is started.
pytest_celery is imported only inside fixtures and tests: importing its worker tasks
registers them as shared tasks with every Celery app, jobstream's included.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_celery import CeleryBrokerCluster, CeleryTestSetup, RedisTestBroker  # type: ignore[import-untyped]

DOCKER_INFO_TIMEOUT = 15  # seconds; a healthy engine answers in well under one

pytestmark = [
    pytest.mark.docker,
    # A string condition is evaluated at setup, with `config` in scope.
    pytest.mark.skipif(
        "not config.pluginmanager.has_plugin('celery')",
        reason="the pytest-celery plugin is off; run: make docker-smoke",
    ),
]


@cache
def docker_engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when `docker info` answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no `docker` client on PATH"
    try:
        answer = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_INFO_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {DOCKER_INFO_TIMEOUT} s"
    if answer.returncode != 0:
        lines = (answer.stderr or answer.stdout).strip().splitlines()
        return f"`docker info` failed: {lines[-1] if lines else f'exit status {answer.returncode}'}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _docker_engine() -> None:
    # Session scope: pytest sets up higher-scoped fixtures first, and pytest-celery's
    # session fixtures (the worker image build) already need the engine.
    problem = docker_engine_problem()
    if problem is not None:
        pytest.skip(f"needs a Docker engine: {problem}")


@pytest.fixture
def celery_broker_cluster(celery_redis_broker: RedisTestBroker) -> Iterator[CeleryBrokerCluster]:
    """Redis only, as in production: by default pytest-celery repeats the test on RabbitMQ."""
    from pytest_celery import CeleryBrokerCluster

    cluster = CeleryBrokerCluster(celery_redis_broker)
    yield cluster
    cluster.teardown()


def test_worker_container_answers_pings(celery_setup: CeleryTestSetup) -> None:
    assert celery_setup.ready(ping=True, control=True, docker=True)


def test_worker_container_runs_a_task_and_returns_its_result(celery_setup: CeleryTestSetup) -> None:
    from pytest_celery import RESULT_TIMEOUT
    from pytest_celery.vendors.worker.tasks import add  # type: ignore[import-untyped]

    result = add.s(2, 3).apply_async(queue=celery_setup.worker.worker_queue)

    assert result.get(timeout=RESULT_TIMEOUT) == 5
