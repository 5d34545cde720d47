"""The NVSP session engine: states, the legal messages in each, version rules, two roles.

Layer 2 (proto), no I/O (STYLE.md, h11). Everything that decides whether an NVSP message is
legal lives in this file, and the file does not know which side it runs on: the guest session
(the PMD) and the host session (the emulated host) are two roles of one ``NvspSession`` and
obey the same ``GUEST_MESSAGES`` / ``HOST_MESSAGES`` tables, so neither side can apply rules of
its own (spec/host.md 1.2, 1.6; spec/nvsp-rndis.md 1.2).

Bytes in, events out: ``receive(kind, transaction_id, payload, completion_requested)`` takes
one VMBus packet's NVSP payload and returns an event. Events in, bytes out: the ``encode_*``
and ``request_*`` methods return the payload to put in a packet, padded to the size the role
sends (guest 40; host 28 before 6.1, 40 from 6.1, INIT_COMPLETE always 28).

A host session turns every violation into a ``FailStop`` event and enters DEAD, after which
it produces nothing but ``Ignored`` (host.md 1.6). A guest session returns ``ProtocolViolation``
for a host that breaks the rules, and stays usable (the driver decides what to do).

Deadlines belong to the caller: when one passes, ``abandon()`` forgets the outstanding request,
and a completion that arrives for it later is an ``Unexpected`` event (counted in
``unexpected``), never taken for the reply to the next request.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire import nvsp as wire
from netvsc.wire.vmbus import PACKET_TYPE_COMPLETION

log = logging.getLogger(__name__)

__all__ = [
    "GUEST_MESSAGES",
    "HOST_MESSAGES",
    "NvspSession",
    "NvspState",
    "Rule",
]

ROLES = ("guest", "host")
ABANDONED_REMEMBERED = 16  # abandoned transaction ids kept to classify their late completions


class NvspState(enum.Enum):
    """Protocol state of one channel's NVSP session (host.md 1.2)."""

    VERSION = "VERSION"  # only INIT is legal
    INIT = "INIT"  # buffers and NDIS version/config, each once
    READY = "READY"  # data path, subchannels, data-path switch
    DEAD = "DEAD"  # fail-stop: nothing is processed or produced


@dataclass(frozen=True)
class Rule:
    """When a message type may be sent: minimum version, states, and whether subchannels allow it."""

    name: str
    min_version: int  # 0 = before any version exists (INIT)
    states: frozenset[NvspState]
    on_subchannel: bool = False
    once: bool = False  # a second one is a violation (host.md 1.6, host#10)


_V = NvspState
_INIT_ONLY = frozenset({_V.INIT})

# Inband messages a guest may send, by type (host.md 1.2, 1.3, 1.6).
GUEST_MESSAGES: dict[int, Rule] = {
    wire.NVSP_MSG_INIT: Rule("INIT", 0, frozenset({_V.VERSION})),
    wire.NVSP_MSG_SEND_NDIS_VERSION: Rule("SEND_NDIS_VERSION", wire.NVSP_VERSION_1, _INIT_ONLY, once=True),
    wire.NVSP_MSG_SEND_NDIS_CONFIG: Rule("SEND_NDIS_CONFIG", wire.NVSP_VERSION_2, _INIT_ONLY, once=True),
    wire.NVSP_MSG_SEND_RECEIVE_BUFFER: Rule(
        "SEND_RECEIVE_BUFFER", wire.NVSP_VERSION_1, _INIT_ONLY, once=True
    ),
    wire.NVSP_MSG_SEND_SEND_BUFFER: Rule("SEND_SEND_BUFFER", wire.NVSP_VERSION_1, _INIT_ONLY, once=True),
    # An RNDIS packet in INIT moves the session to READY when everything but SEND_BUF is in.
    wire.NVSP_MSG_SEND_RNDIS_PACKET: Rule(
        "SEND_RNDIS_PACKET", wire.NVSP_VERSION_1, frozenset({_V.INIT, _V.READY}), on_subchannel=True
    ),
    wire.NVSP_MSG_REVOKE_RECEIVE_BUFFER: Rule(
        "REVOKE_RECEIVE_BUFFER", wire.NVSP_VERSION_1, frozenset({_V.INIT, _V.READY})
    ),
    wire.NVSP_MSG_REVOKE_SEND_BUFFER: Rule(
        "REVOKE_SEND_BUFFER", wire.NVSP_VERSION_1, frozenset({_V.INIT, _V.READY})
    ),
    wire.NVSP_MSG_SWITCH_DATA_PATH: Rule("SWITCH_DATA_PATH", wire.NVSP_VERSION_4, frozenset({_V.READY})),
    wire.NVSP_MSG_OID_QUERY_EX: Rule(
        "OID_QUERY_EX", wire.NVSP_VERSION_5, frozenset({_V.READY}), on_subchannel=True
    ),
    wire.NVSP_MSG_SUBCHANNEL: Rule("SUBCHANNEL", wire.NVSP_VERSION_5, frozenset({_V.READY})),
}

# Inband messages a host may send unsolicited (host.md 1.3, 5, 7). Everything else from the
# host arrives in a completion or is a transfer-page packet (SEND_RNDIS_PACKET).
HOST_MESSAGES: dict[int, Rule] = {
    wire.NVSP_MSG_SEND_VF_ASSOCIATION: Rule(
        "SEND_VF_ASSOCIATION", wire.NVSP_VERSION_4, frozenset({_V.READY})
    ),
    wire.NVSP_MSG_SWITCH_DATA_PATH: Rule("SWITCH_DATA_PATH", wire.NVSP_VERSION_4, frozenset({_V.READY})),
    wire.NVSP_MSG_SEND_INDIRECTION_TABLE: Rule(
        "SEND_INDIRECTION_TABLE", wire.NVSP_VERSION_5, frozenset({_V.READY})
    ),
    wire.NVSP_MSG_SEND_RNDIS_PACKET: Rule(
        "SEND_RNDIS_PACKET", wire.NVSP_VERSION_1, frozenset({_V.INIT, _V.READY}), on_subchannel=True
    ),
}

# Completion payload type expected for each guest request that asks for one.
COMPLETION_TYPE_OF_REQUEST: dict[int, int | None] = {
    wire.NVSP_MSG_INIT: wire.NVSP_MSG_INIT_COMPLETE,
    wire.NVSP_MSG_SEND_RECEIVE_BUFFER: wire.NVSP_MSG_SEND_RECEIVE_BUFFER_COMPLETE,
    wire.NVSP_MSG_SEND_SEND_BUFFER: wire.NVSP_MSG_SEND_SEND_BUFFER_COMPLETE,
    wire.NVSP_MSG_SUBCHANNEL: wire.NVSP_MSG_SUBCHANNEL,
    wire.NVSP_MSG_SEND_RNDIS_PACKET: wire.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE,
    wire.NVSP_MSG_OID_QUERY_EX: wire.NVSP_MSG_OID_QUERY_EX_COMPLETE,
    wire.NVSP_MSG_SEND_NDIS_VERSION: None,  # empty completion
    wire.NVSP_MSG_SEND_NDIS_CONFIG: None,
    wire.NVSP_MSG_SWITCH_DATA_PATH: None,
}

# Host-originated transaction ids whose completions a host accepts with any payload (host.md 7).
HOST_TRANSACTION_IDS = frozenset({wire.VF_ASSOCIATION_TRANSACTION_ID, wire.SWITCH_DATA_PATH_TRANSACTION_ID})


def version_name(version: int) -> str:
    major, minor = version >> 16, version & 0xFFFF
    return (
        "1"
        if version == wire.NVSP_VERSION_1
        else (f"{major}.{minor}" if minor and major >= 6 else str(major))
    )


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """Base of every event; ``transaction_id`` is the VMBus packet's."""

    transaction_id: int


@dataclass(frozen=True)
class FailStop(Event):
    """Host role: the guest broke the protocol; the session is DEAD (host.md 1.6)."""

    reason: str


@dataclass(frozen=True)
class Ignored(Event):
    """Nothing to do: a DEAD session, or a completion of a host notice."""

    reason: str


@dataclass(frozen=True)
class InitRequest(Event):
    """Host role: INIT. ``reply`` is the INIT_COMPLETE payload to send as the completion."""

    requested: int
    accepted: bool
    reply: bytes


@dataclass(frozen=True)
class NdisVersion(Event):
    major: int
    minor: int
    completion_requested: bool


@dataclass(frozen=True)
class NdisConfig(Event):
    mtu: int  # after the 1514..9216 rule (host#6)
    requested_mtu: int
    capabilities: int
    completion_requested: bool


@dataclass(frozen=True)
class BufferOffered(Event):
    """SEND_RECEIVE_BUFFER (``receive``) or SEND_SEND_BUFFER."""

    receive: bool
    gpadl_handle: int
    buffer_id: int


@dataclass(frozen=True)
class BufferRevoked(Event):
    receive: bool
    buffer_id: int


@dataclass(frozen=True)
class RndisPacket(Event):
    """SEND_RNDIS_PACKET in either direction; ``became_ready`` when it moved INIT to READY."""

    channel_type: int
    section_index: int
    section_size: int
    completion_requested: bool
    became_ready: bool = False


@dataclass(frozen=True)
class RndisPacketCompletion(Event):
    """A completion with type 108: a receive completion (host) or a send completion (guest)."""

    status: int


@dataclass(frozen=True)
class SwitchDataPath(Event):
    active_data_path: int
    completion_requested: bool


@dataclass(frozen=True)
class OidQueryEx(Event):
    oid: int


@dataclass(frozen=True)
class SubchannelRequest(Event):
    operation: int
    count: int


@dataclass(frozen=True)
class Completion(Event):
    """Guest role: the completion of the outstanding request (``record`` None when empty)."""

    request_type: int
    record: object | None


@dataclass(frozen=True)
class InitComplete(Event):
    """Guest role: the INIT_COMPLETE of the candidate version ``version``."""

    version: int
    status: int
    accepted: bool


@dataclass(frozen=True)
class VfAssociation(Event):
    allocated: bool
    serial: int


@dataclass(frozen=True)
class SendIndirectionTable(Event):
    entries: tuple[int, ...]


@dataclass(frozen=True)
class UnknownMessage(Event):
    """Guest role: an inband host message of a type this table does not know (skip it)."""

    message_type: int


@dataclass(frozen=True)
class ProtocolViolation(Event):
    """Guest role: the host broke the protocol (counted by the driver)."""

    reason: str


@dataclass(frozen=True)
class Unexpected(Event):
    """Guest role: a late completion of a request the caller abandoned after its deadline. Not
    a violation (a slow host is allowed to answer late), but it answers nothing: counted, skipped."""

    reason: str


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


@dataclass
class _Negotiated:
    version: int = 0
    ndis_version: tuple[int, int] | None = None
    mtu: int = wire.NDIS_CONFIG_MTU_MIN
    capabilities: int = 0
    ndis_config_done: bool = False
    receive_buffer: tuple[int, int] | None = None  # (gpadl, id)
    send_buffer: tuple[int, int] | None = None
    seen: set[int] = field(default_factory=set)


class NvspSession:
    """One channel's NVSP session, in role ``"guest"`` or ``"host"``.

    ``supported_versions`` (host role) is the set the host accepts; the guest role probes
    ``candidate_versions`` newest first. A subchannel session (``primary=False``) starts in
    READY with the primary's version (host.md 1.2).
    """

    def __init__(
        self,
        role: str,
        *,
        supported_versions: Sequence[int] = wire.NVSP_VERSIONS_NEWEST_FIRST,
        primary: bool = True,
        version: int = 0,
    ) -> None:
        if role not in ROLES:
            raise ConfigError("role", role, "'guest' or 'host'")
        versions = tuple(supported_versions)
        unknown = [v for v in versions if v not in wire.NVSP_VERSIONS_NEWEST_FIRST]
        if not versions or unknown:
            raise ConfigError(
                "nvsp versions",
                [hex(v) for v in versions],
                "a non-empty subset of " + ", ".join(hex(v) for v in wire.NVSP_VERSIONS_NEWEST_FIRST),
            )
        self.role = role
        self.primary = primary
        self.supported_versions = tuple(sorted(set(versions), reverse=True))
        self.negotiated = _Negotiated()
        self.state = NvspState.VERSION
        self.fail_reason: str | None = None
        # Guest role: the one outstanding request (transaction id, type) and the id counter.
        self._outstanding: tuple[int, int] | None = None
        self._next_transaction_id = 1
        # Transaction ids given up by abandon(), so their late completions are recognised.
        self._abandoned: deque[int] = deque(maxlen=ABANDONED_REMEMBERED)
        self.unexpected = 0  # late completions of abandoned requests seen
        self._candidate: int | None = None
        if not primary:
            if version not in wire.NVSP_VERSIONS_NEWEST_FIRST:
                raise ConfigError("subchannel version", version, "the primary's negotiated version")
            self.negotiated.version = version
            self.state = NvspState.READY

    # -- common ------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self.negotiated.version

    @property
    def host_message_size(self) -> int:
        return wire.host_message_size(self.version)

    @property
    def _sender_size(self) -> int:
        return wire.NVSP_GUEST_MESSAGE_SIZE if self.role == "guest" else self.host_message_size

    def is_legal(self, message_type: int, *, from_guest: bool) -> str | None:
        """None when ``message_type`` may be sent now; otherwise why not."""
        table = GUEST_MESSAGES if from_guest else HOST_MESSAGES
        rule = table.get(message_type)
        if rule is None:
            return f"NVSP type {message_type} is not a message the {'guest' if from_guest else 'host'} sends"
        if self.state not in rule.states:
            return f"{rule.name} in state {self.state.value}"
        if self.state is not NvspState.VERSION and self.version < rule.min_version:
            needed, negotiated = version_name(rule.min_version), version_name(self.version)
            return f"{rule.name} needs NVSP {needed}, negotiated {negotiated}"
        if not self.primary and not rule.on_subchannel:
            return f"{rule.name} on a subchannel"
        if rule.once and message_type in self.negotiated.seen:
            return f"duplicate {rule.name}"
        return None

    def reset(self) -> None:
        """The guest closed the channel: forget everything, back to VERSION (host.md 1.1)."""
        if not self.primary:
            raise ConfigError("reset", "subchannel", "only the primary session restarts")
        self.negotiated = _Negotiated()
        self.state = NvspState.VERSION
        self.fail_reason = None
        self._outstanding = None
        self._abandoned.clear()
        self._candidate = None

    def subchannel_session(self) -> NvspSession:
        """A READY session for a subchannel sharing this session's version."""
        return NvspSession(
            self.role, supported_versions=self.supported_versions, primary=False, version=self.version
        )

    # -- host role: input --------------------------------------------------------------------

    def _fail(self, transaction_id: int, reason: str) -> FailStop:
        self.state = NvspState.DEAD
        self.fail_reason = reason
        log.info("nvsp fail-stop: %s", reason)
        return FailStop(transaction_id, reason)

    def receive(
        self, kind: int, transaction_id: int, payload: bytes, completion_requested: bool = False
    ) -> Event:
        """One packet from the peer: ``kind`` is the VMBus packet type (inband 6, completion 11,
        or the GPA-direct/transfer-page type for RNDIS packets, which are decoded the same)."""
        if self.role == "host":
            return self._host_receive(kind, transaction_id, payload, completion_requested)
        return self._guest_receive(kind, transaction_id, payload, completion_requested)

    def _host_receive(
        self, kind: int, transaction_id: int, payload: bytes, completion_requested: bool
    ) -> Event:
        if self.state is NvspState.DEAD:
            return Ignored(transaction_id, "channel is fail-stopped")
        if kind == PACKET_TYPE_COMPLETION:
            return self._host_completion(transaction_id, payload)
        try:
            message_type = wire.peek_message_type(payload)
        except ProtocolError as error:
            return self._fail(transaction_id, f"inband packet without an NVSP header: {error}")
        problem = self.is_legal(message_type, from_guest=True)
        if problem is not None:
            return self._fail(transaction_id, problem)
        try:
            record = wire.decode_nvsp(payload)
        except ProtocolError as error:
            return self._fail(transaction_id, f"short message: {error}")
        handler = _HOST_HANDLERS[message_type]
        return handler(self, transaction_id, record, completion_requested)

    def _host_completion(self, transaction_id: int, payload: bytes) -> Event:
        if transaction_id in HOST_TRANSACTION_IDS:
            return Ignored(transaction_id, "completion of a host notice")
        if self.state is not NvspState.READY:
            return self._fail(transaction_id, f"completion in state {self.state.value}")
        try:
            message_type = wire.peek_message_type(payload)
            if message_type != wire.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE:
                return self._fail(transaction_id, f"completion of NVSP type {message_type}, expected 108")
            record = wire.decode_nvsp(payload)
        except ProtocolError as error:
            return self._fail(transaction_id, f"bad completion: {error}")
        return RndisPacketCompletion(transaction_id, record.status)

    def _on_init(self, transaction_id: int, record, completion_requested: bool) -> Event:
        requested = record.min_protocol_version
        # OpenVMM reads only the first field; the pair is not a range (host.md 1.4).
        accepted = requested in self.supported_versions
        negotiated = (
            wire.NVSP_VERSION_1
            if requested == wire.NVSP_VERSION_1
            else wire.INIT_COMPLETE_NEGOTIATED_VERSION_DEPRECATED
        )
        reply = wire.encode_init_complete(
            wire.NVSP_STATUS_SUCCESS if accepted else wire.NVSP_STATUS_NONE,
            negotiated_version=negotiated,
            size=wire.NVSP_HOST_MESSAGE_SIZE_V1,  # always 28 (host.md 1.4)
        )
        if accepted:
            self.negotiated.version = requested
            self.state = NvspState.INIT
        return InitRequest(transaction_id, requested, accepted, reply)

    def _on_ndis_version(self, transaction_id: int, record, completion_requested: bool) -> Event:
        self.negotiated.seen.add(wire.NVSP_MSG_SEND_NDIS_VERSION)
        self.negotiated.ndis_version = (record.ndis_major, record.ndis_minor)
        return NdisVersion(transaction_id, record.ndis_major, record.ndis_minor, completion_requested)

    def _on_ndis_config(self, transaction_id: int, record, completion_requested: bool) -> Event:
        self.negotiated.seen.add(wire.NVSP_MSG_SEND_NDIS_CONFIG)
        mtu = record.mtu
        if not wire.NDIS_CONFIG_MTU_MIN <= mtu <= wire.NDIS_CONFIG_MTU_MAX:
            mtu = wire.NDIS_CONFIG_MTU_MIN  # silently, "as in the vmswitch" (host.md 1.5)
        self.negotiated.mtu = mtu
        self.negotiated.capabilities = record.capabilities
        self.negotiated.ndis_config_done = True
        return NdisConfig(transaction_id, mtu, record.mtu, record.capabilities, completion_requested)

    def _on_receive_buffer(self, transaction_id: int, record, completion_requested: bool) -> Event:
        if self.version >= wire.NVSP_VERSION_2 and not self.negotiated.ndis_config_done:
            return self._fail(transaction_id, "SEND_RECEIVE_BUFFER before SEND_NDIS_CONFIG")
        self.negotiated.seen.add(wire.NVSP_MSG_SEND_RECEIVE_BUFFER)
        self.negotiated.receive_buffer = (record.gpadl_handle, record.id)
        self._maybe_ready()
        return BufferOffered(transaction_id, True, record.gpadl_handle, record.id)

    def _on_send_buffer(self, transaction_id: int, record, completion_requested: bool) -> Event:
        self.negotiated.seen.add(wire.NVSP_MSG_SEND_SEND_BUFFER)
        self.negotiated.send_buffer = (record.gpadl_handle, record.id)
        self._maybe_ready()
        return BufferOffered(transaction_id, False, record.gpadl_handle, record.id)

    def _ready_to_initialize(self) -> bool:
        n = self.negotiated
        return (
            n.ndis_version is not None
            and n.receive_buffer is not None
            and (n.ndis_config_done or self.version < wire.NVSP_VERSION_2)
        )

    def _maybe_ready(self) -> None:
        if self.state is NvspState.INIT and self._ready_to_initialize() and self.negotiated.send_buffer:
            self.state = NvspState.READY

    def _on_rndis_packet(self, transaction_id: int, record, completion_requested: bool) -> Event:
        became_ready = False
        if self.state is NvspState.INIT:
            # The send buffer is optional: an RNDIS packet with everything else in starts READY
            # and is processed there (host.md 1.2, host#11).
            if not self._ready_to_initialize():
                return self._fail(
                    transaction_id, "SEND_RNDIS_PACKET before the NDIS version and receive buffer"
                )
            self.state = NvspState.READY
            became_ready = True
        return RndisPacket(
            transaction_id,
            record.channel_type,
            record.send_buffer_section_index,
            record.send_buffer_section_size,
            completion_requested,
            became_ready,
        )

    def _on_revoke(self, transaction_id: int, record, completion_requested: bool) -> Event:
        return BufferRevoked(transaction_id, record.type == wire.NVSP_MSG_REVOKE_RECEIVE_BUFFER, record.id)

    def _on_switch(self, transaction_id: int, record, completion_requested: bool) -> Event:
        return SwitchDataPath(transaction_id, record.active_data_path, completion_requested)

    def _on_oid_query_ex(self, transaction_id: int, record, completion_requested: bool) -> Event:
        return OidQueryEx(transaction_id, record.oid)

    def _on_subchannel(self, transaction_id: int, record, completion_requested: bool) -> Event:
        return SubchannelRequest(transaction_id, record.operation, record.num_subchannels)

    # -- host role: output -------------------------------------------------------------------

    def _require_host(self, what: str) -> None:
        if self.role != "host":
            raise ConfigError("role", self.role, f"'host' to encode {what}")

    def encode_receive_buffer_complete(self, status: int, slot_size: int = 0, slot_count: int = 0) -> bytes:
        self._require_host("SEND_RECEIVE_BUFFER_COMPLETE")
        return wire.encode_send_receive_buffer_complete(
            status,
            sub_allocation_size=slot_size,
            num_sub_allocations=slot_count,
            num_sections=1 if status == wire.NVSP_STATUS_SUCCESS else 0,
            size=self.host_message_size,
        )

    def encode_send_buffer_complete(self, status: int, section_size: int) -> bytes:
        self._require_host("SEND_SEND_BUFFER_COMPLETE")
        return wire.encode_send_send_buffer_complete(status, section_size, size=self.host_message_size)

    def encode_rndis_packet_complete(self, status: int) -> bytes:
        return wire.encode_send_rndis_packet_complete(status, size=self._sender_size)

    def encode_rndis_packet(self, channel_type: int) -> bytes:
        """SEND_RNDIS_PACKET for a transfer-page packet: no section, padded to the message size."""
        return wire.encode_send_rndis_packet(channel_type, size=self._sender_size)

    def encode_subchannel_complete(self, status: int, count: int) -> bytes:
        self._require_host("SUBCHANNEL completion")
        return wire.encode_subchannel_complete(status, count, size=self.host_message_size)

    def encode_oid_query_ex_complete(self, status: int) -> bytes:
        self._require_host("OID_QUERY_EX_COMPLETE")
        return wire.encode_oid_query_ex_complete(status, 0, size=self.host_message_size)

    def _check_host_send(self, message_type: int) -> None:
        self._require_host(HOST_MESSAGES[message_type].name)
        problem = self.is_legal(message_type, from_guest=False)
        if problem is not None:
            raise ConfigError(
                "host message", HOST_MESSAGES[message_type].name, "a message legal now", problem
            )

    def encode_vf_association(self, allocated: bool, serial: int) -> bytes:
        self._check_host_send(wire.NVSP_MSG_SEND_VF_ASSOCIATION)
        return wire.encode_send_vf_association(allocated, serial, size=self.host_message_size)

    def encode_switch_data_path_notice(self, active_data_path: int = wire.DATA_PATH_SYNTHETIC) -> bytes:
        self._check_host_send(wire.NVSP_MSG_SWITCH_DATA_PATH)
        return wire.encode_switch_data_path(active_data_path, size=self.host_message_size)

    def encode_send_indirection_table(self, channel_count: int) -> bytes:
        """16 entries, entry i = i mod channels, table at offset 12 (OpenVMM's form, host.md 5)."""
        self._check_host_send(wire.NVSP_MSG_SEND_INDIRECTION_TABLE)
        if channel_count < 1:
            raise ConfigError("channel_count", channel_count, "at least 1")
        entries = [i % channel_count for i in range(wire.SEND_INDIRECTION_TABLE_ENTRIES)]
        return wire.encode_send_indirection_table(entries)

    # -- guest role --------------------------------------------------------------------------

    def _require_guest(self, what: str) -> None:
        if self.role != "guest":
            raise ConfigError("role", self.role, f"'guest' to send {what}")

    def _new_request(self, message_type: int) -> int:
        if self._outstanding is not None:
            raise ConfigError(
                "nvsp request",
                GUEST_MESSAGES[message_type].name,
                "one outstanding request at a time",
                f"transaction {self._outstanding[0]} is still waiting",
            )
        transaction_id = self._next_transaction_id
        self._next_transaction_id = self._next_transaction_id % 0x7FFF_FFFF_FFFF_FFFF + 1
        self._outstanding = (transaction_id, message_type)
        return transaction_id

    def request_init(self, version: int) -> tuple[int, bytes]:
        """INIT for one candidate version (min = max); returns (transaction id, payload)."""
        self._require_guest("INIT")
        if version not in self.supported_versions:
            raise ConfigError("nvsp version", hex(version), "one of the session's candidate versions")
        problem = self.is_legal(wire.NVSP_MSG_INIT, from_guest=True)
        if problem is not None:
            raise ConfigError("INIT", hex(version), "a message legal now", problem)
        self._candidate = version
        return self._new_request(wire.NVSP_MSG_INIT), wire.encode_init(version)

    def next_candidate(self, rejected: int | None = None) -> int | None:
        """The next version to probe after ``rejected`` (newest first), or None when exhausted."""
        if rejected is None:
            return self.supported_versions[0]
        older = [v for v in self.supported_versions if v < rejected]
        return older[0] if older else None

    def bringup_messages(
        self,
        *,
        mtu: int,
        capabilities: int,
        receive_gpadl: int,
        send_gpadl: int,
        receive_id: int = wire.RECEIVE_BUFFER_ID,
        send_id: int = wire.SEND_BUFFER_ID_DPDK,
    ) -> list[tuple[int, bytes, bool]]:
        """The INIT-state messages in DPDK's order: (message type, payload, completion requested).

        NDIS_CONFIG (v2+), NDIS_VERSION, RECV_BUF, SEND_BUF. Send each with ``request``.
        """
        self._require_guest("bring-up")
        messages: list[tuple[int, bytes, bool]] = []
        if self.version >= wire.NVSP_VERSION_2:
            messages.append(
                (wire.NVSP_MSG_SEND_NDIS_CONFIG, wire.encode_send_ndis_config(mtu, capabilities), False)
            )
        messages.append(
            (
                wire.NVSP_MSG_SEND_NDIS_VERSION,
                wire.encode_send_ndis_version(wire.ndis_version_for(self.version)),
                False,
            )
        )
        messages.append(
            (
                wire.NVSP_MSG_SEND_RECEIVE_BUFFER,
                wire.encode_send_receive_buffer(receive_gpadl, receive_id),
                True,
            )
        )
        messages.append(
            (wire.NVSP_MSG_SEND_SEND_BUFFER, wire.encode_send_send_buffer(send_gpadl, send_id), True)
        )
        return messages

    def send(self, payload: bytes, completion_requested: bool) -> int:
        """Account for a guest message about to be sent; returns its transaction id.

        A message asking for a completion becomes the outstanding request. The session's
        own state follows as the host's does, so both sides agree on READY.
        """
        self._require_guest("messages")
        message_type = wire.peek_message_type(payload)
        problem = self.is_legal(message_type, from_guest=True)
        if problem is not None:
            raise ConfigError("nvsp message", message_type, "a message legal now", problem)
        record = wire.decode_nvsp(payload)
        if message_type == wire.NVSP_MSG_SEND_NDIS_CONFIG:
            self._on_ndis_config(0, record, False)
        elif message_type == wire.NVSP_MSG_SEND_NDIS_VERSION:
            self._on_ndis_version(0, record, False)
        elif message_type == wire.NVSP_MSG_SEND_RECEIVE_BUFFER:
            if self.version >= wire.NVSP_VERSION_2 and not self.negotiated.ndis_config_done:
                raise ConfigError("nvsp message", "SEND_RECEIVE_BUFFER", "after SEND_NDIS_CONFIG on v2+")
            self.negotiated.seen.add(message_type)
            self.negotiated.receive_buffer = (record.gpadl_handle, record.id)
            self._maybe_ready()
        elif message_type == wire.NVSP_MSG_SEND_SEND_BUFFER:
            self.negotiated.seen.add(message_type)
            self.negotiated.send_buffer = (record.gpadl_handle, record.id)
            self._maybe_ready()
        elif message_type == wire.NVSP_MSG_SEND_RNDIS_PACKET and self.state is NvspState.INIT:
            if not self._ready_to_initialize():
                raise ConfigError(
                    "nvsp message", "SEND_RNDIS_PACKET", "after NDIS version and receive buffer"
                )
            self.state = NvspState.READY
        if completion_requested and message_type != wire.NVSP_MSG_SEND_RNDIS_PACKET:
            return self._new_request(message_type)
        transaction_id = self._next_transaction_id
        self._next_transaction_id = self._next_transaction_id % 0x7FFF_FFFF_FFFF_FFFF + 1
        return transaction_id

    @property
    def outstanding(self) -> tuple[int, int] | None:
        """(transaction id, message type) of the request awaiting its completion."""
        return self._outstanding

    def abandon(self) -> tuple[int, int] | None:
        """Forget the outstanding request (its caller's deadline passed); returns what it was.

        A new request may be sent at once; the abandoned one's completion, if it ever comes, is
        returned by ``receive`` as ``Unexpected`` and counted in ``unexpected``.
        """
        self._require_guest("abandon")
        outstanding, self._outstanding = self._outstanding, None
        if outstanding is not None:
            self._abandoned.append(outstanding[0])
        return outstanding

    def _guest_receive(
        self, kind: int, transaction_id: int, payload: bytes, completion_requested: bool
    ) -> Event:
        if kind == PACKET_TYPE_COMPLETION:
            return self._guest_completion(transaction_id, payload)
        try:
            message_type = wire.peek_message_type(payload)
        except ProtocolError as error:
            return ProtocolViolation(transaction_id, f"host packet without an NVSP header: {error}")
        rule = HOST_MESSAGES.get(message_type)
        if rule is None:
            # Unknown or deprecated types are skipped, never taken for a reply (host.md 10).
            return UnknownMessage(transaction_id, message_type)
        problem = self.is_legal(message_type, from_guest=False)
        if problem is not None:
            return ProtocolViolation(transaction_id, problem)
        try:
            record = wire.decode_nvsp(payload)
        except ProtocolError as error:
            return ProtocolViolation(transaction_id, str(error))
        if message_type == wire.NVSP_MSG_SEND_VF_ASSOCIATION:
            return VfAssociation(transaction_id, bool(record.allocated), record.serial)
        if message_type == wire.NVSP_MSG_SWITCH_DATA_PATH:
            return SwitchDataPath(transaction_id, record.active_data_path, completion_requested)
        if message_type == wire.NVSP_MSG_SEND_INDIRECTION_TABLE:
            return SendIndirectionTable(transaction_id, tuple(record.entries))
        return RndisPacket(
            transaction_id,
            record.channel_type,
            record.send_buffer_section_index,
            record.send_buffer_section_size,
            completion_requested,
        )

    def _guest_completion(self, transaction_id: int, payload: bytes) -> Event:
        outstanding = self._outstanding
        if (outstanding is None or outstanding[0] != transaction_id) and transaction_id in self._abandoned:
            self._abandoned.remove(transaction_id)
            self.unexpected += 1
            return Unexpected(transaction_id, f"late completion of abandoned transaction {transaction_id:#x}")
        if outstanding is None or outstanding[0] != transaction_id:
            # Not ours to match: RNDIS send completions are tracked by the data path.
            try:
                if wire.peek_message_type(payload) == wire.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE:
                    return RndisPacketCompletion(transaction_id, wire.decode_nvsp(payload).status)
            except ProtocolError:
                pass
            return ProtocolViolation(
                transaction_id, f"completion for unknown transaction {transaction_id:#x}"
            )
        request_type = outstanding[1]
        expected = COMPLETION_TYPE_OF_REQUEST.get(request_type)
        self._outstanding = None
        if expected is None:
            return Completion(transaction_id, request_type, None)
        try:
            message_type = wire.peek_message_type(payload)
            if message_type != expected:
                return ProtocolViolation(
                    transaction_id,
                    f"completion type {message_type} for a {GUEST_MESSAGES[request_type].name}",
                )
            record = wire.decode_nvsp(payload, completion=True)
        except ProtocolError as error:
            return ProtocolViolation(transaction_id, str(error))
        if request_type == wire.NVSP_MSG_INIT:
            accepted = record.status == wire.NVSP_STATUS_SUCCESS
            version = self._candidate or 0
            if accepted:
                self.negotiated.version = version
                self.state = NvspState.INIT
            return InitComplete(transaction_id, version, record.status, accepted)
        return Completion(transaction_id, request_type, record)


_HOST_HANDLERS = {
    wire.NVSP_MSG_INIT: NvspSession._on_init,
    wire.NVSP_MSG_SEND_NDIS_VERSION: NvspSession._on_ndis_version,
    wire.NVSP_MSG_SEND_NDIS_CONFIG: NvspSession._on_ndis_config,
    wire.NVSP_MSG_SEND_RECEIVE_BUFFER: NvspSession._on_receive_buffer,
    wire.NVSP_MSG_SEND_SEND_BUFFER: NvspSession._on_send_buffer,
    wire.NVSP_MSG_SEND_RNDIS_PACKET: NvspSession._on_rndis_packet,
    wire.NVSP_MSG_REVOKE_RECEIVE_BUFFER: NvspSession._on_revoke,
    wire.NVSP_MSG_REVOKE_SEND_BUFFER: NvspSession._on_revoke,
    wire.NVSP_MSG_SWITCH_DATA_PATH: NvspSession._on_switch,
    wire.NVSP_MSG_OID_QUERY_EX: NvspSession._on_oid_query_ex,
    wire.NVSP_MSG_SUBCHANNEL: NvspSession._on_subchannel,
}
assert set(_HOST_HANDLERS) == set(GUEST_MESSAGES), "every legal guest message has a host handler"
