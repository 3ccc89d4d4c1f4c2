"""What a peer is: an optional engine that builds and evaluates a benchmark case.

Each peer module defines one :class:`Peer` subclass.  ``build(case)`` writes the case's
function the way the peer's own users would (straight-line scalar code from ``case.fn``, or
vectorized array code for the families in :data:`~fasttape.bench.cases.VECTORIZED` where the
peer is an array library) and returns a :class:`Built` with the value and value+gradient
callables and the build and compile times.  The runner (:mod:`fasttape.bench.runner`) times
them, checks their agreement with fasttape and applies the size caps and the time limit.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.bench.families import pairwise_sum, vectorized_fn
from fasttape.ops import OP_BY_NAME

__all__ = [
    "OPERATORS", "ArrayPeer", "Built", "OpNamespace", "Peer", "ScalarGraphPeer", "Unsupported",
    "as_numpy", "scalar_code", "vectorized_fn",
]


@dataclass
class Built:
    """A peer's compiled function.

    Attributes
    ----------
    value : callable or None
        ``value(x) -> float``; None where the peer has no value-only evaluation.
    value_and_grad : callable
        ``value_and_grad(x) -> (float, ndarray)``.
    build_s, compile_s : float
        Time to build the peer's graph or function object, and to compile it (0 where there
        is no separate step).
    style : str
        "scalar" (straight-line code, one op per instruction) or "vectorized" (array code).
    on_device : callable or None
        ``on_device(x) -> call``: ``call()`` evaluates value and gradient on ``x`` already
        moved to the peer's device, and waits for the result, without the copies to and from
        NumPy that ``value_and_grad`` includes (JAX: device arrays, ``block_until_ready``).
        None where the peer's arrays are NumPy's own.
    """

    value: Callable[[np.ndarray], float] | None
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]
    build_s: float
    compile_s: float
    style: str
    on_device: Callable[[np.ndarray], Callable[[], Any]] | None = None


#: The attributes a peer's class header may set (see :class:`Peer`).
_SPEC = ("name", "module", "dist", "scalar_cap", "scalar_cap_quick", "vector_cap",
         "vector_cap_quick", "vectorized")


class Peer:
    """Base class: name, import name, size caps and :meth:`build`.

    A subclass declares what it is in its header, as class keywords that set the attributes
    below: ``class JaxPeer(ArrayPeer, name="jax", module="jax", scalar_cap=600)``.
    """

    #: Column label in the table.
    name = "peer"
    #: Module whose import decides whether the peer is installed.
    module = ""
    #: Distribution name for the version (defaults to ``module``).
    dist = ""
    #: Largest case (instructions) for straight-line scalar code; None: no cap.
    scalar_cap: int | None = None
    #: The same in ``--quick`` runs.
    scalar_cap_quick: int | None = None
    #: Largest case for vectorized code (families in VECTORIZED).
    vector_cap: int | None = None
    vector_cap_quick: int | None = None
    #: Whether the peer has vectorized code for the VECTORIZED families.
    vectorized = False

    def __init_subclass__(cls, **spec: Any) -> None:
        unknown = sorted(k for k in spec if k not in _SPEC)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown peer field(s) {unknown}; "
                            f"a peer's header takes {', '.join(_SPEC)}")
        super().__init_subclass__()
        for key, value in spec.items():
            setattr(cls, key, value)

    def available(self) -> str | None:
        """None if the peer can run, else why not ("not installed: ...")."""
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken install raising anything
            return f"not installed ({type(exc).__name__})"
        return None

    def applies(self, family: str, quick: bool) -> str | None:
        """None if the peer runs ``family``, else the status of its row ("n/a (...)").

        Scalar graph engines sit out the tensor families: their code there would be the
        scalar twin's, which the scalar family of the same name already runs.
        """
        from fasttape.bench.cases import TENSOR_FAMILIES

        if family in TENSOR_FAMILIES and self.style(family) != "vectorized":
            return f"n/a (array code only: see {family.removesuffix('-vec')})"
        return None

    def installed(self) -> bool:
        """Whether the peer's module can be found, without importing it (cheap)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str:
        """The installed version, or "" when unknown."""
        try:
            return importlib.metadata.version(self.dist or self.module)
        except importlib.metadata.PackageNotFoundError:
            return ""

    def style(self, family: str) -> str:
        """"vectorized" or "scalar": the code this peer runs for ``family``."""
        from fasttape.bench.cases import VECTORIZED

        return "vectorized" if self.vectorized and family in VECTORIZED else "scalar"

    def cap(self, family: str, quick: bool) -> int | None:
        """Largest size (instructions) this peer is run at for ``family``."""
        if self.style(family) == "vectorized":
            return self.vector_cap_quick if quick else self.vector_cap
        return self.scalar_cap_quick if quick else self.scalar_cap

    def build(self, case: Case) -> Built:
        """Build (and compile) the peer's function for ``case``.

        Raises :class:`Unsupported` (from :class:`OpNamespace`) when the case uses an op the
        peer has no function for.
        """
        raise NotImplementedError


class ArrayPeer(Peer, scalar_cap=12_000, scalar_cap_quick=1_200, vector_cap=None,
                vector_cap_quick=12_000, vectorized=True):
    """An array library (JAX, PyTorch, autograd): vectorized code for the VECTORIZED families,
    straight-line code on scalars (one array element or 0-d tensor per node) otherwise."""

    def array_function(
        self, case: Case, xp: Any, overrides: dict[str, Any]
    ) -> tuple[Callable[[Any], Any], str]:
        """``case``'s function of one array, and its style, as this library's users write it.

        Parameters
        ----------
        case : Case
            The benchmark case.
        xp : module
            The library's array namespace (``jax.numpy``, ``autograd.numpy``).
        overrides : dict
            The :class:`OpNamespace` overrides for straight-line scalar code.

        Returns
        -------
        (callable, str)
            :func:`vectorized_fn` and ``"vectorized"`` for the VECTORIZED families, else
            :func:`scalar_code` over ``OpNamespace(self.name, xp, overrides)`` and
            ``"scalar"``.
        """
        if self.style(case.family) == "vectorized":
            return vectorized_fn(case.family, case, xp), "vectorized"
        return scalar_code(case, OpNamespace(self.name, xp, overrides)), "scalar"


class ScalarGraphPeer(Peer, scalar_cap=1_200_000, scalar_cap_quick=12_000):
    """A scalar expression-graph engine (CasADi SX, ddx): the case traced into the peer's own
    graph of scalar operations, evaluated by its interpreter, up to fasttape's largest sizes."""


def scalar_code(case: Case, ns: Any) -> Callable[[Any], Any]:
    """``case.fn`` as a function of one array, its items the inputs, with the namespace ``ns``."""
    n = case.tape.n_inputs
    fn = case.fn

    def f(x: Any) -> Any:
        return fn([x[i] for i in range(n)], ns)

    return f


def as_numpy(
    value: Callable[[Any], Any], value_and_grad: Callable[[Any], tuple[Any, Any]],
    build_s: float, compile_s: float, style: str,
    on_device: Callable[[np.ndarray], Callable[[], Any]] | None = None,
) -> Built:
    """A :class:`Built` whose callables return a float and a NumPy gradient."""

    def v(x: np.ndarray) -> float:
        return float(value(x))

    def vg(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = value_and_grad(x)
        return float(f), np.asarray(g)

    return Built(v, vg, build_s, compile_s, style, on_device)


class Unsupported(Exception):
    """A peer has no function for an op: the runner reports it "unsupported" for the family."""

    def __init__(self, peer: str, op: str) -> None:
        super().__init__(f"{peer} has no {op}")
        self.peer = peer
        self.op = op


#: Ops every peer spells with Python's operators (the stored argument order of the
#: constant-argument forms is ``x, c``).
OPERATORS: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
    "neg": operator.neg, "mulc": operator.mul, "addc": operator.add, "subc": operator.sub,
    "divc": operator.truediv,
    "rsubc": lambda a, c: operator.sub(c, a), "rdivc": lambda a, c: operator.truediv(c, a),
}


#: Ops whose stored argument order differs from the libraries' same-named function
#: (``where`` is stored ``where(a, b, cond)``, NumPy's is ``where(cond, a, b)``): a peer
#: needs an explicit override for them, never the same-named function.
NEEDS_OVERRIDE = frozenset({"where"})


class OpNamespace:
    """The math namespace ``m`` a family's code ``fn(x, m)`` gets when a peer builds it.

    An op name resolves to, in order: the peer's explicit override (where its own name or
    spelling differs), Python's operator (:data:`OPERATORS`), or the function of the same name
    in the peer's module (not for :data:`NEEDS_OVERRIDE`).  A name none of these has raises
    :class:`Unsupported`, which the runner turns into an "unsupported" row.  ``sum`` is the
    balanced tree of additions of :func:`fasttape.sum`, so that every system adds the terms
    in the same order.

    Parameters
    ----------
    peer : str
        The peer's name (for the message).
    module : module or None
        Where same-named functions are looked up (``jax.numpy``, ``torch``, ``casadi``, ...).
    overrides : dict
        Op name -> the peer's function; a value of None says the peer has no such op.
    """

    def __init__(self, peer: str, module: Any, overrides: dict[str, Any]) -> None:
        self._peer = peer
        self._module = module
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name == "sum":
            return pairwise_sum
        if name in self._overrides:
            fn = self._overrides[name]
        elif name in OPERATORS:
            fn = OPERATORS[name]
        elif name in OP_BY_NAME and name not in NEEDS_OVERRIDE:
            fn = getattr(self._module, name, None)
        else:
            fn = None
        if fn is None:
            raise Unsupported(self._peer, name)
        return fn
