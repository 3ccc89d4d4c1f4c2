"""The op table's formulas as LLVM IR: a small translator from the formula language to llvmlite.

Every op's forward formula and partials are strings in :mod:`fasttape.ops` (Python expressions
over ``x, y, z, f``, ``math.*``, ``np.*`` and the helpers of :mod:`fasttape.kernels.scalar`).
This module walks their syntax trees and emits, for each op, one internal ``alwaysinline``
LLVM function per formula; the helpers are translated from their own source in
``kernels/scalar.py`` the same way.  Nothing here restates a formula: the op table and the
helper sources stay the one definition, for the Numba interpreter and for native code alike.

**Bitwise the interpreter.**  Each construct lowers to what Numba lowers it to:

- ``+ - * /`` on floats are single IEEE instructions, never contracted into an FMA and never
  flagged fast-math; unary minus is ``fsub -0.0, x`` (Numba's ``negate_real``).
- Comparisons are ordered (``fcmp olt`` ...) except ``!=``, which is unordered (``une``), as
  Numba's; ``max(a, b)`` is Numba's ``select(b > a, b, a)``; ``int(v)`` is ``fptosi``.
- ``math.sqrt``, ``abs``, ``np.floor`` and ``np.ceil`` are the exact LLVM intrinsics.  Every
  other libm function (``math.sin``, ``x ** y`` ...) is a call to the very libm function that
  Numba's kernels call, under a private symbol name (``ft.libm.sin``) bound to that function's
  address when the code is loaded (:func:`libm_symbols`).  LLVM does not recognise the private
  name as a library function, so it never folds a call with a constant argument at compile
  time nor rewrites ``pow(x, 2.0)`` into ``x * x`` (``pow`` is not correctly rounded, the
  product is): with constants as immediates, that is what keeps results bitwise.  The
  declarations are ``readnone``, so LLVM may still merge two identical calls.
- ``np.cbrt`` is Numba's own lowering (``numba/np/npyfuncs.py``: NaN passes as the default NaN,
  else ``-cbrt(-x)`` below zero, ``cbrt(x)`` otherwise, which its fast-math ``pow(x, 1/3)``
  becomes in machine code), written below as :func:`np_cbrt` and translated like a helper.

Control flow in the helpers (``if``/``return``, ``while``, conditional expressions) becomes
branches over ``alloca`` locals, as Numba emits it; the optimizer promotes them to registers
and, once an op is inlined with a constant argument (the exponent of ``powi``), unrolls the
loop.  The test suite compares every op bit for bit with the interpreter
(tests/test_native.py).
"""

from __future__ import annotations

import ast
import ctypes
import ctypes.util
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import llvmlite.ir as ir

from fasttape.kernels import scalar
from fasttape.ops import OPS, OpSpec

__all__ = [
    "LIBM_FUNCTIONS",
    "UNIT_PARTIALS",
    "forward_name",
    "fused_name",
    "fused_width",
    "given_name",
    "paired_call",
    "PairedCall",
    "libm_symbols",
    "op_library",
    "partial_name",
    "stored_partials",
]

DOUBLE = ir.DoubleType()
I64 = ir.IntType(64)
I1 = ir.IntType(1)

#: libm functions of one and two arguments that the formulas may call (``math.<name>``).
LIBM_FUNCTIONS: dict[str, int] = {
    **{name: 1 for name in (
        "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
        "atanh", "exp", "expm1", "log", "log1p", "log2", "log10", "erf", "erfc", "cbrt")},
    "atan2": 2, "hypot": 2, "pow": 2,
}

#: Exact operations that are LLVM intrinsics (as in Numba's lowering).
_INTRINSICS = {"sqrt": "llvm.sqrt.f64", "floor": "llvm.floor.f64", "ceil": "llvm.ceil.f64",
               "fabs": "llvm.fabs.f64"}

#: Partial formulas that the reverse sweeps apply as an addition or a subtraction of the
#: adjoint (the interpreter's unit-partials rule, fasttape/kernels/forms.py).
UNIT_PARTIALS = {"1.0": 1.0, "-1.0": -1.0}

_LIBM_PREFIX = "ft.libm."


def np_cbrt(x):  # type: ignore[no-untyped-def]
    # Numba's np.cbrt (numba/np/npyfuncs.py, np_real_cbrt_impl) as its machine code computes
    # it: the default NaN for a NaN, and its fast-math power by 1/3 turned into libm cbrt.
    if x != x:
        return math.nan
    if x < 0.0:
        return -libm_cbrt(-x)  # noqa: F821 (a name of the translator, not of Python)
    return libm_cbrt(x)  # noqa: F821


def forward_name(spec: OpSpec) -> str:
    """The LLVM name of ``spec``'s forward function ``(x[, y[, z]]) -> f``."""
    return f"ft.f.{spec.name}"


def partial_name(spec: OpSpec, j: int) -> str:
    """The LLVM name of ``spec``'s partial with respect to argument ``j``:
    ``(x, y, z, f) -> d``, taking as many arguments as the op's arity, then ``f``."""
    return f"ft.d{j}.{spec.name}"


def fused_name(spec: OpSpec) -> str:
    """The LLVM name of ``spec``'s fused function ``(x[, y[, z]], t, r) -> f``: its forward
    value, also stored to ``r``, with the partials :func:`stored_partials` names stored to
    ``t[0], t[1], ...``."""
    return f"ft.fp.{spec.name}"


#: The pairs of libm functions that one libm call computes together, as the pair's names
#: and the call's: ``sincos(x, &s, &c)`` (glibc's ``sin``, ``cos`` and ``sincos`` share one
#: implementation, so its two results are bitwise the separate calls').
_PAIRED = {("sin", "cos"): "sincos"}


def _is_call(tree: ast.AST, name: str, param: str) -> bool:
    """Whether the formula ``tree`` is exactly ``math.<name>(<param>)``."""
    return (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Attribute)
            and isinstance(tree.func.value, ast.Name) and tree.func.value.id == "math"
            and tree.func.attr == name and len(tree.args) == 1
            and isinstance(tree.args[0], ast.Name) and tree.args[0].id == param)


def _paired_calls(tree: ast.AST) -> set[tuple[str, str]]:
    """``(function, parameter)`` of every ``math.sin(p)`` / ``math.cos(p)`` call in ``tree``
    whose argument is a bare parameter (so one call at a function's entry computes it)."""
    names = {n for pair in _PAIRED for n in pair}
    return {(node.func.attr, node.args[0].id) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "math"
            and node.func.attr in names and len(node.args) == 1
            and isinstance(node.args[0], ast.Name) and node.args[0].id in ("x", "y", "z")}


@functools.cache
def stored_partials(spec: OpSpec) -> tuple[int, ...]:
    """The partials of ``spec`` that the native tier computes in the forward sweep, in one
    libm call with the value (:func:`fused_name`), and stores for the reverse sweep: each
    partial that calls the other function of a pair of :data:`_PAIRED` on the argument on
    which the forward formula calls the first (``sin``'s ``cos(x)``, ``cos``'s
    ``-sin(x)``).  Derived from the formulas: empty for every other op.
    """
    forward = _paired_calls(ast.parse(spec.forward, mode="eval"))
    out = []
    for j, expr in enumerate(spec.partials):
        if expr in UNIT_PARTIALS:
            continue
        calls = _paired_calls(ast.parse(expr, mode="eval"))
        if any(((a, p) in forward and (b, p) in calls) or ((b, p) in forward and (a, p) in calls)
               for a, b in _PAIRED for _, p in calls):
            out.append(j)
    return tuple(out)


class PairedCall(NamedTuple):
    """The one paired libm call of an op with stored partials (:func:`paired_call`): the
    call (``"sincos"``), the pair of functions it computes (``("sin", "cos")``), the
    parameter it is called on (``"x"``: the op's argument of that index in ``"xyz"``), and
    where its fused function leaves each result: ``-1`` the value's slot ``r``, ``k >= 0``
    ``t[k]``, in pair order, each still there after the call returns."""

    call: str
    pair: tuple[str, str]
    param: str
    slots: tuple[int, int]


def _trees(spec: OpSpec) -> list[ast.expr]:
    """The forward formula's tree, then each stored partial's."""
    return [ast.parse(spec.forward, mode="eval").body,
            *(ast.parse(spec.partials[j], mode="eval").body for j in stored_partials(spec))]


def _placement(spec: OpSpec) -> list[tuple[tuple[str, str], str, str, list[int], set[int]]]:
    """Each paired call of ``spec``'s fused function as ``(pair, call, param, slots,
    placed)``: the slot each result is written to (``-1``: ``r``; ``k``: ``t[k]``), and the
    trees (:func:`_trees`) whose formula is exactly that call, so written by it.

    With a single paired call, a result whose formula is a tree's goes to that tree's slot
    (the value's to ``r``, stored partial ``k``'s to ``t[k]``); any other to a free ``t``
    slot, from the top: past the stored partials (``fused_width`` leaves two slots) it
    stays there, so another instruction can read it (:func:`paired_call`).
    """
    trees = _trees(spec)
    n_stored = len(trees) - 1
    calls = sorted({(pair, call, p) for pair, call in _PAIRED.items()
                    for tree in trees for n, p in _paired_calls(tree) if n in pair})
    out = []
    placed: set[int] = set()
    for pair, call, p in calls:
        targets: list[int | None] = []
        mine: set[int] = set()
        for n in pair:
            i = next((i for i, tree in enumerate(trees) if len(calls) == 1
                      and i not in placed and _is_call(tree, n, p)), None)
            if i is not None:
                placed.add(i)
                mine.add(i)
            targets.append(None if i is None else i - 1)
        free = [k for k in range(max(n_stored, 2) - 1, -1, -1) if k not in targets]
        slots = [free.pop(0) if k is None else k for k in targets]
        out.append((pair, call, p, slots, mine))
    return out


@functools.cache
def paired_call(spec: OpSpec) -> PairedCall | None:
    """The paired call of ``spec`` whose two results its fused function leaves in the work
    array (:class:`PairedCall`); None for an op without stored partials, with several
    paired calls, or one that overwrites a result.  ``sin``: ``sin(x)`` in the value's slot,
    ``cos(x)`` in ``t[0]`` (its partial); ``cos``: ``cos(x)`` in the value's slot, ``sin(x)``
    in ``t[1]`` (its partial ``-sin(x)`` in ``t[0]``).  Another instruction of the pair on
    the same argument reads them there instead of calling libm again
    (:func:`given_name`; :mod:`fasttape.native.emit` decides which)."""
    found = _placement(spec) if stored_partials(spec) else []
    if len(found) != 1:
        return None
    pair, call, p, slots, placed = found[0]
    n_stored = len(stored_partials(spec))
    kept = all(k == -1 or (k + 1 in placed) or k >= n_stored for k in slots)
    return PairedCall(call, pair, p, (slots[0], slots[1])) if kept else None


def given_name(spec: OpSpec) -> str:
    """The LLVM name of ``spec``'s fused function given its paired call's results
    ``(x[, y[, z]], a, b, t, r) -> f``: as :func:`fused_name`'s, with ``a`` and ``b`` (the
    pair's results, in :class:`PairedCall` order) instead of the call."""
    return f"ft.fg.{spec.name}"


def fused_width(spec: OpSpec) -> int:
    """Work-array entries one instruction of ``spec`` with stored partials takes: the
    partials, and at least the two results of the paired call (0 without stored partials)."""
    n = len(stored_partials(spec))
    return max(n, 2) if n else 0


@functools.cache
def _helper_sources() -> dict[str, ast.FunctionDef]:
    """The helper functions' syntax trees: kernels/scalar.py's and :func:`np_cbrt`."""
    trees: dict[str, ast.FunctionDef] = {}
    for source in (inspect.getsource(scalar), inspect.getsource(np_cbrt)):
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                trees[node.name] = node
    return trees


@functools.cache
def libm_symbols() -> dict[str, int]:
    """``{private symbol: address}`` of every libm function the op library calls.

    The addresses are those the dynamic loader gives the process (the functions Numba's
    kernels call too); :mod:`fasttape.native.machine` registers them with LLVM before any
    native code is loaded.
    """
    path = ctypes.util.find_library("m")
    lib = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    out = {}
    for name in [*LIBM_FUNCTIONS, *_PAIRED.values()]:
        fn = getattr(lib, name)
        out[_LIBM_PREFIX + name] = ctypes.cast(fn, ctypes.c_void_p).value
    return out


class _Library:
    """An llvmlite module that grows one function per formula and helper, on demand."""

    def __init__(self) -> None:
        self.module = ir.Module(name="fasttape-ops")
        self.helpers: dict[str, ir.Function] = {}
        self.loops: set[str] = set()  # functions with a loop, themselves or in a helper

    def declare(self, name: str, n_args: int, readnone: bool = True) -> ir.Function:
        """A libm (or intrinsic) declaration ``double name(double, ...)``."""
        if name in self.module.globals:
            return self.module.globals[name]
        fn = ir.Function(self.module, ir.FunctionType(DOUBLE, [DOUBLE] * n_args), name)
        fn.attributes.add("nounwind")
        if readnone:
            fn.attributes.add("readnone")
        return fn

    def helper(self, name: str) -> ir.Function:
        """The translated helper ``name`` (from kernels/scalar.py or :func:`np_cbrt`)."""
        if name not in self.helpers:
            tree = _helper_sources().get(name)
            if tree is None:
                raise NotImplementedError(f"the native tier cannot translate a call to {name}()")
            params = [a.arg for a in tree.args.args]
            fn = self.new_function(f"ft.h.{name}", params)
            self.helpers[name] = fn
            _Translator(self, fn, params).body(tree.body)
            if any(isinstance(n, ast.While) for n in ast.walk(tree)):
                self.loops.add(fn.name)
        return self.helpers[name]

    def new_function(self, name: str, params: list[str]) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(DOUBLE, [DOUBLE] * len(params)), name)
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        for arg, p in zip(fn.args, params, strict=True):
            arg.name = p
        return fn

    def formula(self, name: str, params: list[str], expr: str) -> None:
        """One function ``name(params) -> expr``."""
        fn = self.new_function(name, params)
        tree = ast.parse(expr, mode="eval").body
        _Translator(self, fn, params).body([ast.Return(value=tree)])

    def fused(self, spec: OpSpec, params: list[str], given: bool = False) -> None:
        """``spec``'s fused function (:func:`fused_name`): each pair of paired calls
        (``sin(p)``, ``cos(p)``) becomes one call at the entry, writing its results where
        :func:`_placement` says (straight to the value's slot ``r`` and the partials' ``t[k]``
        where a formula is exactly that call); the forward formula and the stored partials
        then read them, and what was not written by the call is stored after.  ``given``:
        the function of :func:`given_name` instead, the results of its one paired call
        (:func:`paired_call`) passed as two arguments, no call made.
        """
        trees = _trees(spec)
        extra = ["a", "b"] if given else []
        ptr = ir.PointerType(DOUBLE)
        fn = ir.Function(self.module,
                         ir.FunctionType(DOUBLE, [DOUBLE] * (len(params) + len(extra))
                                         + [ptr, ptr]),
                         given_name(spec) if given else fused_name(spec))
        fn.attributes.add("alwaysinline")
        fn.attributes.add("nounwind")
        names = [*params, *extra, "t", "r"]
        for arg, p in zip(fn.args, names, strict=True):
            arg.name = p
        tr = _Translator(self, fn, names)
        b, t, r = tr.b, fn.args[-2], fn.args[-1]

        def slot(k: int) -> ir.Value:
            return r if k < 0 else b.gep(t, [ir.Constant(I64, k)], inbounds=True)

        placed: set[int] = set()
        for pair, call, p, slots, mine in _placement(spec):
            if given:  # one paired call (paired_call): its results are the arguments
                for n, arg in zip(pair, fn.args[len(params):len(params) + 2], strict=True):
                    tr.shared[(n, p)] = arg
                continue
            placed |= mine
            out = [slot(k) for k in slots]
            b.call(self.declare_paired(call), [tr.load_local(p), *out])
            for n, o in zip(pair, out, strict=True):
                tr.shared[(n, p)] = b.load(o)
        f = tr.as_double(tr.expr(trees[0]))
        tr.store_local("f", f)
        values = [tr.as_double(tr.expr(tree)) for tree in trees[1:]]
        if 0 not in placed:
            b.store(f, r)
        for k, v in enumerate(values):
            if k + 1 not in placed:
                b.store(v, slot(k))
        b.store(f, tr.result)
        b.branch(tr.exit)

    def declare_paired(self, name: str) -> ir.Function:
        """The declaration ``void name(double, double *, double *)`` of a paired call."""
        full = _LIBM_PREFIX + name
        if full in self.module.globals:
            return self.module.globals[full]
        ptr = ir.PointerType(DOUBLE)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [DOUBLE, ptr, ptr]), full)
        fn.attributes.add("nounwind")
        return fn


class _Translator:
    """Translates one function body (a list of statements) into ``fn``."""

    def __init__(self, lib: _Library, fn: ir.Function, params: list[str]) -> None:
        self.lib = lib
        self.fn = fn
        entry = fn.append_basic_block("entry")
        self.alloca_builder = ir.IRBuilder(entry)
        body = fn.append_basic_block("body")
        self.exit = fn.append_basic_block("exit")
        self.b = ir.IRBuilder(body)
        self.locals: dict[str, ir.AllocaInstr] = {}
        # (libm function, parameter) -> its value, computed by a paired call (Library.fused)
        self.shared: dict[tuple[str, str], ir.Value] = {}
        # Every alloca goes into the entry block, before its branch (what mem2reg promotes).
        self.alloca_builder.position_before(self.alloca_builder.branch(body))
        self.result = self.alloca_builder.alloca(DOUBLE, name="result")
        for arg, p in zip(fn.args, params, strict=True):
            self.store_local(p, arg)
        tail = ir.IRBuilder(self.exit)
        tail.ret(tail.load(self.result))

    # ----------------------------------------------------------------- statements
    def body(self, stmts: list[ast.stmt]) -> None:
        self.block(stmts)
        if not self.b.block.is_terminated:
            raise NotImplementedError("a translated function must end with a return")

    def block(self, stmts: list[ast.stmt]) -> None:
        for st in stmts:
            if self.b.block.is_terminated:  # code after a return: unreachable, not emitted
                return
            self.statement(st)

    def statement(self, st: ast.stmt) -> None:
        b = self.b
        if isinstance(st, ast.Return):
            if st.value is None:
                raise NotImplementedError("a formula function must return a value")
            b.store(self.as_double(self.expr(st.value)), self.result)
            b.branch(self.exit)
        elif isinstance(st, ast.Expr):  # a docstring
            if not isinstance(st.value, ast.Constant):
                raise NotImplementedError(f"statement {ast.unparse(st)!r}")
        elif isinstance(st, ast.Assign):
            if len(st.targets) != 1 or not isinstance(st.targets[0], ast.Name):
                raise NotImplementedError(f"assignment {ast.unparse(st)!r}")
            self.store_local(st.targets[0].id, self.expr(st.value))
        elif isinstance(st, ast.AugAssign):
            if not isinstance(st.target, ast.Name):
                raise NotImplementedError(f"assignment {ast.unparse(st)!r}")
            name = st.target.id
            value = self.binop(st.op, self.load_local(name), self.expr(st.value))
            self.store_local(name, value)
        elif isinstance(st, ast.If):
            cond = self.truth(self.expr(st.test))
            then = b.append_basic_block("then")
            other = b.append_basic_block("else")
            join = b.append_basic_block("join")
            b.cbranch(cond, then, other)
            for blk, stmts in ((then, st.body), (other, st.orelse)):
                b.position_at_end(blk)
                self.block(stmts)
                if not b.block.is_terminated:
                    b.branch(join)
            b.position_at_end(join)
        elif isinstance(st, ast.While):
            head = b.append_basic_block("loop.head")
            loop = b.append_basic_block("loop.body")
            done = b.append_basic_block("loop.done")
            b.branch(head)
            b.position_at_end(head)
            b.cbranch(self.truth(self.expr(st.test)), loop, done)
            b.position_at_end(loop)
            self.block(st.body)
            if not b.block.is_terminated:
                b.branch(head)
            b.position_at_end(done)
        elif isinstance(st, ast.Pass):
            pass
        else:
            raise NotImplementedError(f"statement {ast.unparse(st)!r}")

    def store_local(self, name: str, value: ir.Value) -> None:
        slot = self.locals.get(name)
        if slot is None:
            slot = self.alloca_builder.alloca(value.type, name=name)
            self.locals[name] = slot
        if slot.type.pointee != value.type:
            value = self.convert(value, slot.type.pointee)
        self.b.store(value, slot)

    def load_local(self, name: str) -> ir.Value:
        if name not in self.locals:
            raise NotImplementedError(f"unknown name {name!r} in a formula")
        return self.b.load(self.locals[name])

    # ----------------------------------------------------------------- expressions
    def expr(self, e: ast.expr) -> ir.Value:
        b = self.b
        if isinstance(e, ast.Constant):
            if isinstance(e.value, bool):
                return ir.Constant(I1, int(e.value))
            if isinstance(e.value, int):
                return ir.Constant(I64, e.value)
            if isinstance(e.value, float):
                return ir.Constant(DOUBLE, e.value)
            raise NotImplementedError(f"constant {e.value!r}")
        if isinstance(e, ast.Name):
            return self.load_local(e.id)
        if isinstance(e, ast.Attribute) and ast.unparse(e) in ("math.nan", "np.nan"):
            return ir.Constant(DOUBLE, math.nan)
        if isinstance(e, ast.BinOp):
            return self.binop(e.op, self.expr(e.left), self.expr(e.right))
        if isinstance(e, ast.UnaryOp):
            v = self.expr(e.operand)
            if isinstance(e.op, ast.USub):
                if v.type == DOUBLE:  # Numba's negate_real: fsub -0.0, x
                    return b.fsub(ir.Constant(DOUBLE, -0.0), v)
                return b.neg(v)
            if isinstance(e.op, ast.Not):
                return b.not_(self.truth(v))
            raise NotImplementedError(f"operator in {ast.unparse(e)!r}")
        if isinstance(e, ast.Compare):
            if len(e.ops) != 1:
                raise NotImplementedError(f"chained comparison {ast.unparse(e)!r}")
            return self.compare(e.ops[0], self.expr(e.left), self.expr(e.comparators[0]))
        if isinstance(e, ast.BoolOp):
            # Both operands are side-effect-free comparisons here, so evaluating both is
            # what the short-circuit evaluates.
            vals = [self.truth(self.expr(v)) for v in e.values]
            acc = vals[0]
            for v in vals[1:]:
                acc = b.or_(acc, v) if isinstance(e.op, ast.Or) else b.and_(acc, v)
            return acc
        if isinstance(e, ast.IfExp):
            cond = self.truth(self.expr(e.test))
            with b.if_else(cond) as (then, other):
                with then:
                    a = self.expr(e.body)
                    a_block = b.block
                with other:
                    c = self.expr(e.orelse)
                    c_block = b.block
            ty = DOUBLE if DOUBLE in (a.type, c.type) else a.type
            # Conversions must sit in the arms; both arms here are of one type already.
            if a.type != c.type:
                raise NotImplementedError(f"mixed types in {ast.unparse(e)!r}")
            phi = b.phi(ty)
            phi.add_incoming(a, a_block)
            phi.add_incoming(c, c_block)
            return phi
        if isinstance(e, ast.Call):
            return self.call(e)
        raise NotImplementedError(f"expression {ast.unparse(e)!r}")

    def call(self, e: ast.Call) -> ir.Value:
        b = self.b
        if e.keywords:
            raise NotImplementedError(f"keyword arguments in {ast.unparse(e)!r}")
        f = e.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id == "math" and len(e.args) == 1 and isinstance(e.args[0], ast.Name):
            shared = self.shared.get((f.attr, e.args[0].id))
            if shared is not None:  # computed by the paired call at the entry (fused)
                return shared
        args = [self.expr(a) for a in e.args]
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id in ("math", "np"):
            name = f.attr
            if name == "cbrt" and f.value.id == "np":
                return self.call_helper("np_cbrt", args)
            if name in ("sqrt", "floor", "ceil"):
                return self.intrinsic(name, args)
            if name in LIBM_FUNCTIONS and name != "cbrt":
                return self.libm(name, args)
            raise NotImplementedError(f"call {ast.unparse(e)!r}")
        if not isinstance(f, ast.Name):
            raise NotImplementedError(f"call {ast.unparse(e)!r}")
        name = f.id
        if name == "abs":
            return self.intrinsic("fabs", args)
        if name in ("max", "min") and len(args) == 2:
            # Numba's do_minmax: acc = first; pred = second > acc (max) or < (min).
            acc, v = (self.as_double(a) for a in args)
            pred = b.fcmp_ordered(">" if name == "max" else "<", v, acc)
            return b.select(pred, v, acc)
        if name == "int" and len(args) == 1:
            return b.fptosi(self.as_double(args[0]), I64)
        if name == "float" and len(args) == 1:
            return self.as_double(args[0])
        if name == "libm_cbrt":
            return self.libm("cbrt", args)
        return self.call_helper(name, args)

    def call_helper(self, name: str, args: list[ir.Value]) -> ir.Value:
        fn = self.lib.helper(name)
        if fn.name in self.lib.loops:
            self.lib.loops.add(self.fn.name)
        return self.b.call(fn, [self.as_double(a) for a in args])

    def intrinsic(self, name: str, args: list[ir.Value]) -> ir.Value:
        fn = self.lib.declare(_INTRINSICS[name], 1)
        return self.b.call(fn, [self.as_double(a) for a in args])

    def libm(self, name: str, args: list[ir.Value]) -> ir.Value:
        n = LIBM_FUNCTIONS[name]
        if len(args) != n:
            raise NotImplementedError(f"{name} takes {n} arguments, got {len(args)}")
        fn = self.lib.declare(_LIBM_PREFIX + name, n)
        return self.b.call(fn, [self.as_double(a) for a in args])

    def binop(self, op: ast.operator, a: ir.Value, c: ir.Value) -> ir.Value:
        b = self.b
        if isinstance(op, (ast.BitAnd, ast.RShift, ast.LShift, ast.BitOr)):
            if a.type != I64 or c.type != I64:
                raise NotImplementedError("bit operations need integers")
            fn: Callable[..., Any] = {ast.BitAnd: b.and_, ast.RShift: b.ashr,
                                      ast.LShift: b.shl, ast.BitOr: b.or_}[type(op)]
            return fn(a, c)
        if isinstance(op, ast.Pow):
            return self.libm("pow", [self.as_double(a), self.as_double(c)])
        if isinstance(op, ast.Div) or DOUBLE in (a.type, c.type):
            a, c = self.as_double(a), self.as_double(c)
            table = {ast.Add: b.fadd, ast.Sub: b.fsub, ast.Mult: b.fmul, ast.Div: b.fdiv}
        else:
            table = {ast.Add: b.add, ast.Sub: b.sub, ast.Mult: b.mul}
        if type(op) not in table:
            raise NotImplementedError(f"operator {type(op).__name__}")
        return table[type(op)](a, c)

    def compare(self, op: ast.cmpop, a: ir.Value, c: ir.Value) -> ir.Value:
        sym = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
               ast.NotEq: "!="}.get(type(op))
        if sym is None:
            raise NotImplementedError(f"comparison {type(op).__name__}")
        if DOUBLE in (a.type, c.type):
            a, c = self.as_double(a), self.as_double(c)
            if sym == "!=":  # Numba: unordered not-equal, true for NaN
                return self.b.fcmp_unordered(sym, a, c)
            return self.b.fcmp_ordered(sym, a, c)
        return self.b.icmp_signed(sym, a, c)

    def truth(self, v: ir.Value) -> ir.Value:
        if v.type == I1:
            return v
        if v.type == DOUBLE:
            return self.b.fcmp_unordered("!=", v, ir.Constant(DOUBLE, 0.0))
        return self.b.icmp_signed("!=", v, ir.Constant(v.type, 0))

    def as_double(self, v: ir.Value) -> ir.Value:
        return self.convert(v, DOUBLE)

    def convert(self, v: ir.Value, ty: ir.Type) -> ir.Value:
        if v.type == ty:
            return v
        if ty == DOUBLE and isinstance(v.type, ir.IntType):
            if isinstance(v, ir.Constant):
                return ir.Constant(DOUBLE, float(v.constant))
            return self.b.sitofp(v, DOUBLE) if v.type == I64 else self.b.uitofp(v, DOUBLE)
        if ty == I64 and v.type == DOUBLE:
            return self.b.fptosi(v, I64)
        raise NotImplementedError(f"cannot convert {v.type} to {ty}")


@functools.cache
def _library() -> _Library:
    """Every op's forward and partial functions, translated once per process."""
    lib = _Library()
    for spec in OPS:
        names = ["x", "y", "z"][: spec.arity]
        lib.formula(forward_name(spec), names, spec.forward)
        for j, expr in enumerate(spec.partials):
            if expr not in UNIT_PARTIALS:
                lib.formula(partial_name(spec, j), [*names, "f"], expr)
        if stored_partials(spec):
            lib.fused(spec, names)
        if paired_call(spec) is not None:
            lib.fused(spec, names, given=True)
    return lib


@functools.cache
def op_library() -> tuple[str, frozenset[str]]:
    """LLVM IR text of every op's forward and partial functions and the helpers they call,
    and the names of those functions that loop (themselves or in a helper).

    The functions are external here, so that :mod:`fasttape.native.machine` can optimize the
    library once and keep them all; it then makes them internal for the pieces, where each is
    always inlined.  Unit partials (the literal ``1.0`` / ``-1.0``) get no function: the
    reverse sweep adds or subtracts the adjoint itself, as the interpreter's does.
    """
    lib = _library()
    return str(lib.module), frozenset(lib.loops)
