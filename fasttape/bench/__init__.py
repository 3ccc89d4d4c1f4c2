"""``fasttape bench``: graph families side by side with peers (see docs/benchmarks.md).

Modules: :mod:`~fasttape.bench.cli` (arguments, report), :mod:`~fasttape.bench.cases`
(families at sizes), :mod:`~fasttape.bench.runner` (checks and timing),
:mod:`~fasttape.bench.baseline` (the hand-written kernel), :mod:`~fasttape.bench.peers` (one
module per peer), :mod:`~fasttape.bench.west` (the 10k x 10k workload),
:mod:`~fasttape.bench.output` (table, Markdown, JSON, plot), :mod:`~fasttape.bench.timing`
and :mod:`~fasttape.bench.machine`.
"""

from fasttape.bench.cli import main

__all__ = ["main"]
