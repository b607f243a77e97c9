"""The one shape of every API error: `{"errors": {"<field>": ["<message>"]}}` (DESIGN.md)."""

from __future__ import annotations

from django.http import JsonResponse

ErrorsBody = dict[str, dict[str, list[str]]]


def errors_body(field: str, message: str) -> ErrorsBody:
    return {"errors": {field: [message]}}


def errors_response(status: int, field: str, message: str) -> JsonResponse:
    return JsonResponse(errors_body(field, message), status=status)
