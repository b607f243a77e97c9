"""`make test`'s first step, bin/system-packages, run for real against a fake machine.

This machine has every package, so each test builds a fresh one: a tree holding only
the tools it means to have (SYSTEM_PACKAGES_ROOT), CHROMIUM_PATH at a browser file that
exists only when the test says so, and a PATH of nothing but a fake `id` (root or not)
and a fake `apt-get` (records its arguments, installs nothing). Nothing touches the real
system or the network.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bin" / "system-packages"
TIMEOUT = 10  # seconds; the script answers in milliseconds

# Where each Debian package puts its tool; chromium is looked for at CHROMIUM_PATH.
TOOLS = {
    "docker-compose": "usr/bin/docker-compose",
    "nginx": "usr/sbin/nginx",
    "redis-server": "usr/bin/redis-server",
    "nodejs": "usr/bin/node",
}
ALL = {"chromium", *TOOLS}
UPDATE = ["update", "-qq"]
INSTALL = ["install", "-y", "-qq", "--no-install-recommends"]


@dataclass
class Run:
    status: int
    stdout: str
    stderr: str
    apt_get_calls: list[list[str]]


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def run_script(tmp_path: Path, *, uid: int, present: set[str], apt_get_status: int = 0) -> Run:
    """bin/system-packages on a machine with only the packages `present` installed."""
    tree = tmp_path / "root"
    for package in present - {"chromium"}:
        executable(tree / TOOLS[package], "#!/bin/sh\n")
    chromium = tmp_path / "browser" / "chromium"
    if "chromium" in present:
        executable(chromium, "#!/bin/sh\n")
    fake = tmp_path / "bin"
    log = tmp_path / "apt-get.log"
    executable(fake / "id", f"#!/bin/sh\necho {uid}\n")
    # One line per call: DEBIAN_FRONTEND, then each argument, tab-separated.
    executable(
        fake / "apt-get",
        f"#!/bin/sh\n{{ printf '%s' \"$DEBIAN_FRONTEND\"; printf '\\t%s' \"$@\"; echo; }} >> {log}\n"
        f"exit {apt_get_status}\n",
    )
    env = {
        "PATH": str(fake),  # nothing real: the script must find the tools by their paths
        "SYSTEM_PACKAGES_ROOT": str(tree),
        "CHROMIUM_PATH": str(chromium),
    }
    result = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    calls = []
    if log.exists():
        for line in log.read_text().splitlines():
            frontend, *arguments = line.split("\t")
            assert frontend == "noninteractive", f"apt-get ran without DEBIAN_FRONTEND=noninteractive: {line!r}"
            calls.append(arguments)
    return Run(result.returncode, result.stdout, result.stderr, calls)


def test_as_root_the_missing_packages_are_installed_after_one_update(tmp_path: Path) -> None:
    run = run_script(tmp_path, uid=0, present=ALL - {"chromium", "nginx"})
    assert run.status == 0, run.stderr
    assert run.apt_get_calls == [UPDATE, [*INSTALL, "chromium", "nginx"]]


def test_as_root_every_package_is_installed_in_one_call_on_a_bare_machine(tmp_path: Path) -> None:
    run = run_script(tmp_path, uid=0, present=set())
    assert run.status == 0, run.stderr
    assert run.apt_get_calls == [UPDATE, [*INSTALL, "chromium", "docker-compose", "nginx", "redis-server", "nodejs"]]


def test_as_root_a_failing_apt_get_fails_the_step(tmp_path: Path) -> None:
    run = run_script(tmp_path, uid=0, present=ALL - {"chromium"}, apt_get_status=100)
    assert run.status != 0
    assert run.apt_get_calls == [UPDATE]  # nothing after the failure


def test_not_root_it_stops_with_one_line_naming_the_command_and_never_calls_apt_get(tmp_path: Path) -> None:
    run = run_script(tmp_path, uid=1000, present=ALL - {"chromium", "nginx"})
    assert run.status != 0
    assert run.apt_get_calls == []
    assert run.stdout == ""
    assert run.stderr == "make test: missing chromium nginx: run sudo apt-get install -y chromium nginx\n"


@pytest.mark.parametrize("uid", [0, 1000])
def test_with_everything_present_it_does_nothing_and_says_nothing(tmp_path: Path, uid: int) -> None:
    run = run_script(tmp_path, uid=uid, present=ALL)
    assert (run.status, run.stdout, run.stderr, run.apt_get_calls) == (0, "", "", [])


def test_make_test_provisions_before_anything_else() -> None:
    # Without the calling make's variables: under `make test` they would turn this into a
    # sub-make that prints "Entering directory" first.
    env = {name: value for name, value in os.environ.items() if name not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    plan = subprocess.run(
        ["make", "--no-print-directory", "-n", "test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == "bin/system-packages"
