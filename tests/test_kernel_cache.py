"""The kernel cache (fasttape/kernels/jit.py): per-user folder, never stale, never in the package.

The subprocess tests run a copy of the package against a private ``FASTTAPE_CACHE_DIR``, so
they neither depend on nor disturb the cache the rest of the suite uses.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fasttape
from fasttape.kernels import jit

ROOT = Path(fasttape.__file__).resolve().parents[1]

# Evaluates neg(2.0) with the kernels' own forward sweep (compiles ``forward_values``).
_PROBE = (
    "from fasttape.kernels import eval_op\n"
    "from fasttape.ops import OP_BY_NAME\n"
    "print(repr(eval_op(OP_BY_NAME['neg'].code, (2.0,))))\n"
)


def _run(tree: Path, cache: Path, code: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), jit.CACHE_ENV: str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    return subprocess.run([sys.executable, *extra, "-c", code], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str], str]:
    """A copy of the package, its file list before any call, and a first call's output."""
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "fasttape", tree / "fasttape",
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    cache = tmp_path_factory.mktemp("cache")
    before = _files(tree / "fasttape")
    done = _run(tree, cache, _PROBE)
    assert done.returncode == 0, done.stderr
    return tree, cache, before, done.stdout.strip()


@pytest.mark.slow
def test_nothing_is_written_inside_the_package(first_run):
    """Regression (issue 15, item 7): Numba's cache used to go to fasttape/kernels/__pycache__,
    which a reinstall left behind as a namespace package that broke ``import fasttape``."""
    tree, cache, before, out = first_run
    assert out == "-2.0"
    new = {f for f in _files(tree / "fasttape") - before if not f.endswith(".pyc")}
    assert not new, f"files written inside the package: {sorted(new)[:5]}"
    cached = _files(cache)
    assert any(f.endswith(".nbi") for f in cached) and any(f.endswith(".nbc") for f in cached)


@pytest.mark.slow
def test_a_changed_op_row_recompiles_the_kernels(first_run):
    """A formula edited in the table is never served from a stale cache, with no step in
    between (the dispatch is generated at import): the same cache folder gives the new value,
    not the one compiled before the edit."""
    tree, cache, _, out = first_run
    assert out == "-2.0"
    ops = tree / "fasttape" / "ops.py"
    text = ops.read_text()
    row = re.search(r'OpSpec\("neg", 1, "-x",', text)
    assert row is not None
    ops.write_text(text.replace(row.group(0), 'OpSpec("neg", 1, "-x - 1.0",'))
    again = _run(tree, cache, _PROBE)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "-3.0"


def test_an_unwritable_cache_folder_warns_once_and_still_computes(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    code = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "from fasttape.kernels.jit import kernel\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    f = kernel(lambda a: a + 1.0)\n"
        "    g = kernel(lambda a: a * 3.0)\n"
        "    print(f(1.0), g(2.0), sum('kernel cache' in str(x.message) for x in w))\n"
    )
    done = _run(ROOT, blocker, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.0", "6.0", "1"]



@pytest.mark.slow
def test_kernels_run_on_a_dispatch_compiled_from_memory(tmp_path):
    """An unwritable cache folder: the dispatch module is compiled from memory (no file), and
    a kernel that inlines it still compiles (its cache stamp skips a module without a file)
    and computes."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('ignore')\n"
        + _PROBE
        + "print(getattr(sys.modules['fasttape.kernels.generated_dispatch'], '__file__', None))\n"
    )
    done = _run(ROOT, blocker, code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-2.0", "None"]


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(jit.CACHE_ENV, str(tmp_path))
    folder = jit.cache_dir()
    assert folder.parent.parent == tmp_path
    assert f"numba-{__import__('numba').__version__}" in folder.parent.name
    assert ROOT not in folder.parents


def test_default_cache_folder_is_per_user(monkeypatch, tmp_path):
    monkeypatch.delenv(jit.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tmp_path in jit.cache_dir().parents


def test_source_stamp_covers_the_table_the_kernels_and_what_a_module_reaches():
    import fasttape.embed.cabi  # noqa: F401  (reaches fasttape.embed.numba_api's kernels)

    a = jit.source_stamp("fasttape.embed.cabi")
    assert a == jit.source_stamp("fasttape.embed.cabi")
    assert a != jit.source_stamp("fasttape.kernels.structure")


def test_only_the_wrapper_calls_numba_jit():
    """One JIT wrapper: no other module of the package or the benchmarks spells njit/cfunc."""
    pattern = re.compile(r"numba\.(njit|jit|cfunc)\(|^\s*@(numba\.)?(njit|jit|cfunc)\b"
                         r"|from numba import .*\b(njit|jit|cfunc)\b")
    offenders = []
    for folder in ("fasttape", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "jit.py" and path.parent.name == "kernels":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code) and ">>>" not in line and "``" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.slow
def test_a_stale_cache_index_is_a_miss_not_a_crash(tmp_path):
    # Regression: an index that pickles a reference to a function a later version renamed
    # (an embedding kernel reaches fasttape through an argument, outside its stamp) raised
    # AttributeError on load.  Now it is dropped, the kernel compiles and a fresh index is
    # written.
    import io
    import pickle

    (tmp_path / "stale_probe.py").write_text(
        "from fasttape.kernels.jit import kernel\n\n\n"
        "@kernel\ndef twice(a):\n    return 2.0 * a\n\n\nprint(twice(3.0))\n")
    cache = tmp_path / "cache"
    env_code = f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import stale_probe"
    first = _run(ROOT, cache, env_code)
    assert first.returncode == 0 and first.stdout.strip() == "6.0", first.stderr
    (index,) = list(cache.rglob("stale_probe.twice-*.nbi"))
    data = index.read_bytes()
    stream = io.BytesIO(data)
    pickle.load(stream)  # the version, kept: the rest is what Numba unpickles next
    index.write_bytes(data[:stream.tell()] + b"cfasttape.embed.numba_api\n_renamed_long_ago\n.")
    second = _run(ROOT, cache, env_code)
    assert second.returncode == 0 and second.stdout.strip() == "6.0", second.stderr
    third = _run(ROOT, cache, env_code)  # the rewritten index loads
    assert third.returncode == 0 and third.stdout.strip() == "6.0", third.stderr
    assert b"_renamed_long_ago" not in index.read_bytes()
