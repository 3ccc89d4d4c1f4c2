"""The measurements of ``fasttape bench``: every family, size and system, checked then timed.

For each family and size, fasttape builds the case (:func:`~fasttape.bench.cases.build_case`)
and is timed together with the hand-written baseline kernel
(:mod:`~fasttape.bench.baseline`), or for a tensor family together with the scalar tape of
the same function (row ``fasttape-scalar``); then each peer builds its own version, its value and
gradient are compared with fasttape's (:func:`agreement`), and only a peer that agrees is
timed.  A peer that is not installed, fails, disagrees, exceeds its size cap or the time limit
gets a row saying so, as does one that has no function for an op of the family
("unsupported"): no peer is dropped silently, and none crashes the run.

Each row is a dict (JSON-ready) with the keys of :data:`ROW_KEYS`.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fasttape.bench import baseline as bl
from fasttape.bench.cases import Case, build_case
from fasttape.bench.peers import PEERS, Peer
from fasttape.bench.peers.base import Unsupported
from fasttape.bench.timing import median_times, peak_rss_growth
from fasttape.kernels import fpenv

__all__ = [
    "FTZ_SYSTEM",
    "NATIVE_SYSTEM",
    "SCALAR_SYSTEM",
    "GRAD_RTOL",
    "VALUE_RTOL",
    "ROW_KEYS",
    "Settings",
    "agreement",
    "measure_case",
    "run_peer",
    "warm_up",
]

#: A peer agrees with fasttape when the largest gradient difference, relative to the largest
#: gradient entry, is at most this (orders of summation differ between systems, so bitwise
#: equality is not expected)...
GRAD_RTOL = 1e-6
#: ...and the value's relative difference is at most this.
VALUE_RTOL = 1e-9

#: A timed-out peer's thread is waited for up to this many times the time limit (see
#: :func:`run_peer`).
TIMEOUT_WAIT = 10

#: Safety factor on the linear extrapolation of a peer's setup time to the next size (setup
#: often grows faster than linearly).
SETUP_GROWTH = 1.5

#: The row of fasttape with ``flush_subnormals=True`` (x86 only).
FTZ_SYSTEM = "fasttape-ftz"

#: The row of the same tape compiled to machine code (``tape.native()``, docs/native.md), with
#: ``--native``: its compile time in ``compile_s``.
NATIVE_SYSTEM = "fasttape-native"

#: The row of a tensor family's scalar twin: fasttape's scalar tape of the same function.
SCALAR_SYSTEM = "fasttape-scalar"

#: The figures of one row.
ROW_KEYS = (
    "family", "n_nodes", "size", "system", "code", "status", "build_s", "compile_s",
    "first_call_s", "value_ns", "vg_ns", "grad_over_value", "vs_fasttape",
    "peak_bytes_per_node", "grad_rel_diff", "value_rel_diff",
)


@dataclass
class Settings:
    """What to run.

    Attributes
    ----------
    families : list of str
    nodes : list of int
        Target sizes in instructions.
    repeat : int
        Timed samples per figure (the median is reported).
    quick : bool
        Use the peers' quick size caps.
    peers : list of str or None
        Peer names to try; None: all.
    peer_timeout : float
        Seconds allowed per peer and case (build, compile, first call, check and timing).
    min_sample : float
        Shortest timed sample in seconds (a sample repeats the call as often as needed).
    stopped : dict
        (peer, family) -> why bigger sizes are skipped; filled as peers time out or fail.
    setup_s : dict
        (peer, family) -> (nodes, build + compile + first-call seconds) of the last size run,
        to skip sizes whose setup alone would exceed the time limit.
    native : bool
        Add the :data:`NATIVE_SYSTEM` row (scalar families).
    native_max : int
        Largest tape compiled for that row (compiling takes about 0.1 ms per instruction).
    """

    families: list[str]
    nodes: list[int]
    repeat: int = 5
    quick: bool = False
    peers: list[str] | None = None
    peer_timeout: float = 60.0
    min_sample: float = 0.02
    stopped: dict[tuple[str, str], str] = field(default_factory=dict)
    setup_s: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    native: bool = False
    native_max: int = 200_000


def agreement(
    v_ref: float, g_ref: np.ndarray, v: float, g: Any
) -> tuple[float, float, str | None]:
    """Compare a peer's value and gradient with fasttape's.

    Returns
    -------
    grad_rel, value_rel : float
        ``max |g - g_ref| / max |g_ref|`` (the denominator floored at the smallest normal
        float) and ``|v - v_ref| / max(|v_ref|, 1)``; inf when shapes differ or a NaN appears
        where fasttape has none.
    problem : str or None
        None when both are within :data:`GRAD_RTOL` and :data:`VALUE_RTOL`, else a short
        description ("gradient differs by 3.1e-02").
    """
    g = np.asarray(g, dtype=float).ravel()
    g_ref = np.asarray(g_ref, dtype=float).ravel()
    if g.shape != g_ref.shape:
        return math.inf, math.inf, f"gradient has {g.size} entries, expected {g_ref.size}"
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - g_ref)
        # Equal entries (the same infinity included) and NaN in both at the same place count
        # as agreement; NaN in one only does not (its diff stays NaN, hence inf below).
        diff[(g == g_ref) | (np.isnan(g) & np.isnan(g_ref))] = 0.0
        finite = np.abs(g_ref[np.isfinite(g_ref)])
        scale = max(float(np.max(finite, initial=0.0)), np.finfo(float).tiny)
        grad_rel = float(np.max(diff, initial=0.0)) / scale
        if np.isnan(grad_rel):
            grad_rel = math.inf
        value_rel = abs(float(v) - float(v_ref)) / max(abs(float(v_ref)), 1.0)
        if math.isnan(value_rel):
            value_rel = 0.0 if (math.isnan(v) and math.isnan(v_ref)) else math.inf
    if value_rel > VALUE_RTOL:
        return grad_rel, value_rel, f"value differs by {value_rel:.1e}"
    if grad_rel > GRAD_RTOL:
        return grad_rel, value_rel, f"gradient differs by {grad_rel:.1e}"
    return grad_rel, value_rel, None


def _row(case: Case, system: str, code: str, status: str, **figures: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(family=case.family, n_nodes=case.n_nodes, size=case.size, system=system,
               code=code, status=status)
    row.update(figures)
    return row


def warm_up(tensors: bool = False) -> float:
    """Load fasttape's and the baseline's kernels once (Numba cache), and with ``tensors``
    the tensor tapes' kernels; seconds it took."""
    t0 = time.perf_counter()
    if tensors:
        for family in ("rosenbrock-vec", "mlp-vec"):
            case = build_case(family, 50)
            case.tape.value(case.x)
            case.tape.value_and_grad(case.x)
    for family in ("random-local", "rosenbrock"):
        case = build_case(family, 50)
        case.tape.value(case.x)
        case.tape.value_and_grad(case.x)
        if bl.supports(case.tape.ops):
            bl.run_baseline(case.tape, case.x)
    return time.perf_counter() - t0


def measure_case(
    family: str, n_nodes: int, settings: Settings, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """All rows of one family at one size: fasttape, baseline, then each peer."""
    say = progress or (lambda _msg: None)
    say(f"{family} {n_nodes:,}: fasttape")
    holder: dict[str, Any] = {}

    def build_and_first() -> None:
        case = build_case(family, n_nodes)
        t0 = time.perf_counter()
        holder["vg"] = case.tape.value_and_grad(case.x)
        holder["first"] = time.perf_counter() - t0
        holder["case"] = case

    _, peak = peak_rss_growth(build_and_first)
    case: Case = holder["case"]
    tape, x = case.tape, case.x
    v_ref, g_ref = holder["vg"]
    n = case.n_nodes
    fns: dict[str, Callable[[], Any]] = {
        "value": lambda: tape.value(x),
        "vg": lambda: tape.value_and_grad(x),
    }
    if case.built == "tensor":
        rows = _tensor_rows(case, holder["first"], peak, v_ref, g_ref, settings)
        ft_vg = rows[0]["vg_ns"]
        _peer_rows(case, rows, v_ref, g_ref, ft_vg, settings, say)
        return rows
    base_ok = bl.supports(tape.ops) and int(tape.outputs[0]) == tape.n_slots - 1
    base_problem = None
    if base_ok:
        vals, adj = np.empty(tape.n_slots), np.empty(tape.n_slots)
        grad = np.empty(tape.n_inputs)
        ops, args, consts = tape.ops, tape.args, tape.consts
        bv, bg = bl.run_baseline(tape, x)
        b_grad_rel, b_value_rel, base_problem = agreement(v_ref, g_ref, bv, bg)
        fns["base_value"] = lambda: bl.value_kernel(ops, args, consts, x, vals)
        fns["base_vg"] = lambda: bl.value_and_grad_kernel(ops, args, consts, x, vals, adj, grad)
    if fpenv.SUPPORTED:  # the same tape with subnormals flushed (x86 FTZ/DAZ), for its own row
        fv, fg = tape.value_and_grad(x, flush_subnormals=True)
        f_grad_rel, f_value_rel, _ = agreement(v_ref, g_ref, fv, fg)
        fns["ftz_value"] = lambda: tape.value(x, flush_subnormals=True)
        fns["ftz_vg"] = lambda: tape.value_and_grad(x, flush_subnormals=True)
    native_row = _native(case, fns, settings, say) if settings.native else None
    t = median_times(fns, settings.repeat, min_sample=settings.min_sample)
    ft_vg = t["vg"] / n * 1e9
    rows = [_row(
        case, "fasttape", case.built, "ok", build_s=case.build_s, compile_s=case.compile_s,
        first_call_s=holder["first"], value_ns=t["value"] / n * 1e9, vg_ns=ft_vg,
        grad_over_value=t["vg"] / t["value"], vs_fasttape=1.0,
        peak_bytes_per_node=None if peak is None else peak / n,
        grad_rel_diff=0.0, value_rel_diff=0.0,
    )]
    if base_ok:
        rows.append(_row(
            case, "baseline", "hand-written",
            "ok" if base_problem is None else f"DISAGREES: {base_problem}",
            value_ns=t["base_value"] / n * 1e9, vg_ns=t["base_vg"] / n * 1e9,
            grad_over_value=t["base_vg"] / t["base_value"], vs_fasttape=t["base_vg"] / t["vg"],
            grad_rel_diff=b_grad_rel, value_rel_diff=b_value_rel,
        ))
    else:
        rows.append(_row(case, "baseline", "hand-written", "n/a (op not in the baseline)"))
    if fpenv.SUPPORTED:
        # Not IEEE: differs from fasttape exactly where a subnormal number appears (its
        # grad rel diff column says by how much); not counted for the targets.
        rows.append(_row(
            case, FTZ_SYSTEM, case.built, "ok (subnormals flushed)",
            value_ns=t["ftz_value"] / n * 1e9, vg_ns=t["ftz_vg"] / n * 1e9,
            grad_over_value=t["ftz_vg"] / t["ftz_value"], vs_fasttape=t["ftz_vg"] / t["vg"],
            grad_rel_diff=f_grad_rel, value_rel_diff=f_value_rel,
        ))
    if native_row is not None:
        if "native_vg" in fns:
            native_row.update(
                value_ns=t["native_value"] / n * 1e9, vg_ns=t["native_vg"] / n * 1e9,
                grad_over_value=t["native_vg"] / t["native_value"],
                vs_fasttape=t["native_vg"] / t["vg"])
        rows.append(native_row)
    _peer_rows(case, rows, v_ref, g_ref, ft_vg, settings, say)
    return rows


def _native(case: Case, fns: dict[str, Callable[[], Any]], settings: Settings,
            say: Callable[[str], None]) -> dict[str, Any]:
    """The :data:`NATIVE_SYSTEM` row of ``case`` without its timings; adds the native calls
    to ``fns`` (timed with fasttape's, in alternation) when the tape compiled."""
    from fasttape.native import native  # LLVM only when asked for

    tape, x, n = case.tape, case.x, case.n_nodes
    if len(tape.ops) > settings.native_max:
        return _row(case, NATIVE_SYSTEM, "LLVM",
                    f"skipped (over {settings.native_max:,} instructions: compile time)")
    say(f"{case.family} {n:,}: fasttape-native (compiling)")
    code = "LLVM"
    try:
        nt = native(tape, cache_entries=False)  # always compiled: compile_s is the point
        code = (f"LLVM level {'/'.join(map(str, sorted(set(nt.levels))))}, "
                f"{nt.n_loops} loops in {nt.n_pieces} pieces")
        t0 = time.perf_counter()
        v, g = nt.value_and_grad(x)
        first = time.perf_counter() - t0
    except Exception as e:  # a row that says so, never a crashed run
        return _row(case, NATIVE_SYSTEM, code, f"failed: {type(e).__name__}: {e}"[:200])
    v_ref, g_ref = tape.value_and_grad(x)
    bits = np.array([v, v_ref]).view(np.int64)
    same = bits[0] == bits[1] and np.array_equal(np.asarray(g).view(np.int64),
                                                 np.asarray(g_ref).view(np.int64))
    fns["native_value"] = lambda: nt.value(x)
    fns["native_vg"] = lambda: nt.value_and_grad(x)
    return _row(case, NATIVE_SYSTEM, code, "ok (bitwise)" if same else "DIFFERS from fasttape",
                compile_s=nt.compile_seconds, first_call_s=first,
                grad_rel_diff=0.0 if same else None, value_rel_diff=0.0 if same else None)


def _peer_rows(case: Case, rows: list[dict[str, Any]], v_ref: float, g_ref: np.ndarray,
               ft_vg: float, settings: Settings, say: Callable[[str], None]) -> None:
    """Append every asked-for peer's row for ``case`` to ``rows``."""
    for peer in PEERS:
        if settings.peers is not None and peer.name not in settings.peers:
            continue
        say(f"{case.family} {case.n_nodes:,}: {peer.name}")
        rows.append(run_peer(peer, case, v_ref, g_ref, ft_vg, settings))
        gc.collect()


def _tensor_rows(case: Case, first_s: float, peak: int | None, v_ref: float,
                 g_ref: np.ndarray, settings: Settings) -> list[dict[str, Any]]:
    """The rows of a tensor family: fasttape's tensor tape, then the scalar tape of the same
    function (:data:`SCALAR_SYSTEM`), sampled in turn (no baseline row: the hand-written
    kernel runs scalar tapes, and the scalar family of the same name has its row)."""
    tape, x, n = case.tape, case.x, case.n_nodes
    fns: dict[str, Callable[[], Any]] = {
        "value": lambda: tape.value(x),
        "vg": lambda: tape.value_and_grad(x),
    }
    st = case.scalar_tape
    if st is not None:
        sv, sg = st.value_and_grad(x)
        s_grad_rel, s_value_rel, s_problem = agreement(v_ref, g_ref, sv, sg)
        fns["s_value"] = lambda: st.value(x)
        fns["s_vg"] = lambda: st.value_and_grad(x)
    t = median_times(fns, settings.repeat, min_sample=settings.min_sample)
    rows = [_row(
        case, "fasttape", "tensor", "ok", build_s=case.build_s, compile_s=case.compile_s,
        first_call_s=first_s, value_ns=t["value"] / n * 1e9, vg_ns=t["vg"] / n * 1e9,
        grad_over_value=t["vg"] / t["value"], vs_fasttape=1.0,
        peak_bytes_per_node=None if peak is None else peak / n,
        grad_rel_diff=0.0, value_rel_diff=0.0,
    )]
    if st is not None:
        rows.append(_row(
            case, SCALAR_SYSTEM, "traced", "ok" if s_problem is None else
            f"DISAGREES: {s_problem}", build_s=case.scalar_build_s,
            value_ns=t["s_value"] / n * 1e9, vg_ns=t["s_vg"] / n * 1e9,
            grad_over_value=t["s_vg"] / t["s_value"], vs_fasttape=t["s_vg"] / t["vg"],
            grad_rel_diff=s_grad_rel, value_rel_diff=s_value_rel,
        ))
    else:
        rows.append(_row(case, SCALAR_SYSTEM, "traced", "n/a (not built at this size)"))
    return rows


def run_peer(
    peer: Peer, case: Case, v_ref: float, g_ref: np.ndarray, ft_vg_ns: float,
    settings: Settings,
) -> dict[str, Any]:
    """One peer's row for ``case``: status, then figures where it ran and agreed."""
    code = peer.style(case.family)
    not_here = peer.applies(case.family, settings.quick)
    if not_here is not None:
        return _row(case, peer.name, code, not_here)
    missing = peer.available()
    if missing is not None:
        return _row(case, peer.name, code, missing)
    key = (peer.name, case.family)
    if key in settings.stopped:
        return _row(case, peer.name, code, settings.stopped[key])
    cap = peer.cap(case.family, settings.quick)
    if cap is not None and case.n_nodes > cap:
        mode = " in --quick" if settings.quick else ""
        return _row(case, peer.name, code, f"skipped (> {cap:,} nodes{mode})")
    limit = settings.peer_timeout
    prev = settings.setup_s.get(key)
    if prev is not None:
        # build, compile and first call grow at least linearly with the graph: skip a size
        # that the previous one says cannot fit (the timing loops adapt to what is left).
        estimate = SETUP_GROWTH * prev[1] * case.n_nodes / prev[0]
        if estimate > limit:
            return _row(case, peer.name, code,
                        f"skipped (setup estimated {estimate:.0f} s > {limit:g} s limit)")
    box: dict[str, Any] = {}
    deadline = time.perf_counter() + limit
    worker = threading.Thread(
        target=_peer_work, args=(peer, case, v_ref, g_ref, settings, deadline, box),
        daemon=True, name=f"bench-{peer.name}",
    )
    worker.start()
    worker.join(limit)
    if worker.is_alive():
        stage = box.get("stage", "build")
        # A thread cannot be killed.  Left running, it would compete for the cores (and for
        # the GIL: graph building is Python code) with every later measurement, so wait for
        # it, up to TIMEOUT_WAIT times the limit (then it is abandoned: a daemon thread does
        # not delay exit).  Bigger sizes of this family are not tried.
        worker.join(TIMEOUT_WAIT * limit)
        settings.stopped[key] = f"skipped (timed out at {case.n_nodes:,} nodes)"
        return _row(case, peer.name, code, f"timeout (> {limit:g} s in {stage})",
                    **box.get("figures", {}))
    if "unsupported" in box:  # the same at every size: bigger ones are not tried
        settings.stopped[key] = box["unsupported"]
        return _row(case, peer.name, code, box["unsupported"])
    if "error" in box:
        exc = box["error"]
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        settings.stopped[key] = f"skipped (failed at {case.n_nodes:,} nodes)"
        return _row(case, peer.name, code, f"failed ({msg[:80]})", **box.get("figures", {}))
    figures = box["figures"]
    setup = sum(figures.get(k) or 0.0 for k in ("build_s", "compile_s", "first_call_s"))
    settings.setup_s[key] = (case.n_nodes, setup)
    if figures.get("vg_ns") is not None and figures.get("vs_fasttape") is None:
        figures["vs_fasttape"] = figures["vg_ns"] / ft_vg_ns
    return _row(case, peer.name, figures.pop("style", code), box["status"], **figures)


def _peer_work(
    peer: Peer, case: Case, v_ref: float, g_ref: np.ndarray, settings: Settings,
    deadline: float, box: dict[str, Any],
) -> None:
    """Build, first call, agreement check, then timing (in the worker thread)."""
    figures: dict[str, Any] = {}
    box["figures"] = figures
    try:
        box["stage"] = "build"
        holder: dict[str, Any] = {}

        def build_and_first() -> None:
            built = peer.build(case)
            figures.update(build_s=built.build_s, compile_s=built.compile_s, style=built.style)
            box["stage"] = "first call"
            t0 = time.perf_counter()
            holder["vg"] = built.value_and_grad(case.x)
            figures["first_call_s"] = time.perf_counter() - t0
            holder["built"] = built

        _, peak = peak_rss_growth(build_and_first)
        n = case.n_nodes
        figures["peak_bytes_per_node"] = None if peak is None else peak / n
        built = holder["built"]
        v, g = holder["vg"]
        grad_rel, value_rel, problem = agreement(v_ref, g_ref, v, g)
        figures.update(grad_rel_diff=grad_rel, value_rel_diff=value_rel)
        if problem is not None:
            box["status"] = f"DISAGREES: {problem}"
            return
        box["stage"] = "timing"
        x = case.x
        fns: dict[str, Callable[[], Any]] = {"vg": lambda: built.value_and_grad(x)}
        if built.value is not None:
            fns["value"] = lambda: built.value(x)
        # fasttape again, sampled in turn with the peer: the ratio then compares the two
        # under the same machine load (a shared VM's speed drifts over seconds).
        tape = case.tape
        fns["ft_vg"] = lambda: tape.value_and_grad(x)
        budget = max(0.0, deadline - time.perf_counter()) / 2
        t = median_times(fns, settings.repeat, budget_s=budget,
                         min_sample=settings.min_sample)
        figures["vg_ns"] = t["vg"] / n * 1e9
        figures["vs_fasttape"] = t["vg"] / t["ft_vg"]
        if "value" in t:
            figures["value_ns"] = t["value"] / n * 1e9
            figures["grad_over_value"] = t["vg"] / t["value"]
        box["status"] = "ok"
    except Unsupported as exc:  # an op the peer has no function for
        box["unsupported"] = f"unsupported ({exc})"
    except Exception as exc:  # a peer's failure is a row, never a crash of the benchmark
        box["error"] = exc
