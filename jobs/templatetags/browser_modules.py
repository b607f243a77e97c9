"""`{% module_script "jobs/page.js" %}`: a page's entry module, with a preload of every module it imports.

Without the preloads the browser fetches one import level after another, about three more
round trips before the page's socket opens. The list comes from the modules' own import
lines (each imports its siblings by a relative path), so it cannot drift from them.
"""

from __future__ import annotations

import functools
import posixpath
import re

from django import template
from django.conf import settings
from django.contrib.staticfiles import finders
from django.templatetags.static import static
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

register = template.Library()

IMPORT = re.compile(r'^import [^"]*"\./([\w-]+\.js)";$', re.MULTILINE)


def imported_modules(entry: str) -> list[str]:
    """Every module `entry` imports, directly or not, as static paths, sorted."""
    found: set[str] = set()
    waiting = [entry]
    while waiting:
        module = waiting.pop()
        path = finders.find(module)
        if not isinstance(path, str):
            raise template.TemplateSyntaxError(f"No static file {module!r} (imported by {entry!r}).")
        with open(path, encoding="utf-8") as source:
            names = IMPORT.findall(source.read())
        for name in names:
            sibling = posixpath.join(posixpath.dirname(module), name)
            if sibling not in found:
                found.add(sibling)
                waiting.append(sibling)
    return sorted(found)


_imported_once = functools.cache(imported_modules)  # the modules do not change while a deployed site runs


@register.simple_tag
def module_script(entry: str) -> SafeString:
    modules = imported_modules(entry) if settings.DEBUG else _imported_once(entry)
    preloads = format_html_join("\n", '<link rel="modulepreload" href="{}">', ((static(m),) for m in modules))
    return format_html('{}\n<script type="module" src="{}"></script>', preloads, static(entry))
