"""Generate the sweep kernels from the op table.

Run ``python -m fasttape.kernels.codegen`` after editing :mod:`fasttape.ops` or
:mod:`fasttape.kernels.scalar`; it rewrites ``fasttape/kernels/_generated.py``.  A test
(``tests/test_codegen.py``) regenerates the text in memory and fails if the file on disk is
stale, so the table and the kernels cannot drift apart.

Why a checked-in file instead of ``exec`` at import: Numba's on-disk cache is keyed on the
source file, so a real file gives correct cache invalidation (a formula change changes the file)
and readable tracebacks; and reviewers see the kernel diff next to the table diff.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path

from fasttape import ops as _ops
from fasttape.kernels import scalar as _scalar

GENERATED_PATH = Path(__file__).with_name("_generated.py")

_ARG_NAMES = ("x", "y", "z")


def _load_args(spec: _ops.OpSpec, indent: str, first_loaded: bool = False) -> list[str]:
    start = 1 if first_loaded else 0
    return [f"{indent}{_ARG_NAMES[j]} = vals[args[k + {j}]]" for j in range(start, spec.arity)]


def _chain(lines: list[str], specs, body) -> None:
    """Append an if/elif chain over op codes; ``body(spec, indent)`` gives each branch."""
    for n, spec in enumerate(specs):
        kw = "if" if n == 0 else "elif"
        lines.append(f"        {kw} op == {spec.code}:  # {spec.name}")
        lines.extend(body(spec, "            "))


#: How many argument positions ahead the single-point sweeps prefetch the slots they will read
#: (forward: ``vals``) or update (reverse: ``adj``); fasttape/kernels/memhint.py.  About 16
#: instructions.  On random-uniform at 1e6 instructions, 16 and 64 gave the same gain and
#: 256 a little less (docs/tape-format.md, "Memory access").
PREFETCH_ARGS = 32

#: Slots from which the single-point reverse sweeps prefetch: below it the adjoints (8 bytes
#: each) fit in L2 and the prefetches only cost instructions (random-local at 1e3: 2-4%).
PREFETCH_MIN_SLOTS = 1 << 16


def _prefetch_args(array: str, sign: str, fn: str = "prefetch", ind: str = "        ") -> list[str]:
    # The slots of the argument PREFETCH_ARGS positions further along, and of the next one:
    # about one instruction's worth per instruction (the mean arity is near 2).  ``far`` is
    # set once per call (a predictable branch where it is false).
    cond = "q + 1 < args.shape[0]" if sign == "+" else "q >= 0"
    return [
        f"{ind}q = k {sign} {PREFETCH_ARGS}",
        f"{ind}if far and {cond}:",
        f"{ind}    {fn}({array}, args[q])",
        f"{ind}    {fn}({array}, args[q + 1])",
    ]


def _forward(partials: bool) -> list[str]:
    name = "forward_partials" if partials else "forward_values"
    sig = "ops, args, consts, xin, vals, parts" if partials else "ops, args, consts, xin, vals"
    what = (
        "values and the partial derivative of every differentiable edge (``parts[e]`` "
        "parallel to ``args[e]``)"
        if partials
        else "the value of every slot"
    )
    lines = [
        "@_kernel",
        f"def {name}({sig}):",
        f'    """Forward sweep: {what}.',
        "",
        "    Loads ``xin`` and ``consts`` into the first slots of ``vals``, then evaluates every",
        "    instruction in order.  Arrays follow docs/tape-format.md; no bounds checks: the",
        "    caller validated the tape.",
        '    """',
        "    n_in = xin.shape[0]",
        "    n_pre = n_in + consts.shape[0]",
        "    for i in range(n_in):",
        "        vals[i] = xin[i]",
        "    for i in range(consts.shape[0]):",
        "        vals[n_in + i] = consts[i]",
        "    k = 0",
        "    for i in range(ops.shape[0]):",
        "        op = ops[i]",
        "        # Every op has a first argument: loading it before the dispatch lets the load",
        "        # overlap the indirect branch (value: 1.16x -> 1.10x the baseline, report.py).",
        "        x = vals[args[k]]",
    ]

    def body(spec: _ops.OpSpec, ind: str) -> list[str]:
        out = _load_args(spec, ind, first_loaded=True)
        out.append(f"{ind}f = {spec.forward}")
        if partials:
            for j, d in enumerate(spec.partials):
                if d not in UNIT:  # +-1: the reverse sweeps know it (unit_partials)
                    out.append(f"{ind}parts[k + {j}] = {d}")
        out.append(f"{ind}k += {spec.arity}")
        return out

    _chain(lines, _ops.OPS, body)
    lines += [
        "        else:",
        "            f = np.nan  # unreachable for a validated tape",
        "        vals[n_pre + i] = f",
        "",
        "",
    ]
    return lines


def _reverse_head(prefetch: bool = True) -> list[str]:
    # ``prefetch=False`` for the slot-reuse sweeps (gen_reuse.py): their work vector is small
    # and mostly local, and the prefetches cost 3-5% there (lennard-jones, rosenbrock, 1e6).
    return [
        *([f"    far = adj.shape[0] >= {PREFETCH_MIN_SLOTS}"] if prefetch else []),
        "    k = args.shape[0]",
        "    for i in range(ops.shape[0] - 1, -1, -1):",
        "        op = ops[i]",
        "        k -= _ARITY[op]",
        "        s = n_pre + i",
        *(_prefetch_args("adj", "-", "prefetch_write") if prefetch else []),
        "        g = adj[s]",
        "        adj[s] = 0.0  # read-then-zero: the buffer is clean for the next call",
        "        if g == 0.0:",
        "            continue  # a zero adjoint contributes nothing (see docs/derivatives.md)",
    ]


UNIT = ("1.0", "-1.0")


def unit_partials(spec: _ops.OpSpec) -> bool:
    """Whether ``spec`` has a partial that is the literal 1.0 or -1.0 (add, sub, neg, fmac's
    second argument, ...).

    The stored-mode sweeps never store such a partial, and the reverse sweeps add or subtract
    the adjoint itself instead of reading the partial and multiplying: bitwise the same (a
    product by +-1 is exact), one store, one load and one product fewer per edge, and no
    microcode assist when the adjoint is subnormal (x86 charges about 150 cycles for a product
    with a subnormal operand, none for a sum).  Such ops get their own branch in the reverse
    sweeps; the other edges of the op go through ``_acc`` as usual.
    """
    return any(d in UNIT for d in spec.partials)


def _unit_reverse() -> list[str]:
    lines: list[str] = []
    for spec in _ops.OPS:
        if unit_partials(spec):
            lines.append(f"        {'elif' if lines else 'if'} op == {spec.code}:  # {spec.name}")
            for j, d in enumerate(spec.partials):
                if d in UNIT:
                    lines.append(f"            adj[args[k + {j}]] {'+' if d == '1.0' else '-'}= g")
                else:
                    lines.append(f"            _acc(adj, args[k + {j}], g, parts[k + {j}])")
            lines.append("            continue")
    return lines


def _reverse_stored(prefetch: bool = True) -> list[str]:
    return [
        "@_kernel",
        "def reverse_stored(ops, args, parts, adj, n_pre):",
        '    """Reverse sweep over partials stored by :func:`forward_partials`.',
        "",
        "    Each differentiable edge adds ``adjoint * partial`` to its parent; ops whose",
        "    partials are the constants +-1 add or subtract the adjoint without reading them.",
        "    ``adj`` must hold the seed on entry and zeros elsewhere; on exit the instruction",
        "    slots are zero again and slots below ``n_pre`` hold the input and constant adjoints.",
        '    """',
        *_reverse_head(prefetch),
        *_unit_reverse(),
        "        nd = _NDIFF[op]",
        "        if nd >= 1:",
        "            _acc(adj, args[k], g, parts[k])",
        "            if nd >= 2:",
        "                _acc(adj, args[k + 1], g, parts[k + 1])",
        "",
        "",
    ]


def _reverse_lean() -> list[str]:
    lines = [
        "@_kernel",
        "def reverse_lean(ops, args, vals, adj, n_pre):",
        '    """Reverse sweep that recomputes each partial from the stored values.',
        "",
        "    Needs no per-edge memory (the lean mode); same contract as :func:`reverse_stored`.",
        '    """',
        *_reverse_head(),
        *_prefetch_args("vals", "-"),  # the partials read the arguments' values too
    ]

    def body(spec: _ops.OpSpec, ind: str) -> list[str]:
        out = _load_args(spec, ind)
        uses_f = any("f" in _tokens(d) for d in spec.partials)
        if uses_f:
            out.append(f"{ind}f = vals[s]")
        for j, d in enumerate(spec.partials):
            out.append(f"{ind}_acc(adj, args[k + {j}], g, {d})")
        return out

    _chain(lines, [s for s in _ops.OPS if s.ndiff], body)
    lines += ["", ""]
    return lines


def _tokens(expr: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", expr))


_DRIVERS = '''
@_kernel
def value_kernel(ops, args, consts, outputs, xin, vals, out):
    """Evaluate the outputs at ``xin`` into ``out`` (shape ``(n_outputs,)``)."""
    forward_values(ops, args, consts, xin, vals)
    for j in range(outputs.shape[0]):
        out[j] = vals[outputs[j]]


@_kernel
def _collect_grad(adj, n_in, n_pre, grad):
    # The inputs' adjoints are the gradient; zero every pre-slot so adj is clean for next time.
    for i in range(n_in):
        grad[i] = adj[i]
    for i in range(n_pre):
        adj[i] = 0.0


@_kernel
def value_and_grad_kernel(ops, args, consts, outputs, which, xin, vals, parts, adj, grad):
    """Value of output ``which`` and its gradient into ``grad``; stores partials (fast mode).

    ``adj`` must be all zeros on entry (it is again on exit); ``parts`` has ``len(args)``
    entries.  Returns the output's value.
    """
    forward_partials(ops, args, consts, xin, vals, parts)
    n_pre = xin.shape[0] + consts.shape[0]
    adj[outputs[which]] = 1.0
    reverse_stored(ops, args, parts, adj, n_pre)
    _collect_grad(adj, xin.shape[0], n_pre, grad)
    return vals[outputs[which]]


@_kernel
def value_and_grad_lean_kernel(ops, args, consts, outputs, which, xin, vals, adj, grad):
    """As :func:`value_and_grad_kernel` but recomputes partials (lean mode, no ``parts``)."""
    forward_values(ops, args, consts, xin, vals)
    n_pre = xin.shape[0] + consts.shape[0]
    adj[outputs[which]] = 1.0
    reverse_lean(ops, args, vals, adj, n_pre)
    _collect_grad(adj, xin.shape[0], n_pre, grad)
    return vals[outputs[which]]
'''


def table_digest() -> str:
    """Hash of the table's formulas and the scalar helpers, written into every generated file.

    Numba's cache is keyed on each file's own source, so a generated file whose kernels call
    the helpers must change text whenever they change: the digest in its header does that.
    """
    table = ";".join(f"{o.name}|{o.arity}|{o.forward}|{o.partials}" for o in _ops.OPS)
    return hashlib.sha256((table + helpers_source()).encode()).hexdigest()[:16]


def helpers_source() -> str:
    """Source of :mod:`fasttape.kernels.scalar` without its module docstring."""
    return inspect.getsource(_scalar).split('"""', 2)[2]


def helper_lines() -> list[str]:
    """The scalar helpers and ``_acc`` as ``@_kernel`` functions, for any generated module.

    Copied rather than imported so that each generated file's text (and so its Numba cache)
    changes when a helper changes.
    """
    out = []
    for line in helpers_source().strip("\n").splitlines():
        if line.startswith("import "):
            continue
        if line.startswith("def "):
            out.append("@_kernel")
        out.append(line)
    out += [
        "",
        "",
        "@_kernel",
        "def _acc(adj, p, g, d):",
        "    # An exactly-zero partial is a structural zero: never form 0 * inf = NaN.  A unit",
        "    # partial (add, sub, a selected max) adds g itself: g * 1.0 and g * -1.0 are exact,",
        "    # and skipping the product avoids the x86 microcode assist that multiplying a",
        "    # subnormal adjoint costs (about 150 cycles; additions have no such penalty).",
        "    if d == 1.0:",
        "        adj[p] += g",
        "    elif d == -1.0:",
        "        adj[p] -= g",
        "    elif d != 0.0:",
        "        adj[p] += g * d",
    ]
    return out


def core_digest() -> str:
    """Digest of ``_generated.py``'s text as generated now, for the headers of generated
    modules whose kernels call (and so inline) the core sweeps: their Numba caches must
    change with it, and the table digest alone misses a change to the sweeps' templates."""
    return hashlib.sha256(generate().encode()).hexdigest()[:16]


def source_digest(name: str) -> str:
    """Digest of a hand-written module of this folder (``fpenv.py``, ``memhint.py``) whose
    intrinsics a generated module calls, for that module's header (same reason)."""
    return hashlib.sha256((Path(__file__).parent / name).read_bytes()).hexdigest()[:16]


def with_memhint(lines: list[str]) -> list[str]:
    """A generated module's header plus the import of the prefetch intrinsics and, as the
    fourth line, the digest of ``memhint.py`` that keeps the module's Numba cache in step."""
    return [*lines[:3], f"# memhint.py sha256: {source_digest('memhint.py')}", *lines[3:],
            "from fasttape.kernels.memhint import prefetch, prefetch_write  # noqa: E402",
            ""]


def header(module_doc: str) -> list[str]:
    """Opening lines shared by every generated module: banner, digest, imports, ``_kernel``."""
    return [
        "# GENERATED by `python -m fasttape.kernels.codegen` from fasttape/ops.py and",
        "# fasttape/kernels/scalar.py -- do not edit by hand.",
        f"# table+helpers sha256: {table_digest()}",
        f'"""{module_doc}"""',
        "",
        "import math  # noqa: F401  (used by the formulas)",
        "",
        "import numba  # noqa: F401  (numba.prange in the batch drivers)",
        "import numpy as np",
        "",
        "# fasttape's one JIT wrapper (fasttape/kernels/jit.py): options and cache in one place.",
        "from fasttape.kernels.jit import kernel as _kernel",
        "",
    ]


def generate() -> str:
    """Return the full text of ``_generated.py`` for the current table."""
    too_many = [o.name for o in _ops.OPS if o.ndiff > 2]
    if too_many:  # reverse_stored unrolls at most two differentiable edges per instruction
        raise ValueError(f"ops with more than 2 differentiable arguments: {too_many}")
    arity = ", ".join(str(o.arity) for o in _ops.OPS)
    ndiff = ", ".join(str(o.ndiff) for o in _ops.OPS)
    lines = header("Sweep kernels generated from the op table (see fasttape/kernels/codegen.py).")
    lines = with_memhint(lines)
    lines += [
        f"_ARITY = np.array([{arity}], dtype=np.int64)",
        f"_NDIFF = np.array([{ndiff}], dtype=np.int64)",
        "",
        "# --- scalar helpers, copied from fasttape/kernels/scalar.py ---",
    ]
    lines += helper_lines()
    lines += [
        "",
        "",
        "# --- sweeps ---",
        "",
        "",
    ]
    lines += _forward(False)
    lines += _forward(True)
    lines += _reverse_stored()
    lines += _reverse_lean()
    lines += _DRIVERS.strip("\n").splitlines()
    return "\n".join(lines) + "\n"


def targets() -> list[tuple[Path, Callable[[], str]]]:
    """Every generated file and the function that writes its text.

    ``_generated.py`` (the core sweeps) comes from this module; each further kernel family
    lives in its own generator module ``fasttape/kernels/gen_<name>.py`` defining ``TARGET``
    (the output path) and ``generate()``.
    """
    out: list[tuple[Path, Callable[[], str]]] = [(GENERATED_PATH, generate)]
    for path in sorted(Path(__file__).parent.glob("gen_*.py")):
        mod = importlib.import_module(f"fasttape.kernels.{path.stem}")
        out.append((Path(mod.TARGET), mod.generate))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, verify) every generated kernel file."""
    argv = sys.argv[1:] if argv is None else argv
    status = 0
    for path, gen in targets():
        text = gen()
        if "--check" in argv:
            fresh = path.exists() and path.read_text() == text
            print(f"{path.name}: up to date" if fresh else f"{path} is stale: run codegen")
            status |= 0 if fresh else 1
        else:
            path.write_text(text)
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
