"""Store versus recompute: gradients under a memory budget.

- :func:`scan` (``ft.scan``): a step applied ``T`` times, traced and compiled once, reversed
  with Griewank's binomial checkpointing (:mod:`~fasttape.checkpoint.revolve`).
- :func:`checkpointed` (``ft.compile(graph, memory_limit=...)``): one flat tape reversed
  segment by segment from checkpoints at segment boundaries
  (:mod:`~fasttape.checkpoint.segments`, after Chen et al. 2016).

Both give gradients bitwise equal to the store-everything gradient and report what they cost
(:class:`~fasttape.checkpoint.report.CheckpointReport`).  See docs/store-vs-recompute.md.
"""

from fasttape.checkpoint.report import CheckpointReport, CheckpointWarning
from fasttape.checkpoint.revolve import repetition_number, revolve_cost, schedule
from fasttape.checkpoint.scan import Scan, scan
from fasttape.checkpoint.segments import CheckpointedTape, checkpointed

__all__ = [
    "CheckpointReport",
    "CheckpointWarning",
    "CheckpointedTape",
    "checkpointed",
    "Scan",
    "scan",
    "repetition_number",
    "revolve_cost",
    "schedule",
]
