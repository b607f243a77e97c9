"""Exceptions a job kind raises, and those the job services raise to their callers."""

from __future__ import annotations


class JobError(Exception):
    """A kind's failure with a message written for users: it becomes the job's `error`."""


class JobCancelled(Exception):
    """Raised by the reporter at its next call once a cancel was asked for."""


class JobNotFound(Exception):
    """No job with this id is visible to this owner (a 404, never a 403)."""


class JobAlreadyFinished(Exception):
    """The job is terminal, so it cannot be cancelled (a 409)."""

    def __init__(self, state: str) -> None:
        super().__init__(f"The job already ended ({state}).")
        self.state = state


class JobNotEnded(Exception):
    """The job is still queued or running, so it cannot be run again yet (a 409)."""

    def __init__(self, state: str) -> None:
        super().__init__(f"The job has not ended yet ({state}); only a job that ended can be run again.")
        self.state = state
