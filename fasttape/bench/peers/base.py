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
import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from fasttape.bench.cases import Case
from fasttape.families import FLOATS, pairwise_sum

__all__ = ["Built", "Peer", "scalar_namespace"]


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
    """

    value: Callable[[np.ndarray], float] | None
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]]
    build_s: float
    compile_s: float
    style: str


class Peer:
    """Base class: name, import name, size caps and :meth:`build`."""

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

    def available(self) -> str | None:
        """None if the peer can run, else why not ("not installed: ...")."""
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or a broken install raising anything
            return f"not installed ({type(exc).__name__})"
        return None

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
        """Build (and compile) the peer's function for ``case``."""
        raise NotImplementedError


def scalar_namespace(**funcs: Any) -> SimpleNamespace:
    """A math namespace for ``case.fn``: pairwise ``sum`` plus the given functions."""
    return SimpleNamespace(sum=pairwise_sum, **funcs)


def float_namespace() -> SimpleNamespace:
    """The namespace evaluating ``case.fn`` on Python floats: :data:`fasttape.families.FLOATS`
    plus the functions of the random families."""

    def sigmoid(a: float) -> float:
        if a >= 0.0:
            return 1.0 / (1.0 + math.exp(-a))
        e = math.exp(a)
        return e / (1.0 + e)

    return SimpleNamespace(
        **vars(FLOATS), sin=math.sin, cos=math.cos, atan=math.atan, sqrt=math.sqrt,
        sigmoid=sigmoid,
    )
