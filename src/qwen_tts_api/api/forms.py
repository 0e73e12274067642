"""Reading the text fields of a form body (multipart, a plain form, or JSON read into the
same shape), with OpenAI-style errors naming the field."""

from __future__ import annotations

from typing import Literal, overload

from starlette.datastructures import FormData

from .errors import invalid_request


def is_sent(form: FormData, name: str) -> bool:
    """Whether the field is there and not blank (a file counts as sent)."""
    value = form.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


@overload
def text_field(form: FormData, name: str, required: Literal[True]) -> str: ...


@overload
def text_field(form: FormData, name: str, required: bool = False) -> str | None: ...


def text_field(form: FormData, name: str, required: bool = False) -> str | None:
    """The field's text, stripped; None when absent or blank (a 400 if ``required``), a 400
    when it is a file."""
    if not is_sent(form, name):
        if required:
            raise invalid_request(f"missing required field {name!r}", param=name, code="missing_required_parameter")
        return None
    value = form.get(name)
    if not isinstance(value, str):
        raise invalid_request(f"{name!r} must be a text field, not a file", param=name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can carry and nothing can store
        raise invalid_request(f"{name!r} is not valid Unicode text", param=name) from None
    return value.strip()
