"""Tensor-valued nodes: NumPy code traced on whole arrays, one instruction per array op.

The pipeline of the scalar engine, for tensors: :mod:`~fasttape.tensor.tensor` (the traced
:class:`Tensor` and its NumPy protocol) and :mod:`~fasttape.tensor.trace` (``ft.trace(fn,
shapes=...)``) record a :mod:`~fasttape.tensor.graph` of instructions over slot ranges;
:mod:`~fasttape.tensor.tape` compiles it into a validated :class:`TensorTape` whose sweeps are
:mod:`fasttape.kernels.tensor`.  docs/tensors.md is the reference.
"""
