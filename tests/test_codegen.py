"""The generated kernels are fresh: regenerating from the table gives the files on disk."""

import ast
from pathlib import Path

import pytest

from fasttape.kernels import codegen


@pytest.mark.parametrize("path,gen", codegen.targets(), ids=lambda v: getattr(v, "name", ""))
def test_generated_file_is_fresh(path, gen):
    assert path.read_text() == gen(), (
        f"{path} is stale: run `python -m fasttape.kernels.codegen`"
    )


def test_check_flag_reports_fresh(capsys):
    assert codegen.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def _calls_generated_kernels(text: str) -> bool:
    """Whether a module imports sweeps generated from the op table (or numba_kernel's fn)."""
    from fasttape import kernels

    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if node.module.startswith("fasttape.kernels._") and node.module.endswith("_generated"):
                return True
            if node.module == "fasttape.kernels" and names & set(kernels.__all__):
                return True
            if node.module == "fasttape" and "kernels" in names:
                return True
    return "numba_kernel(" in text


def test_every_cached_caller_of_the_kernels_carries_the_digest():
    """Regression: after a new op renumbered the codes, stale Numba caches of modules that
    call the generated kernels from their own ``cache=True`` functions (bench_embed.py)
    ran the old kernels and crashed.  Every such module must be a codegen dependent."""
    root = Path(codegen.__file__).resolve().parents[2]
    deps = set(codegen.DEPENDENTS)
    missing = []
    for folder in ("fasttape", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("fasttape/kernels/"):
                continue  # the generators and generated files, with digests of their own
            text = path.read_text()
            if "cache=True" in text and _calls_generated_kernels(text) and rel not in deps:
                missing.append(rel)
    assert not missing, f"add to codegen.DEPENDENTS (and give a digest line): {missing}"
    for rel in deps:
        if (root / rel).exists():
            assert codegen.DIGEST_MARK + codegen.kernels_digest() in (root / rel).read_text()
