"""Decentralized Mixture-of-Experts: volunteers host experts, trainers route inputs to the best live ones.

Server side
    peer.moe.expert_uid       `ExpertUID`, grid prefixes, patterns like "ffn.[0:4].[0:16]" (pure)
    peer.moe.experts          built-in expert modules (ffn, transformer, nop) and the registry
                              (`@register_expert_class`, entry points `hivemind_platform.experts`)
    peer.moe.schema           `TensorSchema`: shape and dtype of one expert input or output
    peer.moe.expert_backend   `ExpertBackend`: module + optimizer + scheduler + schemas
    peer.moe.runtime          `Runtime`, `TaskPool`, `BatchingConfig`: batching, oldest batch first
    peer.moe.checkpoints      save/restore expert state
    peer.moe.server           `Server`, `ServerConfig`: RPC handlers, declarations, checkpoints
    peer.moe.cli              `hivemind-peer serve-experts`
Shared
    peer.moe.protocol         the wire protocol (the only user of peer/proto/moe_pb2)
    peer.moe.beam_search      `ExpertBeamSearch`: exact top-k over declared experts (pure)
    peer.moe.dht_declaration  declare experts in the DHT, look them up (and count their replicas),
                              run the beam search
    peer.moe.errors           `MoEError` and its subclasses
Client side
    peer.moe.client           `RemoteExpert`, `RemoteMixtureOfExperts`, `RemoteSwitchMixtureOfExperts`
"""

from peer.moe.beam_search import ExpertBeamSearch, ExpertEntry
from peer.moe.client import MoEConfig, RemoteExpert, RemoteMixtureOfExperts, RemoteSwitchMixtureOfExperts
from peer.moe.dht_declaration import declare_experts, find_best_experts, get_expert_replicas, get_experts
from peer.moe.errors import (
    ExpertCallError,
    ExpertInputError,
    ExpertTimeoutError,
    MoEError,
    NotEnoughExpertsError,
)
from peer.moe.expert_backend import ExpertBackend
from peer.moe.expert_uid import UID_DELIMITER, ExpertUID, generate_uids_from_pattern
from peer.moe.experts import get_expert_class, register_expert_class
from peer.moe.runtime import BatchingConfig, Runtime, TaskPool
from peer.moe.schema import TensorSchema
from peer.moe.server import Server, ServerConfig

__all__ = [
    "UID_DELIMITER",
    "BatchingConfig",
    "ExpertBackend",
    "ExpertBeamSearch",
    "ExpertCallError",
    "ExpertEntry",
    "ExpertInputError",
    "ExpertTimeoutError",
    "ExpertUID",
    "MoEConfig",
    "MoEError",
    "NotEnoughExpertsError",
    "RemoteExpert",
    "RemoteMixtureOfExperts",
    "RemoteSwitchMixtureOfExperts",
    "Runtime",
    "Server",
    "ServerConfig",
    "TaskPool",
    "TensorSchema",
    "declare_experts",
    "find_best_experts",
    "generate_uids_from_pattern",
    "get_expert_class",
    "get_expert_replicas",
    "get_experts",
    "register_expert_class",
]
