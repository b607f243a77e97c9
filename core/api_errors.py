"""The one shape of every API error: `{"errors": {"<field>": ["<message>"]}}` (docs/contract.md#errors)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from inspect import iscoroutinefunction

from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

ErrorsBody = dict[str, dict[str, list[str]]]

API_PREFIX = "/api/"


def errors_body(field: str, message: str) -> ErrorsBody:
    return {"errors": {field: [message]}}


def errors_response(status: int, field: str, message: str) -> JsonResponse:
    return JsonResponse(errors_body(field, message), status=status)


def method_not_allowed_response(method: str | None, allowed: Iterable[str]) -> JsonResponse:
    """405 naming the method refused and the ones the path takes (also in `Allow`)."""
    methods = sorted(set(allowed))
    response = errors_response(405, "method", f"Method {method} is not allowed here; use {' or '.join(methods)}.")
    response["Allow"] = ", ".join(methods)
    return response


# --- errors answered outside jobstream's code ------------------------------------


def _in_errors_shape(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """django-ninja answers a method a path does not take in plain text ("Method not
    allowed", ninja.operation.PathView._not_allowed, with no hook to change it): the
    same 405, with the same `Allow`, in the contract's JSON."""
    if response.status_code != 405 or not request.path_info.startswith(API_PREFIX):
        return response
    if response.get("Content-Type", "").startswith("application/json"):
        return response
    allowed = [method.strip() for method in response.get("Allow", "").split(",") if method.strip()]
    return method_not_allowed_response(request.method, allowed)


Handler = Callable[[HttpRequest], HttpResponseBase]
AsyncHandler = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


@sync_and_async_middleware
def api_errors_middleware(get_response: Handler | AsyncHandler) -> Handler | AsyncHandler:
    """Every API error in the contract's shape; sync and async, so daphne's requests
    take no thread hop for it."""
    if iscoroutinefunction(get_response):
        handle_async: AsyncHandler = get_response

        async def middleware_async(request: HttpRequest) -> HttpResponseBase:
            return _in_errors_shape(request, await handle_async(request))

        return middleware_async

    handle: Handler = get_response  # type: ignore[assignment]

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return _in_errors_shape(request, handle(request))

    return middleware
