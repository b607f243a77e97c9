"""The registry of job kinds.

A kind declares its parameters once, as a tuple of `Param`s. From that one
declaration come the API's validation (`JobKind.validate`), the JSON Schema served at
`/api/job-kinds/` (`JobKind.schema`) and the HTML form (`jobs.forms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from django import forms


class ParamsInvalid(Exception):
    """Parameters that do not fit a kind; `errors` maps each field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class UnknownKind(Exception):
    pass


class Reporter(Protocol):
    """What a kind gets to report progress (implemented by `jobs.progress.Progress`)."""

    def __call__(self, current: float | None = None, total: float | None = None, message: str = "") -> None: ...

    def result_path(self, filename: str) -> Any: ...


# --- Parameters ------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of a kind: a number within bounds, required or with a default."""

    name: str
    title: str
    minimum: float
    maximum: float
    default: float | None = None
    required: bool = True
    help: str = ""
    integer: bool = True

    @property
    def type_name(self) -> str:
        return "integer" if self.integer else "number"

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": self.type_name if self.required else [self.type_name, "null"],
            "title": self.title,
            "minimum": self.minimum,
            "maximum": self.maximum,
        }
        if self.help:
            schema["description"] = self.help
        if self.default is not None or not self.required:
            schema["default"] = self.default
        return schema

    def clean(self, value: object, *, from_text: bool = False) -> float | int | None:
        """The value, checked and converted; raises ValueError with a user message.

        JSON must carry real numbers (`"5"` and `true` are refused); form fields
        arrive as text and are parsed first.
        """
        if value is None or (from_text and isinstance(value, str) and not value.strip()):
            if self.required and self.default is None:
                raise ValueError("This parameter is required.")
            return self.default
        if from_text and isinstance(value, str):
            value = self._parse_text(value.strip())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"Must be {'an integer' if self.integer else 'a number'}.")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("Must be a finite number.")
        if self.integer:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("Must be a whole number.")
            value = int(value)
        if not self.minimum <= value <= self.maximum:
            raise ValueError(f"Must be between {_number_text(self.minimum)} and {_number_text(self.maximum)}.")
        return value

    def _parse_text(self, text: str) -> float | int:
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"Must be {'an integer' if self.integer else 'a number'}.") from None

    def form_field(self) -> forms.Field:
        param = self

        class ParamField(forms.CharField):
            def clean(self, value: Any) -> Any:
                try:
                    return param.clean(value, from_text=True)
                except ValueError as exc:
                    raise forms.ValidationError(str(exc)) from None

        attrs = {
            "type": "number",
            "min": _number_text(self.minimum),
            "max": _number_text(self.maximum),
            "step": "1" if self.integer else "any",
        }
        return ParamField(
            label=self.title,
            required=self.required and self.default is None,
            initial=self.default,
            help_text=self.help,
            widget=forms.NumberInput(attrs=attrs),
        )


def _number_text(value: float) -> str:
    """A bound as people and HTML read it: `50000000`, not `:g`'s `5e+07`."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- Kinds -----------------------------------------------------------------------


@dataclass(frozen=True)
class JobKind:
    name: str
    title: str
    description: str
    run: Callable[..., Mapping[str, Any] | None]
    params: tuple[Param, ...] = ()
    # Per-kind Celery limits: the soft one raises inside the job (it fails with a
    # message), the hard one kills it. Both must stay under LONGEST_HARD_TIME_LIMIT.
    soft_time_limit: int = 600
    time_limit: int = 660
    extra_schema: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "title": self.title,
            "properties": {p.name: p.json_schema() for p in self.params},
            "required": [p.name for p in self.params if p.required and p.default is None],
            "additionalProperties": False,
        }

    def validate(self, params: object, *, from_text: bool = False) -> dict[str, Any]:
        """Checked parameters with defaults filled in; raises ParamsInvalid naming each field."""
        if not isinstance(params, dict):
            raise ParamsInvalid({"params": ["Must be a JSON object of parameters."]})
        known = {p.name for p in self.params}
        errors: dict[str, list[str]] = {
            str(name): [f"Unknown parameter for kind '{self.name}'."] for name in params if name not in known
        }
        cleaned: dict[str, Any] = {}
        for param in self.params:
            try:
                value = param.clean(params.get(param.name), from_text=from_text)
            except ValueError as exc:
                errors[param.name] = [str(exc)]
                continue
            if value is not None:
                cleaned[param.name] = value
        if errors:
            raise ParamsInvalid(errors)
        return cleaned


_REGISTRY: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    if kind.name in _REGISTRY:
        raise ValueError(f"Job kind {kind.name!r} is registered twice.")
    _REGISTRY[kind.name] = kind
    return kind


def kind_get(name: object) -> JobKind:
    if not isinstance(name, str) or name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownKind(f"Unknown kind {name!r}; choose one of: {known}.")
    return _REGISTRY[name]


def kind_list() -> list[JobKind]:
    return sorted(_REGISTRY.values(), key=lambda kind: kind.name)
