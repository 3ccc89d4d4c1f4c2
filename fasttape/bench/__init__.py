"""``fasttape bench``: graph families side by side with peers (see docs/benchmarks.md).

Modules: :mod:`~fasttape.bench.cli` (arguments, report), :mod:`~fasttape.bench.families`
(the graph families), :mod:`~fasttape.bench.cases` (families at sizes),
:mod:`~fasttape.bench.runner` (checks and timing), :mod:`~fasttape.bench.baseline` (the
hand-written kernel), :mod:`~fasttape.bench.pyops` (the op table evaluated in plain Python),
:mod:`~fasttape.bench.peers` (one module per peer), :mod:`~fasttape.bench.west` (the 10k x 10k
workload), :mod:`~fasttape.bench.output` (table, Markdown, JSON, plot),
:mod:`~fasttape.bench.timing` and :mod:`~fasttape.bench.machine`.  The scripts in the
repository's ``benchmarks/`` folder import these modules; nothing is defined twice.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run ``fasttape bench`` with ``argv`` (see :func:`fasttape.bench.cli.main`)."""
    # Imported here so that ``import fasttape.bench.families`` (used by the tests) stays light.
    from fasttape.bench.cli import main as cli_main

    return cli_main(argv)
