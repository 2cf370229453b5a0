"""The client side of decentralized Mixture-of-Experts.

peer.moe.client.calls          acall_info / acall_forward / acall_backward / acall_params: one RPC
                               to one expert, with transport errors translated into `peer.moe.errors`
peer.moe.client.remote_expert  `RemoteExpert`: a torch module whose forward and backward run remotely
peer.moe.client.moe            `RemoteMixtureOfExperts`, `RemoteSwitchMixtureOfExperts`, `MoEConfig`
"""

from peer.moe.client.moe import MoEConfig, RemoteMixtureOfExperts, RemoteSwitchMixtureOfExperts
from peer.moe.client.remote_expert import RemoteExpert

__all__ = ["MoEConfig", "RemoteExpert", "RemoteMixtureOfExperts", "RemoteSwitchMixtureOfExperts"]
