"""Retention (jobs/services/retention.py): finished jobs and their result files are purged
after a configurable age, by the service, the `jobs.purge_finished` Celery task (on the
real worker) and `manage.py jobs purge`. Queued and running jobs are never purged."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from jobs.management.commands.jobs import parse_age
from jobs.models import Job, JobLogLine, JobState
from jobs.services import PurgeReport, job_purge_finished
from jobs.tasks import purge_finished
from tests.accounts import user_with
from tests.conftest import ROOT
from tests.waiting import wait_until

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def own_media_root(tmp_path: Path) -> Iterator[None]:
    """Each test its own MEDIA_ROOT: rows roll back between tests, their files would not."""
    with override_settings(MEDIA_ROOT=str(tmp_path / "media")):
        yield


def make_job(
    state: JobState,
    *,
    ended_days_ago: float | None = None,
    created_days_ago: float = 400,
    with_file: bool = False,
    user: Any = None,
) -> Job:
    """An anonymous owner's job row (`user`'s, given one); a finished one ended
    `ended_days_ago`; `with_file` writes its result file."""
    now = timezone.now()
    created = now - timedelta(days=created_days_ago)
    finished = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
    job = Job.objects.create(
        owner_token="" if user else "t" * 32,
        owner_user=user,
        kind="report",
        params={"rows": 1},
        state=state,
        seq=3,
        created_at=created,
        updated_at=finished or created,
        finished_at=finished,
    )
    if with_file:
        path = result_dir(job.id) / "sales-report.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("order_id\n1\n")
        job.result_file = path.relative_to(settings.MEDIA_ROOT).as_posix()
        job.save(update_fields=["result_file"])
    return job


def result_dir(job_id: object) -> Path:
    return Path(settings.MEDIA_ROOT) / "results" / str(job_id)


def exists(job: Job) -> bool:
    return Job.objects.filter(pk=job.pk).exists()


def orphan_dir(*, days_old: float, name: str | None = None) -> Path:
    """A result directory with no job row, last changed `days_old` ago."""
    path = result_dir(name or uuid.uuid4())
    (path / "file.csv").parent.mkdir(parents=True)
    (path / "file.csv").write_text("x\n")
    stamp = (timezone.now() - timedelta(days=days_old)).timestamp()
    os.utime(path, (stamp, stamp))
    return path


# --- the service -----------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_a_job_that_ended_before_the_age_is_purged_with_its_files(state: JobState) -> None:
    job = make_job(state, ended_days_ago=8, with_file=True)

    report = job_purge_finished(older_than=7 * DAY)

    assert report == PurgeReport(jobs=1, directories=1)
    assert not exists(job)
    assert not result_dir(job.id).exists()


@pytest.mark.django_db
def test_a_purged_jobs_log_lines_go_with_it_and_a_kept_jobs_stay() -> None:
    purged = make_job(JobState.SUCCEEDED, ended_days_ago=8)
    kept = make_job(JobState.SUCCEEDED, ended_days_ago=6, created_days_ago=30)
    for job in (purged, kept):
        JobLogLine.objects.bulk_create(
            JobLogLine(job=job, n=n, t=timezone.now(), level="info", text=f"line {n}") for n in (1, 2, 3)
        )

    job_purge_finished(older_than=7 * DAY)

    assert not JobLogLine.objects.filter(job_id=purged.id).exists()
    assert list(JobLogLine.objects.filter(job=kept).values_list("n", flat=True)) == [1, 2, 3]


@pytest.mark.django_db
def test_a_job_that_ended_within_the_age_is_kept_with_its_files() -> None:
    job = make_job(JobState.SUCCEEDED, ended_days_ago=6, created_days_ago=30, with_file=True)

    assert job_purge_finished(older_than=7 * DAY) == PurgeReport(jobs=0, directories=0)

    assert exists(job)
    assert (result_dir(job.id) / "sales-report.csv").is_file()


@pytest.mark.django_db
@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_queued_and_running_jobs_are_never_purged_however_old(state: JobState) -> None:
    job = make_job(state, created_days_ago=400, with_file=True)  # a running report writes its file as it goes

    assert job_purge_finished(older_than=timedelta(0)) == PurgeReport(jobs=0, directories=0)

    assert exists(job)
    assert result_dir(job.id).is_dir()


@pytest.mark.django_db
def test_a_finished_job_without_finished_at_is_judged_by_its_last_update() -> None:
    old = make_job(JobState.FAILED, created_days_ago=10)
    recent = make_job(JobState.FAILED, created_days_ago=1)

    job_purge_finished(older_than=7 * DAY)

    assert not exists(old)
    assert exists(recent)


@pytest.mark.django_db
def test_the_age_is_measured_from_the_end_not_the_start() -> None:
    long_job = make_job(JobState.SUCCEEDED, created_days_ago=30, ended_days_ago=2)

    job_purge_finished(older_than=7 * DAY)

    assert exists(long_job)


@pytest.mark.django_db
def test_purge_goes_through_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("jobs.services.retention.PURGE_BATCH", 2)
    jobs = [make_job(JobState.SUCCEEDED, ended_days_ago=9, with_file=True) for _ in range(5)]
    kept = make_job(JobState.RUNNING)

    assert job_purge_finished(older_than=7 * DAY) == PurgeReport(jobs=5, directories=5)

    assert not any(exists(job) or result_dir(job.id).exists() for job in jobs)
    assert exists(kept)


@pytest.mark.django_db
def test_old_result_directories_whose_job_is_gone_are_removed_and_others_kept() -> None:
    orphan_old = orphan_dir(days_old=9)
    orphan_new = orphan_dir(days_old=1)
    not_a_job = orphan_dir(days_old=9, name="not-a-job-id")
    live = make_job(JobState.RUNNING, with_file=True)
    stamp = (timezone.now() - 30 * DAY).timestamp()
    os.utime(result_dir(live.id), (stamp, stamp))

    assert job_purge_finished(older_than=7 * DAY) == PurgeReport(jobs=0, directories=1)

    assert not orphan_old.exists()
    assert orphan_new.is_dir() and not_a_job.is_dir() and result_dir(live.id).is_dir()


@pytest.mark.django_db
def test_purged_result_file_is_no_longer_served(client: Any) -> None:
    client.get("/")
    token = client.session["jobstream_owner"]
    job = make_job(JobState.SUCCEEDED, ended_days_ago=40, with_file=True)
    Job.objects.filter(pk=job.pk).update(owner_token=token)
    assert client.get(f"/api/jobs/{job.id}/result/").status_code == 200

    job_purge_finished(older_than=30 * DAY)

    assert client.get(f"/api/jobs/{job.id}/result/").status_code == 404


# --- the Celery task -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(JOB_RETENTION_DAYS=30, JOB_RETENTION_DAYS_ANONYMOUS=30)
def test_purge_task_on_the_worker_purges_jobs_older_than_the_retention_days(worker: Any) -> None:
    old = make_job(JobState.SUCCEEDED, ended_days_ago=31, with_file=True)
    young = make_job(JobState.SUCCEEDED, ended_days_ago=29, with_file=True)

    purge_finished.delay()

    assert wait_until(lambda: not exists(old), timeout=30), "the worker never purged the old job"
    assert not result_dir(old.id).exists()
    assert exists(young) and result_dir(young.id).is_dir()


@pytest.mark.django_db(transaction=True)
@override_settings(JOB_RETENTION_DAYS=30)
def test_purge_task_on_the_worker_purges_anonymous_jobs_after_a_day_and_keeps_signed_in_ones_of_that_age(
    worker: Any,
) -> None:
    anonymous_old = make_job(JobState.SUCCEEDED, ended_days_ago=1.5, with_file=True)
    anonymous_young = make_job(JobState.SUCCEEDED, ended_days_ago=0.5, with_file=True)
    signed_in_same_age = make_job(JobState.SUCCEEDED, ended_days_ago=1.5, with_file=True, user=user_with("ada"))

    purge_finished.delay()

    assert wait_until(lambda: not exists(anonymous_old), timeout=30), "the worker never purged the anonymous job"
    assert not result_dir(anonymous_old.id).exists()
    assert exists(anonymous_young) and result_dir(anonymous_young.id).is_dir()
    assert exists(signed_in_same_age) and result_dir(signed_in_same_age.id).is_dir()


def test_anonymous_retention_defaults_to_one_day() -> None:
    assert settings.JOB_RETENTION_DAYS_ANONYMOUS == 1


@pytest.mark.django_db
@override_settings(JOB_RETENTION_DAYS=0, JOB_RETENTION_DAYS_ANONYMOUS=1)
def test_purge_task_with_signed_in_retention_0_still_purges_anonymous_jobs() -> None:
    anonymous = make_job(JobState.FAILED, ended_days_ago=2)
    signed_in = make_job(JobState.FAILED, ended_days_ago=3000, user=user_with("grace"))

    assert purge_finished.apply().get() == {"jobs": 1, "directories": 0}

    assert not exists(anonymous) and exists(signed_in)


def test_purge_task_is_registered_under_its_beat_name() -> None:
    from celery_app import app

    assert purge_finished.name == "jobs.purge_finished"
    assert "jobs.purge_finished" in app.tasks


@pytest.mark.django_db
@override_settings(JOB_RETENTION_DAYS=0, JOB_RETENTION_DAYS_ANONYMOUS=0)
def test_purge_task_keeps_everything_when_retention_is_0() -> None:
    old = make_job(JobState.SUCCEEDED, ended_days_ago=3000)

    assert purge_finished.apply().get() == {"jobs": 0, "directories": 0}

    assert exists(old)


# --- manage.py jobs purge --------------------------------------------------------


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("jobs", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_purge_command_purges_jobs_older_than_the_given_age() -> None:
    old = make_job(JobState.CANCELLED, ended_days_ago=8, with_file=True)
    young = make_job(JobState.CANCELLED, ended_days_ago=6)
    running = make_job(JobState.RUNNING)

    output = run_command("purge", "--older-than", "7d")

    assert output == "Purged 1 finished job(s) that ended over 7 days ago and 1 result directory(ies).\n"
    assert not exists(old) and not result_dir(old.id).exists()
    assert exists(young) and exists(running)


@pytest.mark.django_db
@override_settings(JOB_RETENTION_DAYS=5, JOB_RETENTION_DAYS_ANONYMOUS=5)
def test_purge_command_defaults_to_the_retention_days() -> None:
    old = make_job(JobState.SUCCEEDED, ended_days_ago=6)
    young = make_job(JobState.SUCCEEDED, ended_days_ago=4)

    assert "over 5 days ago" in run_command("purge")

    assert not exists(old) and exists(young)


@pytest.mark.django_db
@override_settings(JOB_RETENTION_DAYS=30, JOB_RETENTION_DAYS_ANONYMOUS=1)
def test_purge_command_defaults_to_each_owners_retention_and_says_so() -> None:
    anonymous = make_job(JobState.SUCCEEDED, ended_days_ago=2)
    signed_in = make_job(JobState.SUCCEEDED, ended_days_ago=2, user=user_with("linus"))

    output = run_command("purge")

    assert output == (
        "Purged 1 finished job(s) that ended over 30 days ago (anonymous owners': over 1 day ago) "
        "and 0 result directory(ies).\n"
    )
    assert not exists(anonymous) and exists(signed_in)


@pytest.mark.django_db
@override_settings(JOB_RETENTION_DAYS=0, JOB_RETENTION_DAYS_ANONYMOUS=0)
def test_purge_command_without_age_refuses_when_retention_is_off() -> None:
    old = make_job(JobState.SUCCEEDED, ended_days_ago=3000)

    with pytest.raises(CommandError, match="JOB_RETENTION_DAYS and JOB_RETENTION_DAYS_ANONYMOUS are 0"):
        run_command("purge")

    assert exists(old)


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        ("3600s", timedelta(seconds=3600)),
        ("0s", timedelta(0)),
        (" 2d ", timedelta(days=2)),
    ],
)
def test_age_parses_a_whole_number_and_a_unit(text: str, age: timedelta) -> None:
    assert parse_age(text) == age


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7", "'7' is not a duration"),
        ("7x", "'7x' is not a duration"),
        ("d", "'d' is not a duration"),
        ("1.5h", "'1.5h' is not a duration"),
        ("-1d", "'-1d' is not a duration"),
        ("7 d", "'7 d' is not a duration"),
        ("7D", "'7D' is not a duration"),
        ("", "'' is not a duration"),
        ("1w", "'1w' is not a duration"),
        ("36501d", "'36501d' is more than 100 years"),
        ("999999999d", "'999999999d' is more than 100 years"),
    ],
)
def test_purge_command_rejects_a_bad_age_naming_it(text: str, message: str) -> None:
    job = make_job(JobState.SUCCEEDED, ended_days_ago=3000)

    with pytest.raises(CommandError) as refused:
        run_command("purge", f"--older-than={text}")

    assert "--older-than" in str(refused.value) and message in str(refused.value)
    assert "like 7d, 12h, 30m or 3600s" in str(refused.value) or "100 years" in message
    assert exists(job)


def test_jobs_command_without_a_subcommand_is_an_error() -> None:
    with pytest.raises(CommandError, match="subcommand"):
        run_command()


def test_jobs_command_with_an_unknown_subcommand_names_the_choices() -> None:
    with pytest.raises(CommandError, match=r"invalid choice: 'vacuum'.*purge"):
        run_command("vacuum")


def test_purge_command_from_the_shell_exits_2_with_the_error_on_stderr() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        [sys.executable, "manage.py", "jobs", "purge", "--older-than", "soon"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "argument --older-than: 'soon' is not a duration" in result.stderr
