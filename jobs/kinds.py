"""The registry of job kinds.

A kind declares its parameters once, as a tuple of `Param`s (numbers), `StringParam`s
(text, email, URI, date), `ChoiceParam`s, `BooleanParam`s (jobs/params.py) and
`FileParam`s (an uploaded file). From that one declaration come the API's validation
(`JobKind.validate`, pydantic in strict mode), the JSON Schema served at
`/api/job-kinds/` (`JobKind.schema`) and the HTML form (`jobs.forms`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from django import forms
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile

from jobs.params import BooleanParam, ChoiceParam, Param, StringParam, ValueParam

__all__ = [  # the declarations kinds import from here
    "BooleanParam",
    "ChoiceParam",
    "FileParam",
    "JobKind",
    "Param",
    "Reporter",
    "StringParam",
    "job_kind",
    "register",
]


class ParamsInvalid(Exception):
    """Parameters that do not fit a kind; `errors` maps each field to its messages.

    `status` is the HTTP answer: 400, or 413 when an uploaded file is over its limit.
    """

    def __init__(self, errors: dict[str, list[str]], *, status: int = 400) -> None:
        super().__init__(errors)
        self.errors = errors
        self.status = status


class FileTooLarge(ValueError):
    """An uploaded file over its parameter's limit (answered 413)."""


class UnknownKind(Exception):
    pass


class Reporter(Protocol):
    """What a kind gets to report progress (implemented by `jobs.progress.Progress`)."""

    def __call__(self, current: float | None = None, total: float | None = None, message: str = "") -> None: ...

    def result_path(self, filename: str) -> Any: ...

    def log(self, text: object, level: str = "info") -> None:
        """A line for the job's log: levels debug, info, warning, error (docs/contract.md#job-logs)."""


# --- Parameters ------------------------------------------------------------------


# Checks an upload's content (its encoding, its header…); raises ValueError with a
# message for users. Runs in the web process, so bad files never reach a worker.
FileCheck = Callable[[UploadedFile], None]


@dataclass(frozen=True)
class FileParam:
    """One uploaded file: sent as the multipart/form-data field `name`, always required.

    Checked in the web process before the job exists: present, within the size limit,
    not empty, of an accepted type, then by `check`. `job_create` saves it under
    `MEDIA_ROOT/uploads/<job id>/`, and the job's params hold its path relative to
    MEDIA_ROOT (params stay JSON); the kind gets that string and opens it with
    `jobs.uploads.upload_path()`.
    """

    name: str
    title: str
    max_bytes: int
    # Accepted when the client's content type is one of these OR the file name ends
    # with one of the extensions: browsers label CSV differently (Windows says
    # application/vnd.ms-excel), so the name is trusted as much as the type.
    content_types: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    # A setting that overrides max_bytes, read at every check (so deployments and tests
    # can change it without re-registering the kind).
    max_bytes_setting: str = ""
    help: str = ""
    check: FileCheck | None = None

    required = True
    default = None
    is_required = True

    @property
    def limit(self) -> int:
        if self.max_bytes_setting:
            return int(getattr(settings, self.max_bytes_setting, self.max_bytes))
        return self.max_bytes

    @property
    def limit_text(self) -> str:
        """The limit as people read it, with the setting that changes it."""
        setting = f" ({self.max_bytes_setting})" if self.max_bytes_setting else ""
        return f"{size_text(self.limit)}{setting}"

    @property
    def accept(self) -> str:
        """The HTML `accept` attribute: extensions and content types."""
        return ",".join((*self.extensions, *self.content_types))

    def json_schema(self) -> dict[str, Any]:
        # `format: binary` is how OpenAPI marks a file part of a multipart body; the
        # `x-` keys carry what JSON Schema has no word for.
        schema: dict[str, Any] = {
            "type": "string",
            "format": "binary",
            "title": self.title,
            "description": (f"{self.help} " if self.help else "")
            + f"Upload as the multipart/form-data field '{self.name}'; at most {size_text(self.limit)}.",
            "x-max-bytes": self.limit,
        }
        if self.content_types:
            schema["contentMediaType"] = self.content_types[0]
        if self.accept:
            schema["x-accept"] = [*self.extensions, *self.content_types]
        return schema

    @property
    def not_in_json_message(self) -> str:
        return (
            f"Upload it as multipart/form-data: the file in the field '{self.name}', beside the fields "
            "kind and params (a JSON string); a JSON body cannot carry a file."
        )

    def clean(self, upload: object) -> UploadedFile:
        """The upload, checked; raises ValueError (FileTooLarge over the limit) with a user message."""
        if upload is None:
            raise ValueError(f"This file is required. {self.not_in_json_message}")
        if not isinstance(upload, UploadedFile):
            raise ValueError(self.not_in_json_message)
        limit = self.limit
        if upload.size is not None and upload.size > limit:
            raise FileTooLarge(f"The file {upload.name!r} is {size_text(upload.size)}; the limit is {self.limit_text}.")
        if not upload.size:
            raise ValueError(f"The file {upload.name!r} is empty.")
        if not self._accepts_type(upload):
            wanted = " or ".join((*self.extensions, *self.content_types))
            raise ValueError(f"The file {upload.name!r} ({upload.content_type or 'no type'}) is not a {wanted} file.")
        if self.check is not None:
            self.check(upload)
        return upload

    def _accepts_type(self, upload: UploadedFile) -> bool:
        if not self.content_types and not self.extensions:
            return True
        content_type = (upload.content_type or "").split(";")[0].strip().lower()
        name = (upload.name or "").lower()
        return content_type in self.content_types or name.endswith(self.extensions)

    def form_field(self) -> forms.Field:
        param = self

        class UploadField(forms.FileField):
            def clean(self, data: Any, initial: Any = None) -> Any:
                if not data:
                    raise forms.ValidationError("Choose a file to upload.")
                try:
                    return param.clean(data)
                except ValueError as exc:
                    raise forms.ValidationError(str(exc)) from None

        attrs = {"accept": self.accept, "data-max-bytes": str(self.limit), "data-max-size": size_text(self.limit)}
        help_text = f"{self.help} At most {size_text(self.limit)}.".strip()
        return UploadField(label=self.title, required=True, help_text=help_text, widget=forms.FileInput(attrs=attrs))


def size_text(size: int) -> str:
    """A byte count as people read it: `5 MiB`, `1.5 MiB`, `900 KiB`, `12 bytes`."""
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size} bytes"


AnyParam = ValueParam | FileParam


# --- Kinds -----------------------------------------------------------------------

HARD_LIMIT_GRACE = 60  # seconds from a kind's soft time limit to its hard one: time to end the run and say why
Run = Callable[..., Mapping[str, Any] | None]
R = TypeVar("R", bound=Run)


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    description: str
    run: Run
    params: tuple[AnyParam, ...] = ()
    # The kind's Celery time limit: it raises inside the job, which fails saying so; the
    # hard limit (`time_limit`) kills it HARD_LIMIT_GRACE later. Both stay under
    # settings.LONGEST_HARD_TIME_LIMIT.
    soft_time_limit: int = 600
    extra_schema: dict[str, Any] = field(default_factory=dict)

    @property
    def time_limit(self) -> int:
        return self.soft_time_limit + HARD_LIMIT_GRACE

    @property
    def file_params(self) -> tuple[FileParam, ...]:
        return tuple(p for p in self.params if isinstance(p, FileParam))

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": self.title,
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.is_required],
            "additionalProperties": False,
        }

    def arguments(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A job's kept params as the kind's function takes them (a date as a `date`)."""
        declared = {p.name: p for p in self.params if isinstance(p, ValueParam)}
        return {name: declared[name].to_python(value) if name in declared else value for name, value in params.items()}

    def validate(
        self, params: object, *, from_text: bool = False, files: Mapping[str, object] | None = None
    ) -> dict[str, Any]:
        """Checked parameters with defaults filled in; raises ParamsInvalid naming each field.

        A file parameter's value is its checked upload, taken from `files` only: a
        file named in `params` (JSON) is refused.
        """
        if not isinstance(params, dict):
            raise ParamsInvalid({"params": ["Must be a JSON object of parameters."]})
        files = files or {}
        known = {p.name for p in self.params}
        errors: dict[str, list[str]] = {
            str(name): [f"Unknown parameter for kind '{self.name}'."] for name in params if name not in known
        }
        file_names = [p.name for p in self.file_params]
        for name in files:
            if name not in file_names:
                takes = ", ".join(file_names) or "none"
                errors[str(name)] = [f"Unknown file for kind '{self.name}'; the files it takes: {takes}."]
        cleaned: dict[str, Any] = {}
        status = 400
        for param in self.params:
            try:
                if isinstance(param, FileParam):
                    if param.name in params:
                        raise ValueError(param.not_in_json_message)
                    value: Any = param.clean(files.get(param.name))
                elif param.name in params:
                    value = param.clean(params[param.name], from_text=from_text)
                else:
                    value = param.absent()
            except ValueError as exc:
                errors[param.name] = [str(exc)]
                if isinstance(exc, FileTooLarge):
                    status = 413
                continue
            if value is not None:
                cleaned[param.name] = value
        if errors:
            raise ParamsInvalid(errors, status=status)
        return cleaned


_REGISTRY: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    """Adds a kind; a name taken already stops start-up naming the module of each."""
    if kind.name in _REGISTRY:
        first = _REGISTRY[kind.name].run.__module__
        raise ValueError(
            f"Job kind {kind.name!r} is registered twice: in {first} and in {kind.run.__module__}; "
            "rename one of them (a kind's name is how jobs and clients refer to it)."
        )
    _REGISTRY[kind.name] = kind
    return kind


def job_kind(**declaration: Any) -> Callable[[R], R]:
    """Registers the function it decorates as a job kind: `@job_kind(name=..., title=...,
    params=(...))` above `def run_x(report, *, ...)`. The first paragraph of the function's
    docstring is the kind's description for users (the form, /api/job-kinds/)."""

    def registered(run: R) -> R:
        register(JobKind(run=run, description=description_of(run), **declaration))
        return run

    return registered


def description_of(run: Run) -> str:
    """The first paragraph of a function's docstring, on one line."""
    paragraph = inspect.cleandoc(run.__doc__ or "").split("\n\n")[0]
    return " ".join(paragraph.split())


def kind_get(name: object) -> JobKind:
    if not isinstance(name, str) or name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownKind(f"Unknown kind {name!r}; choose one of: {known}.")
    return _REGISTRY[name]


def kind_list() -> list[JobKind]:
    return sorted(_REGISTRY.values(), key=lambda kind: kind.name)
