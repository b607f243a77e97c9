"""Job quotas: per owner, jobs active at once and jobs started per minute; per client
address, jobs active at once over every owner there (JOB_QUOTA_PER_IP).

An owner is a signed-in user or an anonymous session (jobs/owners.py). Both counts come
from the database, inside the transaction that creates the job (`job_submit` in
jobs/services/submit.py), so two concurrent submissions cannot both pass on one free place:
SQLite's IMMEDIATE transactions are serialized, and on PostgreSQL a transaction-scoped
advisory lock per owner (then one per address) serializes those submissions. A limit of
0 turns a quota off; owners with the permission `jobs.bypass_quotas` are exempt from all three.

The socket quota lives in notifications/socket_quota.py (it is counted in Redis).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Min, QuerySet
from django.utils import timezone

from jobs.models import Job, JobState
from jobs.owners import Owner

RATE_WINDOW = timedelta(seconds=60)  # JOB_QUOTA_PER_MINUTE counts jobs created in this window
# When an active job will end is unknown; the shortest ETA of a running one is a fair
# hint, kept within these bounds so a client neither hammers nor waits for nothing.
ACTIVE_RETRY_AFTER_DEFAULT = 10  # seconds, when no running job has an ETA
ACTIVE_RETRY_AFTER_MIN = 1
ACTIVE_RETRY_AFTER_MAX = 60


class QuotaExceeded(Exception):
    """The owner may not start another job now: a 429 with `Retry-After: retry_after`."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def client_address_key(address: str | None) -> str:
    """What JOB_QUOTA_PER_IP counts a client address as: an IPv4 address itself, an
    IPv6 one its /64 (one subscriber usually holds a whole /64); empty when unknown."""
    if not address:
        return ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an IP address (a Unix socket's name, say): counted as it is
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def job_quota_check(*, owner: Owner, address_key: str = "") -> None:
    """Raises QuotaExceeded when `owner`, submitting from `address_key`
    (`client_address_key`), may not start one more job now.

    Call it inside the transaction that creates the job (see `job_submit`).
    """
    if owner.bypasses_quotas:
        return
    active_limit = settings.JOB_QUOTA_ACTIVE
    rate_limit = settings.JOB_QUOTA_PER_MINUTE
    if active_limit or rate_limit:
        _serialize(f"jobstream.quota.{owner.key}")
        _check_owner(owner, active_limit=active_limit, rate_limit=rate_limit)
    address_limit = settings.JOB_QUOTA_PER_IP
    if address_limit and address_key:
        _serialize(f"jobstream.quota.address.{address_key}")  # after the owner's: one order, no deadlock
        active = Job.objects.filter(client_address=address_key, state__in=(JobState.QUEUED, JobState.RUNNING))
        count = active.count()
        if count >= address_limit:
            raise QuotaExceeded(
                f"Your address ({address_key}) has {count} jobs queued or running, the most allowed at once from "
                f"one address ({address_limit}), whoever started them; wait for one to end or cancel one.",
                retry_after=_active_retry_after(active),
            )


def _check_owner(owner: Owner, *, active_limit: int, rate_limit: int) -> None:
    jobs = Job.objects.filter(owner.jobs_filter())
    if active_limit:
        active = jobs.filter(state__in=(JobState.QUEUED, JobState.RUNNING))
        count = active.count()
        if count >= active_limit:
            raise QuotaExceeded(
                f"You have {count} jobs queued or running, the most allowed at once ({active_limit}); "
                "wait for one to end or cancel one.",
                retry_after=_active_retry_after(active),
            )
    if rate_limit:
        now = timezone.now()
        recent = jobs.filter(created_at__gt=now - RATE_WINDOW).order_by("created_at")
        count = recent.count()
        if count >= rate_limit:
            # Back under the limit once the (count - limit + 1) oldest have left the window.
            frees_at = recent.values_list("created_at", flat=True)[count - rate_limit] + RATE_WINDOW
            retry_after = max(1, math.ceil((frees_at - now).total_seconds()))
            raise QuotaExceeded(
                f"You started {count} jobs in the last minute, the most allowed ({rate_limit}); "
                f"try again in {retry_after} s.",
                retry_after=retry_after,
            )


def _active_retry_after(active: QuerySet[Job]) -> int:
    eta = active.filter(state=JobState.RUNNING).aggregate(eta=Min("progress_eta_seconds"))["eta"]
    if eta is None:
        return ACTIVE_RETRY_AFTER_DEFAULT
    return min(ACTIVE_RETRY_AFTER_MAX, max(ACTIVE_RETRY_AFTER_MIN, math.ceil(eta)))


def _serialize(name: str) -> None:
    """Makes concurrent submissions counted under `name` (an owner, an address) wait for
    each other until commit.

    Needed on PostgreSQL only: under READ COMMITTED two transactions would both count
    the same free place. SQLite already serializes writers (BEGIN IMMEDIATE,
    core/settings.py).
    """
    if connection.vendor != "postgresql":
        return
    assert connection.in_atomic_block, "job_quota_check must run inside the creating transaction"
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)])
