"""The doc runner: every fenced code block in README.md, CONTRIBUTING.md and docs/*.md is checked.

How a page is checked (CONTRIBUTING.md, "Docs", says the same for writers):

- ```python blocks run in order in one namespace per page, in a temporary working directory,
  with matplotlib's Agg backend. Tracebacks point at the page and line (the code is compiled
  with the page as its file name and its own line numbers).
- An output block (```text, or an unlabelled fence) that follows a python block with only blank
  lines in between is compared with what the block printed, exactly after stripping trailing
  whitespace per line and leading/trailing blank lines. A line that is only ``...`` matches any
  number of lines; ``...`` inside a line matches any text on that line (doctest's ELLIPSIS):
  use it for timings, addresses and other machine-dependent parts only.
- A top-level expression statement in a python block whose value is plain data (a number,
  array, string or container) fails the page: its result is not shown, so a comment claiming
  a result (``tape.value(x)  # 11.7``) would go stale unnoticed. Print it and show the output
  block instead.
- ```bash / ```console blocks: each command is run when it is safe and fast (``--help``,
  ``python -m fasttape.kernels.codegen --check``, ``python -c`` doc generators, which run in a
  temporary directory and whose written files must equal the checked-in ones); otherwise it is
  checked without running: the program exists and, when it uses argparse, its own parser
  accepts the command line (the program is stopped right after ``parse_args``); pip extras
  exist in pyproject.toml; pytest paths exist.
- Other labels (``text``, ``c``, ``dot``, ...) are shown, not run. An unlabelled block that is
  not an output block fails: label it.
- A block opts out only with ``<!-- doc-test: skip (reason) -->`` on the line(s) right above
  its fence; a python block whose imports are not installed (an optional extra: jax, torch,
  matplotlib) is left out too. Both are reported as skipped tests with the reason.

The prose is checked too: every ``ft.x`` / ``fasttape.a.b`` in inline code resolves, every
``tape.m`` / ``graph.m`` is a Tape / Graph attribute, repository paths (``fasttape/...``,
``tests/...``, ``benchmarks/...``, ``docs/...``) exist, and relative links and their
``#anchors`` lead somewhere; a command quoted inline (```fasttape bench --nodes 1e6```,
```python benchmarks/report.py --repeat 7```) is checked as a bash command is, never run.

Also here: the generated tables in docs/ops.md and docs/derivatives.md are current, and the
docstring ``Examples`` in the fasttape package run (``doctest`` on each module that has one).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import doctest
import importlib
import importlib.util
import io
import numbers
import os
import re
import runpy
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# Pages whose examples take more than about 10 s once the kernels are compiled (1e6-node graphs)
# are marked slow: CI runs them, the fast local loop (python -m pytest -m "not slow") does not.
# None does today: the slowest, docs/batch.md and docs/embedding.md (JAX and PyTorch imports),
# take 5-9 s on the 2-core development VM.
SLOW_PAGES: set[str] = set()
SHOWN_ONLY = {"text", "c", "dot", "toml", "json", "diff", "markdown"}
SHELL = {"bash", "console", "sh", "shell"}

_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
_SKIP = re.compile(r"^\s*<!--\s*doc-test:\s*skip\s*\((.+)\)\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a page; ``line`` is the 1-based line of its opening fence."""

    page: str
    line: int
    lang: str
    text: str
    skip: str | None = None
    output: Block | None = None  # the output block that follows a python block, if any

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, with output blocks attached to their python block."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks: list[Block] = []
    ends: list[int] = []  # line index of each block's closing fence
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page}:{i + 1}: code fence never closed")
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1 : j]]
        skip = None
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and (s := _SKIP.match(lines[k])):
            skip = s.group(1).strip()
        block = Block(page, i + 1, lang, "\n".join(body) + "\n", skip)
        prev = blocks[-1] if blocks else None
        between = lines[ends[-1] + 1 : i] if ends else []
        if (
            prev is not None
            and prev.lang == "python"
            and prev.output is None
            and lang in ("", "text")
            and not any(ln.strip() for ln in between)
        ):
            prev.output = block
            block.lang = "output"
        blocks.append(block)
        ends.append(j)
        i = j + 1
    return blocks


# ---------------------------------------------------------------- python blocks and outputs


# Optional modules a page or docstring may need (pyproject's extras, cffi, matplotlib): a block
# that imports one that is not installed is skipped.  Any other missing module fails the page.
OPTIONAL_MODULES = {"autograd", "casadi", "cffi", "dask", "distributed", "jax", "matplotlib",
                    "scipy", "sympy", "torch"}


def missing_imports(code: str) -> list[str]:
    """Optional modules (OPTIONAL_MODULES) that ``code`` imports and that are not installed."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return sorted(n for n in names & OPTIONAL_MODULES if importlib.util.find_spec(n) is None)


def skip_reason(block: Block) -> str | None:
    if block.skip is not None:
        return block.skip
    if block.lang == "python" and (missing := missing_imports(block.text)):
        return f"needs {', '.join(missing)} (not installed)"
    return None


def output_matches(expected: str, actual: str) -> bool:
    """Compare per line after stripping trailing whitespace; ``...`` is a wildcard (see top)."""

    def norm(text: str) -> list[str]:
        return "\n".join(ln.rstrip() for ln in text.split("\n")).strip("\n").split("\n")

    pattern = []
    for ln in norm(expected):
        if ln == "...":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*?".join(re.escape(p) for p in ln.split("...")) + r"\n")
    return re.fullmatch("".join(pattern), "\n".join(norm(actual)) + "\n", re.S) is not None


class _ShowsNothing(ast.NodeTransformer):
    """Wrap each top-level expression statement so a non-None result fails the page."""

    def visit_Module(self, node: ast.Module) -> ast.Module:
        for stmt in node.body:
            if isinstance(stmt, ast.Expr) and not isinstance(stmt.value, ast.Constant):
                call = ast.Call(
                    ast.Name("__doc_result_not_shown__", ast.Load()),
                    [stmt.value, ast.Constant(stmt.lineno)],
                    [],
                )
                stmt.value = ast.copy_location(call, stmt.value)
        return ast.fix_missing_locations(node)


def run_python(block: Block, ns: dict) -> str:
    """Run one python block in the page's namespace; return what it printed."""
    source = "\n" * block.line + block.text  # line numbers in tracebacks are the page's
    tree = _ShowsNothing().visit(ast.parse(source, block.page))

    def not_shown(value: object, lineno: int) -> None:
        # Plain data (numbers, arrays, strings, containers) is what a reader wants to see; an
        # object such as torch.manual_seed's generator is not a result anyone would show.
        if isinstance(value, (numbers.Number, np.ndarray, str, bytes, tuple, list, dict, set)):
            raise AssertionError(
                f"{block.page}:{lineno}: this expression's result ({value!r:.60}) is not shown; "
                "print it and add the output block after the code block"
            )

    ns["__doc_result_not_shown__"] = not_shown
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(tree, block.page, "exec"), ns)
    return buf.getvalue()


# ---------------------------------------------------------------- bash blocks


def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a bash/console block as argv lists (comments, ``&&``, env vars split)."""
    text = block.text.replace("\\\n", " ")
    lines = text.split("\n")
    if block.lang == "console":  # only the prompted lines are commands
        lines = [ln[2:] for ln in lines if ln.startswith("$ ")]
    commands = []
    for ln in lines:
        tokens = shlex.split(ln, comments=True)
        cmd: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok in (">", ">>", "2>", "<"):  # a redirect: the rest of the command is its file
                cmd.append("\0")
            elif tok in ("&&", "||", ";", "|"):
                while cmd and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", cmd[0]):
                    cmd.pop(0)  # VAR=value prefix
                if "\0" in cmd:
                    cmd = cmd[: cmd.index("\0")]
                if cmd:
                    commands.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return commands


def _run(argv: list[str], cwd: Path, where: str, timeout: float = 300) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{where}: `{shlex.join(argv)}` exited with {proc.returncode}:\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return proc.stdout


class _Parsed(BaseException):
    """Raised right after a program's parse_args succeeds; not an Exception, not SystemExit,
    so a program that catches those around parse_args (fasttape bench does) lets it through."""


def _parse_only(mode: str, target: str, args: list[str], where: str) -> None:
    """Run a program in this process up to its argparse ``parse_args`` and stop there.

    The command line is checked by the program's own parser (options, values, subcommands)
    and nothing else runs.
    """
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    # runpy warns (an error under -W error::RuntimeWarning) when the module it is about to run
    # as __main__ was imported already (tests import fasttape.__main__): set it aside meanwhile.
    spec = importlib.util.find_spec(target) if mode == "-m" else None
    runs = f"{target}.__main__" if spec and spec.submodule_search_locations else target
    imported = sys.modules.pop(runs, None) if mode == "-m" else None
    sys.argv = [target, *args]
    sys.path[:0] = [str(ROOT)] if mode == "-m" else [str(Path(target).parent), str(ROOT)]
    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    out, err = io.StringIO(), io.StringIO()
    shown = target if mode == "-m" else Path(target).relative_to(ROOT).as_posix()
    command = shlex.join(["python", *([mode] if mode == "-m" else []), shown, *args])
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if mode == "-m":
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(target, run_name="__main__")
    except _Parsed:
        return
    except SystemExit as exc:
        if exc.code in (0, None) and "--help" in args:
            return
        raise AssertionError(
            f"{where}: `{command}` is refused by its parser:\n{err.getvalue()[-2000:]}"
        ) from None
    finally:
        argparse.ArgumentParser.parse_args = parse  # type: ignore[method-assign]
        sys.argv, sys.path[:] = saved_argv, saved_path
        if imported is not None:
            sys.modules[runs] = imported
    raise AssertionError(f"{where}: `{command}` ended without parsing its command line")


def _uses_argparse(path: Path) -> bool:
    return path.is_file() and "argparse" in path.read_text(encoding="utf-8")


def check_command(argv: list[str], where: str, tmp: Path, run: bool = True) -> None:
    """Run a doc's shell command when safe and fast, else check it parses (see the top).

    ``run=False`` (commands quoted inline in the prose) never runs anything.
    """
    py = [sys.executable]
    if argv[0] in ("python", "python3"):
        argv = [*py, *argv[1:]]
    elif argv[0] == "fasttape":
        argv = [*py, "-m", "fasttape", *argv[1:]]
    elif argv[0] == "pip":
        argv = [*py, "-m", "pip", *argv[1:]]
    if argv[0] != sys.executable:
        raise AssertionError(
            f"{where}: the runner does not know `{argv[0]}`: teach tests/test_docs.py how to "
            "check it, or opt the block out with <!-- doc-test: skip (reason) -->"
        )
    rest = argv[1:]
    if rest[:1] == ["-c"]:
        if not run:
            return
        # A doc generator such as CONTRIBUTING's docs/ops.md line: run it where it cannot
        # touch the checkout, then compare what it wrote with the checked-in file.
        (tmp / "docs").mkdir(exist_ok=True)
        _run(argv, tmp, where)
        for written in (tmp / "docs").iterdir():
            assert written.read_text("utf-8") == (ROOT / "docs" / written.name).read_text(
                "utf-8"
            ), f"{where}: docs/{written.name} is not what this command writes: rerun it"
        return
    if rest[:1] == ["-m"]:
        module, args = rest[1], rest[2:]
        if module == "pip":
            assert args[:1] == ["install"], f"{where}: only `pip install` is known"
            extras = _extras()
            for a in args[1:]:
                if m := re.fullmatch(r"\.\[([\w,-]+)\]", a):
                    for extra in m.group(1).split(","):
                        assert extra in extras, f"{where}: pyproject.toml has no extra [{extra}]"
            return
        if module == "pytest":
            for a in args:
                if not a.startswith("-") and re.match(r"(tests|benchmarks)\b", a):
                    path = a.split("::")[0]
                    assert (ROOT / path).exists(), f"{where}: {path} does not exist"
            return
        spec = importlib.util.find_spec(module)
        assert spec is not None, f"{where}: no module {module}"
        if run and ("--help" in args or (module, *args) in SAFE_COMMANDS):
            _run(argv, ROOT, where)
            return
        origin = Path(spec.origin or "")
        if module == "fasttape" or origin.name == "__init__.py":
            origin = origin.with_name("__main__.py")
        if _uses_argparse(origin):
            _parse_only("-m", module, args, where)
        return
    script = ROOT / rest[0]
    assert script.is_file(), f"{where}: {rest[0]} does not exist"
    if run and "--help" in rest[1:]:
        _run(argv, ROOT, where)
    elif _uses_argparse(script):
        _parse_only("path", str(script), rest[1:], where)


def _extras() -> set[str]:
    """The extras of pyproject.toml's [project.optional-dependencies] (no tomllib on 3.10)."""
    text = (ROOT / "pyproject.toml").read_text("utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


# Commands run as written (fast, and they write nothing).
SAFE_COMMANDS = {("fasttape.kernels.codegen", "--check")}


# ---------------------------------------------------------------- the tests


def _page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _page_params() -> list:
    return [
        pytest.param(p, id=_page_id(p), marks=[pytest.mark.slow] * (_page_id(p) in SLOW_PAGES))
        for p in PAGES
    ]


@pytest.mark.parametrize("path", _page_params())
def test_page(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code block of one page runs (or parses) and prints what the page shows."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    check_page(path, tmp_path)


def check_page(path: Path, tmp_path: Path) -> None:
    """Run or check every block of a page in order (see the module docstring)."""
    ns: dict = {"__name__": "__doc__"}
    x64 = None
    if "jax" in sys.modules:  # a page may enable x64 globally: restore it afterwards
        x64 = sys.modules["jax"].config.jax_enable_x64
    try:
        for block in parse(path):
            if block.lang == "output" or skip_reason(block) is not None:
                continue
            if block.lang == "python":
                printed = run_python(block, ns)
                if block.output is not None:
                    expected = block.output.text
                    if not output_matches(expected, printed):
                        raise AssertionError(
                            f"{block.where}: printed output differs from the block at "
                            f"{block.output.where}\n--- shown\n{expected}--- printed\n{printed}"
                        )
            elif block.lang in SHELL:
                for argv in shell_commands(block):
                    check_command(argv, block.where, tmp_path)
            elif block.lang == "":
                raise AssertionError(
                    f"{block.where}: unlabelled code block that is not the output of a python "
                    "block: label it (```text, ```bash, ...)"
                )
            else:
                assert block.lang in SHOWN_ONLY, (
                    f"{block.where}: unknown block label {block.lang!r}; known: python, "
                    f"{', '.join(sorted(SHELL | SHOWN_ONLY))}"
                )
    finally:
        if x64 is not None or "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_enable_x64", bool(x64))


def _skipped() -> list:
    return [
        # A block left out for a missing optional module is an oracle skip: under CI
        # (conftest.py) it fails, since CI installs every extra the docs use.
        pytest.param(b, id=b.where, marks=[pytest.mark.oracle] * (b.skip is None))
        for p in PAGES
        for b in parse(p)
        if b.lang != "output" and skip_reason(b) is not None
    ]


@pytest.mark.parametrize("block", _skipped() or [pytest.param(None, id="none")])
def test_skipped_block(block: Block | None) -> None:
    """One reported skip per block the page runner leaves out, with its reason."""
    if block is not None:
        pytest.skip(f"{block.where}: {skip_reason(block)}")


# ---------------------------------------------------------------- the runner itself


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def test_output_comparison_and_ellipsis() -> None:
    assert output_matches("a\nb\n", "a  \nb\n\n")
    assert not output_matches("a\nb\n", "a\nc\n")
    assert output_matches("took ... s\n", "took 1.25 s\n")
    assert not output_matches("took ... s\nend\n", "took 1.25 s\n")
    assert output_matches("start\n...\nend\n", "start\nx\ny\nend\n")
    assert output_matches("start\n...\nend\n", "start\nend\n")


def test_parse_attaches_outputs_and_skip_reasons(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    text = (
        "```python\nprint(1)\n```\n\n```\n1\n```\n\n"
        "<!-- doc-test: skip (needs a GPU) -->\n```bash\nrun-on-gpu\n```\n"
        "```python\nx = 1\n```\nprose\n```text\nnot an output\n```\n"
    )
    blocks = parse(_page(tmp_path, text))
    assert [b.lang for b in blocks] == ["python", "output", "bash", "python", "text"]
    assert blocks[0].output is blocks[1] and blocks[3].output is None
    assert blocks[2].skip == "needs a GPU" and blocks[2].line == 10


def test_a_wrong_output_or_unlabelled_block_fails(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    check_page(_page(tmp_path, "```python\nprint(1 + 1)\n```\n\n```text\n2\n```\n"), tmp_path)
    with pytest.raises(AssertionError, match=r"page.md:1: printed output differs .* page.md:5"):
        check_page(_page(tmp_path, "```python\nprint(1 + 2)\n```\n\n```text\n2\n```\n"),
                   tmp_path)
    with pytest.raises(AssertionError, match=r"page\.md:3: unlabelled code block"):
        check_page(_page(tmp_path, "text\n\n```\npip install .\n```\n"), tmp_path)
    with pytest.raises(ZeroDivisionError):
        check_page(_page(tmp_path, "```python\n1 / 0\n```\n"), tmp_path)


def test_only_missing_optional_modules_skip_a_block(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import numpy\nimport nosuch_extra\nfrom nosuch_other import x\n"
    assert missing_imports(code) == []
    monkeypatch.setattr(sys.modules[__name__], "OPTIONAL_MODULES", {"nosuch_extra", "numpy"})
    assert missing_imports(code) == ["nosuch_extra"]
    block = Block("page.md", 1, "python", code)
    assert skip_reason(block) == "needs nosuch_extra (not installed)"


def test_unshown_result_fails() -> None:
    block = Block("page.md", 3, "python", "x = 2\nx + 1  # 3\n")
    with pytest.raises(AssertionError, match=r"page.md:5: this expression's result \(3\)"):
        run_python(block, {})
    assert run_python(Block("page.md", 1, "python", "print(2)\n"), {}) == "2\n"


def test_shell_commands_and_flag_checks(tmp_path: Path) -> None:
    import fasttape.__main__  # noqa: F401  (imported already, as other tests do)

    block = Block("p.md", 1, "bash", "# c\npip install . && X=1 fasttape bench --quick  # go\n")
    assert shell_commands(block) == [["pip", "install", "."], ["fasttape", "bench", "--quick"]]
    check_command(["fasttape", "bench", "--quick"], "p.md:1", tmp_path)
    check_command(["fasttape", "bench", "--nodes", "1e5,1e6", "--peers", "none"], "p", tmp_path)
    with pytest.raises(AssertionError, match="unrecognized arguments: --quikc"):
        check_command(["fasttape", "bench", "--quikc"], "p.md:1", tmp_path)
    with pytest.raises(AssertionError, match="invalid choice"):
        check_command(["fasttape", "dmeo"], "p.md:1", tmp_path)
    with pytest.raises(AssertionError, match="invalid int value: 'x'"):
        check_command(["python", "benchmarks/report.py", "--nodes", "x"], "p.md:1", tmp_path)
    with pytest.raises(AssertionError, match="no extra"):
        check_command(["pip", "install", ".[nosuchextra]"], "p.md:1", tmp_path)
    with pytest.raises(AssertionError, match="does not know"):
        check_command(["make", "docs"], "p.md:1", tmp_path)
    console = Block("p.md", 1, "console", "$ fasttape demo\nusage: printed, not a command\n")
    assert shell_commands(console) == [["fasttape", "demo"]]
    redirect = Block("p.md", 1, "bash", "python -m fasttape.embed.dot > docs/x.dot\n")
    assert shell_commands(redirect) == [["python", "-m", "fasttape.embed.dot"]]
    page = _page(tmp_path, "Run `fasttape bench --quick` or `python benchmarks/nosuch.py`.\n")
    assert inline_commands(page) == [["fasttape", "bench", "--quick"],
                                     ["python", "benchmarks/nosuch.py"]]
    with pytest.raises(AssertionError, match=r"nosuch\.py does not exist"):
        check_command(inline_commands(page)[1], "p.md", tmp_path, run=False)


# ---------------------------------------------------------------- names, paths and links in prose

_INLINE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The page without its fenced blocks (those are run, not read)."""
    return re.sub(r"^```.*?^```", "", path.read_text("utf-8"), flags=re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a page: lower case, punctuation dropped, spaces to '-'."""
    heads = re.findall(r"^#+\s+(.*)$", _prose(path), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _resolves(dotted: str) -> bool | None:
    """Whether ``ft.x`` / ``fasttape.a.b`` names something; None if it needs a missing extra."""
    parts = ["fasttape", *dotted.split(".")[1:]]
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("fasttape"):
                return None
            continue
        break
    else:
        return False
    for name in parts[i:]:
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def stale_references(path: Path) -> list[str]:
    """What the prose of a page names that does not exist (see the test below)."""
    import fasttape

    text, stale = _prose(path), []
    for code in _INLINE.findall(text):
        for dotted in re.findall(r"\b(?:ft|fasttape)(?:\.[A-Za-z_]\w*)+", code):
            if _resolves(dotted) is False:
                stale.append(dotted)
        for obj, attr in re.findall(r"(?<![\w./])(tape|graph)\.([A-Za-z_]\w*)", code):
            if not hasattr(fasttape.Tape if obj == "tape" else fasttape.Graph, attr):
                stale.append(f"{obj}.{attr}")
        for ref in re.findall(r"(?<![\w/.])((?:fasttape|tests|benchmarks|docs)/[\w./-]*\w)", code):
            if not any(c in code for c in "*<>{}") and not (ROOT / ref).exists():
                stale.append(ref)
    for link in _LINK.findall(text):
        if re.match(r"\w+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            stale.append(link)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            stale.append(link)
    return stale


@pytest.mark.parametrize("path", [pytest.param(p, id=_page_id(p)) for p in PAGES])
def test_names_paths_and_links_in_prose_exist(path: Path) -> None:
    """`ft.x`, `fasttape.a.b`, `tape.m`, `graph.m`, repository paths and links all exist."""
    stale = stale_references(path)
    assert not stale, f"{_page_id(path)} names things that do not exist (any more): {stale}"


def inline_commands(path: Path) -> list[list[str]]:
    """Commands quoted inline in the prose (`fasttape bench --quick`, `python benchmarks/...`)."""
    found = []
    for code in _INLINE.findall(_prose(path)):
        if re.match(r"(fasttape|python|pip) ", code) and not re.search(r"[{}<]", code):
            found += [c for c in shell_commands(Block("", 0, "bash", code + "\n")) if len(c) > 1]
    return found


@pytest.mark.parametrize("path", [pytest.param(p, id=_page_id(p)) for p in PAGES])
def test_commands_in_prose_parse(path: Path, tmp_path: Path) -> None:
    """Every command quoted inline names a program that exists and accepts its options.

    Nothing runs: the program is stopped right after its ``parse_args`` (``_parse_only``).
    """
    for argv in inline_commands(path):
        check_command(argv, f"{_page_id(path)} (`{shlex.join(argv)}`)", tmp_path, run=False)


def test_stale_references_are_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## The `where` rule\n")
    page = _page(tmp_path, (
        "# Page\n\n`ft.compile`, `fasttape.ops.OP_BY_NAME`, `tape.value`, `fasttape/tape.py`,\n"
        "[ok](other.md#the-where-rule), [ok](#page), `ft.nosuch`, `tape.nosuch`,\n"
        "`fasttape/nosuch.py`, [gone](gone.md), [bad anchor](other.md#nosuch)\n"
        "```python\nft.not_checked_here\n```\n"
    ))
    assert stale_references(page) == [
        "ft.nosuch", "tape.nosuch", "fasttape/nosuch.py", "gone.md", "other.md#nosuch"
    ]


# ---------------------------------------------------------------- generated docs


def test_ops_md_matches_op_table() -> None:
    from fasttape.opsdoc import ops_markdown

    assert (ROOT / "docs" / "ops.md").read_text(encoding="utf-8") == ops_markdown(), (
        "docs/ops.md is out of date with fasttape/ops.py; regenerate it from the repository "
        'root with: python -c "from fasttape.opsdoc import ops_markdown; '
        "open('docs/ops.md','w').write(ops_markdown())\""
    )


def test_derivatives_md_contains_the_generated_table() -> None:
    from fasttape.opsdoc import derivatives_markdown

    text = (ROOT / "docs" / "derivatives.md").read_text(encoding="utf-8")
    assert derivatives_markdown().strip() in text, (
        "docs/derivatives.md's table is stale: paste fasttape.opsdoc.derivatives_markdown() in"
    )


def test_derivatives_md_contains_the_second_derivative_table() -> None:
    from fasttape.opsdoc import second_derivatives_markdown

    text = (ROOT / "docs" / "derivatives.md").read_text(encoding="utf-8")
    assert second_derivatives_markdown().strip() in text, (
        "docs/derivatives.md's second-derivative table is stale: paste "
        "fasttape.opsdoc.second_derivatives_markdown() in"
    )


# ---------------------------------------------------------------- docstring examples


def _doctest_modules() -> list[str]:
    """Modules of the fasttape package whose source has a ``>>>`` example.

    Found by reading the sources, not by importing every module: importing is left to the
    test, so a module whose example needs an optional extra is skipped, not an import error.
    """
    names = []
    for path in sorted((ROOT / "fasttape").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("module", _doctest_modules())
def test_docstring_examples(module: str) -> None:
    """The ``Examples`` sections of one module run and print what they show (ELLIPSIS on)."""
    text = Path(importlib.util.find_spec(module).origin).read_text("utf-8")
    examples = "\n".join(ln.strip()[4:] for ln in text.splitlines() if ln.strip()[:4] == ">>> ")
    # An optional extra the module imports (lazily, too) and its examples use.
    if missing := [m for m in missing_imports(text) if re.search(rf"\b{m}\b", examples)]:
        pytest.skip(f"{module}'s examples need {', '.join(missing)} (not installed)")
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(mod, module) if t.examples]
    assert tests, f"{module} has '>>>' in its source but doctest finds no example"
    out = io.StringIO()
    for t in tests:
        runner.run(t, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, out.getvalue()
