"""HTML forms, generated from each kind's parameter declaration (jobs/kinds.py)."""

from __future__ import annotations

from typing import Any

from django import forms

from jobs.kinds import JobKind, kind_list


class KindForm(forms.Form):
    kind = forms.ChoiceField(label="Job kind")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["kind"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [(kind.name, kind.title) for kind in kind_list()]


def params_form(kind: JobKind, data: Any = None, files: Any = None) -> forms.Form:
    """A form of the kind's parameters; field names carry the kind as prefix (`primes-limit`).

    A file parameter is a file input (`csv_import-file`) with its limit in `data-max-bytes`.
    """
    form = forms.Form(data=data, files=files, prefix=kind.name)
    for param in kind.params:
        form.fields[param.name] = param.form_field()
    return form
