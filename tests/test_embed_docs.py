"""Every Python block of docs/embedding.md runs as written (in order, one namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "embedding.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.oracle
@pytest.mark.slow  # about 15 s: imports JAX and PyTorch, compiles a jitted example
def test_embedding_md_examples_run(capsys):
    for name in ("scipy", "sympy", "cffi", "jax", "torch"):
        pytest.importorskip(name)
    import jax

    found = blocks()
    assert len(found) >= 10, "docs/embedding.md lost its examples"
    x64 = jax.config.jax_enable_x64  # the JAX example enables x64 globally: restore it
    ns: dict = {"__name__": "embedding_md"}
    try:
        for i, code in enumerate(found):
            try:
                exec(compile(code, f"docs/embedding.md block {i}", "exec"), ns)
            except Exception as exc:
                raise AssertionError(f"block {i} of docs/embedding.md failed:\n{code}") from exc
    finally:
        jax.config.update("jax_enable_x64", x64)
    out = capsys.readouterr().out
    assert "digraph fasttape {" in out
    # The printed claims in the text hold.
    assert ns["res"].x == pytest.approx([0.5, 0.5], abs=1e-6)
    assert ns["f"] is not None
