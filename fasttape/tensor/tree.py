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

import numpy as np

__all__ = ["TreeDef", "as_leaf", "is_shape", "tree_flatten"]


def as_leaf(value: Any, shape: tuple[int, ...], name: str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape``, else a clear error naming the leaf.

    The one conversion of every array a tensor tape takes (arguments, parameters, tangents,
    cotangents).  Complex values are refused: a cast would drop the imaginary part with only
    a warning.  ``what`` says where ``shape`` comes from, for the message.
    """
    if type(value) is np.ndarray and value.dtype == np.float64 and value.shape == shape:
        return value
    arr = None
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise TypeError
        arr = arr.astype(np.float64, copy=False)
    except (TypeError, ValueError):
        dtype = f" of dtype {arr.dtype}" if isinstance(arr, np.ndarray) else ""
        raise TypeError(f"{name} must be an array of real numbers with shape {shape}, got "
                        f"{type(value).__name__}{dtype}") from None
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {shape} ({what})")
    return arr


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
        """The leaves of ``value``, which must have this structure (else a ValueError that
        names the entry, starting from ``where``)."""
        out: list[Any] = []
        self._flatten(value, (where,), out)
        return out

    def leaves_if_matches(self, value: Any) -> list[Any] | None:
        """The leaves of ``value`` if it has this structure, else None (no error)."""
        if self.kind == "leaf":
            return [value]
        if self.kind == "dict":
            if not isinstance(value, dict) or set(value) != set(self.keys):
                return None
            items = [value[k] for k in self.keys]
        elif not isinstance(value, (list, tuple)) or len(value) != len(self.children):
            return None
        else:
            items = list(value)
        out: list[Any] = []
        for c, v in zip(self.children, items, strict=True):
            sub = c.leaves_if_matches(v)
            if sub is None:
                return None
            out += sub
        return out

    def _flatten(self, value: Any, path: tuple[Any, ...], out: list[Any]) -> None:
        # ``path`` is formatted only for an error: flattening runs at every evaluation.
        if self.kind == "leaf":
            out.append(value)
            return
        if self.kind == "dict":
            if type(value) is not dict or value.keys() != set(self.keys):
                if not (isinstance(value, dict) and set(value) == set(self.keys)):
                    got = sorted(value, key=repr) if isinstance(value, dict) \
                        else type(value).__name__
                    raise ValueError(f"{_name(path)} must be a dict with keys "
                                     f"{list(self.keys)} (the structure it was traced with), "
                                     f"got {got}")
            for k, c in zip(self.keys, self.children, strict=True):
                c._flatten(value[k], (*path, repr(k)), out)
            return
        if not isinstance(value, (list, tuple)) or len(value) != len(self.children):
            size = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
            raise ValueError(f"{_name(path)} must be a {self.kind} of {len(self.children)} "
                             f"entries (the structure it was traced with), got {size}")
        for i, (c, v) in enumerate(zip(self.children, value, strict=True)):
            c._flatten(v, (*path, str(i)), out)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able description (dict keys must be str or int), for saved tapes."""
        keys = []
        for k in self.keys:
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise ValueError(f"only str and int dict keys can be saved, got {k!r}")
            keys.append(["s" if isinstance(k, str) else "i", k])
        return {"kind": self.kind, "keys": keys, "children": [c.to_json() for c in self.children]}

    @classmethod
    def from_json(cls, obj: Any, depth: int = 0) -> TreeDef:
        """The TreeDef that :meth:`to_json` described; ValueError for anything else."""
        if depth > 100 or not isinstance(obj, dict) or set(obj) != {"kind", "keys", "children"}:
            raise ValueError("not a tree description")
        kind, keys, children = obj["kind"], obj["keys"], obj["children"]
        if kind not in ("leaf", "dict", "list", "tuple") or not isinstance(keys, list) \
                or not isinstance(children, list):
            raise ValueError("not a tree description")
        parsed = []
        for item in keys:
            if not (isinstance(item, list) and len(item) == 2
                    and ((item[0] == "s" and isinstance(item[1], str))
                         or (item[0] == "i" and isinstance(item[1], int)
                             and not isinstance(item[1], bool)))):
                raise ValueError(f"bad dict key {item!r}")
            parsed.append(item[1])
        subs = tuple(cls.from_json(c, depth + 1) for c in children)
        if (kind == "leaf" and (subs or parsed)) or (kind == "dict" and len(parsed) != len(subs)) \
                or (kind in ("list", "tuple") and parsed):
            raise ValueError(f"inconsistent {kind} description")
        return cls(kind, tuple(parsed), subs)

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


def _name(path: tuple[Any, ...]) -> str:
    return path[0] + "".join(f"[{k}]" for k in path[1:])


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
