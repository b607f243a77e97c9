"""Shared fixtures: a real Redis on a free port, a real Celery worker, a real daphne
serving the real ASGI app, and a real browser (Debian's Chromium through Playwright).

Nothing here is mocked. Every process a fixture starts is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Sync Playwright runs an event loop in the test thread beside the ORM.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from core.daphne_limits import daphne_command
from core.redis_local import RedisProcess, free_port, start_redis
from tests.environment import TEST_METRICS_TOKEN, TEST_SECRET_KEY
from tests.processes import stop_process
from tests.sentinel import SentinelSet
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
(ROOT / "var").mkdir(exist_ok=True)  # the SQLite test database lives there (core/settings.py)
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))


# --- Redis -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def media_root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jobstream-media-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _point_at_test_redis(redis_server: RedisProcess, media_root: Path) -> Iterator[None]:
    """Django, Channels and Celery in this process all use the test Redis."""
    from django.test.utils import override_settings

    from celery_app import app
    from core.settings import channel_layers_for
    from notifications.publish import publisher

    url = redis_server.url
    override = override_settings(
        REDIS_URL=url,
        REDIS_HOST={"address": url},
        CHANNEL_LAYERS=channel_layers_for(url),
        CELERY_BROKER_URL=url,
        CELERY_RESULT_BACKEND=url,
        MEDIA_ROOT=str(media_root),
    )
    override.enable()
    app.conf.update(broker_url=url, result_backend=url)
    yield
    publisher.close()  # its cancel listener, before the Redis it listens on stops
    override.disable()


@pytest.fixture(scope="session", autouse=True)
def _close_socket_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The sockets' database thread keeps its connection (notifications/socket_db.py); it is
    closed before the test database is dropped, which PostgreSQL refuses while in use."""
    yield
    from notifications.socket_db import close_connections

    close_connections()
    with django_db_blocker.unblock():
        _end_other_sessions_on_the_test_database()


def _end_other_sessions_on_the_test_database() -> None:
    """PostgreSQL: ends what other threads of this process still hold open on the test
    database (the heartbeat threads of jobs/heartbeat.py keep theirs for the process's
    life, as do executor threads), or dropping it fails and leaves it behind."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A master, a replica and three sentinels of its own (tests/sentinel.py): a test may kill the master."""
    started = SentinelSet().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def redis_client(redis_server: RedisProcess) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


# --- Celery worker ---------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_worker_thread(_point_at_test_redis: None) -> Iterator[Any]:
    """A real Celery worker (pool solo) in a thread, consuming from the test Redis.

    Tests that use it need committed rows: mark them `django_db(transaction=True)`.
    """
    from celery.contrib.testing.worker import start_worker

    from celery_app import app

    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10, loglevel="WARNING") as worker:
        yield worker


@pytest.fixture
def worker(celery_worker_thread: Any, transactional_db: None) -> Any:
    return celery_worker_thread


# --- live ASGI server ------------------------------------------------------------


def _database_url_for_subprocess() -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    if db["ENGINE"] == "core.compat.django":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class LiveServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        # pytest-django's autouse _live_server_helper takes any fixture named
        # `live_server` for its own and enables/disables this around each test.
        from django.test.utils import override_settings

        self._live_server_modified_settings = override_settings()

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture(scope="session")
def live_server_env(redis_server: RedisProcess, media_root: Path, django_db_setup: None) -> dict[str, str]:
    """The environment of a web process that shares the test database and Redis."""
    env = {
        **os.environ,
        "DATABASE_URL": _database_url_for_subprocess(),
        "REDIS_URL": redis_server.url,
        "MEDIA_ROOT": str(media_root),
        "DEBUG": "false",
        "SECRET_KEY": TEST_SECRET_KEY,
        "METRICS_TOKEN": TEST_METRICS_TOKEN,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "WHITENOISE_USE_FINDERS": "true",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    return env


@pytest.fixture(scope="session")
def live_server(live_server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """daphne serving core.asgi on a free port, as `make run` starts it."""
    import urllib.request

    port = free_port()
    log = tmp_path_factory.mktemp("daphne") / "daphne.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            daphne_command("core.asgi:application", port=port),
            cwd=ROOT,
            env=live_server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, port, log)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited at start:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/job-kinds/", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    if not wait_until(answers, timeout=30):
        server.stop()
        raise RuntimeError(f"daphne did not answer within 30 s:\n{log.read_text()}")
    yield server
    server.stop()


# --- browser ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (no browser download here).

    Module-scoped: while sync Playwright runs, its event loop counts as running in
    this thread, and the async tests of later modules could not start theirs.
    """
    if not CHROMIUM.is_file():
        # A failure, never a skip: a suite that passes without opening a page proves nothing.
        pytest.fail(f"no browser at {CHROMIUM} (CHROMIUM_PATH): `make test` installs Debian's chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    )
    yield browser
    browser.close()
    playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    yield page
    context.close()


# --- SMTP ------------------------------------------------------------------------


@pytest.fixture
def smtp_server(settings: Any) -> Iterator[Any]:
    """A real SMTP server on loopback (aiosmtpd) that Django's mail goes to, in this
    process and in the worker thread alike (the settings are the process's)."""
    from tests.smtp import SmtpServer

    server = SmtpServer()
    server.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = server.host
    settings.EMAIL_PORT = server.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield server
    server.stop()
