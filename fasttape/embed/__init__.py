"""Embedding: call a compiled tape from Numba, C, SciPy, JAX and PyTorch; build one from SymPy.

One module per route, each importable on its own; the optional frameworks (SciPy, SymPy, JAX,
PyTorch) are imported only by the module that bridges to them:

- :mod:`~fasttape.embed.numba_api`: ``tape.numba_kernel()`` for your own ``@numba.njit`` loops;
- :mod:`~fasttape.embed.cabi`: ``tape.cfunc()``, C function pointers (ctypes, cffi, C,
  ``scipy.LowLevelCallable``);
- :mod:`~fasttape.embed.scipy_opt`: ``scipy.optimize`` helpers (bounds, several outputs);
- :mod:`~fasttape.embed.jax_bridge` and :mod:`~fasttape.embed.torch_bridge`: a tape as a
  differentiable JAX function or ``torch.autograd.Function``;
- :mod:`~fasttape.embed.sympy_import`: ``ft.from_sympy(exprs, symbols)``;
- :mod:`~fasttape.embed.dot`: ``graph.to_dot()`` / ``tape.to_dot()``.

docs/embedding.md has a runnable example per route.
"""
