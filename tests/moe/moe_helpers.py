"""Shared helpers of the MoE tests: tiny servers on plain P2P peers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from peer.moe import BatchingConfig, ExpertBackend, Server, ServerConfig, TensorSchema
from peer.moe.server import make_backends
from peer.net.p2p import P2P

HIDDEN = 8


def sgd_backend(
    uid: str, module: torch.nn.Module, lr: float = 0.1, max_batch_size: int = 64
) -> ExpertBackend:
    return ExpertBackend(
        uid,
        module,
        torch.optim.SGD(module.parameters(), lr=lr),
        args_schema=[TensorSchema((HIDDEN,))],
        max_batch_size=max_batch_size,
    )


@contextlib.contextmanager
def running_server(
    backends: dict[str, ExpertBackend], config: ServerConfig | None = None
) -> Iterator[tuple[Server, P2P]]:
    """A server on its own P2P peer and a client-only P2P peer; both shut down cleanly."""
    server_p2p = P2P.create()
    client_p2p = P2P.create(host_maddrs=[])
    server = Server(backends, p2p=server_p2p, config=config or ServerConfig())
    try:
        server.start()
        yield server, client_p2p
    finally:
        server.shutdown()
        client_p2p.shutdown()
        server_p2p.shutdown()


def ffn_backends(pattern: str, batching: BatchingConfig | None = None) -> dict[str, ExpertBackend]:
    config = ServerConfig(batching=batching or BatchingConfig())
    return make_backends(expert_pattern=pattern, expert_cls="ffn", hidden_dim=HIDDEN, config=config)
