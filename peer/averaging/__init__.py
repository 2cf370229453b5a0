"""Moshpit averaging: groups of peers average tensors with a butterfly all-reduce, groups change
every round, and the swarm converges to the global average with no global barrier.

    peer.averaging.partition      pure: parts sized by bandwidth, chunks, the flat buffer, schema hash,
                                  `GroupInfo`/`GroupMember`
    peer.averaging.grid           pure: `MoshpitGrid` coordinates -> `GroupKey`, an in-memory round model
    peer.averaging.allreduce      `ButterflyAllReduce` (one round among a known group, P2P only),
                                  `AllReduceService` (serves <prefix>.avg.reduce/1), fault hooks
    peer.averaging.reducer        `PartReducer`: the reducer side of a round (accumulate, exclude, return)
    peer.averaging.chunks         chunks between the wire and the flat vector: no copy on the event
                                  loop, one worker-thread hop per chunk, pooled buffers
    peer.averaging.matchmaking    `Matchmaking`: leaders and followers under a DHT key, with deadlines
    peer.averaging.state_sharing  `StateServer` / `download_state`: newcomers load a donor's state
    peer.averaging.averager       `DecentralizedAverager`, `AveragingConfig`: the public facade
    peer.averaging.protocol       method names and the only use of `peer.proto.averaging_pb2`

See docs/averaging.md for the protocol and the fault-tolerance guarantees.
"""

from peer.averaging.allreduce import (
    AllReduceHooks,
    AllReduceResult,
    AllReduceService,
    AllReduceSettings,
    ButterflyAllReduce,
)
from peer.averaging.averager import AveragingConfig, DecentralizedAverager
from peer.averaging.grid import GroupKey, MoshpitGrid
from peer.averaging.matchmaking import Matchmaking, MatchmakingSettings
from peer.averaging.partition import GroupInfo, GroupMember, split_part_sizes

__all__ = [
    "AllReduceHooks",
    "AllReduceResult",
    "AllReduceService",
    "AllReduceSettings",
    "AveragingConfig",
    "ButterflyAllReduce",
    "DecentralizedAverager",
    "GroupInfo",
    "GroupKey",
    "GroupMember",
    "Matchmaking",
    "MatchmakingSettings",
    "MoshpitGrid",
    "split_part_sizes",
]
