"""Every place that starts daphne gives it the message bound of core/daphne_limits.py."""

from __future__ import annotations

import re

from core.daphne_limits import CLIENT_FRAME_MAX_BYTES, WEBSOCKET_MAX_MESSAGE_BYTES, daphne_command
from notifications.consumers import MAX_FRAME_BYTES
from tests.conftest import ROOT

# What starts daphne outside Python: each repeats the number.
STARTERS = ("Procfile", "docker-compose.yml", "Dockerfile")
LIMIT = re.compile(r'--websocket-max-message-size"?,? "?(\d+)')
# `daphne` as a program or module, in a command list or line: Python starters must use daphne_command.
PYTHON_DAPHNE = re.compile(r"""["']-m["'],\s*["']daphne["']""")


def test_the_bound_is_the_contracts_4_kib_plus_headroom() -> None:
    assert CLIENT_FRAME_MAX_BYTES == MAX_FRAME_BYTES == 4096
    assert CLIENT_FRAME_MAX_BYTES < WEBSOCKET_MAX_MESSAGE_BYTES <= 2 * CLIENT_FRAME_MAX_BYTES


def test_the_procfile_compose_and_dockerfile_start_daphne_with_the_bound() -> None:
    for name in STARTERS:
        text = (ROOT / name).read_text()
        daphne_lines = [line for line in text.splitlines() if "daphne" in line and not line.lstrip().startswith("#")]
        commands = [line for line in daphne_lines if "core.asgi:application" in line]
        assert commands, f"{name} starts no daphne"
        for line in commands:
            found = LIMIT.search(line)
            assert found and int(found.group(1)) == WEBSOCKET_MAX_MESSAGE_BYTES, f"{name}: {line.strip()}"


def test_python_starters_build_their_daphne_command_with_the_bound() -> None:
    offenders = []
    for folder in ("tests", "bench", "core", "jobs", "notifications"):
        for path in (ROOT / folder).rglob("*.py"):
            if PYTHON_DAPHNE.search(path.read_text()) and path.name != "daphne_limits.py":
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"start daphne with core.daphne_limits.daphne_command: {offenders}"
    command = daphne_command("core.asgi:application", port=8000)
    assert command[command.index("--websocket-max-message-size") + 1] == str(WEBSOCKET_MAX_MESSAGE_BYTES)
