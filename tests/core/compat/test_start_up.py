"""What a process does with a patched upstream outside its tested range, shown on real processes.

The range of one patch is narrowed in the process before it starts (as if another version
were installed): a worker or a daphne whose safety patch is out of range stops at once,
naming the package, its version and the range; a daphne whose speed patch is out of range
warns once and serves with the stock behaviour. (docs/compat.md shows the same with
another version installed in a throwaway virtualenv.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Origin

from core.daphne_limits import daphne_command
from core.redis_local import RedisProcess, free_port
from tests.conftest import ROOT
from tests.processes import stop_process
from tests.waiting import wait_until

START_TIMEOUT = 30.0  # seconds for a process to stop, or to answer


def narrowed(module: str, patch: str, then: str) -> str:
    """Python that puts `module.patch` out of range, then runs `then`."""
    return (
        "from packaging.specifiers import SpecifierSet; "
        f"import {module} as m; m.{patch}.tested = SpecifierSet('<0.1'); "
        f"import sys; {then}"
    )


def worker_main(*args: str) -> str:
    argv = ["celery", "-A", "celery_app", "worker", *args]
    return f"sys.argv = {argv!r}; from celery.__main__ import main; main()"


def daphne_main(port: int) -> str:
    argv = ["daphne", *daphne_command("core.asgi:application", port=port)[3:]]
    return f"sys.argv = {argv!r}; from daphne.cli import CommandLineInterface; CommandLineInterface.entrypoint()"


def test_a_worker_whose_kombu_guard_is_out_of_range_stops_naming_kombu(redis_server: RedisProcess) -> None:
    code = narrowed("core.compat.kombu", "CLOSED_CHANNEL_GUARDS", worker_main("-P", "solo"))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "REDIS_URL": redis_server.url},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode != 0
    assert "IncompatibleUpstream: kombu" in done.stderr and "<0.1" in done.stderr


def test_a_daphne_whose_close_code_patch_is_out_of_range_stops_naming_daphne(live_server_env: dict[str, str]) -> None:
    code = narrowed("core.compat.daphne", "CLOSE_CODES", daphne_main(free_port()))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=live_server_env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode != 0
    assert "IncompatibleUpstream: daphne" in done.stderr and "'daphne.close-codes'" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_a_daphne_whose_layer_patch_is_out_of_range_warns_and_streams_with_the_stock_layer(
    live_server_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    code = narrowed("core.compat.channels_redis", "LAYER", daphne_main(port))
    log = tmp_path / "daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=live_server_env, stdout=out, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                return httpx.get(f"{base}/api/job-kinds/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(answers, timeout=START_TIMEOUT)
        text = log.read_text()
        assert text.count("'channels_redis.jobstream-layer'") == 1, text  # one warning, naming it
        assert "stock behaviour kept" in text
        frame = asyncio.run(_owner_snapshot(base))
        assert frame == {"type": "snapshot", "jobs": []}
    finally:
        stop_process(process)


async def _owner_snapshot(base: str) -> object:
    async with httpx.AsyncClient(base_url=base) as client:
        await client.get("/")
        cookie = {"Cookie": f"sessionid={client.cookies['sessionid']}"}
    async with ws_connect(
        f"{base.replace('http', 'ws')}/ws/jobs/", origin=Origin(base), additional_headers=cookie
    ) as socket_:
        return json.loads(await asyncio.wait_for(socket_.recv(), START_TIMEOUT))
