"""The generated kernels against another revision's, timed in turn in one process.

    python benchmarks/bench_ab_kernels.py --rev HEAD~1
    python benchmarks/bench_ab_kernels.py --rev 760adaf \
        --cases batch:autograd-west,single:random-uniform:1e6 --repeat 9

For a change to the kernels (a sweep module, codegen.py, memhint.py, ...): the kernels of
``--rev`` are written to a temporary folder and imported beside the work tree's, and both are
run on the same tape, buffers and points, old and new alternating (the order swapped every
round), so a shared machine's drift reaches both.  A revision from before the kernels were
ordinary modules contributes its generated files (``_generated.py``, ...); a later one its
``fasttape/kernels/`` folder, imported as the package ``ab_old_kernels``.  The op table must
be the same in both (the tape's op codes must mean the same thing); a table change is refused.

Cases, comma-separated:

``batch:<family>[:<nodes>]``
    ``value_and_grad`` of ``--points`` points through the parallel batch driver on
    ``--threads`` threads, IEEE and with subnormals flushed.  ``batch:autograd-west`` without
    a size is the published workload's graph (10k ops, 54,995 instructions).
``single:<family>:<nodes>``
    one-point ``value_and_grad``: the plain kernels, or the slot-reuse kernels when the tape
    has a plan (``fasttape.passes.reuse``).
``hvp:<family>:<nodes>``
    one-point value, gradient and 4 Hessian-vector products (the tangent kernels).
``vjp:<family>:<nodes>``
    one-point ``tape.vjp`` with one random weight per output, through the kernel it calls:
    ``vjp_driver``, or, in a revision without it, ``cotangent_driver`` with one direction.
``tensor:<family>:<size>``
    a tensor tape's ``value_and_grad`` kernel (``kernels/tensor.py``) on a ``-vec`` family of
    ``fasttape bench`` at that size (variables, atoms or samples); every product through
    the kernels' own loop, not BLAS.

Reported: best and median time per instruction (and per point for batches) of each side, the
ratio old / new of the medians (above 1: the work tree is faster), and whether both gave
bitwise the same values and gradients (they must: no template change may alter a result).
The first round also compiles the old kernels (Numba, about a minute for the batch file);
it is not timed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import fasttape as ft
from fasttape import batch as fb
from fasttape import ops as _ops
from fasttape.bench.cases import build_case
from fasttape.bench.cases import tensor_case as build_tensor_case
from fasttape.bench.families import WEST_INPUTS, autograd_west_fn, autograd_west_point
from fasttape.kernels import batch, sweep, tangent, tensor
from fasttape.kernels.dispatch import import_file

ROOT = Path(__file__).resolve().parent.parent
#: The modules compared, by role, in the work tree (the old layout's file for each role).
NEW = {"core": sweep, "batch": batch, "reuse": sweep, "tangent": tangent, "tensor": tensor}
OLD_FILES = {"core": "_generated.py", "batch": "_batch_generated.py",
             "reuse": "_reuse_generated.py", "tangent": "_tangent_generated.py"}
NEW_MODULES = {"core": "sweep", "batch": "batch", "reuse": "sweep", "tangent": "tangent",
               "tensor": "tensor"}


def _show(rev: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True,
                          text=True)
    return None if done.returncode else done.stdout


def load_revision(rev: str, folder: Path) -> dict[str, ModuleType]:
    """Import ``rev``'s kernels from ``folder`` under names of their own, by role."""
    table = _show(rev, "fasttape/ops.py")
    if table is None:
        raise SystemExit(f"bench_ab_kernels: cannot read fasttape/ops.py at {rev!r}")
    (folder / "ab_old_ops.py").write_text(table)
    if import_file("ab_old_ops", folder / "ab_old_ops.py").table_hash() != _ops.table_hash():
        raise SystemExit(f"bench_ab_kernels: the op table of {rev!r} differs from the work "
                         "tree's; this script compares kernels only")
    if _show(rev, "fasttape/kernels/_generated.py") is not None:  # the generated layout
        mods = {}
        for key, name in OLD_FILES.items():
            path = folder / f"ab_old_{name}"
            text = _show(rev, f"fasttape/kernels/{name}") or ""
            # The tangent file imports the core sweeps: the old ones (loaded first).
            path.write_text(text.replace("fasttape.kernels._generated", "ab_old__generated"))
            mods[key] = import_file(f"ab_old_{name[:-3]}", path)
        return mods
    listing = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:fasttape/kernels"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pkg = folder / "ab_old_kernels"
    pkg.mkdir()
    (folder / "ops.py").write_text(table)  # beside the package, where its jit.py stamps it
    for name in listing.split():
        if name.endswith(".py"):
            text = _show(rev, f"fasttape/kernels/{name}") or ""
            (pkg / name).write_text(text.replace("fasttape.kernels", "ab_old_kernels"))
    sys.path.insert(0, str(folder))
    return {key: importlib.import_module(f"ab_old_kernels.{name}")
            for key, name in NEW_MODULES.items() if f"{name}.py" in listing.split()}


def _west_tape() -> ft.Tape:
    return ft.compile(ft.trace(lambda x: autograd_west_fn(x, ft, 10_000), WEST_INPUTS))


def batch_case(family: str, nodes: float | None, points: int, threads: int
               ) -> tuple[str, ft.Tape, Callable[[ModuleType, bool], tuple[Any, ...]]]:
    """A batch value_and_grad runner ``run(batch_module, flush) -> (values, grads)``."""
    rng = np.random.default_rng(0)
    if family == "autograd-west" and nodes is None:
        tape = _west_tape()
        X = autograd_west_point() + rng.uniform(-0.5, 0.5, size=(points, WEST_INPUTS))
    else:
        case = build_case(family, int(nodes or 1e5))
        tape = case.tape
        X = case.x + rng.uniform(-0.01, 0.01, size=(points, tape.n_inputs))
    args, dest, outputs, rows = fb.layout(tape, True)
    _, w, c = fb.plan(tape, True, points, threads, None)
    vals, parts, adj = fb.buffers(tape, "stored", w, c, rows)

    def run(mod: ModuleType, flush: bool) -> tuple[Any, ...]:
        v, g = np.empty(points), np.empty((points, tape.n_inputs))
        fb.launch(w, mod.value_and_grad_parallel, tape.ops, args, dest, tape.consts, outputs,
                   0, X, vals, parts, adj, v, g, flush)
        return v, g

    return f"batch {family} ({len(tape.ops):,} instr., {points} points, {w} thr.)", tape, run


def single_case(family: str, nodes: float) -> tuple[str, ft.Tape, Callable[[dict], Any]]:
    """A one-point value_and_grad runner ``run(modules) -> (value, grad)``."""
    case = build_case(family, int(nodes))
    t, x = case.tape, case.x
    g = np.empty(t.n_inputs)
    plan = t.reuse_plan
    if plan is None or t.grad_mode != "stored":
        vals, parts, adj = np.empty(t.n_slots), np.empty(t.n_edges), np.zeros(t.n_slots)

        def run(mods: dict) -> Any:
            v = mods["core"].value_and_grad_kernel(t.ops, t.args, t.consts, t.outputs, 0, x,
                                                   vals, parts, adj, g)
            return v, g.copy()
        kind = "plain kernels"
    else:
        vals, parts, adj = np.empty(plan.n_work), np.empty(t.n_edges), np.zeros(plan.n_work)

        def run(mods: dict) -> Any:
            v = mods["reuse"].value_and_grad_plan_kernel(
                t.ops, plan.args, plan.dest, t.consts, plan.outputs, 0, x, vals, parts, adj, g)
            return v, g.copy()
        kind = "slot-reuse kernels"
    return f"single {family} ({len(t.ops):,} instr., {kind})", t, run


def hvp_case(family: str, nodes: float, k: int) -> tuple[str, ft.Tape, Callable[[dict], Any]]:
    """A one-point runner of ``k`` Hessian-vector products (``hvp_driver``, forward tangents
    then the forward-over-reverse sweep): ``run(modules) -> (value, gradient, products)``."""
    case = build_case(family, int(nodes))
    t, x = case.tape, case.x
    xdot = np.random.default_rng(0).standard_normal((t.n_inputs, k))
    vals, tan = np.empty(t.n_slots), np.empty((t.n_slots, k))
    adj, adjdot = np.zeros(t.n_slots), np.zeros((t.n_slots, k))
    grad, res = np.empty(t.n_inputs), np.empty((t.n_inputs, k))

    def run(mods: dict) -> Any:
        v = mods["tangent"].hvp_driver(t.ops, t.args, t.consts, t.outputs, 0, x, xdot, False,
                                       vals, tan, adj, adjdot, grad, res)
        return v, grad.copy(), res.copy()

    return f"hvp {family} ({len(t.ops):,} instr., {k} directions)", t, run


def vjp_case(family: str, nodes: float) -> tuple[str, ft.Tape, Callable[[dict], Any]]:
    """A one-point vector-Jacobian product runner ``run(modules) -> (values, vjp)``."""
    case = build_case(family, int(nodes))
    t, x = case.tape, case.x
    w = np.random.default_rng(0).standard_normal(t.n_outputs)
    vals, out, res = np.empty(t.n_slots), np.empty(t.n_outputs), np.empty(t.n_inputs)
    parts, adj, adj1 = np.empty(t.n_edges), np.zeros(t.n_slots), np.zeros((t.n_slots, 1))

    def run(mods: dict) -> Any:
        k = mods["tangent"]
        if hasattr(k, "vjp_driver"):
            k.vjp_driver(t.ops, t.args, t.consts, t.outputs, x, w, vals, parts, adj, out, res)
        else:
            k.cotangent_driver(t.ops, t.args, t.consts, t.outputs, x, w.reshape(-1, 1), False,
                               vals, adj1, out, res.reshape(-1, 1))
        return out.copy(), res.copy()

    return f"vjp {family} ({len(t.ops):,} instr., {t.n_outputs} outputs)", t, run


def tensor_case(family: str, size: float) -> tuple[str, int, Callable[[dict], Any]]:
    """A tensor tape's value_and_grad kernel ``run(modules) -> (values, adjoints)`` through
    the tape's public arrays, and its element count (the unit of the figures)."""
    tape = build_tensor_case(family, int(size), scalar=False).tape
    arrays, layout = tape.to_arrays(), tape.layout()
    vals, adj = arrays["init"].copy(), np.empty_like(arrays["init"])
    rng = np.random.default_rng(0)
    for off, shape in layout["inputs"]:
        n = int(np.prod(shape))
        vals[off:off + n] = rng.uniform(0.5, 1.5, n)
    args = (arrays["kinds"], arrays["ops"], arrays["at"], arrays["fields"])

    def run(mods: dict) -> Any:
        mods["tensor"].value_and_grad(*args, vals, adj, layout["output"][0])
        return vals.copy(), adj.copy()

    return f"tensor {family} (size {int(size):,}, {tape.n_slots:,} slots)", tape.n_slots, run


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return all(np.array_equal(np.asarray(p), np.asarray(q), equal_nan=True)
               for p, q in zip(a, b, strict=True))


def alternate(run_old: Callable[[], Any], run_new: Callable[[], Any], rounds: int, calls: int
              ) -> tuple[list[float], list[float], bool]:
    """Seconds per call of each side over ``rounds`` rounds (order swapped every round)."""
    same = _same(run_old(), run_new())  # also compiles / warms both
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(rounds):
        order = (("old", run_old), ("new", run_new))
        for name, fn in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times["old"], times["new"], same


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rev", required=True, help="git revision whose kernels are the baseline")
    p.add_argument("--cases", default="batch:autograd-west,single:random-uniform:1e6,"
                   "single:random-local:1e6,single:lennard-jones:1e6")
    p.add_argument("--repeat", type=int, default=7, help="rounds (each side once per round)")
    p.add_argument("--points", type=int, default=2000, help="points of a batch case")
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(ns.rev, Path(tmp))
        for spec in ns.cases.split(","):
            parts = spec.split(":")
            if parts[0] == "batch" and len(parts) in (2, 3):
                nodes = float(parts[2]) if len(parts) == 3 else None
                label, tape, run = batch_case(parts[1], nodes, ns.points, ns.threads)
                per = 1e9 / (len(tape.ops) * ns.points)
                for flush in (False, True):
                    a, b, same = alternate(lambda r=run, f=flush: r(old["batch"], f),
                                           lambda r=run, f=flush: r(NEW["batch"], f),
                                           ns.repeat, 1)
                    rows.append((label + (", flushed" if flush else ", IEEE"), "ns/instr/point",
                                 a, b, per, same))
            elif parts[0] in ("single", "hvp", "vjp") and len(parts) == 3:
                make = {"single": single_case, "vjp": vjp_case,
                        "hvp": lambda f, n: hvp_case(f, n, 4)}[parts[0]]
                label, tape, run1 = make(parts[1], float(parts[2]))
                calls = max(1, 4_000_000 // len(tape.ops))  # about 0.1 s per sample
                a, b, same = alternate(lambda r=run1: r(old), lambda r=run1: r(NEW),
                                       ns.repeat, calls)
                rows.append((label, "ns/instr", a, b, 1e9 / len(tape.ops), same))
            elif parts[0] == "tensor" and len(parts) == 3:
                if "tensor" not in old:
                    p.error(f"{ns.rev} has no tensor kernels")
                label, n_slots, run1 = tensor_case(parts[1], float(parts[2]))
                calls = max(1, 4_000_000 // n_slots)
                a, b, same = alternate(lambda r=run1: r(old), lambda r=run1: r(NEW),
                                       ns.repeat, calls)
                rows.append((label, "ns/slot", a, b, 1e9 / n_slots, same))
            else:
                p.error(f"bad case {spec!r}: batch:<family>[:<nodes>], single:<family>:<nodes>, "
                        "hvp:<family>:<nodes>, vjp:<family>:<nodes> or tensor:<family>:<size>")
    print(f"# kernels of {ns.rev} (old) vs the work tree (new); {ns.repeat} rounds, alternating")
    print("| case | unit | old best | new best | old median | new median | old/new | bitwise |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    ok = True
    for label, unit, a, b, scale, same in rows:
        ma, mb = float(np.median(a)) * scale, float(np.median(b)) * scale
        print(f"| {label} | {unit} | {min(a) * scale:.2f} | {min(b) * scale:.2f} | {ma:.2f} "
              f"| {mb:.2f} | {ma / mb:.2f}x | {'yes' if same else 'NO'} |")
        ok &= same
    return 0 if ok else 1


def bench_ab_kernels_smoke(capsys) -> None:
    """Against HEAD's kernels on a tiny scalar and a tiny tensor tape: bitwise the same (a
    smoke test: the timing is not checked).  Skipped outside a git checkout."""
    import pytest

    if _show("HEAD", "fasttape/ops.py") is None:
        pytest.skip("not a git checkout")
    assert main(["--rev", "HEAD", "--cases", "single:random-local:2000,tensor:rosenbrock-vec:100",
                 "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "| single random-local" in out and "| tensor rosenbrock-vec" in out
    assert "| NO |" not in out


if __name__ == "__main__":
    sys.exit(main())
