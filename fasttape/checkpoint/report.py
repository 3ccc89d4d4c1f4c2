"""What a checkpointed gradient cost: step evaluations, memory held at peak, the budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["CheckpointReport", "CheckpointWarning"]


class CheckpointWarning(UserWarning):
    """A memory budget that checkpointing cannot meet (the report says by how much)."""


@dataclass
class CheckpointReport:
    """Cost of the last gradient of a checkpointed scan or tape.

    Attributes
    ----------
    kind : str
        ``"revolve"`` (:func:`fasttape.scan`), ``"segments"`` (flat tape, Chen et al.) or
        ``"store-all"`` (the budget holds everything: plain gradient).
    budget_nbytes : int or None
        The ``memory_limit`` asked for (``None`` when ``snapshots=`` was given).
    peak_nbytes : int
        Bytes of the work arrays held at once by one gradient call (engine accounting; the
        tests check it against ``tracemalloc``).
    overhead_nbytes : int
        The part of ``peak_nbytes`` that does not shrink with the budget (step tape work
        buffers for a scan; segment buffers, input adjoints and plan arrays for a flat tape).
    within_budget : bool
        ``peak_nbytes <= budget_nbytes`` (True when no budget was given).
    snapshots : int
        Scan: state snapshots held at most.  Segments: number of segments.
    forward_evaluations : int
        Scan: plain forward steps ("advances"), which is ``r*T - C(s+r, s+1)`` for revolve.
        Segments: instructions evaluated by forward sweeps (first sweep plus recomputation).
    taped_evaluations : int
        Scan: steps evaluated with partials and reversed (always ``T``).  Segments: the
        number of instructions.
    note : str
        Why the budget was not met, or ``""``.
    """

    kind: str
    budget_nbytes: int | None
    peak_nbytes: int
    overhead_nbytes: int
    within_budget: bool
    snapshots: int
    forward_evaluations: int = 0
    taped_evaluations: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict."""
        return asdict(self)
