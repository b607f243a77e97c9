"""What a request's body may weigh, by path and content type, and the 413 past it.

daphne checks it from the request's head, before the body is read (core/compat/daphne.py,
registered in core/asgi.py): a `Content-Length` over the limit is answered at once, a
chunked body is cut when it passes it. The views keep their own checks for other servers.
"""

from __future__ import annotations

import json
from functools import partial

from django.conf import settings

from core.api_errors import API_PREFIX, errors_body
from core.compat.daphne import BodyLimit, TooLarge
from jobs.kinds import FileParam, kind_list, size_text

MULTIPART = "multipart/form-data"
# What a multipart body may hold beside its largest file: the fields kind and params
# (DATA_UPLOAD_MAX_MEMORY_SIZE, 64 KiB, caps them) and the parts' headers.
MULTIPART_OVERHEAD = 64 * 1024
# The paths that take a kind's file: the form (`/`) and POST /api/jobs/.
UPLOAD_PATHS = frozenset({"/", f"{API_PREFIX}jobs/"})


def largest_file_param() -> FileParam | None:
    """The file parameter with the highest limit among every kind's, if any kind takes a file."""
    return max((p for kind in kind_list() for p in kind.file_params), key=lambda p: p.limit, default=None)


def request_body_limit(method: str, path: str, content_type: str) -> BodyLimit | None:
    """The limit of a request's body: a kind's largest file plus headroom for a multipart
    upload to the form or the API, DATA_UPLOAD_MAX_MEMORY_SIZE (plus the same headroom
    for a multipart body) anywhere else; None when that setting lifts the limit."""
    api = path.startswith(API_PREFIX)
    if content_type == MULTIPART and path in UPLOAD_PATHS:
        largest = largest_file_param()
        if largest is not None:
            return BodyLimit(largest.limit + MULTIPART_OVERHEAD, partial(_upload_refusal, largest, api=api))
    fields: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if fields is None:
        return None
    limit = fields + (MULTIPART_OVERHEAD if content_type == MULTIPART else 0)
    return BodyLimit(limit, partial(_body_refusal, limit, api=api))


def _upload_refusal(largest: FileParam, declared: int | None, *, api: bool) -> TooLarge:
    size = size_text(declared) if declared is not None else f"over {size_text(largest.limit + MULTIPART_OVERHEAD)}"
    return _answer("file", f"The upload is {size}; a file may be at most {largest.limit_text}.", api=api)


def _body_refusal(limit: int, declared: int | None, *, api: bool) -> TooLarge:
    return _answer("body", f"The body is larger than {size_text(limit)}.", api=api)


def _answer(field: str, message: str, *, api: bool) -> TooLarge:
    if api:
        return TooLarge("application/json", json.dumps(errors_body(field, message)).encode())
    return TooLarge("text/plain; charset=utf-8", f"413 Request body too large. {message}\n".encode())
