"""Graph passes: graph-to-graph (or graph-to-mask) transformations run by :func:`fasttape.compile`.

Each pass is a small module with one job.  Today the pipeline is dead-code elimination
(:mod:`fasttape.passes.dce`) followed by flattening into a Tape (:mod:`fasttape.compile`).
"""

from fasttape.passes.dce import live_nodes

__all__ = ["live_nodes"]
