"""The peers of ``fasttape bench``, one module each, in table order (:data:`PEERS`)."""

from fasttape.bench.peers.autograd_peer import AutogradPeer
from fasttape.bench.peers.base import Built, Peer
from fasttape.bench.peers.casadi_peer import CasadiPeer
from fasttape.bench.peers.ddx_peer import DdxPeer
from fasttape.bench.peers.jax_peer import JaxPeer
from fasttape.bench.peers.python_ref import PythonPeer
from fasttape.bench.peers.torch_peer import TorchCompilePeer, TorchPeer

__all__ = ["PEERS", "Built", "Peer", "peer_by_name"]

#: One instance of every peer, in table order.
PEERS: tuple[Peer, ...] = (
    PythonPeer(), CasadiPeer(), JaxPeer(), TorchPeer(), TorchCompilePeer(), AutogradPeer(),
    DdxPeer(),
)


def peer_by_name(name: str) -> Peer:
    """The peer labelled ``name`` (KeyError if none)."""
    for p in PEERS:
        if p.name == name:
            return p
    raise KeyError(name)
