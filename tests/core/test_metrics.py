"""`/metrics` in this process: who may read it, its settings, and the database figures
against rows written here (the live scrapes under traffic: tests/e2e/test_metrics_live.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from core.metrics_settings import metrics_address, metrics_port, metrics_token, multiprocess_dir
from jobs.models import Job, JobState
from tests.accounts import user_with
from tests.conftest import ROOT
from tests.scrapes import Scrape

TOKEN = "metrics-token-for-tests-0123456789"
VIEW_METRICS = "view_metrics"


def samples(text: str) -> Scrape:
    return Scrape.parse(text)


def make_job(kind: str, state: JobState, *, wait: float | None, run: float | None, attempts: int = 1) -> Job:
    created = timezone.now() - timedelta(hours=1)
    started = None if wait is None else created + timedelta(seconds=wait)
    finished = None if run is None or started is None else started + timedelta(seconds=run)
    return Job.objects.create(
        kind=kind,
        owner_token="t-metrics",
        state=state,
        attempts=attempts if started is not None else 0,
        created_at=created,
        started_at=started,
        finished_at=finished,
        updated_at=finished or started or created,
    )


def scrape(client: Client, **headers: str) -> Any:
    return client.get("/metrics", headers=headers)


# --- who may read it -------------------------------------------------------------


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN)
def test_metrics_answers_the_bearer_token_in_prometheus_text_format(client: Client) -> None:
    response = scrape(client, Authorization=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    names = samples(response.content.decode()).families
    assert {"jobstream_jobs", "jobstream_queue_wait_seconds", "jobstream_run_seconds"} <= names
    assert {"jobstream_sockets_open", "jobstream_frames_delivered", "jobstream_delivery_lag_seconds"} <= names


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-the-right-length", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "],
)
def test_metrics_is_404_without_the_token_or_the_permission(client: Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert scrape(client, **headers).status_code == 404
    assert client.post("/metrics", headers=headers).status_code == 404  # not a CSRF 403: nothing says it is there


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=None)
def test_with_no_token_set_no_bearer_is_accepted(client: Client) -> None:
    assert scrape(client, Authorization="Bearer ").status_code == 404
    assert scrape(client, Authorization="Bearer None").status_code == 404


@pytest.mark.django_db
def test_a_user_with_view_metrics_may_read_it_and_others_may_not(client: Client) -> None:
    user_with("watcher", VIEW_METRICS)
    user_with("plain", is_staff=True)
    client.login(username="plain", password="pw-for-tests-only")
    assert scrape(client).status_code == 404  # is_staff alone grants nothing
    client.login(username="watcher", password="pw-for-tests-only")
    assert scrape(client).status_code == 200
    assert client.post("/metrics").status_code == 405


# --- its settings ----------------------------------------------------------------


def test_metrics_settings_parse_and_say_what_is_wrong(tmp_path: Any) -> None:
    assert metrics_token("") is None and metrics_token("  ") is None
    assert metrics_token(f" {TOKEN} ") == TOKEN
    for bad in ("short", "has spaces in the middle of it", 'quote"s-0123456789abcdef'):
        with pytest.raises(ValueError):
            metrics_token(bad)
    assert metrics_port("") is None and metrics_port("9100") == 9100 and metrics_port("65535") == 65535
    for bad in ("0", "65536", "-1", "http", "9100.0", "٩١"):
        with pytest.raises(ValueError, match="port number"):
            metrics_port(bad)
    assert metrics_address("") == "0.0.0.0" and metrics_address("::1") == "::1"
    with pytest.raises(ValueError):
        metrics_address("localhost")
    assert multiprocess_dir(None) is None and multiprocess_dir(str(tmp_path)) == str(tmp_path)
    for bad in ("", str(tmp_path / "missing")):
        with pytest.raises(ValueError):
            multiprocess_dir(bad)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("METRICS_TOKEN", "too-short"),
        ("WORKER_METRICS_PORT", "70000"),
        ("WORKER_METRICS_ADDRESS", "every"),
        ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/prometheus"),
    ],
)
def test_a_bad_metrics_setting_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    env = {**os.environ, "DEBUG": "true", variable: value}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", "import core.settings"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"RuntimeError: {variable} " in result.stderr


# --- the database figures --------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the scrape reads in a thread of its own: committed rows
@override_settings(METRICS_TOKEN=TOKEN)
def test_database_figures_count_each_job_in_its_state_and_buckets(client: Client) -> None:
    before = samples(scrape(client, Authorization=f"Bearer {TOKEN}").content.decode())
    make_job("sleep", JobState.QUEUED, wait=None, run=None)
    make_job("sleep", JobState.RUNNING, wait=0.3, run=None)
    make_job("sleep", JobState.SUCCEEDED, wait=2.0, run=4.0)
    make_job("sleep", JobState.FAILED, wait=0.04, run=0.2)
    make_job("primes", JobState.CANCELLED, wait=None, run=None)  # cancelled while queued: never ran
    after = samples(scrape(client, Authorization=f"Bearer {TOKEN}").content.decode())

    def grew(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert grew("jobstream_jobs_total", kind="sleep", state="queued") == 4
    assert grew("jobstream_jobs_total", kind="sleep", state="running") == 3
    assert grew("jobstream_jobs_total", kind="sleep", state="succeeded") == 1
    assert grew("jobstream_jobs_total", kind="sleep", state="failed") == 1
    assert grew("jobstream_jobs_total", kind="primes", state="queued") == 1
    assert grew("jobstream_jobs_total", kind="primes", state="running") == 0
    assert grew("jobstream_jobs_total", kind="primes", state="cancelled") == 1
    assert grew("jobstream_jobs", state="queued") == 1
    assert grew("jobstream_jobs", state="running") == 1

    wait = "jobstream_queue_wait_seconds"
    assert grew(f"{wait}_count", kind="sleep") == 3
    assert grew(f"{wait}_sum", kind="sleep") == pytest.approx(2.34, abs=0.01)
    assert grew(f"{wait}_bucket", kind="sleep", le="0.05") == 1
    assert grew(f"{wait}_bucket", kind="sleep", le="0.5") == 2
    assert grew(f"{wait}_bucket", kind="sleep", le="2.5") == 3
    assert grew(f"{wait}_count", kind="primes") == 0

    run = "jobstream_run_seconds"
    assert grew(f"{run}_count", kind="sleep", state="succeeded") == 1
    assert grew(f"{run}_sum", kind="sleep", state="succeeded") == pytest.approx(4.0, abs=0.01)
    assert grew(f"{run}_bucket", kind="sleep", state="succeeded", le="2.5") == 0
    assert grew(f"{run}_bucket", kind="sleep", state="succeeded", le="5.0") == 1
    assert grew(f"{run}_bucket", kind="sleep", state="failed", le="0.5") == 1
    assert grew(f"{run}_count", kind="primes", state="cancelled") == 0


@pytest.mark.django_db
@override_settings(METRICS_TOKEN=TOKEN)
def test_every_registered_kind_has_its_series_before_its_first_job(client: Client) -> None:
    from jobs.kinds import kind_list

    found = samples(scrape(client, Authorization=f"Bearer {TOKEN}").content.decode())
    for kind in kind_list():
        assert found.has("jobstream_jobs_total", kind=kind.name, state="succeeded")
        assert found.has("jobstream_queue_wait_seconds_count", kind=kind.name)
