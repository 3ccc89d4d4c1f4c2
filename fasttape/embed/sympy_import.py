"""``ft.from_sympy``: turn SymPy expressions into a fasttape Graph.

The expression trees are walked with an explicit stack in post-order (children before parents),
never by recursion, so an expression of any depth converts.  Every distinct subexpression
becomes one node: a dict keyed on the SymPy expression (structural equality, which SymPy's own
caching mostly turns into identity) shares repeated subexpressions across all outputs.  Keys are
hashed only in post-order, when SymPy has already cached the hashes of the children, so hashing
does not recurse down a deep tree either.

Supported: numbers and number symbols (``pi``, ``E``), ``Add``, ``Mul`` (factors with negative
numeric exponents become one division), ``Pow`` (integer exponents use ``powi``, 1/2 and -1/2
``sqrt``, other numbers ``powc``, symbolic exponents ``pow``), the functions in
:data:`FUNCTIONS`, ``Min``/``Max``, ``Piecewise``, relations (``<``, ``<=``, ``>``, ``>=``,
``Eq``, ``Ne`` as 0/1 values) and ``And``/``Or``/``Not`` of relations.  Functions are matched
by their SymPy class (``sympy.sin``, ``sympy.codegen.cfunctions.log1p``), never by name: an
undefined function such as ``sympy.Function("sin")`` has no definition and is refused.  Anything
else raises ``ValueError`` naming the outermost unsupported construct (``Integral``, not the
``Tuple`` of its limits).

Numbers become the nearest float64 (SymPy's correctly rounded conversion): a rational too small
for float64 becomes a subnormal or 0.0 (``x / 10**400`` is ``x * 0.0``), a legitimate value;
a finite number beyond the float64 range raises ``ValueError`` rather than becoming inf.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

from fasttape.graph import Graph
from fasttape.trace import OP_FUNCTIONS as _F
from fasttape.trace import pow as _pow
from fasttape.trace import sum as _sum
from fasttape.trace import where as _where

__all__ = ["FUNCTIONS", "from_sympy"]

#: SymPy function name -> fasttape op name, for the functions mapped one to one.  Each name is
#: the SymPy class that is matched (``sympy.sin``, or ``sympy.codegen.cfunctions.log1p`` for the
#: names in ``_CFUNCTIONS``); an expression matches by its class, not by this name.
FUNCTIONS: dict[str, str] = {
    "sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan",
    "atan2": "atan2", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "asinh": "asinh",
    "acosh": "acosh", "atanh": "atanh", "exp": "exp", "log": "log", "erf": "erf",
    "erfc": "erfc", "Abs": "abs", "sign": "sign", "floor": "floor", "ceiling": "ceil",
    "expm1": "expm1", "log1p": "log1p", "log2": "log2", "log10": "log10", "Cbrt": "cbrt",
    "Sqrt": "sqrt", "hypot": "hypot",
}

# Classes of sympy.codegen.cfunctions (the others are in the sympy namespace).
_CFUNCTIONS = ("expm1", "log1p", "log2", "log10", "Cbrt", "Sqrt", "hypot", "exp2", "fma")

# Relations as fasttape comparison ops (0/1 values).
_RELATIONS = {
    "StrictLessThan": "lt", "LessThan": "le", "StrictGreaterThan": "gt",
    "GreaterThan": "ge", "Equality": "eq", "Unequality": "ne",
}


def from_sympy(exprs: Any, symbols: Iterable[Any]) -> Graph:
    """Build a :class:`~fasttape.Graph` computing SymPy expressions.

    Parameters
    ----------
    exprs : sympy.Expr, or an iterable / Matrix of them
        The outputs, in order.
    symbols : iterable of sympy.Symbol
        The inputs, in order: ``tape.value(x)`` binds ``x[i]`` to ``symbols[i]``.

    Returns
    -------
    Graph
        Compile it with :func:`fasttape.compile`.

    Raises
    ------
    ValueError
        For an unsupported SymPy construct (the outermost one is named), an undefined function
        (``sympy.Function("f")``), a function called with the wrong number of arguments, a
        symbol missing from ``symbols`` (or one that differs from it in class or assumptions),
        a repeated symbol, a non-real constant or one beyond the float64 range (see the module
        docstring for how numbers are rounded).
    TypeError
        If ``exprs`` is text (a ``str``: parse it with ``sympy.sympify`` first) or ``symbols``
        holds something other than SymPy symbols.

    Examples
    --------
    >>> import sympy as sp, fasttape as ft
    >>> x, y = sp.symbols("x y")
    >>> tape = ft.compile(ft.from_sympy(sp.sin(x) * y + sp.exp(x) / 2, [x, y]))
    >>> tape.value([0.0, 2.0])
    0.5
    """
    import sympy as sp

    if isinstance(exprs, (str, bytes)):
        raise TypeError(
            f"from_sympy() takes SymPy expressions, not text ({exprs!r:.40}); parse it first "
            "with sympy.sympify(text), which evaluates Python code: only for text you trust"
        )
    if isinstance(symbols, (str, bytes)):
        raise TypeError(
            f"symbols must be SymPy Symbols, not a string ({symbols!r:.40}); make them with "
            "sympy.symbols(...)"
        )
    syms = list(symbols)
    for s in syms:
        if not isinstance(s, sp.Symbol):
            raise TypeError(f"symbols must be SymPy Symbols; got {type(s).__name__} {s!r:.40}")
    if len(set(syms)) != len(syms):
        raise ValueError("symbols has repeated entries; each input must be a distinct Symbol")
    outs = _flatten_outputs(exprs, sp)
    g = Graph()
    converter = _Converter(sp, dict(zip(syms, g.inputs(len(syms)), strict=True)))
    g.output([converter.value(e) for e in outs])
    return g


def _flatten_outputs(exprs: Any, sp: Any) -> list[Any]:
    if isinstance(exprs, (sp.MatrixBase, sp.Tuple)):
        items = list(exprs)
    elif isinstance(exprs, sp.Basic):
        items = [exprs]
    elif isinstance(exprs, (int, float)):
        items = [sp.sympify(exprs)]
    else:
        items = list(exprs)
    if not items:
        raise ValueError("from_sympy() needs at least one expression")
    out = []
    for e in items:
        if isinstance(e, (str, bytes)):
            raise TypeError(
                f"from_sympy() takes SymPy expressions, not text ({e!r:.40}); parse it first "
                "with sympy.sympify(text), which evaluates Python code: only for text you trust"
            )
        try:
            e = sp.sympify(e, strict=True)  # numbers; strict: never parses text
        except sp.SympifyError:
            raise TypeError(f"expected SymPy expressions, got {type(e).__name__}") from None
        if not isinstance(e, sp.Basic):
            raise TypeError(f"expected SymPy expressions, got {type(e).__name__}")
        out.append(e)
    return out


def _function_classes(sp: Any) -> tuple[dict[Any, str], dict[Any, int | None]]:
    """``(class -> op name, class -> number of arguments or None)`` for every class handled by
    name-free dispatch in :class:`_Converter`."""
    import sympy.codegen.cfunctions as cfunctions

    from fasttape.ops import OP_BY_NAME

    ops: dict[Any, str] = {}
    arity: dict[Any, int | None] = {}
    for name, op in FUNCTIONS.items():
        cls = getattr(cfunctions if name in _CFUNCTIONS else sp, name)
        ops[cls] = op
        arity[cls] = OP_BY_NAME[op].arity
    for name, op in _RELATIONS.items():
        ops[getattr(sp, name)] = op
        arity[getattr(sp, name)] = 2
    arity.update({sp.Min: None, sp.Max: None, sp.And: None, sp.Or: None, sp.Not: 1,
                  cfunctions.exp2: 1, cfunctions.fma: 3})
    return ops, arity


_MISSING = object()


class _Converter:
    """Post-order conversion with memoisation; see the module docstring."""

    def __init__(self, sp: Any, inputs: dict[Any, Any]):
        self.sp = sp
        self.inputs = inputs
        self.ops, self.arity = _function_classes(sp)
        import sympy.codegen.cfunctions as cfunctions

        self.cfunctions = cfunctions
        self.by_id: dict[int, Any] = {}  # id(expr) -> value; hash-free bookkeeping
        self.by_expr: dict[Any, Any] = {}  # expr -> value; shares equal subexpressions
        self.keep: list[Any] = []  # keeps every visited expr alive, so ids are never reused

    def value(self, root: Any) -> Any:
        by_id = self.by_id
        stack: list[tuple[Any, list[Any] | None]] = [(root, None)]
        while stack:
            e, kids = stack.pop()
            if id(e) in by_id:
                continue
            if kids is None:
                self.check_supported(e)  # before the children: name the outermost construct
                kids = self.children(e)
                self.keep.append(e)
                stack.append((e, kids))
                stack.extend((k, None) for k in reversed(kids) if id(k) not in by_id)
                continue
            v = self.by_expr.get(e, _MISSING)  # children are hashed by now: no deep recursion
            if v is _MISSING:
                v = self.build(e, [by_id[id(k)] for k in kids])
                self.by_expr[e] = v
            by_id[id(e)] = v
        return by_id[id(root)]

    # ------------------------------------------------------------------ structure
    def check_supported(self, e: Any) -> None:
        """Refuse ``e`` unless :meth:`build` handles its class with this many arguments."""
        sp = self.sp
        if not e.args or isinstance(e, (sp.Add, sp.Mul, sp.Pow, sp.Piecewise)):
            return  # atoms are checked by atom()
        cls = type(e)
        if cls in self.arity:
            n = self.arity[cls]
            if n is not None and len(e.args) != n:
                raise ValueError(
                    f"from_sympy: {cls.__name__} takes {n} argument{'s' * (n != 1)}, got "
                    f"{len(e.args)}: {e!s:.80}"
                )
            return
        if isinstance(cls, sp.core.function.UndefinedFunction):
            name = cls.__name__
            known = name in FUNCTIONS or name in ("exp2", "fma")
            hint = (f"; for the function, use sympy.{name}" if name in FUNCTIONS
                    and name not in _CFUNCTIONS else
                    f"; for the function, use sympy.codegen.cfunctions.{name}" if known else "")
            raise ValueError(
                f"from_sympy: {name!r} is an undefined function (made with "
                f"sympy.Function({name!r})): it has no definition to compute{hint}, or replace "
                "it with an expression (expr.replace / expr.subs)"
            )
        self._unsupported(e)

    def children(self, e: Any) -> list[Any]:
        sp = self.sp
        if not e.args:
            return []
        if isinstance(e, sp.Add):
            return [self._signed(t)[1] for t in e.args]
        if isinstance(e, sp.Mul):
            _, num, den = self._fraction(e)
            return num + [b for b, _ in den]
        if isinstance(e, sp.Pow):
            return [e.base] if e.exp.is_Number else [e.base, e.exp]
        if isinstance(e, sp.Piecewise):
            return [part for pair in e.args for part in pair]
        return list(e.args)

    def _signed(self, term: Any) -> tuple[Any, Any]:
        # term = c * rest; a negative number c makes the term a subtraction of |c| * rest.
        c, rest = term.as_coeff_Mul()
        if c.is_Number and c.is_negative:
            return -c, rest
        return None, term

    def _fraction(self, e: Any) -> tuple[Any, list[Any], list[tuple[Any, Any]]]:
        # Mul -> (numeric coefficient, numerator factors, [(base, positive exponent)]).
        coeff, factors = e.as_coeff_mul()
        num, den = [], []
        for f in factors:
            if isinstance(f, self.sp.Pow) and f.exp.is_Number and f.exp.is_negative:
                den.append((f.base, -f.exp))
            else:
                num.append(f)
        return coeff, num, den

    # ------------------------------------------------------------------ one node
    def build(self, e: Any, vals: list[Any]) -> Any:
        sp = self.sp
        if not e.args:
            return self.atom(e)
        if isinstance(e, sp.Add):
            pos, neg = [], []
            for t, v in zip(e.args, vals, strict=True):
                c, _ = self._signed(t)
                if c is None:
                    pos.append(v)
                else:
                    neg.append(v if c == 1 else self._mul_number(v, c))
            if not pos:
                return -_sum(neg)
            return _sum(pos) - _sum(neg) if neg else _sum(pos)
        if isinstance(e, sp.Mul):
            coeff, num, den = self._fraction(e)
            nv, dv = vals[: len(num)], vals[len(num) :]
            top = _product(nv)
            bottom = _product([self._power(v, p) for v, (_, p) in zip(dv, den, strict=True)])
            return self._scale(top, bottom, coeff)
        if isinstance(e, sp.Pow):
            if e.exp.is_Number:
                return self._power(vals[0], e.exp)
            return _pow(vals[0], vals[1])
        # Dispatch on the class (checked by check_supported), never on its name.
        cls = type(e)
        op = self.ops.get(cls)
        if op is not None:  # a one-to-one function or a relation
            return _F[op](*vals)
        if cls is sp.Min or cls is sp.Max:
            return _fold(_F["minimum" if cls is sp.Min else "maximum"], vals)
        if cls is sp.And:
            return _fold(_F["minimum"], vals)
        if cls is sp.Or:
            return _fold(_F["maximum"], vals)
        if cls is sp.Not:
            return _F["eq"](vals[0], 0.0)
        if isinstance(e, sp.Piecewise):
            # First true condition wins: where(c1, e1, where(c2, e2, ... default)).
            result: Any = float("nan")  # SymPy's value when no condition holds
            for k in range(len(vals) - 2, -1, -2):
                result = _where(vals[k + 1], vals[k], result)
            return result
        if cls is self.cfunctions.exp2:
            return _pow(2.0, vals[0])
        if cls is self.cfunctions.fma:
            return vals[0] * vals[1] + vals[2]
        return self._unsupported(e)

    def atom(self, e: Any) -> Any:
        sp = self.sp
        if isinstance(e, sp.Symbol):
            try:
                return self.inputs[e]
            except KeyError:
                twin = [s for s in self.inputs if s.name == e.name]
                if twin:
                    raise ValueError(_twin_message(e, twin[0])) from None
                raise ValueError(
                    f"the expression contains the symbol {e.name!r}, which is not in symbols "
                    f"({', '.join(s.name for s in self.inputs) or 'empty'}); pass it as an input "
                    "or substitute a value with expr.subs(...)"
                ) from None
        if e is sp.true:
            return 1.0
        if e is sp.false:
            return 0.0
        if e.is_Number or e.is_NumberSymbol:
            return _number(e)
        return self._unsupported(e)

    def _unsupported(self, e: Any, detail: str = "") -> Any:
        name = type(e).__name__
        known = sorted({*FUNCTIONS, *_RELATIONS, "Add", "Mul", "Pow", "Min", "Max", "And", "Or",
                        "Not", "Piecewise", "exp2", "fma"})
        raise ValueError(
            f"from_sympy: unsupported SymPy {'function' if e.args else 'atom'} {name!r}"
            f"{' ' + detail if detail else ''}; supported: {', '.join(known)}, numbers and "
            "symbols. Rewrite the expression (e.g. expr.rewrite(...)) or substitute values."
        )

    # ------------------------------------------------------------------ arithmetic helpers
    def _power(self, v: Any, p: Any) -> Any:
        # A numeric exponent: the most exact op for it.
        if p == 1:
            return v
        if p.is_Integer:
            n = int(p)
            return 1.0 / v if n == -1 else _pow(v, n)
        if p == self.sp.Rational(1, 2):
            return _F["sqrt"](v)
        if p == self.sp.Rational(-1, 2):
            return 1.0 / _F["sqrt"](v)
        return _pow(v, _number(p))

    def _mul_number(self, v: Any, c: Any) -> Any:
        return self._scale(v, 1.0, c)

    def _scale(self, top: Any, bottom: Any, coeff: Any) -> Any:
        # top * coeff / bottom; a coefficient 1/q stays a division (x/3 is exact where
        # x * 0.333... is not), any other one is one multiplication.
        sp = self.sp
        if bottom is None:
            bottom = 1.0
        sign = -1 if coeff.is_negative else 1
        c = -coeff if sign < 0 else coeff
        if isinstance(c, sp.Rational) and c.p == 1 and c.q != 1 and c.q <= _MAX_FLOAT_INT:
            q = float(c.q)
            bottom = q if _is_one(bottom) else bottom * q
        elif c != 1:
            # Any other coefficient, and 1/q for a q beyond the float64 range (float(q) would
            # overflow): one multiplication by the nearest float64 (0.0 for 1/10**400).
            top = _number(c) if top is None else top * _number(c)
        if top is None:
            top = 1.0
        r = top if _is_one(bottom) else top / bottom
        return -r if sign < 0 else r


_MAX_FLOAT_INT = int(sys.float_info.max)  # larger ints overflow float()


def _number(e: Any) -> float:
    """The nearest float64 to the SymPy number ``e`` (see the module docstring)."""
    try:
        v = float(e)
    except (TypeError, ValueError):
        raise ValueError(f"the constant {e} is not a real number") from None
    if math.isinf(v) and e.is_finite:
        raise ValueError(
            f"the constant {e!s:.60} is beyond the float64 range (largest finite float64: "
            "1.8e308); rescale the expression, or write oo for an infinite value"
        )
    return v


def _twin_message(e: Any, twin: Any) -> str:
    """Why the expression's symbol ``e`` is not ``twin``, the input of the same name."""
    if type(e) is not type(twin):
        return (
            f"the expression's symbol {e.name!r} is a {type(e).__name__} and the one in symbols "
            f"a {type(twin).__name__} of the same name: SymPy never treats them as equal (a "
            "Dummy equals only itself); pass the expression's own symbol in symbols"
        )
    a, b = e.assumptions0, twin.assumptions0
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if not differ:  # e.g. two Dummy("x"): each Dummy is unique
        return (
            f"the expression's symbol {e.name!r} is another {type(e).__name__} than the one in "
            "symbols, with the same name and assumptions; pass the expression's own symbol in "
            "symbols"
        )
    shown = ", ".join(f"{k}={a.get(k)} vs {b.get(k)}" for k in differ[:6])
    return (
        f"the expression's symbol {e.name!r} differs from the one in symbols by its "
        f"assumptions ({shown}{', ...' if len(differ) > 6 else ''}); create both with the same "
        "sympy.symbols(...) call"
    )


def _is_one(v: Any) -> bool:
    return isinstance(v, float) and v == 1.0


def _product(vals: list[Any]) -> Any:
    """Balanced product (depth log2(n), by iteration); None when there are no factors."""
    if not vals:
        return None
    items = list(vals)
    while len(items) > 1:
        paired = [items[i] * items[i + 1] for i in range(0, len(items) - 1, 2)]
        if len(items) % 2:
            paired.append(items[-1])
        items = paired
    return items[0]


def _fold(fn: Callable[[Any, Any], Any], vals: list[Any]) -> Any:
    acc = vals[0]
    for v in vals[1:]:
        acc = fn(acc, v)
    return acc
