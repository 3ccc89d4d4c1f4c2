"""fasttape: compile a scalar computational graph once, evaluate values and gradients fast.

The pipeline, module by module: :mod:`~fasttape.var` / :mod:`~fasttape.trace` (record Python
code) -> :mod:`~fasttape.graph` (flat node columns) -> :mod:`~fasttape.passes` (dead code,
optimisation) ->
:mod:`~fasttape.compile` (flatten) -> :mod:`~fasttape.tape` (the record: struct-of-arrays,
one-point value and gradient) -> :mod:`~fasttape.kernels` (Numba sweeps generated from the op
table :mod:`~fasttape.ops`).  Batches, derivatives, checkpointing, files and embedding sit above
the record; :mod:`~fasttape.api` assembles the user-facing :class:`Tape` from them.
"""

# Before the imports: the kernel cache folder (fasttape.kernels.jit.cache_dir) is named after
# it, and the op dispatch module is built into that folder while the package imports.
__version__ = "0.1.0"

from fasttape import ops
from fasttape.api import Tape, TensorTape, compile, load
from fasttape.checkpoint import CheckpointReport, checkpointed, scan
from fasttape.embed.sympy_import import from_sympy
from fasttape.graph import Graph
from fasttape.passes import optimize
from fasttape.serialize import FORMAT_VERSION, TapeFormatError
from fasttape.tape import GRAD_MODES
from fasttape.tensor.graph import TensorGraph
from fasttape.tensor.tensor import Tensor
from fasttape.trace import OP_FUNCTIONS, logsumexp, mean, softmax, sum, trace
from fasttape.var import Var

globals().update(OP_FUNCTIONS)


__all__ = [
    "Graph",
    "Var",
    "Tape",
    "compile",
    "optimize",
    "trace",
    "from_sympy",
    "scan",
    "checkpointed",
    "CheckpointReport",
    "load",
    "TapeFormatError",
    "FORMAT_VERSION",
    "GRAD_MODES",
    "sum",
    "mean",
    "logsumexp",
    "softmax",
    "Tensor",
    "TensorGraph",
    "TensorTape",
    "ops",
    *sorted(OP_FUNCTIONS),
]
