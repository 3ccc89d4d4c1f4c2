"""Generate docs/api.md, the short API reference, from the docstrings.

``python -m fasttape.apidoc > docs/api.md`` writes it; ``tests/test_apidoc.py`` fails when the
file differs from what this prints.  Covered: every public name of :mod:`fasttape`
(``fasttape.__all__``) with its signature and the first paragraph of its docstring, then the
public methods and properties of :class:`fasttape.Tape` and :class:`fasttape.Graph` as users
see them (``inspect.getmembers``, so methods a subclass or mixin provides are included).  The
op functions (``ft.sin`` and the rest) are listed by name only: docs/ops.md is their reference.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["api_markdown", "first_paragraph", "plain"]

_COMMAND = "python -m fasttape.apidoc > docs/api.md"


def plain(text: str) -> str:
    """reST inline markup as Markdown: roles and double backticks become inline code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`"
                  if m.group(0).split("`")[1].startswith("~") else f"`{m.group(1)}`", text)
    return text.replace("``", "`")


def first_paragraph(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring on one line, as Markdown ("" if none)."""
    doc = inspect.getdoc(obj) or ""
    para = doc.strip().split("\n\n")[0]
    return plain(" ".join(line.strip() for line in para.splitlines()))


def _signature(obj: Callable[..., Any], method: bool = False) -> str:
    """``(a, b=1, *, c=None)``: names and defaults (the docstrings give the types)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # builtins without a signature
        return "(...)"
    params = list(sig.parameters.values())
    if method and params and params[0].name in ("self", "cls"):
        params = params[1:]
    if [p.kind for p in params] == [inspect.Parameter.VAR_POSITIONAL,
                                    inspect.Parameter.VAR_KEYWORD]:
        return ""  # not meant to be called directly (the docstring says how to make one)
    bare = [p.replace(annotation=inspect.Parameter.empty) for p in params]
    return str(sig.replace(parameters=bare, return_annotation=inspect.Signature.empty))


def _entry(title: str, obj: Any) -> list[str]:
    return [f"### `{title}`", "", first_paragraph(obj) or "(no docstring)", ""]


def _members(cls: type, prefix: str) -> list[str]:
    out = []
    attributes = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            out += _entry(f"{prefix}.{name}", raw)
        elif isinstance(raw, classmethod | staticmethod):
            out += _entry(f"ft.{cls.__name__}.{name}{_signature(member)}", member)
        elif inspect.isfunction(member):
            out += _entry(f"{prefix}.{name}{_signature(member, method=True)}", member)
        elif not callable(member):
            attributes.append(f"`{prefix}.{name}`")
    if attributes:
        out += [f"Attributes (described in `help(ft.{cls.__name__})`): "
                + ", ".join(attributes) + ".", ""]
    return out


def api_markdown() -> str:
    """The whole of docs/api.md."""
    import fasttape as ft
    from fasttape.trace import OP_FUNCTIONS

    lines = [
        "# API reference",
        "",
        f"Generated from the docstrings by `{_COMMAND}`; a test checks that it",
        "is current. Each entry is the first paragraph of a docstring: `help(ft.<name>)` has",
        "the parameters, types and examples. The ops are in [ops.md](ops.md).",
        "",
        "## `fasttape` (`import fasttape as ft`)",
        "",
    ]
    op_names = []
    for name in ft.__all__:
        obj = getattr(ft, name)
        if name in OP_FUNCTIONS:
            op_names.append(name)
        elif inspect.ismodule(obj):
            lines += _entry(f"ft.{name}", obj)
        elif inspect.isclass(obj):
            lines += _entry(f"ft.{name}{_signature(obj)}", obj)
        elif callable(obj):
            lines += _entry(f"ft.{name}{_signature(obj)}", obj)
        else:
            lines += [f"### `ft.{name}`", "", f"`{obj!r}`", ""]
    lines += [
        "### Op functions",
        "",
        "One function per row of the op table, each taking and returning traced values "
        "(or numbers): " + ", ".join(f"`ft.{n}`" for n in op_names) + ". See [ops.md](ops.md).",
        "",
        "## `ft.Tape` methods and properties",
        "",
        *_members(ft.Tape, "tape"),
        "## `ft.Graph` methods and properties",
        "",
        *_members(ft.Graph, "graph"),
        "## `ft.TensorTape` methods and properties",
        "",
        *_members(ft.TensorTape, "tensor_tape"),
    ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(api_markdown())
