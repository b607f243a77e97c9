"""EMAIL_URL and SITE_URL (core/email_url.py): each form Django's mail settings take, and
a bad value stopping start-up naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.email_url import CONSOLE_BACKEND, SMTP_BACKEND, EmailSettings, email_settings_from_url, site_url_check

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", EmailSettings(backend=CONSOLE_BACKEND)),
        ("console://", EmailSettings(backend=CONSOLE_BACKEND)),
        ("locmem://", EmailSettings(backend="django.core.mail.backends.locmem.EmailBackend")),
        ("dummy://", EmailSettings(backend="django.core.mail.backends.dummy.EmailBackend")),
        (
            "smtp://user:pass@mail.example.com:587/?tls=true",
            EmailSettings(SMTP_BACKEND, "mail.example.com", 587, "user", "pass", use_tls=True),
        ),
        ("smtp://mail.example.com", EmailSettings(SMTP_BACKEND, "mail.example.com", 25)),
        ("smtp://127.0.0.1:2525/?tls=false", EmailSettings(SMTP_BACKEND, "127.0.0.1", 2525)),
        (
            "smtps://me%40example.com:p%3As%2Fs@mail.example.com",
            EmailSettings(SMTP_BACKEND, "mail.example.com", 465, "me@example.com", "p:s/s", use_ssl=True),
        ),
        ("SMTP://mail.example.com/?ssl=1", EmailSettings(SMTP_BACKEND, "mail.example.com", 25, use_ssl=True)),
    ],
)
def test_email_url_gives_django_mail_settings(url: str, expected: EmailSettings) -> None:
    assert email_settings_from_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mailto://x", "scheme"),
        ("mail.example.com:587", "scheme"),
        ("smtp://", "name the server"),
        ("smtp://host:99999", "port"),
        ("smtp://host:abc", "port"),
        ("smtp://host/?tls=maybe", "true or false"),
        ("smtp://host/?starttls=true", "unknown query key"),
        ("smtp://host/?tls=true&ssl=true", "exclude each other"),
        ("smtps://host/?tls=true", "exclude each other"),
        ("smtp://host/inbox", "no path"),
        ("console://somewhere", "takes nothing"),
    ],
)
def test_malformed_email_url_says_what_is_wrong(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        email_settings_from_url(url)


def test_site_url_is_an_http_origin_without_its_trailing_slash() -> None:
    assert site_url_check("https://jobs.example.com/") == "https://jobs.example.com"
    assert site_url_check("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    for bad in ("ftp://jobs.example.com", "jobs.example.com", "https://", "https://x/?a=1", "https://u:p@x"):
        with pytest.raises(ValueError):
            site_url_check(bad)


@pytest.mark.parametrize(
    ("variable", "value"), [("EMAIL_URL", "smtp://host/?tls=maybe"), ("SITE_URL", "ftp://jobs.example.com")]
)
def test_bad_mail_setting_stops_start_up_naming_the_variable(variable: str, value: str) -> None:
    env = {**os.environ, "DEBUG": "true", variable: value}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", "import core.settings"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert f"RuntimeError: {variable}: " in result.stderr
