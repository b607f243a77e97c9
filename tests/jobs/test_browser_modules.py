"""`{% module_script %}` (jobs/templatetags/browser_modules.py): a page loads its entry module
after a preload of every module that entry imports, directly or not."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from django.template import Context, Template, TemplateSyntaxError

from jobs.templatetags.browser_modules import imported_modules

PRELOAD = re.compile(r'<link rel="modulepreload" href="/static/(jobs/[\w-]+\.js)">')
SCRIPT = re.compile(r'<script type="module" src="/static/(jobs/[\w-]+\.js)"></script>')


def rendered(entry: str) -> str:
    return Template("{% load browser_modules %}{% module_script '" + entry + "' %}").render(Context())


def imports_of(path: str) -> set[str]:
    found = finders.find(path)
    assert isinstance(found, str), path
    with open(found, encoding="utf-8") as source:
        return {f"jobs/{name}" for name in re.findall(r'from "\./([\w-]+\.js)";', source.read())}


@pytest.mark.parametrize("entry", ["jobs/page.js", "jobs/staff.js"])
def test_a_page_preloads_every_module_its_entry_needs_then_loads_the_entry(entry: str) -> None:
    html = rendered(entry)
    preloaded = set(PRELOAD.findall(html))
    assert SCRIPT.findall(html) == [entry] and html.rstrip().endswith("</script>")
    needed = imports_of(entry)
    assert needed and needed <= preloaded
    for module in preloaded:  # closed: what a preloaded module imports is preloaded too
        assert imports_of(module) <= preloaded, module
    assert entry not in preloaded


def test_the_staff_page_does_not_preload_the_job_pages_form() -> None:
    assert "jobs/form.js" in imported_modules("jobs/page.js")
    assert "jobs/form.js" not in imported_modules("jobs/staff.js")


def test_an_entry_that_is_not_there_is_a_template_error() -> None:
    with pytest.raises(TemplateSyntaxError, match=r"jobs/nope\.js"):
        rendered("jobs/nope.js")
