"""Files uploaded with a job (a kind's `FileParam`): where they live and how a kind opens one.

Each job's uploads go in their own directory, `MEDIA_ROOT/uploads/<job id>/`, saved by
`job_create` before the job is committed (so the worker always finds them) and removed
with the job by `job_purge_finished`. The job's params hold the path relative to
MEDIA_ROOT, e.g. `uploads/<job id>/contacts.csv`: plain JSON, readable by any worker
that shares MEDIA_ROOT with the web processes.
"""

from __future__ import annotations

import mimetypes
import shutil
import uuid
from pathlib import Path

from django.conf import settings
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.uploadedfile import UploadedFile
from django.utils.text import get_valid_filename

UPLOADS_DIR = "uploads"  # under MEDIA_ROOT, beside results/
MAX_NAME_LENGTH = 100  # characters of the stored file name: the original's, shortened, keeping its extension


class UploadMissing(Exception):
    """A stored upload that is not there any more (purged, or MEDIA_ROOT not shared)."""


def uploads_root() -> Path:
    return Path(settings.MEDIA_ROOT) / UPLOADS_DIR


def upload_dir(job_id: uuid.UUID | str) -> Path:
    return uploads_root() / str(job_id)


def upload_save(*, job_id: uuid.UUID, upload: UploadedFile) -> str:
    """Writes the upload into the job's directory; its path relative to MEDIA_ROOT."""
    directory = upload_dir(job_id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / _safe_name(upload.name or "")
    with path.open("wb") as out:
        for chunk in upload.chunks():
            out.write(chunk)
    return path.relative_to(Path(settings.MEDIA_ROOT)).as_posix()


def upload_path(stored: str) -> Path:
    """The absolute path of a stored upload (the value a kind gets for its file parameter).

    Raises UploadMissing when it is gone, and ValueError for a path outside the
    uploads directory (params are written by `job_create` only, but a path is never
    trusted to stay inside).
    """
    root = uploads_root().resolve()
    path = (Path(settings.MEDIA_ROOT) / stored).resolve()
    if root not in path.parents:
        raise ValueError(f"{stored!r} is not an uploaded file's path.")
    if not path.is_file():
        raise UploadMissing(stored)
    return path


def upload_reopen(stored: object) -> UploadedFile:
    """A stored upload as a new one, for a job that reruns another's file (the admin's
    retry): `job_create` checks it again and saves a copy under the new job. The stored
    path itself cannot be reused, as a kind keys what it writes by the job its file was
    saved for (`upload_job_id`). The caller closes it.

    Raises UploadMissing when the file is gone, ValueError for a value that is not a
    stored upload's path.
    """
    if not isinstance(stored, str):
        raise ValueError(f"{stored!r} is not an uploaded file's path.")
    path = upload_path(stored)
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return UploadedFile(path.open("rb"), name=path.name, content_type=content_type, size=path.stat().st_size)


def upload_job_id(stored: str) -> uuid.UUID:
    """The job a stored upload was saved for: its directory is named for it.

    How a kind that writes rows of its own (keyed by job) learns its job from its file.
    """
    parts = Path(stored).parts
    if len(parts) != 3 or parts[0] != UPLOADS_DIR:
        raise ValueError(f"{stored!r} is not an uploaded file's path.")
    return uuid.UUID(parts[1])


def upload_remove(job_id: uuid.UUID | str) -> bool:
    """Removes the job's upload directory; True when there was one."""
    directory = upload_dir(job_id)
    if not directory.is_dir():
        return False
    shutil.rmtree(directory)
    return True


def _safe_name(name: str) -> str:
    try:
        safe = get_valid_filename(Path(name).name)
    except SuspiciousFileOperation:  # nothing usable left, e.g. "..": any name will do
        safe = "upload"
    stem, suffix = Path(safe).stem, Path(safe).suffix[:16]
    return stem[: MAX_NAME_LENGTH - len(suffix)] + suffix
