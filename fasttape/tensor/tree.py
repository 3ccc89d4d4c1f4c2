"""Nested inputs (JAX's pytrees, in small): dicts, lists and tuples whose leaves are arrays.

A traced function may take its tensors nested, ``loss(params, X, y)`` with ``params`` a dict of
weight matrices.  The structure is recorded once, as a :class:`TreeDef`, when the function is
traced from a nest of *shapes*; every later call flattens its arguments by that structure (and
says which leaf is wrong when they do not fit), and gradients are unflattened into it.

Dict entries are taken in sorted key order, as JAX does, so a tape does not depend on the
order in which a dict was built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["TreeDef", "is_shape", "tree_flatten"]


def is_shape(value: Any) -> bool:
    """True for a shape: a tuple of non-negative ints (``()`` is a scalar) or a single int."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    )


@dataclass(frozen=True)
class TreeDef:
    """The structure of a nest: ``kind`` is ``"leaf"``, ``"dict"``, ``"list"`` or ``"tuple"``;
    ``keys`` the sorted dict keys; ``children`` the sub-structures in order."""

    kind: str
    keys: tuple[Any, ...] = ()
    children: tuple[TreeDef, ...] = ()

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return 1 if self.kind == "leaf" else sum(c.n_leaves for c in self.children)

    def paths(self, prefix: str = "") -> list[str]:
        """A readable name per leaf, in leaf order (``"[0]['W1']"``), for error messages."""
        if self.kind == "leaf":
            return [prefix or "the input"]
        names = [repr(k) for k in self.keys] if self.kind == "dict" else [
            str(i) for i in range(len(self.children))]
        return [p for name, c in zip(names, self.children, strict=True)
                for p in c.paths(f"{prefix}[{name}]")]

    def flatten(self, value: Any, where: str = "the input") -> list[Any]:
        """The leaves of ``value``, which must have this structure (else a ValueError)."""
        if self.kind == "leaf":
            return [value]
        if self.kind == "dict":
            if not isinstance(value, dict) or set(value) != set(self.keys):
                got = sorted(value, key=repr) if isinstance(value, dict) else type(value).__name__
                raise ValueError(f"{where} must be a dict with keys {list(self.keys)} (the "
                                 f"structure it was traced with), got {got}")
            items = [value[k] for k in self.keys]
            names = [f"{where}[{k!r}]" for k in self.keys]
        else:
            if not isinstance(value, (list, tuple)) or len(value) != len(self.children):
                size = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
                raise ValueError(f"{where} must be a {self.kind} of {len(self.children)} "
                                 f"entries (the structure it was traced with), got {size}")
            items = list(value)
            names = [f"{where}[{i}]" for i in range(len(items))]
        return [leaf for c, v, n in zip(self.children, items, names, strict=True)
                for leaf in c.flatten(v, n)]

    def unflatten(self, leaves: list[Any]) -> Any:
        """The nest with this structure holding ``leaves`` in order."""
        it = iter(leaves)
        return self._build(it)

    def _build(self, it: Any) -> Any:
        if self.kind == "leaf":
            return next(it)
        values = [c._build(it) for c in self.children]
        if self.kind == "dict":
            return dict(zip(self.keys, values, strict=True))
        return tuple(values) if self.kind == "tuple" else values


def tree_flatten(nest: Any, is_leaf: Callable[[Any], bool] = is_shape
                 ) -> tuple[list[Any], TreeDef]:
    """``(leaves, treedef)`` of a nest of dicts, lists and tuples; ``is_leaf`` picks leaves
    (by default shapes, so that ``(3, 4)`` is one leaf and not a tuple of two)."""
    if is_leaf(nest):
        return [nest], TreeDef("leaf")
    if isinstance(nest, dict):
        try:
            keys = tuple(sorted(nest))
        except TypeError:
            raise TypeError(f"dict keys must be sortable, got {list(nest)}") from None
        parts = [tree_flatten(nest[k], is_leaf) for k in keys]
        return [x for p in parts for x in p[0]], TreeDef("dict", keys, tuple(p[1] for p in parts))
    if isinstance(nest, (list, tuple)):
        parts = [tree_flatten(v, is_leaf) for v in nest]
        kind = "tuple" if isinstance(nest, tuple) else "list"
        return [x for p in parts for x in p[0]], TreeDef(kind, (), tuple(p[1] for p in parts))
    raise TypeError(
        f"expected a shape (a tuple of non-negative ints, or an int) or a dict, list or tuple "
        f"of shapes, got {nest!r}"
    )
