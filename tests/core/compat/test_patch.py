"""core/compat/patch.py: a patch applies inside its range, and outside it warns or stops start-up."""

from __future__ import annotations

import logging

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from core.compat import checks, web, worker
from core.compat.patch import IncompatibleUpstream, Kind, Patch, installed_version


def patch(kind: Kind, tested: str, calls: list[str] | None = None) -> Patch:
    """A patch of a package that is surely installed (Django), with the range given."""
    return Patch(
        name="test.patch",
        package="Django",
        tested=tested,
        kind=kind,
        changes="nothing (a test)",
        why="the test needs it",
        install=None if calls is None else lambda: calls.append("installed"),
    )


def test_a_patch_in_range_installs_once_and_is_active() -> None:
    calls: list[str] = []
    in_range = patch(Kind.SPEED, f"=={installed_version('Django')}", calls)
    assert in_range.apply() and in_range.apply()
    assert in_range.active
    assert calls == ["installed"]


def test_a_speed_patch_out_of_range_warns_once_naming_package_version_and_range(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    old = patch(Kind.SPEED, "<1", calls)
    with caplog.at_level(logging.WARNING, logger="core.compat"):
        assert not old.apply()
        assert not old.active
    assert calls == []
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert f"Django {installed_version('Django')}" in warnings[0] and "<1" in warnings[0]
    assert "stock behaviour kept" in warnings[0]


def test_a_safety_patch_out_of_range_stops_start_up_naming_package_version_and_range() -> None:
    calls: list[str] = []
    with pytest.raises(IncompatibleUpstream) as stopped:
        patch(Kind.SAFETY, "<1", calls).apply()
    assert calls == []
    message = str(stopped.value)
    assert f"Django {installed_version('Django')}" in message and "<1" in message and "Start-up stops" in message


def test_a_patch_of_a_package_not_installed_is_out_of_range() -> None:
    missing = Patch(name="t", package="no-such-package-here", tested=">=1", kind=Kind.SPEED, changes="", why="")
    assert not missing.in_range()
    assert "not installed" in (missing.problem() or "")


def test_every_patch_is_in_range_and_active_with_the_pinned_versions() -> None:
    web.install()
    worker.install()
    for each in checks.all_patches():
        assert each.in_range(), each.problem()
        assert each.active, each


def test_the_system_check_passes_with_the_pinned_versions() -> None:
    call_command("check", "--tag", "compatibility")


def test_the_system_check_fails_for_a_safety_patch_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    old = patch(Kind.SAFETY, "<1")
    monkeypatch.setattr(checks, "all_patches", lambda: [old])
    with pytest.raises(SystemCheckError, match=r"compat\.E001"):
        call_command("check", "--tag", "compatibility")


def test_the_system_check_warns_for_a_speed_patch_out_of_range(monkeypatch: pytest.MonkeyPatch) -> None:
    old = patch(Kind.SPEED, "<1")
    monkeypatch.setattr(checks, "all_patches", lambda: [old])
    messages = checks.check_patched_upstreams()
    assert [message.id for message in messages] == ["compat.W001"]
    assert "Django" in messages[0].msg and "<1" in messages[0].msg
