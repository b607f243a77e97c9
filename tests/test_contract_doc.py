"""docs/contract.md against the code it describes, so neither drifts from the other.

The job JSON's keys, the close codes, the HTTP paths and the socket paths are each
declared once in code; the document's examples and tables are read back here and
compared with those declarations. Every JSON example must parse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver, resolve

from core.urls import api_not_found
from jobs.api import api
from jobs.serializers import JOB_KEYS, ProgressPayload
from notifications import consumers
from notifications.routing import websocket_urlpatterns

DOC = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
TEXT = DOC.read_text()
SAMPLE_ID = "7b9c2f4e-1d3a-4c5b-9e8f-0a1b2c3d4e5f"  # stands for `<id>` in the doc's paths
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
NINJA_ROOT = "api-root"  # django-ninja's root pattern: it only locates the API (and answers 404)


# --- reading the document ------------------------------------------------------------


def section(heading: str) -> str:
    """The text under `## <heading>`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert match, f"docs/contract.md has no '## {heading}' section"
    return match.group(1)


def json_blocks(text: str) -> list[str]:
    return re.findall(r"^```json\n(.*?)^```", text, re.M | re.S)


def first_table(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in `text`, header and rule left out."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    assert len(lines) > 2, "no table found"
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[2:]]


def http_rows() -> list[tuple[list[str], str]]:
    """(methods, path) of each row of the endpoint table, e.g. (["GET", "POST"], "/accounts/login/")."""
    rows = []
    for cells in first_table(section("HTTP")):
        match = re.fullmatch(r"([A-Z, ]+) `(/[^`]*)`", cells[0])
        assert match, f"an endpoint row should start with 'METHOD `/path`': {cells[0]!r}"
        rows.append((re.findall(r"[A-Z]+", match.group(1)), match.group(2)))
    return rows


def http_operations() -> set[tuple[str, str]]:
    return {(method, path) for methods, path in http_rows() for method in methods}


def sample(path: str) -> str:
    return path.replace("<id>", SAMPLE_ID)


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --- reading the code ----------------------------------------------------------------


def url_routes(patterns: list[URLPattern | URLResolver], prefix: str = "") -> Iterator[str]:
    """Every route of the URL configuration as the doc writes it (`/api/jobs/<id>/`),
    the admin as one route, the catch-all 404 of the API and ninja's root left out."""
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            if route == "admin/":
                yield "/admin/"
            else:
                yield from url_routes(pattern.url_patterns, route)
        elif pattern.callback is not api_not_found and pattern.name != NINJA_ROOT:
            yield "/" + re.sub(r"<(?:\w+:)?job_id>", "<id>", route)


def routed_consumer(path: str) -> type:
    """The consumer class the WebSocket routing gives `path` (first match, as Channels' URLRouter)."""
    for pattern in websocket_urlpatterns:
        if pattern.resolve(path.lstrip("/")) is not None:
            consumer: type = pattern.callback.consumer_class  # set by as_asgi()
            return consumer
    raise AssertionError(f"no WebSocket route matches {path}")


def jobs_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every job object inside a JSON value: any object with an `id`, a `state` and a `seq`."""
    if isinstance(value, dict):
        if {"id", "state", "seq"} <= set(value):
            yield value
        for item in value.values():
            yield from jobs_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from jobs_in(item)


# --- the tests -----------------------------------------------------------------------


def test_every_json_block_parses() -> None:
    blocks = json_blocks(TEXT)
    assert blocks
    for block in blocks:
        try:
            json.loads(block)
        except ValueError as exc:
            raise AssertionError(f"invalid JSON in docs/contract.md ({exc}):\n{block}") from None


def test_the_job_example_has_exactly_the_job_json_keys() -> None:
    # The first example is an owner's view: error_detail, staff only, is not in it.
    job = json.loads(json_blocks(section("Job state"))[0])
    assert set(job) == JOB_KEYS
    assert set(job["progress"]) == ProgressPayload.__required_keys__


def test_every_job_shown_in_an_example_has_the_job_json_keys() -> None:
    shown = [job for block in json_blocks(TEXT) for job in jobs_in(json.loads(block))]
    assert len(shown) >= 3  # the owner's job, the staff view, a job frame
    for job in shown:
        assert set(job) - {"error_detail"} == JOB_KEYS, job["id"]
    assert any("error_detail" in job for job in shown), "the staff form of the job JSON is shown"


def test_the_close_code_table_holds_exactly_the_codes_the_consumers_use() -> None:
    documented = {int(cells[0]) for cells in first_table(section("Close codes"))}
    used = {value for name, value in vars(consumers).items() if name.startswith("CLOSE_")}
    assert documented == used


def test_every_path_of_the_endpoint_table_resolves() -> None:
    for methods, path in http_rows():
        assert set(methods) <= HTTP_METHODS, path
        match = resolve(sample(path))  # Resolver404 when the path is not served
        assert match.func is not api_not_found, f"{path} only reaches the API's catch-all 404"


def test_every_url_pattern_is_in_the_endpoint_table() -> None:
    documented = {path for _, path in http_rows()}
    missing = set(url_routes(get_resolver().url_patterns)) - documented
    assert not missing, f"served but not in docs/contract.md's endpoint table: {sorted(missing)}"


def test_every_api_operation_is_in_the_endpoint_table() -> None:
    operations = {
        (method.upper(), path.replace("{job_id}", "<id>"))
        for path, item in api.get_openapi_schema()["paths"].items()
        for method in item
        if method.upper() in HTTP_METHODS
    }
    missing = operations - http_operations()
    assert not missing, f"API operations not in docs/contract.md's endpoint table: {sorted(missing)}"


def test_every_socket_path_of_the_doc_reaches_its_consumer_and_every_consumer_is_documented() -> None:
    paths = [re.fullmatch(r"`(/[^`]*)`", cells[0]) for cells in first_table(section("WebSocket"))]
    assert all(paths), "a socket row should start with '`/ws/...`'"
    reached = {routed_consumer(sample(match.group(1))) for match in paths if match}
    assert consumers.UnknownPathConsumer not in reached  # a documented path that only closes 4404
    routed = {pattern.callback.consumer_class for pattern in websocket_urlpatterns}
    assert reached == routed - {consumers.UnknownPathConsumer}


def test_the_anchors_listed_at_the_top_are_the_sections() -> None:
    listed = re.findall(r"\[`#([\w-]+)`\]\(#\1\)", TEXT.split("\n## ", 1)[0])
    headings = [heading_anchor(h) for h in re.findall(r"^## (.+)$", TEXT, re.M)]
    assert listed == headings
