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
``Eq``, ``Ne`` as 0/1 values) and ``And``/``Or``/``Not`` of relations.  Anything else raises
``ValueError`` naming the SymPy function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from fasttape.graph import Graph
from fasttape.trace import OP_FUNCTIONS as _F
from fasttape.trace import pow as _pow
from fasttape.trace import sum as _sum
from fasttape.trace import where as _where

__all__ = ["FUNCTIONS", "from_sympy"]

#: SymPy function name -> fasttape op name, for the functions mapped one to one.  Names are
#: matched on the class (``sympy.sin``, ``sympy.codegen.cfunctions.log1p``, ...).
FUNCTIONS: dict[str, str] = {
    "sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan",
    "atan2": "atan2", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "asinh": "asinh",
    "acosh": "acosh", "atanh": "atanh", "exp": "exp", "log": "log", "erf": "erf",
    "erfc": "erfc", "Abs": "abs", "sign": "sign", "floor": "floor", "ceiling": "ceil",
    "expm1": "expm1", "log1p": "log1p", "log2": "log2", "log10": "log10", "Cbrt": "cbrt",
    "Sqrt": "sqrt", "hypot": "hypot",
}

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
        For an unsupported SymPy function (named in the message), a symbol missing from
        ``symbols``, a repeated symbol or a non-real constant.
    TypeError
        If ``symbols`` holds something other than SymPy symbols.

    Examples
    --------
    >>> import sympy as sp, fasttape as ft
    >>> x, y = sp.symbols("x y")
    >>> tape = ft.compile(ft.from_sympy(sp.sin(x) * y + sp.exp(x) / 2, [x, y]))
    >>> tape.value([0.0, 2.0])
    0.5
    """
    import sympy as sp

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
        e = sp.sympify(e)
        if not isinstance(e, sp.Basic):
            raise TypeError(f"expected SymPy expressions, got {type(e).__name__}")
        out.append(e)
    return out


_MISSING = object()


class _Converter:
    """Post-order conversion with memoisation; see the module docstring."""

    def __init__(self, sp: Any, inputs: dict[Any, Any]):
        self.sp = sp
        self.inputs = inputs
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
        name = type(e).__name__
        if name in FUNCTIONS:
            return _F[FUNCTIONS[name]](*vals) if _arity_ok(FUNCTIONS[name], vals) else (
                self._unsupported(e, f"with {len(vals)} arguments"))
        if name in _RELATIONS:
            return _F[_RELATIONS[name]](*vals)
        if name in ("Min", "Max"):
            fn = _F["minimum" if name == "Min" else "maximum"]
            acc = vals[0]
            for v in vals[1:]:
                acc = fn(acc, v)
            return acc
        if name == "And":
            return _fold(_F["minimum"], vals)
        if name == "Or":
            return _fold(_F["maximum"], vals)
        if name == "Not":
            return _F["eq"](vals[0], 0.0)
        if name == "Piecewise":
            # First true condition wins: where(c1, e1, where(c2, e2, ... default)).
            result: Any = float("nan")  # SymPy's value when no condition holds
            for k in range(len(vals) - 2, -1, -2):
                result = _where(vals[k + 1], vals[k], result)
            return result
        if name == "exp2":
            return _pow(2.0, vals[0])
        if name == "fma":
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
                    raise ValueError(
                        f"the expression's symbol {e.name!r} differs from the one in symbols "
                        f"by its assumptions ({e.assumptions0} vs {twin[0].assumptions0}); "
                        "create both with the same sympy.symbols(...) call"
                    ) from None
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
            try:
                return float(e)
            except TypeError:
                raise ValueError(f"the constant {e} is not a real number") from None
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
        return _pow(v, float(p))

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
        if isinstance(c, sp.Rational) and c.p == 1 and c.q != 1:
            bottom = float(c.q) if _is_one(bottom) else bottom * float(c.q)
        elif c != 1:
            top = float(c) if top is None else top * float(c)
        if top is None:
            top = 1.0
        r = top if _is_one(bottom) else top / bottom
        return -r if sign < 0 else r


def _is_one(v: Any) -> bool:
    return isinstance(v, float) and v == 1.0


def _arity_ok(op: str, vals: list[Any]) -> bool:
    from fasttape.ops import OP_BY_NAME

    return OP_BY_NAME[op].arity == len(vals)


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
