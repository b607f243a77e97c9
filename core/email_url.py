"""EMAIL_URL: one URL for Django's email settings, as DATABASE_URL is for the database.

- `smtp://user:password@host:587/?tls=true` SMTP, STARTTLS with `tls=true` (port 25 by default)
- `smtps://user:password@host:465/` SMTP over TLS from the first byte (port 465 by default)
- `console://` mails written to the process's standard output (the default, and `make run`'s)
- `locmem://` kept in memory (django.core.mail.outbox), for tests
- `dummy://` dropped

The user and password are percent-decoded, so `@`, `:` or `/` in them are written `%40`,
`%3A`, `%2F`. Anything else stops start-up (core/settings.py names the variable).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
CONSOLE_BACKEND = "django.core.mail.backends.console.EmailBackend"
BACKENDS_WITHOUT_SERVER = {
    "console": CONSOLE_BACKEND,
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
}
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
SWITCHES = ("tls", "ssl")  # the query keys an smtp URL takes
TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class EmailSettings:
    """What Django's email settings of the same names (EMAIL_*) take."""

    backend: str
    host: str = "localhost"
    port: int = 25
    user: str = ""
    password: str = ""
    use_tls: bool = False
    use_ssl: bool = False


def email_settings_from_url(url: str) -> EmailSettings:
    """The email settings an EMAIL_URL names; ValueError saying what is wrong with it."""
    if not url.strip():
        return EmailSettings(backend=CONSOLE_BACKEND)
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in BACKENDS_WITHOUT_SERVER:
        if parts.netloc or parts.path.strip("/") or parts.query:
            raise ValueError(f"{scheme}:// takes nothing after it (write {scheme}://)")
        return EmailSettings(backend=BACKENDS_WITHOUT_SERVER[scheme])
    if scheme not in DEFAULT_PORTS:
        known = ", ".join(f"{name}://" for name in (*DEFAULT_PORTS, *BACKENDS_WITHOUT_SERVER))
        raise ValueError(f"the scheme must be one of {known}, not {parts.scheme or 'none'!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("its port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ValueError(f"name the server: {scheme}://user:password@host:port/")
    if parts.path.strip("/") or parts.fragment:
        raise ValueError("an SMTP URL has no path: settings go in the query (?tls=true)")
    switches = _switches(parts.query)
    use_ssl = scheme == "smtps" or switches.get("ssl", False)
    use_tls = switches.get("tls", False)
    if use_tls and use_ssl:
        raise ValueError("tls (STARTTLS) and ssl (smtps://) exclude each other: pick one")
    return EmailSettings(
        backend=SMTP_BACKEND,
        host=parts.hostname,
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        use_tls=use_tls,
        use_ssl=use_ssl,
    )


def _switches(query: str) -> dict[str, bool]:
    switches: dict[str, bool] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in SWITCHES:
            raise ValueError(f"unknown query key {key!r}; an SMTP URL takes {', '.join(SWITCHES)}")
        if value.lower() not in TRUE | FALSE:
            raise ValueError(f"{key} must be true or false, not {value!r}")
        switches[key] = value.lower() in TRUE
    return switches


def site_url_check(url: str) -> str:
    """SITE_URL without its trailing slash; ValueError unless it is an http(s) origin (and path)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("it must be an http:// or https:// URL with a host, e.g. https://jobs.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("it takes a scheme, a host, a port and a path only (no query, fragment or credentials)")
    try:
        parts.port  # noqa: B018 -- reading it is the check
    except ValueError:
        raise ValueError("its port must be a number from 1 to 65535") from None
    return url.strip().rstrip("/")
