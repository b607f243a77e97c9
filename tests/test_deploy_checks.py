"""Production settings: `manage.py check --deploy` is clean with DEBUG=false, and the
session and CSRF cookies carry the flags they should. Each check runs Django afresh in
a subprocess with the production environment, as a deployment starts it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.test_compose import REQUIRED_EXAMPLE, resolved_environment

ROOT = Path(__file__).resolve().parent.parent

PRODUCTION_ENV = {
    "DEBUG": "false",
    "SECRET_KEY": "x7#Kq2!vR9zLm4@Tn8$Wp3^Yb6&Hd1*Fg5(Jc0)Se-Ua+Io=Ew~Rt_Qy;Zx,Cv.Bn",
    "ALLOWED_HOSTS": "jobs.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://jobs.example.com",
}
# Set in the tests' own environment or by a developer's shell; production leaves them unset.
CLEARED = (
    "DJANGO_SETTINGS_MODULE",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "DJANGO_ALLOW_ASYNC_UNSAFE",
)


def production(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CLEARED}
    return {**env, **PRODUCTION_ENV, **extra}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings() -> None:
    result = check_deploy(production())

    assert result.returncode == 0, result.stdout + result.stderr
    # Only the two checks settings silence while the TLS proxy redirects and sends HSTS.
    assert "System check identified no issues (2 silenced)." in result.stdout


def test_check_deploy_with_the_compose_settings_warns_only_of_the_plain_http_cookies() -> None:
    # docker-compose.yml's ports speak plain HTTP, so its cookies cannot be Secure (it says
    # so); every other deploy check must pass with exactly what Compose hands the web container.
    compose_env = resolved_environment("web", REQUIRED_EXAMPLE)
    env = {name: value for name, value in os.environ.items() if name not in CLEARED}

    result = check_deploy({**env, **compose_env})

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert set(re.findall(r"\((\w+\.[WE]\d+)\)", output)) == {"security.W012", "security.W016"}, output
    assert "System check identified 2 issues (2 silenced)." in output


def test_check_deploy_is_clean_when_django_itself_redirects_and_sends_hsts() -> None:
    env = production(
        SECURE_SSL_REDIRECT="true",
        SECURE_HSTS_SECONDS="31536000",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
        SECURE_HSTS_PRELOAD="true",
    )

    result = check_deploy(env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        ({"SESSION_COOKIE_SECURE": "false"}, "security.W012"),
        ({"CSRF_COOKIE_SECURE": "false"}, "security.W016"),
        ({"SECRET_KEY": "short"}, "security.W009"),
        ({"SECURE_HSTS_SECONDS": "3600"}, "security.W005"),  # HSTS asked for, but not on subdomains
    ],
)
def test_check_deploy_still_catches_an_unsafe_setting(extra: dict[str, str], check: str) -> None:
    result = check_deploy(production(**extra))

    assert result.returncode != 0
    assert check in result.stdout + result.stderr


def test_settings_refuse_to_start_without_secret_key_when_debug_is_false() -> None:
    env = production()
    del env["SECRET_KEY"]

    result = check_deploy(env)

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is false." in result.stderr


def test_settings_refuse_to_start_without_secret_key_when_debug_is_not_set() -> None:
    # DEBUG defaults to off: an environment that forgets both gets no development key.
    env = production()
    del env["SECRET_KEY"], env["DEBUG"]

    result = check_deploy(env)

    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is false." in result.stderr
    assert "make run" in result.stderr  # and how to get a development set-up instead


SERVER_ERROR_SCRIPT = """
import json, django
django.setup()
from django.test import Client
body = {"kind": "sleep", "params": {"steps": 1}}
response = Client(raise_request_exception=False).post("/api/jobs/", body, content_type="application/json")
print(json.dumps({"status": response.status_code, "body": response.content.decode(errors="replace")}))
"""


@pytest.mark.parametrize(("debug", "shows_traceback"), [(None, False), ("true", True)])
def test_a_server_error_in_the_api_shows_a_traceback_only_under_debug(
    debug: str | None, shows_traceback: bool, tmp_path: Path
) -> None:
    # A real failure: the database file cannot open. Under DEBUG django-ninja answers the
    # traceback as the body; the default (DEBUG unset) must not.
    env = {**production(), "DJANGO_SETTINGS_MODULE": "core.settings", "ALLOWED_HOSTS": "testserver"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'no-such-directory' / 'db.sqlite3'}"
    del env["DEBUG"]
    if debug is not None:
        env["DEBUG"] = debug

    result = subprocess.run(
        [sys.executable, "-c", SERVER_ERROR_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["status"] == 500
    leaked = ("Traceback" in answer["body"], "OperationalError" in answer["body"])
    assert leaked == (shows_traceback, shows_traceback), answer["body"][:500]


def test_debug_is_off_unless_set() -> None:
    script = "import json, django; django.setup(); from django.conf import settings; print(json.dumps(settings.DEBUG))"
    env = {**production(), "DJANGO_SETTINGS_MODULE": "core.settings"}
    del env["DEBUG"]

    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )

    assert json.loads(result.stdout) is False


@pytest.mark.parametrize(
    "name",
    [
        "JOB_QUOTA_ACTIVE",
        "JOB_QUOTA_PER_MINUTE",
        "JOB_QUOTA_SOCKETS",
        "JOB_QUOTA_RUNNING",
        "JOB_QUOTA_PER_IP",
        "JOB_QUOTA_RESULT_BYTES",
        "JOB_QUOTA_IMPORT_ROWS",
        "JOB_RETENTION_DAYS",
        "JOB_RETENTION_DAYS_ANONYMOUS",
    ],
)
def test_a_bad_quota_or_retention_value_stops_start_up_naming_it(name: str) -> None:
    result = check_deploy(production(**{name: "-5"}))

    assert result.returncode != 0
    assert f"{name} must be a whole number of 0 or more (0 turns it off), not '-5'." in result.stderr


def test_a_bad_trusted_proxy_stops_start_up_naming_it() -> None:
    result = check_deploy(production(TRUSTED_PROXIES="10.0.0.5,10.0.0.0/33"))

    assert result.returncode != 0
    assert "TRUSTED_PROXIES: '10.0.0.0/33' is not an IP address or CIDR network" in result.stderr


def test_production_cookie_flags() -> None:
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps({name: getattr(s, name) for name in ("
        "'SESSION_COOKIE_HTTPONLY', 'SESSION_COOKIE_SAMESITE', 'SESSION_COOKIE_SECURE', "
        "'CSRF_COOKIE_SAMESITE', 'CSRF_COOKIE_SECURE', 'CSRF_COOKIE_HTTPONLY')}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**production(), "DJANGO_SETTINGS_MODULE": "core.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert json.loads(result.stdout) == {
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SAMESITE": "Lax",
        "CSRF_COOKIE_SECURE": True,
        "CSRF_COOKIE_HTTPONLY": False,  # the page's script reads it for X-CSRFToken
    }


@pytest.mark.django_db
def test_session_and_csrf_cookies_are_sent_with_their_flags(client: Client) -> None:
    response = client.get("/")

    session, csrf = response.cookies["sessionid"], response.cookies["csrftoken"]
    assert session["httponly"] is True and session["samesite"] == "Lax"
    assert csrf["samesite"] == "Lax" and not csrf["httponly"]
