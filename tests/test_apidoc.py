"""docs/api.md is generated from the docstrings and must be current."""

from __future__ import annotations

from pathlib import Path

import fasttape as ft
from fasttape.apidoc import api_markdown, first_paragraph, plain

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_md_is_current() -> None:
    assert API_MD.read_text(encoding="utf-8") == api_markdown(), (
        "docs/api.md is stale (a public name, signature or docstring changed); regenerate it "
        "from the repository root with: python -m fasttape.apidoc > docs/api.md"
    )


def test_every_public_name_and_tape_method_is_listed() -> None:
    text = api_markdown()
    for name in ft.__all__:
        assert f"`ft.{name}" in text, name
    for name in ("value", "value_and_grad", "grad", "save", "from_arrays", "n_nodes"):
        assert f".{name}" in text, name
    assert "``" not in text and ":func:" not in text  # Markdown, not reST


def test_plain_turns_rest_roles_into_inline_code() -> None:
    assert plain("see :func:`~fasttape.tape.Tape.value` and ``x``") == "see `value` and `x`"
    assert plain(":class:`Tape`") == "`Tape`"

    def documented() -> None:
        """First line
        goes on.

        Second paragraph."""

    assert first_paragraph(documented) == "First line goes on."
