"""Running an ended job again: a new job of the same kind, parameters and uploaded
files, owned by the first job's owner (whoever asks: the owner, staff on the API, the
admin's action)."""

from __future__ import annotations

import logging
from contextlib import ExitStack

from jobs.exceptions import JobNotEnded
from jobs.kinds import ParamsInvalid, kind_get
from jobs.models import Job
from jobs.services.submit import job_create, job_submit
from jobs.storage_quota import job_owner
from jobs.uploads import UploadMissing, upload_reopen

logger = logging.getLogger(__name__)


class RetryUploadMissing(ParamsInvalid):
    """A file parameter's stored upload is gone (purged, or MEDIA_ROOT not shared with
    this process): only the job's owner has the file now."""

    def __init__(self, *, name: str, stored: object) -> None:
        super().__init__({name: [f"The uploaded file {stored} is gone; start a new job with the file uploaded again."]})
        self.name, self.stored = name, stored


def job_retry(*, job: Job, within_quotas: bool = True, client_address: str | None = None) -> Job:
    """Starts a new job of `job`'s kind and parameters for `job`'s owner.

    The parameters are checked again by the kind, and each file parameter's upload is
    reopened and saved again under the new job (`upload_reopen`: a kind keys what it
    writes by the job its file belongs to). `within_quotas` counts the new job against its
    owner's quotas and `client_address`'s, as `job_submit` does; the admin's action starts
    it outside them.

    Raises JobNotEnded for a queued or running job, RetryUploadMissing for a file that is
    gone, ParamsInvalid (parameters that no longer pass), UnknownKind (a kind no longer
    registered) or QuotaExceeded.
    """
    if not job.is_terminal:
        raise JobNotEnded(job.state)
    file_names = [param.name for param in kind_get(job.kind).file_params]
    owner = job_owner(job)  # with their rights: a retry counts against their quotas
    params = {name: value for name, value in job.params.items() if name not in file_names}
    with ExitStack() as opened:
        files: dict[str, object] = {}
        for name in file_names:
            stored = job.params.get(name)
            try:
                files[name] = opened.enter_context(upload_reopen(stored))
            except UploadMissing:
                raise RetryUploadMissing(name=name, stored=stored) from None
            except ValueError:
                raise ParamsInvalid({name: [f"Holds no stored upload ({stored!r})."]}) from None
        if within_quotas:
            retried = job_submit(owner=owner, kind=job.kind, params=params, files=files, client_address=client_address)
        else:
            retried = job_create(owner=owner, kind=job.kind, params=params, files=files)
    logger.info("job %s (kind %s): run again as job %s", job.id, job.kind, retried.id)
    return retried
