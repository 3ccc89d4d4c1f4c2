"""Generate the slot-reuse sweep kernels (``_reuse_generated.py``) from the op table.

Discovered by ``python -m fasttape.kernels.codegen``.  The sweeps are the core sweeps of
``_generated.py`` (taken from :mod:`fasttape.kernels.codegen`, so formulas, dispatch order and
zero rules can never drift apart) with one change: instruction ``i`` writes its value, and in
the reverse sweep reads its adjoint, at slot ``dest[i]`` of a work vector instead of at
``n_pre + i``, and ``args`` / ``outputs`` hold work-vector slots.  The plan that provides
``dest`` is computed by :mod:`fasttape.passes.reuse`; see there why the reverse sweep stays
exact.
"""

from __future__ import annotations

from pathlib import Path

from fasttape import ops as _ops
from fasttape.kernels import codegen

TARGET = Path(__file__).with_name("_reuse_generated.py")


def _replace(lines: list[str], old: str, new: str) -> list[str]:
    """Replace the one line equal to ``old``; fail loudly if codegen's text changed."""
    hits = [n for n, line in enumerate(lines) if line == old]
    if len(hits) != 1:
        raise RuntimeError(f"gen_reuse: expected one line {old!r} in codegen's output")
    out = list(lines)
    out[hits[0]] = new
    return out


def _forward(partials: bool) -> list[str]:
    lines = codegen._forward(partials)
    if partials:
        lines = _replace(lines, "def forward_partials(ops, args, consts, xin, vals, parts):",
                         "def forward_partials_plan(ops, args, dest, consts, xin, vals, parts):")
    else:
        lines = _replace(lines, "def forward_values(ops, args, consts, xin, vals):",
                         "def forward_values_plan(ops, args, dest, consts, xin, vals):")
    lines = _replace(lines, "    n_pre = n_in + consts.shape[0]", "")
    return _replace(lines, "        vals[n_pre + i] = f", "        vals[dest[i]] = f")


def _reverse() -> list[str]:
    lines = codegen._reverse_stored(prefetch=False)
    lines = _replace(lines, "def reverse_stored(ops, args, parts, adj, n_pre):",
                     "def reverse_stored_plan(ops, args, dest, parts, adj):")
    return _replace(lines, "        s = n_pre + i", "        s = dest[i]")


_DRIVERS = '''
@_kernel
def value_plan_kernel(ops, args, dest, consts, outputs, xin, vals, out):
    """Evaluate the outputs at ``xin`` into ``out`` with a slot-reuse plan.

    ``args``, ``dest`` and ``outputs`` are the plan's (work-vector slots); ``vals`` has the
    plan's ``n_work`` entries.
    """
    forward_values_plan(ops, args, dest, consts, xin, vals)
    for j in range(outputs.shape[0]):
        out[j] = vals[outputs[j]]


@_kernel
def value_and_grad_plan_kernel(ops, args, dest, consts, outputs, which, xin, vals, parts, adj,
                               grad):
    """Value of output ``which`` and its gradient, stored partials, with a slot-reuse plan.

    ``vals`` and ``adj`` have the plan's ``n_work`` entries; ``adj`` must be all zeros on entry
    (it is again on exit); ``parts`` has ``len(args)`` entries.  Returns the output's value.
    """
    forward_partials_plan(ops, args, dest, consts, xin, vals, parts)
    n_in = xin.shape[0]
    n_pre = n_in + consts.shape[0]
    adj[outputs[which]] = 1.0
    reverse_stored_plan(ops, args, dest, parts, adj)
    for i in range(n_in):
        grad[i] = adj[i]
    for i in range(n_pre):
        adj[i] = 0.0
    return vals[outputs[which]]
'''


def generate() -> str:
    """Return the full text of ``_reuse_generated.py`` for the current table."""
    arity = ", ".join(str(o.arity) for o in _ops.OPS)
    ndiff = ", ".join(str(o.ndiff) for o in _ops.OPS)
    lines = codegen.header(
        "Slot-reuse sweep kernels generated from the op table (see "
        "fasttape/kernels/gen_reuse.py)."
    )
    lines.insert(0, "# ruff: noqa")  # generated text: long formula lines, unused helpers
    lines += [
        f"_ARITY = np.array([{arity}], dtype=np.int64)",
        f"_NDIFF = np.array([{ndiff}], dtype=np.int64)",
        "",
        "# --- scalar helpers, copied from fasttape/kernels/scalar.py ---",
    ]
    lines += codegen.helper_lines()
    lines += ["", "", "# --- sweeps over a slot-reuse plan ---", "", ""]
    lines += _forward(False)
    lines += _forward(True)
    lines += _reverse()
    lines += _DRIVERS.strip("\n").splitlines()
    return "\n".join(lines) + "\n"
