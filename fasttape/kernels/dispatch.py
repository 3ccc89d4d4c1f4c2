"""The op dispatch functions: the op table's formulas, one ``if op == code`` branch per op.

Built from the table by :func:`fasttape.kernels.codegen.load_dispatch` when this module is
imported (into the kernel cache folder, never the source tree: see that module), and named
here so that the sweeps import them as from any module.  ``python -m fasttape.kernels.codegen
--show`` prints their source.

Every function is inlined by Numba into the sweep that calls it, so a sweep compiles to one
loop around one switch.  The forms, by caller:

- single-point sweeps (``sweep.py``): ``value``, ``value_store_partials``, ``partials``,
  ``unit_adjoint``;
- tangents and second order (``tangent.py``, ``sparsity.py``): ``value_and_partials``,
  ``partials``, ``partials_and_second``;
- batches, a row of points per slot (``batch.py``): ``value_rows``,
  ``value_store_partials_rows``, ``unit_adjoint_rows``, ``adjoint_lean_rows``;
- tensor elementwise groups, a strided range per argument (``tensor.py``):
  ``elementwise_value``, ``elementwise_adjoint``, ``elementwise_tangent``,
  ``elementwise_adjoint_tangent``.
"""

from fasttape.kernels.codegen import load_dispatch

_generated = load_dispatch()

#: Arguments of each op code, and how many of them (the first ones) are differentiable.
ARITY = _generated.ARITY
NDIFF = _generated.NDIFF

value = _generated.value
value_store_partials = _generated.value_store_partials
value_and_partials = _generated.value_and_partials
partials = _generated.partials
partials_and_second = _generated.partials_and_second
unit_adjoint = _generated.unit_adjoint
value_rows = _generated.value_rows
value_store_partials_rows = _generated.value_store_partials_rows
unit_adjoint_rows = _generated.unit_adjoint_rows
adjoint_lean_rows = _generated.adjoint_lean_rows
elementwise_value = _generated.elementwise_value
elementwise_adjoint = _generated.elementwise_adjoint
elementwise_tangent = _generated.elementwise_tangent
elementwise_adjoint_tangent = _generated.elementwise_adjoint_tangent

__all__ = [
    "ARITY",
    "NDIFF",
    "adjoint_lean_rows",
    "elementwise_adjoint",
    "elementwise_adjoint_tangent",
    "elementwise_tangent",
    "elementwise_value",
    "partials",
    "partials_and_second",
    "unit_adjoint",
    "unit_adjoint_rows",
    "value",
    "value_and_partials",
    "value_rows",
    "value_store_partials",
    "value_store_partials_rows",
]
