"""The job JSON, declared once: every API body, page, stream frame and the CLI use it.

`JobPayload` is the contract's job state (docs/contract.md#job-state and the OpenAPI
document describe it to users); `job_payload` turns a Job into it. The API's response
schema is this declaration (jobs/api.py), the stream frames wrap it (`job_frame_text`,
`snapshot_frame_text`), `JOB_KEYS` is derived from it, and the running frames a worker
sends at every report (`RunningFrames`) are built from a `job_payload` taken once at
the job's start.

The TypedDicts are typing_extensions' so that pydantic (ninja's schema) reads them on
Python 3.11.
"""

# No `from __future__ import annotations` here: a TypedDict sees `NotRequired` (and so
# gets JOB_KEYS right) only in annotations evaluated when the class is made.
import json
from datetime import datetime
from typing import Any, Literal, NotRequired, cast

from typing_extensions import TypedDict

from jobs.models import Job, JobState

# The states as the JSON spells them; a test checks them against JobState.
JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ProgressPayload(TypedDict):
    # int or float: a count of 340 stays 340 in the JSON, never 340.0
    current: int | float | None
    total: int | float | None  # None: an unknown amount of work (an indeterminate bar)
    percent: float | None
    message: str
    rate: float | None
    eta_seconds: float | None


class JobPayload(TypedDict):
    id: str
    kind: str
    params: dict[str, Any]
    state: JobStateName
    seq: int
    progress: ProgressPayload | None  # None until the first report
    result: Any
    result_url: str | None
    error: str | None
    error_detail: NotRequired[str | None]
    """The traceback; staff only."""
    queue_position: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    url: str


# The API's schema (pydantic) takes a key's description from its docstring, as error_detail's.
JobPayload.__pydantic_config__ = {"use_attribute_docstrings": True}  # type: ignore[attr-defined]

# The keys of the job JSON in every API body and stream frame; staff also get error_detail.
JOB_KEYS: frozenset[str] = JobPayload.__required_keys__


class JobFrame(TypedDict):
    type: Literal["job"]
    job: JobPayload


class SnapshotFrame(TypedDict):
    type: Literal["snapshot"]
    jobs: list[JobPayload]
    counts: NotRequired[dict[str, int]]  # the staff stream only: jobs per state


class ErrorFrame(TypedDict):
    type: Literal["error"]
    error: str


# --- a Job as JSON ---------------------------------------------------------------


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with microseconds and a `Z`."""
    if value is None:
        return None
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _number(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else round(value, 3)


def progress_payload(job: Job) -> ProgressPayload | None:
    if not job.has_progress:
        return None
    current, total = job.progress_current, job.progress_total
    percent = None
    if current is not None and total:
        percent = round(min(max(current / total, 0.0), 1.0) * 100, 1)
    return {
        "current": _number(current),
        "total": _number(total),
        "percent": percent,
        "message": job.progress_message,
        "rate": None if job.progress_rate is None else round(job.progress_rate, 3),
        "eta_seconds": None if job.progress_eta_seconds is None else round(job.progress_eta_seconds, 1),
    }


def job_payload(job: Job, *, staff: bool = False, queue_position: int | None = None) -> JobPayload:
    """The job's JSON; `error_detail` only for `staff`, `queue_position` only while queued."""
    payload: JobPayload = {
        "id": str(job.id),
        "kind": job.kind,
        "params": job.params,
        "state": cast(JobStateName, job.state),
        "seq": job.seq,
        "progress": progress_payload(job),
        "result": job.result,
        "result_url": f"/api/jobs/{job.id}/result/" if job.result_file else None,
        "error": job.error or None,
        "queue_position": queue_position if job.state == JobState.QUEUED else None,
        "created_at": timestamp(job.created_at) or "",
        "started_at": timestamp(job.started_at),
        "finished_at": timestamp(job.finished_at),
        "updated_at": timestamp(job.updated_at) or "",
        "url": f"/jobs/{job.id}/",
    }
    if staff:
        payload["error_detail"] = job.error_detail or None
    return payload


# --- the texts the streams send --------------------------------------------------

# allow_nan=False: a NaN in a result would be invalid JSON for browsers. One encoder for
# every frame: `json.dumps` with any option builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(frame: JobFrame | SnapshotFrame | ErrorFrame) -> str:
    return _ENCODER.encode(frame)


def payload_text(payload: JobPayload) -> str:
    """The job alone (an SSE event's data)."""
    return _ENCODER.encode(payload)


def job_frame_text(payload: JobPayload) -> str:
    return encode({"type": "job", "job": payload})


def snapshot_frame_text(payloads: list[JobPayload], *, counts: dict[str, int] | None = None) -> str:
    frame: SnapshotFrame = {"type": "snapshot", "jobs": payloads}
    if counts is not None:
        frame["counts"] = counts
    return encode(frame)


def error_frame_text(message: str) -> str:
    return encode({"type": "error", "error": message})


class RunningFrames:
    """The progress frames of one running job: `job_payload` taken once at its start,
    then only the three fields a report changes (seq, progress, updated_at) per frame.
    The same text as `job_frame_text(job_payload(job))`, for a fraction of its work, on
    the path every report takes (jobs/services/run.py `RunningJob.report`)."""

    def __init__(self, job: Job) -> None:
        self.base = job_payload(job)

    def text(self, job: Job) -> str:
        payload = self.base.copy()
        payload["seq"] = job.seq
        payload["progress"] = progress_payload(job)
        payload["updated_at"] = timestamp(job.updated_at) or ""
        return job_frame_text(payload)
