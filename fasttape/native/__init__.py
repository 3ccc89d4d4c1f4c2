"""The native tier: a tape compiled to straight-line machine code with LLVM (docs/native.md).

``tape.native()`` (:func:`native`) returns a :class:`NativeTape` whose ``value``,
``value_and_grad`` and ``grad`` run generated forward and reverse sweeps, bitwise the
interpreter's results.  Modules, in pipeline order: :mod:`~fasttape.native.translate` (the op
table's formulas as LLVM IR), :mod:`~fasttape.native.emit` (a tape as pieces of IR),
:mod:`~fasttape.native.machine` (object code, loading), :mod:`~fasttape.native.cache` (the
disk cache), :mod:`~fasttape.native.tape` (the user-facing object) and
:mod:`~fasttape.native.tier` (compiling in the background once a tape is hot).
"""

from fasttape.native.tape import (
    DEFAULT_PIECE_SIZE,
    NativeTape,
    native,
    opt_level,
    piece_levels,
)
from fasttape.native.tier import TieredTape, tiered

__all__ = ["DEFAULT_PIECE_SIZE", "NativeTape", "TieredTape", "native", "opt_level",
           "piece_levels", "tiered"]
