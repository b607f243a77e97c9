"""Channel-layer group names, built in one place.

Channels allows ASCII letters, digits, `-`, `_` and `.` in names under 100 characters.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.models import Job

_GROUP_NAME_OK = re.compile(r"^[A-Za-z0-9._-]{1,99}$")


def _checked(name: str) -> str:
    if not _GROUP_NAME_OK.match(name):
        raise ValueError(f"Invalid channel-layer group name {name!r}.")
    return name


def job_group(job_id: uuid.UUID | str) -> str:
    return _checked(f"job.{uuid.UUID(str(job_id)).hex}")


def owner_group(owner_key: str) -> str:
    """`owner_key` is `Owner.key` / `Job.owner_key`: `u.<id>` or `s.<token>`."""
    return _checked(f"owner.{owner_key}")


def session_group(session_key: str) -> str:
    """The streams opened with one session, told when it signs out. Named by a hash of
    the key, never the key itself: group names travel through Redis and its logs."""
    return _checked(f"session.{hashlib.sha256(session_key.encode()).hexdigest()}")


STAFF_GROUP = "jobs.staff"  # every job's frames, for the staff live view


def staff_group() -> str:
    return _checked(STAFF_GROUP)


def job_groups(job: Job) -> list[str]:
    """Where a job's frames go: its job group, its owner's group and the staff group."""
    return [job_group(job.id), owner_group(job.owner_key), staff_group()]
