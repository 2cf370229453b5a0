"""The averaging wire: method names and the only module of `peer.averaging` touching `averaging_pb2`.

    <prefix>.avg.join/1    JoinRequest -> LeaderMessage* (ACCEPTED, then BEGIN or DISBANDED; or REJECTED)
    <prefix>.avg.reduce/1  ReduceRequest, chunk TENSORs ->  <- averaged chunk TENSORs
    <prefix>.avg.state/1   StateRequest -> StateHeader, one TENSOR per tensor

The rest of the package sees the dataclasses below and in `partition` (`GroupInfo`, `GroupMember`).
Malformed messages raise `ProtocolViolationError`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from google.protobuf.message import DecodeError, Message

from peer.averaging.partition import GroupInfo, GroupMember
from peer.errors import ProtocolViolationError
from peer.proto import averaging_pb2

_PREFIX = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(f"prefix: expected 1-64 letters, digits, '_' or '-', got {prefix!r}")
    return prefix


def join_method(prefix: str) -> str:
    return f"{prefix}.avg.join/1"


def reduce_method(prefix: str) -> str:
    return f"{prefix}.avg.reduce/1"


def state_method(prefix: str) -> str:
    return f"{prefix}.avg.state/1"


class LeaderCode(enum.IntEnum):
    ACCEPTED = averaging_pb2.ACCEPTED
    BEGIN = averaging_pb2.BEGIN
    REJECTED = averaging_pb2.REJECTED
    DISBANDED = averaging_pb2.DISBANDED


@dataclass(frozen=True)
class JoinRequest:
    group_key: str
    schema_hash: bytes
    deadline: float
    member: GroupMember  # the follower as it wants to appear in the group


@dataclass(frozen=True)
class LeaderMessage:
    code: LeaderCode
    reason: str = ""
    group: GroupInfo | None = None


@dataclass(frozen=True)
class ReduceRequest:
    group_id: bytes
    weight: float


@dataclass(frozen=True)
class StateHeader:
    metadata: bytes
    num_tensors: int


def _parse(message_type: type[Message], data: bytes) -> Message:
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise ProtocolViolationError(f"malformed {message_type.__name__}: {e}") from None
    return message


def encode_join(request: JoinRequest) -> averaging_pb2.JoinRequest:
    m = request.member
    return averaging_pb2.JoinRequest(
        group_key=request.group_key,
        schema_hash=request.schema_hash,
        deadline=request.deadline,
        bandwidth=m.bandwidth,
        client_mode=m.client_mode,
        maddrs=list(m.maddrs),
        gather=m.gather,
    )


def decode_join(message: averaging_pb2.JoinRequest, peer_id: str) -> JoinRequest:
    """`peer_id` comes from the authenticated connection, never from the message."""
    if not message.bandwidth > 0:
        raise ProtocolViolationError(f"join request from {peer_id} declares bandwidth {message.bandwidth}")
    member = GroupMember(
        peer_id=peer_id,
        maddrs=tuple(message.maddrs),
        bandwidth=message.bandwidth,
        client_mode=message.client_mode,
        gather=message.gather,
    )
    return JoinRequest(message.group_key, message.schema_hash, message.deadline, member)


def _encode_group(group: GroupInfo) -> averaging_pb2.Group:
    return averaging_pb2.Group(
        group_id=group.group_id,
        members=[
            averaging_pb2.GroupMember(
                peer_id=m.peer_id,
                maddrs=list(m.maddrs),
                bandwidth=m.bandwidth,
                client_mode=m.client_mode,
                gather=m.gather,
            )
            for m in group.members
        ],
    )


def encode_leader_message(message: LeaderMessage) -> averaging_pb2.LeaderMessage:
    out = averaging_pb2.LeaderMessage(code=message.code.value, reason=message.reason)  # type: ignore[arg-type]
    if message.group is not None:
        out.group.CopyFrom(_encode_group(message.group))
    return out


def decode_leader_message(message: averaging_pb2.LeaderMessage) -> LeaderMessage:
    try:
        code = LeaderCode(message.code)
    except ValueError:
        raise ProtocolViolationError(f"unknown leader code {message.code}") from None
    group = None
    if code == LeaderCode.BEGIN:
        try:
            group = GroupInfo(
                group_id=message.group.group_id,
                members=tuple(
                    GroupMember(m.peer_id, tuple(m.maddrs), m.bandwidth, m.client_mode, m.gather)
                    for m in message.group.members
                ),
            )
            group.part_sizes(0)  # validates bandwidths
        except ValueError as e:
            raise ProtocolViolationError(f"the leader sent a bad group: {e}") from None
    return LeaderMessage(code, message.reason, group)


def encode_reduce_request(request: ReduceRequest) -> averaging_pb2.ReduceRequest:
    return averaging_pb2.ReduceRequest(group_id=request.group_id, weight=request.weight)


def decode_reduce_request(message: averaging_pb2.ReduceRequest) -> ReduceRequest:
    if not message.weight >= 0:
        raise ProtocolViolationError(f"reduce request with weight {message.weight}")
    return ReduceRequest(message.group_id, message.weight)


def encode_state_request(schema: bytes) -> averaging_pb2.StateRequest:
    return averaging_pb2.StateRequest(schema_hash=schema)


def encode_state_header(header: StateHeader) -> averaging_pb2.StateHeader:
    return averaging_pb2.StateHeader(metadata=header.metadata, num_tensors=header.num_tensors)


def decode_state_header(message: averaging_pb2.StateHeader) -> StateHeader:
    return StateHeader(message.metadata, message.num_tensors)


JoinRequestProto = averaging_pb2.JoinRequest
LeaderMessageProto = averaging_pb2.LeaderMessage
ReduceRequestProto = averaging_pb2.ReduceRequest
StateRequestProto = averaging_pb2.StateRequest
StateHeaderProto = averaging_pb2.StateHeader

__all__ = [
    "JoinRequest",
    "LeaderCode",
    "LeaderMessage",
    "ReduceRequest",
    "StateHeader",
    "check_prefix",
    "join_method",
    "reduce_method",
    "state_method",
]
