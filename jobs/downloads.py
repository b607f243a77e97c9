"""A job's result file as a download: streamed from disk a block at a time, or handed to
the proxy (`X-Accel-Redirect`, when RESULT_ACCEL_REDIRECT names its internal location);
and a job's `log.txt`, streamed from the database a page of lines at a time.

Over ASGI, Django reads a FileResponse's file whole into memory before it sends a byte
(`StreamingHttpResponse.__aiter__` lists a synchronous iterator), so `ResultFileResponse`
reads it asynchronously, block by block; daphne sends each block only once the client
has taken the last ones (core/compat/daphne.py, back-pressure), so a download holds a
few blocks per connection, whatever the client's speed. `LogTextResponse` does the same
for text made by a synchronous iterator that reads the database.
"""

from __future__ import annotations

import asyncio
import mimetypes
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import FileResponse, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

BLOCK_SIZE = 64 * 1024  # bytes read per step: Django's ASGI chunk, so each read is one send


class ResultFileResponse(FileResponse):
    """A FileResponse whose file, served over ASGI, is read one block at a time."""

    block_size = BLOCK_SIZE

    async def __aiter__(self) -> AsyncIterator[bytes]:
        file = self.file_to_stream
        assert file is not None
        while block := await asyncio.to_thread(file.read, self.block_size):
            yield block


def result_download(path: Path, *, media_root: Path) -> HttpResponseBase:
    """The download of a result file under `media_root`."""
    prefix: str = settings.RESULT_ACCEL_REDIRECT
    if not prefix:
        return ResultFileResponse(path.open("rb"), as_attachment=True, filename=path.name)
    content_type, _ = mimetypes.guess_type(path.name)
    response = HttpResponse(content_type=content_type or "application/octet-stream")
    response["X-Accel-Redirect"] = prefix + quote(path.relative_to(media_root).as_posix())
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=path.name) or ""
    return response


class LogTextResponse(StreamingHttpResponse):
    """Plain text made chunk by chunk by `chunks` (which reads the database): over WSGI
    iterated as it is; over ASGI each chunk is made in the request's sync thread as the
    one before it is sent, not all of them first."""

    def __init__(self, chunks: Iterator[str], *, filename: str) -> None:
        super().__init__(chunks, content_type="text/plain; charset=utf-8")
        # Inline: a browser shows the log in its tab; the name is for "save as" and `curl -OJ`.
        self["Content-Disposition"] = content_disposition_header(as_attachment=False, filename=filename) or ""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parts = self.streaming_content
        assert isinstance(parts, Iterator)
        next_part = sync_to_async(_next_or_none)
        while (part := await next_part(parts)) is not None:
            yield part


def _next_or_none(parts: Iterator[bytes]) -> bytes | None:
    return next(parts, None)
