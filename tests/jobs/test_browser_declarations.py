"""The browser modules' copies of server facts are the server's: the job JSON's keys (the
one JSDoc typedef in jobs/static/jobs/job.js), the terminal states, the state labels and
the close codes the pages act on, and the log's levels, line keys and page size. (The
modules' own behaviour: tests/js, `make node-test`.)
"""

from __future__ import annotations

import re
from pathlib import Path

from jobs.logs import LOG_LEVELS, LOG_PAGE_MAX, LogLinePayload
from jobs.models import TERMINAL_STATES, JobState
from jobs.serializers import JOB_KEYS, ProgressPayload
from notifications import consumers

STATIC = Path(__file__).resolve().parents[2] / "jobs" / "static" / "jobs"


def typedef_keys(source: str, name: str) -> set[str]:
    """The keys of a `@typedef {{key: type, …}} Name` in a JSDoc comment."""
    match = re.search(r"@typedef\s*\{\{([^{}]*)\}\}\s*" + name + r"\b", source)
    assert match, f"no typedef {name}"
    body = re.sub(r"\s*\*\s*", " ", match.group(1))  # the comment's leading asterisks
    return set(re.findall(r"(?:^|,)\s*(\w+)\s*:", body))


def test_the_browsers_job_typedef_has_exactly_the_job_jsons_keys() -> None:
    source = (STATIC / "job.js").read_text()
    assert typedef_keys(source, "Job") == set(JOB_KEYS) | {"error_detail"}  # error_detail: staff only
    assert typedef_keys(source, "Progress") == set(ProgressPayload.__annotations__)


def test_the_browsers_terminal_states_are_the_servers() -> None:
    source = (STATIC / "job.js").read_text()
    match = re.search(r"TERMINAL_STATES = new Set\(\[(.*?)\]\)", source)
    assert match
    assert set(re.findall(r'"(\w+)"', match.group(1))) == {str(state) for state in TERMINAL_STATES}


def test_the_browsers_state_labels_are_the_servers() -> None:
    source = (STATIC / "render.js").read_text()
    match = re.search(r"STATE_LABELS = \{(.*?)\}", source)
    assert match
    assert dict(re.findall(r'(\w+): "([^"]+)"', match.group(1))) == {state.value: state.label for state in JobState}


def test_the_close_codes_the_pages_act_on_are_the_consumers() -> None:
    source = (STATIC / "transports.js").read_text()
    codes = {name: int(code) for name, code in re.findall(r"export const (CLOSE_\w+) = (\d+);", source)}
    assert codes == {"CLOSE_NORMAL": consumers.CLOSE_NORMAL, "CLOSE_NOT_FOUND": consumers.CLOSE_NOT_FOUND}


def test_the_browsers_log_levels_line_keys_and_page_size_are_the_servers() -> None:
    source = (STATIC / "log-lines.js").read_text()
    match = re.search(r"LOG_LEVELS = /\*\* @type \{const\} \*/ \(\[(.*?)\]\)", source)
    assert match
    assert tuple(re.findall(r'"(\w+)"', match.group(1))) == LOG_LEVELS, "in the same order: least severe first"
    assert typedef_keys(source, "LogLine") == set(LogLinePayload.__annotations__)
    feed = (STATIC / "log-feed.js").read_text()
    page = re.search(r"const LOG_PAGE_MAX = (\d+);", feed)
    assert page and int(page.group(1)) == LOG_PAGE_MAX
