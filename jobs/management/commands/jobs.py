"""`manage.py jobs <subcommand>`: jobs from the command line.

    manage.py jobs submit primes --param limit=5000000 --watch   # start one, follow its bar
    manage.py jobs watch <id>                # follow any job until it ends, its log lines above the bar
    manage.py jobs log <id>                  # the job's kept log, as log.txt has it
    manage.py jobs list [--state running] [--limit 20]
    manage.py jobs cancel <id>
    manage.py jobs purge --older-than 7d    # finished jobs that ended over 7 days ago, and their files

Each subcommand is an argparse subparser with a `handle_<name>` method. The terminal
is an operator's console: it sees every job, as staff do (jobs/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import uuid
from datetime import timedelta
from typing import IO, Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rich.console import Console

from jobs.cli import EXIT_CODES, LogView, ProgressView, cli_owner, describe_end, follow, job_line, parse_params
from jobs.exceptions import JobAlreadyFinished, JobNotFound
from jobs.kinds import ParamsInvalid, UnknownKind
from jobs.models import Job, JobState
from jobs.owners import Owner, owner_of_user
from jobs.selectors import job_log_text, parse_job_id
from jobs.services import RetentionAges, job_cancel, job_create, job_purge_finished, retention_ages

DURATION_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
_DURATION = re.compile(r"(\d{1,9})([dhms])")
MAX_AGE = timedelta(days=100 * 365)  # past this an age is a typo (and timedelta overflows soon after)


def parse_age(text: str) -> timedelta:
    """`7d`, `12h`, `30m`, `3600s` as a timedelta; argparse turns the error into a usage error."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a whole number and a unit d, h, m or s, like 7d, 12h, 30m or 3600s."
        )
    age = timedelta(**{DURATION_UNITS[match[2]]: int(match[1])})
    if age > MAX_AGE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than 100 years.")
    return age


class Command(BaseCommand):
    help = "Work with jobs from the command line. Subcommands: submit, watch, log, list, cancel, purge."

    def add_arguments(self, parser: CommandParser) -> None:
        subcommands = parser.add_subparsers(
            dest="subcommand",
            metavar="subcommand",
            required=True,
            help="what to do (submit, watch, log, list, cancel, purge)",
        )
        submit = subcommands.add_parser(
            "submit",
            help="start a job",
            description="Starts a job of KIND with its parameters; with --watch, follows it with a live bar "
            "and its log lines, and exits 0 when it succeeds, 1 when it fails, 2 when it is cancelled.",
        )
        submit.add_argument("kind", help="the job kind (see /api/job-kinds/)")
        submit.add_argument(
            "--param", action="append", default=[], metavar="KEY=VALUE", help="a parameter (repeat for more)"
        )
        submit.add_argument("--user", help="owner: this user's account (default: the terminal's own jobs)")
        submit.add_argument("--watch", action="store_true", help="follow the job until it ends")
        watch = subcommands.add_parser("watch", help="follow a job until it ends, with its log lines")
        watch.add_argument("job_id", metavar="ID")
        log = subcommands.add_parser(
            "log",
            help="print a job's kept log",
            description="Prints the lines the job keeps, oldest first, one `<time> <LEVEL> <text>` a line "
            "(as GET /api/jobs/<id>/log.txt).",
        )
        log.add_argument("job_id", metavar="ID")
        listing = subcommands.add_parser("list", help="the newest jobs")
        listing.add_argument("--state", choices=[state.value for state in JobState])
        listing.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
        cancel = subcommands.add_parser("cancel", help="ask a job to stop")
        cancel.add_argument("job_id", metavar="ID")
        purge = subcommands.add_parser(
            "purge",
            help="delete finished jobs and their result files",
            description="Deletes jobs that ended (succeeded, failed or cancelled) more than AGE ago, with their "
            "result files. Queued and running jobs are never touched.",
        )
        purge.add_argument(
            "--older-than",
            type=parse_age,
            metavar="AGE",
            help="7d, 12h, 30m or 3600s, for every owner (default: JOB_RETENTION_DAYS days, "
            "JOB_RETENTION_DAYS_ANONYMOUS for anonymous owners' jobs)",
        )

    def handle(self, *args: Any, subcommand: str, **options: Any) -> None:
        getattr(self, f"handle_{subcommand}")(**options)

    # --- submit / watch / list / cancel -------------------------------------------

    def handle_submit(self, *, kind: str, param: list[str], user: str | None, watch: bool, **options: Any) -> None:
        try:
            params = parse_params(param)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        owner = _owner_for(user)
        try:
            job = job_create(owner=owner, kind=kind, params=params, from_text=True)
        except UnknownKind as exc:
            raise CommandError(str(exc)) from exc
        except ParamsInvalid as exc:
            problems = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.errors.items())
            raise CommandError(f"Bad parameters for {kind}: {problems}") from exc
        self.stdout.write(f"Started {job.kind} job {job.id}")
        if watch:
            self._watch(job.id, stream=options.get("stdout"))

    def handle_watch(self, *, job_id: str, **options: Any) -> None:
        self._watch(_job_id(job_id), stream=options.get("stdout"))

    def handle_log(self, *, job_id: str, **options: Any) -> None:
        parsed = _job_id(job_id)
        if not Job.objects.filter(pk=parsed).exists():
            raise CommandError(f"No job {job_id}.")
        for text in job_log_text(job_id=parsed):
            self.stdout.write(text, ending="")

    def handle_list(self, *, state: str | None, limit: int, **options: Any) -> None:
        jobs = Job.objects.order_by("-created_at")
        if state:
            jobs = jobs.filter(state=state)
        rows = list(jobs[:limit])
        if not rows:
            self.stdout.write("No jobs.")
        for job in rows:
            self.stdout.write(job_line(job))

    def handle_cancel(self, *, job_id: str, **options: Any) -> None:
        try:
            job = job_cancel(owner=Owner(views_all=True), job_id=_job_id(job_id))
        except JobNotFound as exc:
            raise CommandError(f"No job {job_id}.") from exc
        except JobAlreadyFinished as exc:
            raise CommandError(f"Job {job_id} already ended ({exc}).") from exc
        said = "cancelled" if job.state == JobState.CANCELLED else "asked to stop (it stops at its next report)"
        self.stdout.write(f"Job {job.id} {said}.")

    def _watch(self, job_id: uuid.UUID, *, stream: IO[str] | None) -> None:
        # The command's own stream (call_command's stdout, a test's buffer, else sys.stdout):
        # rich draws a live bar on a terminal and plain lines elsewhere.
        console = Console(file=stream or sys.stdout)
        with ProgressView(console) as view:
            final = asyncio.run(follow(job_id, view.show, LogView(console, job_id)))
        if final is None:
            raise CommandError(f"No job {job_id}.")
        self.stdout.write(describe_end(final))
        if final["state"] != "succeeded":
            raise SystemExit(EXIT_CODES[final["state"]])

    def handle_purge(self, *, older_than: timedelta | None, **options: Any) -> None:
        if older_than is not None:
            report = job_purge_finished(older_than=older_than)
            ended = f"over {_describe(older_than)} ago"
        else:
            ages = retention_ages()
            if ages.signed_in is None and ages.anonymous is None:
                raise CommandError(
                    "JOB_RETENTION_DAYS and JOB_RETENTION_DAYS_ANONYMOUS are 0 (finished jobs are kept): "
                    "give --older-than to purge."
                )
            report = job_purge_finished(older_than=ages.signed_in, anonymous_older_than=ages.anonymous)
            ended = _describe_ages(ages)
        self.stdout.write(
            f"Purged {report.jobs} finished job(s) that ended {ended} and {report.directories} result directory(ies)."
        )


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more.")
    return int(text)


def _job_id(text: str) -> uuid.UUID:
    parsed = parse_job_id(text)
    if parsed is None:
        raise CommandError(f"{text!r} is not a job id (a UUID like 7b9c2f9e-…).")
    return parsed


def _owner_for(username: str | None) -> Owner:
    if username is None:
        return cli_owner()
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"No user {username!r}.")
    return owner_of_user(user)


def _describe_ages(ages: RetentionAges) -> str:
    """`over 30 days ago`, saying so when anonymous owners' jobs have their own age."""
    if ages.signed_in is None:
        assert ages.anonymous is not None
        return f"over {_describe(ages.anonymous)} ago (anonymous owners' only; signed-in owners' are kept)"
    ended = f"over {_describe(ages.signed_in)} ago"
    if ages.anonymous is None:
        return f"{ended} (signed-in owners' only; anonymous owners' are kept)"
    if ages.anonymous != ages.signed_in:
        return f"{ended} (anonymous owners': over {_describe(ages.anonymous)} ago)"
    return ended


def _describe(age: timedelta) -> str:
    seconds = int(age.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"
