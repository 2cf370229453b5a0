"""The DHT's RPCs, and the only module of `peer.dht` that touches its generated protobuf classes.

    dht.ping/1   liveness, and the responder's DHT clock
    dht.store/1  store items (serialized key, optional subkey, wrapped value, expiration), each judged alone
    dht.find/1   for each of many key ids: the value held (plain or dictionary) and the k nearest servers

Each RPC is a `call_x` (client side, returns None when the peer did not answer) and `rpc_x`
(handler) pair. Every request and response names its sender (`NodeInfo`), so both sides learn about
each other; the sender's PeerID always comes from the authenticated connection, never from the message.
Values are validated before they are stored (`CompositeValidator.check_store`); a refused item gets
its own status and never fails the whole request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from peer.dht.config import get_dht_time
from peer.dht.routing import DHTID, K_VALUE, RoutingTable
from peer.dht.storage import NodeRecords, StoreStatus, ValueWithExpiration
from peer.dht.validation import CompositeValidator, DHTRecord, InvalidRecordError, decode_subkey
from peer.errors import ConnectionClosedError, NetworkError, RPCCode, RPCError
from peer.net.identity import PeerID
from peer.net.p2p import P2P
from peer.net.rpc import RPCStream
from peer.proto import dht_pb2
from peer.utils.aio import TaskGroup

logger = logging.getLogger(__name__)

PING, STORE, FIND = "dht.ping/1", "dht.store/1", "dht.find/1"
MAX_ITEMS_PER_REQUEST = 256
MAX_KEYS_PER_FIND = 256
# Value bytes in one find reply (far below the transport's 64 MiB message limit). Values that do not
# fit are left out and the result marked `partial`: a dictionary keeps its newest entries, and a key
# left out whole (an earlier key of the request used the budget) is asked for again by the reader.
FIND_REPLY_BUDGET = 8 * 1024 * 1024
PEER_ID_CACHE_SIZE = 65536
# Wire codes for store outcomes (append only). 0 is success.
STORE_STATUS_CODES = {status: code for code, status in enumerate(StoreStatus)}
_INVALID_RECORD = len(STORE_STATUS_CODES)


@dataclass(frozen=True)
class PeerAddress:
    peer_id: PeerID
    maddrs: tuple[str, ...]


@dataclass(frozen=True)
class FoundValue:
    """What one peer holds for a key: a plain value, or a dictionary subkey -> value (both wrapped)."""

    value: ValueWithExpiration[bytes] | None
    dictionary: dict[bytes, ValueWithExpiration[bytes]] | None
    nearest: tuple[PeerAddress, ...]

    @property
    def found(self) -> bool:
        return self.value is not None or bool(self.dictionary)


ContactHook = Callable[[PeerID, Sequence[str], bool], None]


class DHTProtocol:
    """Serves and calls the DHT RPCs of one node (see the module docstring)."""

    def __init__(
        self,
        p2p: P2P,
        *,
        routing_table: RoutingTable,
        records: NodeRecords,
        validator: CompositeValidator,
        client_mode: bool,
        request_timeout: float,
        on_contact: ContactHook,
        after_call: Callable[[], None] | None = None,
    ):
        self.p2p = p2p
        self.routing_table = routing_table
        self.records = records
        self.validator = validator
        self.client_mode = client_mode
        self.request_timeout = request_timeout
        self.on_contact = on_contact
        self.after_call = after_call  # runs after every call and every request served
        self.num_invalid_records = 0  # records refused on store or dropped on read, for monitoring
        self._node_info: dht_pb2.NodeInfo | None = None
        if not client_mode:
            p2p.add_unary_handler(PING, self.rpc_ping, dht_pb2.PingRequest)
            p2p.add_unary_handler(STORE, self.rpc_store, dht_pb2.StoreRequest)
            p2p.add_unary_handler(FIND, self.rpc_find, dht_pb2.FindRequest)

    def count_invalid(self, source: PeerID, error: Exception) -> None:
        """A record failed validation: count it and say where it came from."""
        self.num_invalid_records += 1
        logger.info("dropped an invalid DHT record from %s: %s", source, error)

    # ---- describing ourselves and others ---------------------------------------------------

    def node_info(self) -> dht_pb2.NodeInfo:
        """How we describe ourselves (computed once: a peer's listening addresses do not change)."""
        if self._node_info is None:
            maddrs = (
                [] if self.client_mode else [str(m.without_peer_id()) for m in self.p2p.get_visible_maddrs()]
            )
            self._node_info = dht_pb2.NodeInfo(
                peer_id=self.p2p.peer_id.to_bytes(), maddrs=maddrs, client_mode=self.client_mode
            )
        return self._node_info

    def _learn_sender(self, rpc: RPCStream, sender: dht_pb2.NodeInfo) -> None:
        self.on_contact(rpc.remote_peer_id, list(sender.maddrs)[:8], not sender.client_mode)
        if self.after_call is not None:
            self.after_call()

    def _learn_responder(self, peer_id: PeerID, responder: dht_pb2.NodeInfo) -> None:
        self.on_contact(peer_id, list(responder.maddrs)[:8], not responder.client_mode)

    # ---- ping ----------------------------------------------------------------------------------

    async def rpc_ping(self, request: dht_pb2.PingRequest, rpc: RPCStream) -> dht_pb2.PingResponse:
        self._learn_sender(rpc, request.sender)
        return dht_pb2.PingResponse(responder=self.node_info(), dht_time=get_dht_time())

    async def call_ping(self, peer_id: PeerID) -> bool:
        request = dht_pb2.PingRequest(sender=self.node_info())
        response = await self._call(peer_id, PING, request, dht_pb2.PingResponse)
        if response is None:
            return False
        self._learn_responder(peer_id, response.responder)
        return True

    # ---- store ---------------------------------------------------------------------------------

    async def rpc_store(self, request: dht_pb2.StoreRequest, rpc: RPCStream) -> dht_pb2.StoreResponse:
        self._learn_sender(rpc, request.sender)
        if len(request.items) > MAX_ITEMS_PER_REQUEST:
            raise RPCError(
                RPCCode.INVALID_ARGUMENT, f"at most {MAX_ITEMS_PER_REQUEST} items per store request"
            )
        now = get_dht_time()
        results = [self._store_item(item, now, request.in_cache) for item in request.items]
        return dht_pb2.StoreResponse(responder=self.node_info(), results=results)

    def _store_item(self, item: dht_pb2.StoreItem, now: float, in_cache: bool) -> dht_pb2.StoreResult:
        subkey = item.subkey if item.has_subkey else None
        try:
            record = DHTRecord(item.key, subkey, item.value, item.expiration_time)
            if subkey is not None:
                decode_subkey(subkey)
            self.validator.check_store(record)
        except (InvalidRecordError, TypeError, ValueError) as e:
            self.num_invalid_records += 1
            logger.info("refused a DHT record from a peer: %s", e)
            return dht_pb2.StoreResult(status=_INVALID_RECORD, message=f"invalid record: {e}")
        status = self.records.store(
            item.key, item.value, item.expiration_time, now, subkey, in_cache=in_cache
        )
        return dht_pb2.StoreResult(
            status=STORE_STATUS_CODES[status], message="" if status else status.message
        )

    async def call_store(
        self, peer_id: PeerID, records: Sequence[DHTRecord], *, in_cache: bool = False
    ) -> list[bool] | None:
        """Store `records` on `peer_id`; per record whether it was stored, or None if no answer."""
        items = [
            dht_pb2.StoreItem(
                key=record.key,
                subkey=record.subkey or b"",
                has_subkey=record.subkey is not None,
                value=record.value,
                expiration_time=record.expiration_time,
            )
            for record in records
        ]
        outcomes: list[bool] = []
        for start in range(0, len(items), MAX_ITEMS_PER_REQUEST):
            request = dht_pb2.StoreRequest(
                sender=self.node_info(), items=items[start : start + MAX_ITEMS_PER_REQUEST], in_cache=in_cache
            )
            response = await self._call(peer_id, STORE, request, dht_pb2.StoreResponse)
            if response is None or len(response.results) != len(request.items):
                return None
            self._learn_responder(peer_id, response.responder)
            for result in response.results:
                if result.status != 0:
                    logger.debug("peer %s refused a DHT record: %s", peer_id, result.message or result.status)
            outcomes.extend(result.status == 0 for result in response.results)
        return outcomes

    # ---- find ----------------------------------------------------------------------------------

    async def rpc_find(self, request: dht_pb2.FindRequest, rpc: RPCStream) -> dht_pb2.FindResponse:
        self._learn_sender(rpc, request.sender)
        if len(request.key_ids) > MAX_KEYS_PER_FIND:
            raise RPCError(RPCCode.INVALID_ARGUMENT, f"at most {MAX_KEYS_PER_FIND} keys per find request")
        now = get_dht_time()
        results, budget = [], FIND_REPLY_BUDGET
        for raw_id in request.key_ids:
            try:
                key_id = DHTID.from_bytes(raw_id)
            except (ValueError, TypeError) as e:
                raise RPCError(RPCCode.INVALID_ARGUMENT, f"bad key id: {e}") from None
            result, used = self._find_one(key_id, rpc.remote_peer_id, now, budget)
            results.append(result)
            budget -= used
        return dht_pb2.FindResponse(responder=self.node_info(), results=results)

    def _find_one(
        self, key_id: DHTID, requester: PeerID, now: float, budget: int
    ) -> tuple[dht_pb2.FindResult, int]:
        """What this peer holds for `key_id`, within `budget` value bytes, and how many it used."""
        result, used = dht_pb2.FindResult(), 0
        stored = self.records.latest(key_id, now)
        value = None if stored is None else stored.value
        if isinstance(value, dict):  # newest entries first
            assert stored is not None
            entries = sorted(value.items(), key=lambda entry: entry[1].expiration_time, reverse=True)
            for subkey, item in entries:
                size = len(subkey) + len(item.value)
                if used + size > budget:
                    result.partial = True
                    break
                result.entries.add(subkey=subkey, value=item.value, expiration_time=item.expiration_time)
                used += size
            if result.entries:
                result.found, result.is_dictionary = True, True
                result.expiration_time = stored.expiration_time
        elif value is not None:
            assert stored is not None
            if len(value) > budget:
                result.partial = True
            else:
                result.found, result.value, used = True, value, len(value)
                result.expiration_time = stored.expiration_time
        for node in self.routing_table.nearest(key_id, K_VALUE, exclude=(requester,)):
            result.nearest.add(peer_id=node.peer_id.to_bytes(), maddrs=list(node.maddrs))
        return result, used

    async def call_find(self, peer_id: PeerID, key_ids: Sequence[DHTID]) -> dict[DHTID, FoundValue] | None:
        """Ask `peer_id` about `key_ids`; None if it did not answer properly.

        More than `MAX_KEYS_PER_FIND` keys go out as several requests at once (a responder refuses
        larger ones); the answer is None if any of them fails.
        """
        if len(key_ids) <= MAX_KEYS_PER_FIND:
            return await self._call_find_chunk(peer_id, key_ids)
        async with TaskGroup() as group:
            tasks = [
                group.create_task(self._call_find_chunk(peer_id, key_ids[start : start + MAX_KEYS_PER_FIND]))
                for start in range(0, len(key_ids), MAX_KEYS_PER_FIND)
            ]
        found: dict[DHTID, FoundValue] = {}
        for task in tasks:
            chunk = task.result()
            if chunk is None:
                return None
            found.update(chunk)
        return found

    async def _call_find_chunk(
        self, peer_id: PeerID, key_ids: Sequence[DHTID]
    ) -> dict[DHTID, FoundValue] | None:
        """One find request, then one more for the keys the reply left out whole to stay within the
        responder's budget (not the first: it had the whole budget), until every key is answered."""
        found: dict[DHTID, FoundValue] = {}
        pending = list(key_ids)
        while pending:
            request = dht_pb2.FindRequest(
                sender=self.node_info(), key_ids=[key_id.to_bytes() for key_id in pending]
            )
            response = await self._call(peer_id, FIND, request, dht_pb2.FindResponse)
            if response is None or len(response.results) != len(pending):
                return None
            self._learn_responder(peer_id, response.responder)
            deferred = []
            try:
                for index, (key_id, result) in enumerate(zip(pending, response.results, strict=True)):
                    if index > 0 and result.partial and not result.found:
                        deferred.append(key_id)
                    else:
                        found[key_id] = _decode_found(result)
            except (ValueError, TypeError) as e:
                logger.info("peer %s sent a malformed find response: %s", peer_id, e)
                return None
            pending = deferred
        return found

    # ---- plumbing ------------------------------------------------------------------------------

    async def _call(self, peer_id: PeerID, method: str, request, response_type):
        """The response, or None if the peer did not answer within `request_timeout`.

        A call that finds its pooled connection closed under it (the remote or our connection limit
        closed it at that moment) is retried once on a fresh connection, within the same deadline.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        for attempt in range(2):
            try:
                return await self.p2p.acall_unary(
                    peer_id, method, request, response_type, timeout=max(deadline - loop.time(), 1e-3)
                )
            except ConnectionClosedError as e:
                if attempt == 0 and loop.time() < deadline:
                    continue
                logger.debug("%s to %s failed: %s: %s", method, peer_id, type(e).__name__, e)
            except (NetworkError, DecodeError) as e:
                logger.debug("%s to %s failed: %s: %s", method, peer_id, type(e).__name__, e)
            finally:
                if self.after_call is not None:
                    self.after_call()
            return None
        return None


_PEER_IDS: dict[bytes, PeerID] = {}  # PeerIDs parsed from nearest lists, shared by the process's nodes


def _parse_peer_id(data: bytes) -> PeerID:
    """PeerID(data), memoized: the same few thousand peers come up in reply after reply."""
    peer_id = _PEER_IDS.get(data)
    if peer_id is None:
        if len(_PEER_IDS) >= PEER_ID_CACHE_SIZE:
            _PEER_IDS.clear()
        peer_id = _PEER_IDS[data] = PeerID(data)
    return peer_id


def _decode_found(result: dht_pb2.FindResult) -> FoundValue:
    nearest = tuple(
        PeerAddress(_parse_peer_id(node.peer_id), tuple(node.maddrs)[:8]) for node in result.nearest[:K_VALUE]
    )
    if not result.found:
        return FoundValue(None, None, nearest)
    if result.is_dictionary:
        dictionary = {
            entry.subkey: ValueWithExpiration(entry.value, entry.expiration_time) for entry in result.entries
        }
        return FoundValue(None, dictionary, nearest)
    return FoundValue(ValueWithExpiration(result.value, result.expiration_time), None, nearest)
