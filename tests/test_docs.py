"""The generated docs are up to date with the op table."""

from __future__ import annotations

from pathlib import Path

from fasttape.opsdoc import ops_markdown

OPS_MD = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def test_ops_md_matches_op_table() -> None:
    assert OPS_MD.read_text(encoding="utf-8") == ops_markdown(), (
        "docs/ops.md is out of date with fasttape/ops.py; regenerate it from the repository "
        'root with: python -c "from fasttape.opsdoc import ops_markdown; '
        "open('docs/ops.md','w').write(ops_markdown())\""
    )


def test_derivatives_md_contains_the_generated_table():
    from fasttape.opsdoc import derivatives_markdown

    text = (OPS_MD.parent / "derivatives.md").read_text(encoding="utf-8")
    assert derivatives_markdown().strip() in text, (
        "docs/derivatives.md's table is stale: paste fasttape.opsdoc.derivatives_markdown() in"
    )
