"""`peer`'s public API is what `__all__` says, sorted, and every name resolves."""

import peer
import peer.net


def test_all_is_sorted_and_resolves():
    for module in (peer, peer.net):
        assert module.__all__ == sorted(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_pinned_members():
    assert set(peer.__all__) >= {"Identity", "Multiaddr", "PeerError", "PeerID"}
    assert set(peer.net.__all__) == {
        "P2P",
        "AllowAll",
        "Authorizer",
        "Identity",
        "Multiaddr",
        "PeerID",
        "RPCStream",
        "TensorHeader",
        "TransportConfig",
    }
