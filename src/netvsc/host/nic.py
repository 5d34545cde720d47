"""The NetVSP of one emulated synthetic NIC: NVSP and RNDIS host handling for all its channels.

Layer 7 (host). The server loop (host/server.py) calls ``service(i)`` when channel ``i`` was
signalled, ``poll_backend()`` when the backend has frames, and ``tick(now)`` for timers. Rules
come from the session engines in ``netvsc.proto`` (host role); this module adds what needs
resources: buffers, receive slots (host/rxpath.py), transmit parsing (host/txpath.py), RSS
(host/rss.py), the backend, subchannel offers, link pacing, the VF, and fault injection.

Behaviour follows spec/host.md 1-8; the checklist items are named where they are decided.
Nothing read from the guest is trusted: a protocol violation fail-stops that channel only
(host.md 1.6, host#68), malformed data is completed with FAILURE, and everything is counted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from netvsc.errors import ConfigError, DeviceError, ProtocolError, RingFullError
from netvsc.host.backends.base import Backend
from netvsc.host.frames import FrameBatch
from netvsc.proto import nvsp as nvsp_proto
from netvsc.proto import rndis as rndis_proto
from netvsc.vmbus.channel import Channel, encode_descriptor
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire import vmbus as vmbus_wire

log = logging.getLogger(__name__)

__all__ = ["FAULT_KINDS", "NetVsp", "NicConfig", "NicResources"]

SEND_SECTION_SIZE = 6144  # OpenVMM hard-codes it when turning an index into an offset (host.md 3.1)
CONTROL_SLOTS = 16  # receive slots reserved for RNDIS responses and indications (host.md 2.2)
MAX_GPA_RANGES = 32  # DESIGN.md §7.6
CONTROL_QUEUE_LIMIT = 100 * 1024  # unanswered RNDIS control bytes (OpenVMM, host.md 1.6)
SLOT_HEADER_ROOM = 256  # OpenVMM: RNDIS header and PPIs before the frame
SLOT_TAIL_ROOM = 36  # OpenVMM: the tail newer Windows guests cannot use
MIN_SLOT_SIZE = 68  # Linux refuses smaller sub-allocations
RX_BATCH = 256  # frames pulled from the backend per call
RX_FRAME_CAPACITY = 16384  # the largest frame a backend hands over (jumbo frames and then some)
TX_BATCH = 16  # the frames of one VMBus packet on the engine's path (MAX_MESSAGES_PER_PACKET)
TX_OUT_BATCH = 128  # room for the segments of one 64 KiB LSO send (MSS >= 512)
DRAIN_BATCH = 256  # frames per ring-drain call (host/ringservice.py)
VLAN_TAG_BYTES = 4
_U64 = 0xFFFF_FFFF_FFFF_FFFF
# Completion faults act on each send's completion: with one armed, every packet takes the engine's path.
_COMPLETION_FAULTS = frozenset({"drop_completions", "delay_completions", "reorder_completions", "inject"})
RNDIS_BUFFER_SPACE = 262144  # "what vmswitch returns" (host.md 4.3)
VENDOR_ID = 0x0000155D
VENDOR_DESCRIPTION = b"Microsoft Corporation\0"
DRIVER_VERSION = 0x0100
FRIENDLY_NAME = "Network Device"
MAC_OPTIONS = (
    ndis.NDIS_MAC_OPTION_COPY_LOOKAHEAD_DATA
    | ndis.NDIS_MAC_OPTION_TRANSFERS_NOT_PEND
    | ndis.NDIS_MAC_OPTION_NO_LOOPBACK
    | ndis.NDIS_MAC_OPTION_8021P_PRIORITY
    | ndis.NDIS_MAC_OPTION_8021Q_VLAN
)
RSS_CAPABILITY_FLAGS = ndis.RSS_CAP_TCP_IPV4 | ndis.RSS_CAP_TCP_IPV6 | ndis.RSS_CAP_HASH_TOEPLITZ
_RX_FAULT_OF_TARGET = {
    "transfer_page": "corrupt_xfer_packet",
    "rndis_header": "corrupt_rndis_header",
    "straddle_page": "straddle_page",
}
FAULT_KINDS = (
    "drop_completions",  # count: the next N data completions are never sent
    "delay_completions",  # seconds: data completions go out that much later
    "reorder_completions",  # count: hold N completions, release them newest first
    "delay_control",  # seconds (or "never"): RNDIS responses and indications wait
    "subchannel_grant",  # count: grant at most this many subchannels
    "inject",  # message "indirection_table" | "unknown": sent before the next reply
    "corrupt",  # target "transfer_page" | "rndis_header" | "straddle_page": the next data packet
    "stall",  # channel, on: stop (or resume) servicing a ring
    "clear",  # forget every fault
)


@dataclass
class NicConfig:
    """What the host offers one NIC. ``mtu`` is the L3 MTU; the guest's NDIS frame size is capped by it."""

    mac: bytes
    mtu: int = 1500
    max_queues: int = 64
    nvsp_versions: tuple[int, ...] = nvsp.NVSP_VERSIONS_NEWEST_FIRST
    link_speed_bps: int = 10_000_000_000
    slot_size: int | None = None  # None: OpenVMM's rule 256 + frame size + 36 (DESIGN.md §7.5)
    link_change_delay_s: float = 5.0
    vf_offer_delay_s: float = 1.0
    faults: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.mac, str):
            try:
                self.mac = bytes.fromhex(self.mac.replace(":", "").replace("-", ""))
            except ValueError:
                raise ConfigError("mac", self.mac, "six hex bytes such as 02:00:00:00:00:01") from None
        self.mac = bytes(self.mac)
        if len(self.mac) != 6 or self.mac[0] & 1:
            raise ConfigError("mac", self.mac.hex(":"), "6 bytes, a unicast address")
        max_frame = nvsp.NDIS_CONFIG_MTU_MAX - nvsp.NDIS_CONFIG_MTU_ETHERNET_HEADER
        if not 68 <= self.mtu <= max_frame:
            raise ConfigError("mtu", self.mtu, f"68..{max_frame}")
        if not 1 <= self.max_queues <= 64:
            raise ConfigError("max_queues", self.max_queues, "1..64")
        self.nvsp_versions = tuple(self.nvsp_versions)
        if not self.nvsp_versions or any(
            v not in nvsp.NVSP_VERSIONS_NEWEST_FIRST for v in self.nvsp_versions
        ):
            raise ConfigError(
                "nvsp_versions",
                [hex(v) for v in self.nvsp_versions],
                "a non-empty subset of " + ", ".join(hex(v) for v in nvsp.NVSP_VERSIONS_NEWEST_FIRST),
            )
        if not 1_000_000 <= self.link_speed_bps <= 400_000_000_000:
            raise ConfigError("link_speed_bps", self.link_speed_bps, "1e6..4e11")
        if self.slot_size is not None and not MIN_SLOT_SIZE <= self.slot_size <= 65536:
            raise ConfigError("slot_size", self.slot_size, f"{MIN_SLOT_SIZE}..65536 bytes, or None")
        for name in ("link_change_delay_s", "vf_offer_delay_s"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                raise ConfigError(name, value, "0..3600 seconds")


class NicResources(Protocol):
    """What the device tree (host/tree.py) provides for one NIC."""

    recv_buffer: np.ndarray
    recv_gpadl: int
    send_buffer: np.ndarray
    send_gpadl: int
    guest_memory: Any  # host.guestmem.GuestMemory

    def primary_channel(self) -> Channel: ...

    def offer_subchannels(self, count: int) -> list[Channel]: ...

    def rescind_subchannels(self) -> None: ...


@functools.cache
def _datapath() -> tuple[Any, Any, Any]:
    """The data-path modules (host/rxpath.py, txpath.py, rss.py), imported when first needed."""
    from netvsc.host import rss, rxpath, txpath

    return rxpath, txpath, rss


@functools.cache
def _ringservice() -> Any:
    """host/ringservice.py, imported when first needed (as the modules of ``_datapath``)."""
    from netvsc.host import ringservice

    return ringservice


def _repeated(payload: bytes, copies: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``payload``, ``copies`` of it back to back, and the offsets of the copies (for a ring
    write of that many packets with the same body)."""
    blob = np.tile(np.frombuffer(payload, dtype=np.uint8), copies)
    return payload, blob, np.arange(copies + 1, dtype=np.int64) * len(payload)


@dataclass
class _ChannelState:
    session: nvsp_proto.NvspSession
    stalled: bool = False
    revoked: bool = False
    backlog: deque = field(default_factory=deque)  # packets that did not fit the ring
    space_requested: bool = False  # pending-send-size set on the guest's receive ring
    # SEND_RNDIS_PACKET_COMPLETE(success) for the ring drain: (payload, repeated copies, offsets)
    success_completions: tuple | None = None

    @property
    def stopped(self) -> bool:
        return self.session.state is nvsp_proto.NvspState.DEAD or self.revoked


@dataclass
class _Outgoing:
    """A queued message for the primary: an RNDIS control message, or an inband NVSP message."""

    due: float
    rndis_message: bytes | None = None
    nvsp_payload: bytes | None = None
    transaction_id: int = 0
    completion_requested: bool = False


class NetVsp:
    """The host side of one synthetic NIC; see the module docstring for who calls what."""

    def __init__(
        self,
        config: NicConfig,
        resources: NicResources,
        backend: Backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(config, NicConfig):
            raise ConfigError("config", type(config).__name__, "a NicConfig")
        self.config = config
        self.resources = resources
        self.backend = backend
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.channels: list[Channel] = [resources.primary_channel()]
        self._faults: dict[str, Any] = {}
        for kind, args in dict(config.faults).items():
            self._set_fault(kind, **(args if isinstance(args, dict) else {"value": args}))
        self.service_budget: int | None = None  # frames per service() call; None: until empty
        self._link_up = bool(getattr(backend, "link_up", True))  # the real state
        self._link_told = True  # the guest starts "connected" without an indication (host.md 6)
        self._last_link_change = -math.inf
        self._backend_link = self._link_up
        self._vf: dict[str, Any] | None = None
        self._vf_advertised_serial: int | None = None
        self._vf_ready_at = math.inf
        self._vf_peer: Any = None  # host/vfpeer.VfPeer while a VF on a veth end is offered
        self._vf_batch: FrameBatch | None = None
        self._closed = False
        self._reset_state()

    # -- state --------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        session = nvsp_proto.NvspSession("host", supported_versions=self.config.nvsp_versions)
        self._states = [_ChannelState(session)]
        self.rndis = rndis_proto.RndisSession("host")
        self._slots = None
        self._rx_path = None
        self._tx_path = None
        self._send_buffer_connected = False
        self._frame_size = nvsp.NDIS_CONFIG_MTU_MIN
        self._packet_filter = 0  # host#25: nothing is delivered until the guest sets a filter
        self._rss = None
        self._rss_table: tuple[int, ...] = ()
        self._control_in: deque[bytes] = deque()
        self._control_out: deque[_Outgoing] = deque()
        self._held_completions: list[tuple[float, int, int, int]] = []  # (due, channel, tid, status)
        self._reorder_hold: list[tuple[int, int, int]] = []
        self._granted_subchannels = 0
        self._data_path = nvsp.DATA_PATH_SYNTHETIC
        self._vf_steer: Any = None  # the VF peer while the data path is on the VF: poll_backend steers
        self._offload_config = self._offload_capabilities()
        self._tx_batch = FrameBatch(TX_BATCH)
        self._tx_out = FrameBatch(TX_OUT_BATCH)
        self._rx_batch = FrameBatch(RX_BATCH, RX_FRAME_CAPACITY)
        self._ring_drain = None  # host/ringservice.RingDrain, built on first use
        self.unfinished: set[int] = set()  # channels a budgeted service() left with data

    @property
    def session(self) -> nvsp_proto.NvspSession:
        return self._states[0].session

    @property
    def frame_size(self) -> int:
        """The Ethernet frame size in force: the guest's NDIS config capped by the host MTU."""
        return min(self._frame_size, self.config.mtu + nvsp.NDIS_CONFIG_MTU_ETHERNET_HEADER)

    @property
    def slot_size(self) -> int:
        if self.config.slot_size is not None:
            return self.config.slot_size
        return SLOT_HEADER_ROOM + self.frame_size + SLOT_TAIL_ROOM

    @property
    def link_up(self) -> bool:
        return self._link_up

    @property
    def packet_filter(self) -> int:
        return self._packet_filter

    @property
    def data_path(self) -> int:
        return self._data_path

    # -- sending helpers -----------------------------------------------------------------------

    def _send(
        self, index: int, kind: int, payload: bytes, transaction_id: int, completion: bool = False
    ) -> None:
        """Inband or completion packet on channel ``index``; kept in order when the ring is full."""
        state = self._states[index]
        if state.stopped:
            return
        if state.backlog:
            state.backlog.append((kind, payload, transaction_id, completion))
            return
        if not self._try_send(index, kind, payload, transaction_id, completion):
            state.backlog.append((kind, payload, transaction_id, completion))

    def _try_send(self, index: int, kind: int, payload: bytes, transaction_id: int, completion: bool) -> bool:
        channel = self.channels[index]
        try:
            if kind == vmbus_wire.PACKET_TYPE_COMPLETION:
                channel.send_completion(payload, transaction_id, defer_signal=True)
            else:
                channel.send_inband(payload, transaction_id, completion, defer_signal=True)
        except RingFullError:
            self.counts["ring_full"] += 1
            needed = vmbus_wire.ring_bytes_for_packet(vmbus_wire.PACKET_DESCRIPTOR_SIZE + len(payload))
            # host.md 8: ask the guest to signal once it has read enough (pending send size).
            freed_meanwhile = False
            with contextlib.suppress(ConfigError):
                freed_meanwhile = channel.tx.request_space(needed)
            self._states[index].space_requested = True
            if freed_meanwhile:
                return self._try_send(index, kind, payload, transaction_id, completion)
            return False
        return True

    def _flush_backlog(self, index: int) -> None:
        state = self._states[index]
        while state.backlog and not state.stopped:
            if not self._try_send(index, *state.backlog[0]):
                return
            state.backlog.popleft()
        if not state.backlog and state.space_requested:
            self.channels[index].tx.clear_pending_send()
            state.space_requested = False

    def _complete(self, index: int, transaction_id: int, payload: bytes) -> None:
        self._maybe_inject(index)
        self._send(index, vmbus_wire.PACKET_TYPE_COMPLETION, payload, transaction_id)

    def _maybe_inject(self, index: int) -> None:
        """Fault: an unsolicited NVSP message just before a reply (issue 3, item 8)."""
        message = self._faults.pop("inject", None)
        if message is None:
            return
        if index != 0 or self.session.state is not nvsp_proto.NvspState.READY:
            self._faults["inject"] = message
            return
        if message == "indirection_table" and self.session.version >= nvsp.NVSP_VERSION_5:
            payload = self.session.encode_send_indirection_table(len(self.channels))
        else:
            payload = (0xFFFF).to_bytes(4, "little") + bytes(self.session.host_message_size - 4)
        self.counts["injected_messages"] += 1
        self._send(0, vmbus_wire.PACKET_TYPE_INBAND, payload, 0)

    def _flush_signals(self) -> None:
        for channel in self.channels:
            channel.flush_signal()

    def _fail_stop(self, index: int, reason: str) -> None:
        state = self._states[index]
        if state.session.state is not nvsp_proto.NvspState.DEAD:
            state.session.state = nvsp_proto.NvspState.DEAD
            state.session.fail_reason = reason
        state.backlog.clear()
        self.counts["fail_stops"] += 1
        log.warning("channel %d fail-stop: %s", index, reason)

    # -- service: the guest signalled ------------------------------------------------------------

    def service(self, channel_index: int) -> bool:
        """Drain channel ``channel_index``'s guest-to-host ring with interrupts masked, then unmask
        and re-check, so no guest write is left unprocessed (host.md 8, host#62). Returns whether
        anything was read.

        With ``service_budget`` set, a call stops once it has handled that many frames and
        packets with the ring not yet empty: the mask stays set (the host is still draining, so
        the guest does not signal) and the channel is in ``unfinished`` until a later call
        empties the ring. The server calls those again without waiting for a signal, so a busy
        channel cannot hold the loop, and its backends, for longer than one budget.
        """
        if not 0 <= channel_index < len(self.channels):
            raise ConfigError("channel_index", channel_index, f"0..{len(self.channels) - 1}")
        self.unfinished.discard(channel_index)
        state = self._states[channel_index]
        if state.stopped or state.stalled or self._closed:
            return False
        channel = self.channels[channel_index]
        self._flush_backlog(channel_index)
        worked = False
        channel.rx.mask_interrupts()
        while not state.stopped:
            read, emptied = self._read_ring(channel_index, self.service_budget)
            worked |= read
            if state.stopped:
                break  # a dead or revoked channel is not read again (mask stays set)
            if not emptied:
                self.unfinished.add(channel_index)
                break
            try:
                more = channel.rx.unmask_interrupts()
            except ProtocolError as error:
                self._fail_stop(channel_index, f"ring: {error}")
                break
            if not more:
                break
            channel.rx.mask_interrupts()
        self._process_control()
        self._flush_signals()
        return worked

    def _read_ring(self, index: int, budget: int | None) -> tuple[bool, bool]:
        """Read channel ``index``'s ring until it is empty, the channel stops or ``budget`` frames
        and packets are handled: batches of sends and receive completions through the ring
        drain, every other packet through the session engine. Returns (anything read, the ring
        was found empty)."""
        state = self._states[index]
        channel = self.channels[index]
        worked = False
        handled = 0
        while not state.stopped:
            if budget is not None and handled >= budget:
                return worked, False
            if self._drain_allowed(index):
                ringservice = _ringservice()
                stop = self._drain(index, DRAIN_BATCH if budget is None else budget - handled)
                drain = self._ring_drain
                worked |= drain.taken > 0
                handled += drain.batch.count + drain.released + drain.unknown
                if stop == ringservice.STOP_EMPTY:
                    return worked, True
                if stop == ringservice.STOP_FULL:
                    continue
                self.counts["drain_handoffs"] += 1  # the next packet is the engine's
            try:
                packet = channel.recv()
            except ProtocolError as error:
                self._fail_stop(index, f"ring: {error}")  # host.md 1.6: bad descriptor/indices
                break
            if packet is None:
                return worked, True
            worked = True
            handled += 1
            self.counts["packets_received"] += 1
            self._handle_packet(index, packet)
        return worked, True

    def _drain_allowed(self, index: int) -> bool:
        return (
            self._rx_path is not None
            and self._states[index].session.state is nvsp_proto.NvspState.READY
            and _COMPLETION_FAULTS.isdisjoint(self._faults)
        )

    def _drain(self, index: int, work_limit: int) -> int:
        """One ring-drain call on channel ``index`` (``work_limit`` frames and completions): its
        frames to the backend, then the completions of its sends (host.md 3.2), then the ring
        space back to the guest."""
        drain = self._ring_drain
        if drain is None:
            # Frames up to the frame size in force; a longer one takes the engine's path.
            capacity = (self.frame_size + VLAN_TAG_BYTES + 63) // 64 * 64
            guest_memory = self.resources.guest_memory
            drain = _ringservice().RingDrain(capacity, DRAIN_BATCH, guest_memory, MAX_GPA_RANGES)
            self._ring_drain = drain
        channel = self.channels[index]
        send_buffer = self.resources.send_buffer if self._send_buffer_connected else None
        stop = drain.drain(channel, index, send_buffer, SEND_SECTION_SIZE, self._rx_path.slots, work_limit)
        taken = drain.taken
        if not taken:
            return stop
        counts = self.counts
        counts["packets_received"] += taken
        sends = drain.sends
        if sends:
            counts["drain_sends"] += sends
            counts["nvsp_RndisPacket"] += sends
            counts["tx_packets"] += sends
            self._transmit_path().counters["tx_frames"] += drain.batch.count
            self._transmit_frames(drain.batch, drain.out)
            self._complete_sends(index, drain.completions, drain.completion_count)
        completions = drain.released + drain.unknown
        if completions:
            counts["nvsp_RndisPacketCompletion"] += completions
            rx_counters = self._rx_path.counters
            rx_counters["completions"] += drain.released
            if drain.unknown:
                rx_counters["completions_unknown"] += drain.unknown
                counts["unknown_receive_completions"] += drain.unknown  # host#23
        channel.commit()
        return stop

    def _complete_sends(self, index: int, transaction_ids: np.ndarray, count: int) -> None:
        """SUCCESS completions for ``count`` sends (host#28) with one ring write; what does not
        fit waits in the channel's backlog, in order."""
        state = self._states[index]
        if count == 0 or state.stopped:
            return
        completions = state.success_completions
        if completions is None or completions[2].shape[0] <= count:
            completions = state.success_completions = _repeated(
                state.session.encode_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS), max(count, DRAIN_BATCH)
            )
        payload, blob, offsets = completions
        written = 0
        if not state.backlog:
            written = self.channels[index].tx.write_inband_batch(
                blob, offsets, transaction_ids, vmbus_wire.PACKET_TYPE_COMPLETION, 0, count
            )
        for transaction_id in transaction_ids[written:count]:
            self._send(index, vmbus_wire.PACKET_TYPE_COMPLETION, payload, int(transaction_id) & _U64)

    def _handle_packet(self, index: int, packet: tuple) -> None:
        packet_type, flags, transaction_id, extension, payload = packet
        state = self._states[index]
        if flags & ~vmbus_wire.KNOWN_PACKET_FLAGS:
            self._fail_stop(index, f"descriptor flags {flags:#x}")
            return
        completion_requested = bool(flags & vmbus_wire.PACKET_FLAG_COMPLETION_REQUESTED)
        gpa_ranges: tuple = ()
        if packet_type == vmbus_wire.PACKET_TYPE_GPA_DIRECT:
            try:
                gpa_ranges = self._gpa_ranges(packet)
            except ProtocolError as error:
                self._fail_stop(index, f"GPA-direct packet: {error}")
                return
            kind = vmbus_wire.PACKET_TYPE_INBAND
        elif packet_type in (vmbus_wire.PACKET_TYPE_INBAND, vmbus_wire.PACKET_TYPE_COMPLETION):
            kind = packet_type
        else:
            self._fail_stop(index, f"VMBus packet type {packet_type:#x} from the guest")
            return
        if gpa_ranges:
            try:
                if nvsp.peek_message_type(payload) != nvsp.NVSP_MSG_SEND_RNDIS_PACKET:
                    self._fail_stop(index, "GPA-direct packet that is not SEND_RNDIS_PACKET")
                    return
            except ProtocolError as error:
                self._fail_stop(index, str(error))
                return
        event = state.session.receive(kind, transaction_id, payload, completion_requested)
        self.counts[f"nvsp_{type(event).__name__}"] += 1
        handler = self._EVENT_HANDLERS.get(type(event))
        if handler is None:
            self._fail_stop(index, f"unhandled NVSP event {type(event).__name__}")
            return
        handler(self, index, event, gpa_ranges)

    @staticmethod
    def _gpa_ranges(packet: tuple) -> tuple:
        packet_type, flags, transaction_id, extension, payload = packet
        header_length = vmbus_wire.PACKET_DESCRIPTOR_SIZE + len(extension)
        total = header_length + len(payload)
        descriptor = encode_descriptor(packet_type, header_length // 8, total // 8, flags, transaction_id)
        decoded = vmbus_wire.decode_channel_packet(descriptor.tobytes() + extension + payload)
        return decoded.gpa_ranges

    # -- NVSP events ---------------------------------------------------------------------------

    def _on_fail_stop(self, index: int, event: nvsp_proto.FailStop, gpa_ranges: tuple) -> None:
        self._fail_stop(index, event.reason)

    def _on_ignored(self, index: int, event: nvsp_proto.Ignored, gpa_ranges: tuple) -> None:
        pass

    def _on_init(self, index: int, event: nvsp_proto.InitRequest, gpa_ranges: tuple) -> None:
        if not event.accepted:
            self.counts["init_rejected"] += 1  # host#4: stays in VERSION
        self._complete(index, event.transaction_id, event.reply)

    def _on_ndis_version(self, index: int, event: nvsp_proto.NdisVersion, gpa_ranges: tuple) -> None:
        if event.completion_requested:  # host#6: an empty completion only when requested
            self._complete(index, event.transaction_id, b"")

    def _on_ndis_config(self, index: int, event: nvsp_proto.NdisConfig, gpa_ranges: tuple) -> None:
        self._frame_size = event.mtu
        if event.completion_requested:
            self._complete(index, event.transaction_id, b"")

    def _on_buffer(self, index: int, event: nvsp_proto.BufferOffered, gpa_ranges: tuple) -> None:
        session = self.session
        if event.receive:
            if event.gpadl_handle != self.resources.recv_gpadl:
                # host.md 1.6: unknown GPADL -> fail-stop without a completion.
                self._fail_stop(index, f"receive buffer GPADL {event.gpadl_handle:#x} is unknown")
                return
            size = int(self.resources.recv_buffer.shape[0])
            slot_size = self.slot_size
            slot_count = size // slot_size
            if slot_count <= CONTROL_SLOTS:
                self._fail_stop(
                    index, f"receive buffer of {size} bytes holds {slot_count} slots of {slot_size}"
                )
                return
            rxpath, _txpath, _rss = _datapath()
            try:
                self._slots = rxpath.ReceiveSlots(size, slot_size, CONTROL_SLOTS)
                self._slots.set_active_queues([0])
                self._rx_path = rxpath.ReceivePath(
                    self.resources.recv_buffer, self._slots, event.buffer_id, session.host_message_size
                )
            except ConfigError as error:
                self._fail_stop(index, f"receive buffer refused: {error}")
                return
            self._arm_rx_faults()
            reply = session.encode_receive_buffer_complete(nvsp.NVSP_STATUS_SUCCESS, slot_size, slot_count)
        else:
            if event.gpadl_handle != self.resources.send_gpadl:
                self._fail_stop(index, f"send buffer GPADL {event.gpadl_handle:#x} is unknown")
                return
            self._send_buffer_connected = True
            self._tx_path = None  # rebuilt with the send buffer on first use
            reply = session.encode_send_buffer_complete(nvsp.NVSP_STATUS_SUCCESS, SEND_SECTION_SIZE)
        self._complete(index, event.transaction_id, reply)

    def _transmit_path(self) -> Any:
        if self._tx_path is None:
            _rxpath, txpath, _rss = _datapath()
            send_buffer = self.resources.send_buffer if self._send_buffer_connected else None
            self._tx_path = txpath.TransmitPath(send_buffer, SEND_SECTION_SIZE, self.resources.guest_memory)
        return self._tx_path

    def _on_revoke(self, index: int, event: nvsp_proto.BufferRevoked, gpa_ranges: tuple) -> None:
        # host#64: processing of this channel ends, no completion.
        self._states[index].revoked = True
        self._states[index].backlog.clear()
        self.counts["buffer_revokes"] += 1

    def _on_rndis_packet(self, index: int, event: nvsp_proto.RndisPacket, gpa_ranges: tuple) -> None:
        if event.became_ready:
            self.counts["ready_by_rndis_packet"] += 1  # host#11
        section_index, section_size = event.section_index, event.section_size
        if section_index != nvsp.SEND_SECTION_INDEX_NONE:
            limit = int(self.resources.send_buffer.shape[0]) if self._send_buffer_connected else 0
            if not self._send_buffer_connected or section_index * SEND_SECTION_SIZE + section_size > limit:
                self._fail_stop(
                    index, f"send section {section_index} (+{section_size} bytes) outside the send buffer"
                )
                return
        else:
            section_size = 0
        if len(gpa_ranges) > MAX_GPA_RANGES:
            self.counts["tx_too_many_gpa_ranges"] += 1
            self._complete_send(index, event, nvsp.NVSP_STATUS_FAILURE)
            return
        ranges = [(r.byte_count, r.byte_offset, r.page_numbers) for r in gpa_ranges]
        batch = self._tx_batch
        batch.clear()
        try:
            result = self._transmit_path().parse(
                section_index, section_size, ranges, batch, channel_index=index
            )
        except ProtocolError as error:
            self.counts["tx_malformed"] += 1
            log.info("channel %d: malformed RNDIS packet: %s", index, error)
            self._complete_send(index, event, nvsp.NVSP_STATUS_FAILURE)
            return
        if result.kind == "control":
            if index != 0:  # host.md 1.6: control on a subchannel -> FAILURE
                self.counts["control_on_subchannel"] += 1
                self._complete_send(index, event, nvsp.NVSP_STATUS_FAILURE)
                return
            message = bytes(result.control_message or b"")
            if self._queued_control_bytes() + len(message) > CONTROL_QUEUE_LIMIT:
                # host.md 1.6: the packet that overflows the unanswered queue fails.
                self.counts["control_queue_overflow"] += 1
                self._complete_send(index, event, nvsp.NVSP_STATUS_FAILURE)
                return
            # host#36: the VMBus packet completes at once; the response comes later.
            self._complete_send(index, event, nvsp.NVSP_STATUS_SUCCESS)
            if message:
                self._control_in.append(message)
            return
        if result.kind == "error" and getattr(result, "fatal", False):
            self._fail_stop(index, f"transmit: {result.reason}")
            return
        if result.kind == "error":
            self.counts["tx_malformed"] += 1  # host#29
            self._complete_send(index, event, nvsp.NVSP_STATUS_FAILURE)
            return
        self._transmit_frames(batch, self._tx_out)
        self.counts["tx_packets"] += 1
        self._complete_send(index, event, nvsp.NVSP_STATUS_SUCCESS, data=True)

    def _queued_control_bytes(self) -> int:
        return sum(len(m) for m in self._control_in) + sum(
            len(item.rndis_message or b"") for item in self._control_out
        )

    def _transmit_frames(self, batch: FrameBatch, out: FrameBatch) -> None:
        """Hand ``batch`` to the backend, through ``out`` when offloads must be done in software."""
        if batch.count == 0:
            return
        _rxpath, txpath, _rss = _datapath()
        offloads = self.backend.offloads
        if txpath.software_work_needed(batch, offloads):
            out.clear()
            try:
                dropped = txpath.apply_software_offloads(batch, offloads, out)
            except (ProtocolError, ConfigError) as error:
                self.counts["tx_offload_errors"] += 1
                log.info("transmit offload failed: %s", error)
                return
            if dropped:
                self.counts["tx_offload_drops"] += int(dropped)
        else:
            out = batch  # nothing to do to the frames: no copy
        consumed = self.backend.transmit(out)
        self.counts["tx_frames"] += out.count
        if consumed < out.count:
            self.counts["tx_backend_drops"] += out.count - consumed

    def _complete_send(
        self, index: int, event: nvsp_proto.RndisPacket, status: int, *, data: bool = False
    ) -> None:
        """One completion per SEND_RNDIS_PACKET (host#28), through the completion faults."""
        if not event.completion_requested:
            return
        transaction_id = event.transaction_id
        if data and self._faults.get("drop_completions", 0) > 0:
            self._faults["drop_completions"] -= 1
            self.counts["completions_dropped"] += 1
            return
        if data and self._faults.get("delay_completions"):
            due = self.clock() + float(self._faults["delay_completions"])
            self._held_completions.append((due, index, transaction_id, status))
            self.counts["completions_delayed"] += 1
            return
        if data and self._faults.get("reorder_completions", 0) > 1:
            self._reorder_hold.append((index, transaction_id, status))
            if len(self._reorder_hold) >= self._faults["reorder_completions"]:
                self.counts["completions_reordered"] += len(self._reorder_hold)
                for held in reversed(self._reorder_hold):
                    self._send_rndis_completion(*held)
                self._reorder_hold.clear()
            return
        self._send_rndis_completion(index, transaction_id, status)

    def _send_rndis_completion(self, index: int, transaction_id: int, status: int) -> None:
        payload = self._states[index].session.encode_rndis_packet_complete(status)
        self._complete(index, transaction_id, payload)

    def _on_receive_completion(
        self, index: int, event: nvsp_proto.RndisPacketCompletion, gpa_ranges: tuple
    ) -> None:
        if self._rx_path is None or not self._rx_path.complete(index, event.transaction_id):
            # host#23: not a valid release; counted (the project does not fail-stop on it).
            self.counts["unknown_receive_completions"] += 1

    def _on_switch(self, index: int, event: nvsp_proto.SwitchDataPath, gpa_ranges: tuple) -> None:
        wanted = event.active_data_path
        if wanted == nvsp.DATA_PATH_VF and (self._vf is None or self.clock() < self._vf_ready_at):
            self.counts["switch_to_vf_without_vf"] += 1  # completed without a switch (host.md 7.2)
        elif wanted in (nvsp.DATA_PATH_SYNTHETIC, nvsp.DATA_PATH_VF):
            self._data_path = wanted  # switched first: the completion means "moved" (host#56)
        self._steer_vf()
        self.counts["data_path_switches"] += 1
        if event.completion_requested:  # host#57
            self._complete(index, event.transaction_id, b"")

    def _on_oid_query_ex(self, index: int, event: nvsp_proto.OidQueryEx, gpa_ranges: tuple) -> None:
        session = self._states[index].session
        self._complete(
            index,
            event.transaction_id,
            session.encode_oid_query_ex_complete(rndis.RNDIS_STATUS_NOT_SUPPORTED),
        )

    def _on_subchannel(self, index: int, event: nvsp_proto.SubchannelRequest, gpa_ranges: tuple) -> None:
        count = event.count
        slot_count = self._slots.slot_count if self._slots is not None else 0
        granted = 0
        if (
            event.operation == nvsp.SUBCHANNEL_OPERATION_ALLOCATE
            and 0 < count < self.config.max_queues
            and (slot_count - CONTROL_SLOTS) // (count + 1) >= 1
        ):
            granted = count
            limit = self._faults.get("subchannel_grant")
            if limit is not None:
                granted = min(granted, int(limit))
        # Only grow: offered subchannels stay (host.md 5, repeated requests).
        new = max(granted - self._granted_subchannels, 0)
        if granted:
            reply = self.session.encode_subchannel_complete(nvsp.NVSP_STATUS_SUCCESS, granted)
        else:
            self.counts["subchannel_refused"] += 1  # host#49
            reply = self.session.encode_subchannel_complete(nvsp.NVSP_STATUS_FAILURE, 0)
        self._complete(index, event.transaction_id, reply)
        if not new:
            return
        # host#48: offers come after the completion.
        self._flush_signals()
        channels = self.resources.offer_subchannels(new)
        for channel in channels:
            self.channels.append(channel)
            self._states.append(_ChannelState(self.session.subchannel_session()))
        self._granted_subchannels += len(channels)
        self._update_active_queues()
        self.counts["subchannels_offered"] += len(channels)
        # host#50: the send table on the primary, no completion requested, transaction id 0.
        table = self.session.encode_send_indirection_table(len(self.channels))
        self._send(0, vmbus_wire.PACKET_TYPE_INBAND, table, 0)

    _EVENT_HANDLERS: dict[type, Callable] = {}

    # -- RNDIS control -------------------------------------------------------------------------

    def _process_control(self) -> None:
        """Answer queued control messages in order, then send what the slots allow."""
        while self._control_in and not self._states[0].stopped:
            self._handle_control(self._control_in.popleft())
        self._flush_control_out()

    def _queue_control(self, message: bytes) -> None:
        self._control_out.append(_Outgoing(self._control_due(), rndis_message=message))

    def _queue_nvsp(self, payload: bytes, transaction_id: int, completion_requested: bool) -> None:
        self._control_out.append(
            _Outgoing(
                self._control_due(),
                nvsp_payload=payload,
                transaction_id=transaction_id,
                completion_requested=completion_requested,
            )
        )

    def _control_due(self) -> float:
        delay = self._faults.get("delay_control")
        if delay is None:
            return -math.inf
        return math.inf if delay == "never" else self.clock() + float(delay)

    def _flush_control_out(self) -> None:
        now = self.clock()
        while self._control_out and not self._states[0].stopped:
            item = self._control_out[0]
            if item.due > now:
                return
            if item.nvsp_payload is not None:
                self._send(
                    0,
                    vmbus_wire.PACKET_TYPE_INBAND,
                    item.nvsp_payload,
                    item.transaction_id,
                    item.completion_requested,
                )
            else:
                if self._rx_path is None:
                    return
                self._maybe_inject(0)
                if not self._rx_path.send_control(self.channels[0], 0, item.rndis_message):
                    self.counts["control_waiting_for_slot"] += 1
                    return  # host.md 4.1: responses wait, in order
                self.counts["control_messages_sent"] += 1
            self._control_out.popleft()

    def _arm_rx_faults(self) -> None:
        """Fault: hand a pending corruption to ReceivePath's hook (applies to its next data packet)."""
        target = self._faults.get("corrupt")
        if target is None or self._rx_path is None:
            return
        self._rx_path.arm_fault(_RX_FAULT_OF_TARGET[target])
        del self._faults["corrupt"]
        self.counts["corruptions_armed"] += 1

    def _handle_control(self, message: bytes) -> None:
        event = self.rndis.receive(message)
        if isinstance(event, rndis_proto.Violation):
            self._fail_stop(0, f"RNDIS: {event.reason}")
            return
        if isinstance(event, rndis_proto.Halt):
            self.counts["rndis_halt"] += 1  # host#39: no response
            return
        self.counts[f"rndis_request_{event.message_type:#x}"] += 1
        message_type, request_id, record = event.message_type, event.request_id, event.message
        if message_type == rndis.RNDIS_MSG_INITIALIZE:
            self._queue_control(self.rndis.encode_initialize_complete(request_id))  # host#37
            self._advertise_vf()  # host#53: after INITIALIZE_CMPLT
        elif message_type == rndis.RNDIS_MSG_KEEPALIVE:
            self._queue_control(self.rndis.encode_keepalive_complete(request_id))  # host#40
        elif message_type == rndis.RNDIS_MSG_RESET:
            # DESIGN.md §7.11: success and back to the post-initialize state.
            self._packet_filter = 0
            self._set_rss(None)
            self._queue_control(self.rndis.encode_reset_complete())
        elif message_type == rndis.RNDIS_MSG_QUERY:
            status, info = self._query(record.oid)
            if status != rndis.RNDIS_STATUS_SUCCESS:
                self.counts["oid_not_supported"] += 1
            self._queue_control(self.rndis.encode_query_complete(request_id, status, info))
        elif message_type == rndis.RNDIS_MSG_SET:
            # Per OID, so a test can tell which sets a guest sent (or never sent).
            self.counts[f"rndis_set_oid_{record.oid:#x}"] += 1
            status, follow_up = self._set(record.oid, record.info)
            self._queue_control(self.rndis.encode_set_complete(request_id, status))
            if follow_up is not None:
                self._queue_control(follow_up)

    # -- OIDs ----------------------------------------------------------------------------------

    def _offload_capabilities(self) -> bytes:
        """NDIS_OFFLOAD rev 3 (156 bytes): what the host does (software fills the backend's gaps)."""
        ipv4 = (
            ndis.CHECKSUM_CAP_IPV4_OPTIONS
            | ndis.CHECKSUM_CAP_IPV4_TCP_OPTIONS
            | ndis.CHECKSUM_CAP_IPV4_TCP
            | ndis.CHECKSUM_CAP_IPV4_UDP
            | ndis.CHECKSUM_CAP_IPV4_HEADER
        )
        ipv6 = (
            ndis.CHECKSUM_CAP_IPV6_EXTENSION_HEADERS
            | ndis.CHECKSUM_CAP_IPV6_TCP_OPTIONS
            | ndis.CHECKSUM_CAP_IPV6_TCP
            | ndis.CHECKSUM_CAP_IPV6_UDP
        )
        encap = ndis.NDIS_ENCAPSULATION_IEEE_802_3
        return ndis.encode_offload_capabilities(
            ipv4_tx_encapsulation=encap,
            ipv4_tx_flags=ipv4,
            ipv4_rx_encapsulation=encap,
            ipv4_rx_flags=ipv4,
            ipv6_tx_encapsulation=encap,
            ipv6_tx_flags=ipv6,
            ipv6_rx_encapsulation=encap,
            ipv6_rx_flags=ipv6,
            lso_v2_ipv4_encapsulation=encap,
            lso_v2_ipv4_max_size=ndis.LSO_V2_MAX_SIZE_OPENVMM,
            lso_v2_ipv4_min_segments=ndis.LSO_V2_MIN_SEGMENTS_OPENVMM,
            lso_v2_ipv6_encapsulation=encap,
            lso_v2_ipv6_max_size=ndis.LSO_V2_MAX_SIZE_OPENVMM,
            lso_v2_ipv6_min_segments=ndis.LSO_V2_MIN_SEGMENTS_OPENVMM,
            lso_v2_ipv6_options=ndis.LSO_V2_IPV6_CAP_EXTENSION_HEADERS | ndis.LSO_V2_IPV6_CAP_TCP_OPTIONS,
        )

    def _query(self, oid: int) -> tuple[int, bytes]:
        """host#41/#42: the values of host.md 4.3; anything else is NOT_SUPPORTED."""

        def u32(value: int) -> bytes:
            return int(value).to_bytes(4, "little")

        frame = self.frame_size
        speed = self.config.link_speed_bps
        values: dict[int, bytes] = {
            ndis.OID_GEN_HARDWARE_STATUS: u32(ndis.NDIS_HARDWARE_STATUS_READY),
            ndis.OID_GEN_MEDIA_SUPPORTED: u32(ndis.NDIS_MEDIUM_802_3),
            ndis.OID_GEN_MEDIA_IN_USE: u32(ndis.NDIS_MEDIUM_802_3),
            ndis.OID_GEN_MAXIMUM_LOOKAHEAD: u32(frame - 14),
            ndis.OID_GEN_CURRENT_LOOKAHEAD: u32(frame - 14),
            ndis.OID_GEN_MAXIMUM_FRAME_SIZE: u32(frame - 14),
            ndis.OID_GEN_MAXIMUM_TOTAL_SIZE: u32(frame),
            0x0001010A: u32(frame),  # TRANSMIT_BLOCK_SIZE
            0x0001010B: u32(frame),  # RECEIVE_BLOCK_SIZE
            ndis.OID_GEN_LINK_SPEED: u32(speed // ndis.LINK_SPEED_UNIT_BPS),
            ndis.OID_GEN_TRANSMIT_BUFFER_SPACE: u32(RNDIS_BUFFER_SPACE),
            ndis.OID_GEN_RECEIVE_BUFFER_SPACE: u32(RNDIS_BUFFER_SPACE),
            ndis.OID_GEN_VENDOR_ID: u32(VENDOR_ID),
            0x0001010D: VENDOR_DESCRIPTION,  # VENDOR_DESCRIPTION
            0x00010110: DRIVER_VERSION.to_bytes(2, "little"),  # DRIVER_VERSION
            0x00010116: u32(DRIVER_VERSION),  # VENDOR_DRIVER_VERSION
            # The current filter, not OpenVMM's constant 0 (host.md 4.3).
            ndis.OID_GEN_CURRENT_PACKET_FILTER: u32(self._packet_filter),
            ndis.OID_GEN_MAC_OPTIONS: u32(MAC_OPTIONS),
            # The current link state, not OpenVMM's constant "connected".
            ndis.OID_GEN_MEDIA_CONNECT_STATUS: u32(
                ndis.NDIS_MEDIA_STATE_CONNECTED if self._link_up else ndis.NDIS_MEDIA_STATE_DISCONNECTED
            ),
            ndis.OID_GEN_MAXIMUM_SEND_PACKETS: u32(0xFFFFFFFF),
            ndis.OID_GEN_FRIENDLY_NAME: FRIENDLY_NAME.encode("utf-16-le").ljust(512, b"\0"),
            ndis.OID_802_3_PERMANENT_ADDRESS: self.config.mac,
            ndis.OID_802_3_CURRENT_ADDRESS: self.config.mac,
            ndis.OID_802_3_MAXIMUM_LIST_SIZE: u32(0),
            0x01020101: u32(0),  # RCV_ERROR_ALIGNMENT
            0x01020102: u32(0),  # XMIT_ONE_COLLISION
            0x01020103: u32(0),  # XMIT_MORE_COLLISIONS
            ndis.OID_GEN_MAX_LINK_SPEED: speed.to_bytes(8, "little") * 2,
            ndis.OID_GEN_LINK_STATE: self._link_state_object(),
            ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES: self._offload_capabilities(),
            ndis.OID_TCP_OFFLOAD_CURRENT_CONFIG: self._offload_config,
            ndis.OID_OFFLOAD_ENCAPSULATION: ndis.encode_offload_encapsulation(
                ipv4_enabled=ndis.NDIS_OFFLOAD_SET_ON,
                ipv4_encapsulation_type=ndis.NDIS_ENCAPSULATION_IEEE_802_3,
                ipv4_header_size=14,
                ipv6_enabled=ndis.NDIS_OFFLOAD_SET_ON,
                ipv6_encapsulation_type=ndis.NDIS_ENCAPSULATION_IEEE_802_3,
                ipv6_header_size=14,
            ),
            ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES: ndis.encode_rss_capabilities(
                capabilities_flags=RSS_CAPABILITY_FLAGS,
                number_of_interrupt_messages=1,
                number_of_receive_queues=self.config.max_queues,
                number_of_indirection_table_entries=ndis.RSS_INDIRECTION_TABLE_ENTRIES,
            ),
        }
        if oid == ndis.OID_GEN_SUPPORTED_LIST:
            # host.md 4.3: the list follows the guest's NDIS version; RSS OIDs from 6.30.
            major, minor = self.session.negotiated.ndis_version or (6, 30)
            if major not in (5, 6):
                return rndis.RNDIS_STATUS_BAD_VERSION, b""
            listed = set(values)
            if (major, minor) < (6, 30):
                listed -= {ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES}
            else:
                listed.add(ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS)  # settable, not queryable
            return rndis.RNDIS_STATUS_SUCCESS, b"".join(u32(o) for o in sorted(listed))
        value = values.get(oid)
        if value is None:
            return rndis.RNDIS_STATUS_NOT_SUPPORTED, b""
        return rndis.RNDIS_STATUS_SUCCESS, value

    def _link_state_object(self) -> bytes:
        speed = self.config.link_speed_bps
        header = ndis.encode_ndis_object_header(ndis.NDIS_OBJECT_TYPE_DEFAULT, 1, 40)
        state = 1 if self._link_up else 2  # MediaConnectStateConnected / Disconnected
        return (
            header
            + state.to_bytes(4, "little")
            + (0).to_bytes(4, "little")  # duplex unknown
            + speed.to_bytes(8, "little")
            + speed.to_bytes(8, "little")
            + (0).to_bytes(4, "little")  # pause
            + (0).to_bytes(4, "little")  # autonegotiation
            + bytes(4)
        )

    def _set(self, oid: int, value: bytes) -> tuple[int, bytes | None]:
        """Returns the SET status and an indication to send after the SET_CMPLT, if any."""
        if oid == ndis.OID_GEN_CURRENT_PACKET_FILTER:
            if len(value) < 4:
                return rndis.RNDIS_STATUS_INVALID_DATA, None
            self._packet_filter = int.from_bytes(value[:4], "little")
            return rndis.RNDIS_STATUS_SUCCESS, None
        if oid == ndis.OID_TCP_OFFLOAD_PARAMETERS:
            return self._set_offload_parameters(value)
        if oid == ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS:
            return self._set_rss_parameters(value), None
        if oid == ndis.OID_GEN_RNDIS_CONFIG_PARAMETER:
            try:
                parameter = ndis.decode_rndis_config_parameter(value)
            except ProtocolError:
                return rndis.RNDIS_STATUS_INVALID_DATA, None
            if isinstance(parameter.value, str) and not parameter.value[:1].isdigit():
                return rndis.RNDIS_STATUS_INVALID_DATA, None
            return rndis.RNDIS_STATUS_SUCCESS, None
        if oid == ndis.OID_802_3_MULTICAST_LIST:
            # No multicast list (MAXIMUM_LIST_SIZE 0): guests use all-multicast.
            return (rndis.RNDIS_STATUS_SUCCESS if not value else rndis.RNDIS_STATUS_NOT_SUPPORTED), None
        if oid == 0x00010118:  # NETWORK_LAYER_ADDRESSES: ignored
            return rndis.RNDIS_STATUS_SUCCESS, None
        if oid == ndis.OID_OFFLOAD_ENCAPSULATION:
            try:
                encapsulation = ndis.decode_offload_encapsulation(value)
            except ProtocolError:
                return rndis.RNDIS_STATUS_NOT_SUPPORTED, None
            for family in ("ipv4", "ipv6"):
                if getattr(encapsulation, f"{family}_enabled") == ndis.NDIS_OFFLOAD_SET_ON and (
                    getattr(encapsulation, f"{family}_encapsulation_type")
                    != ndis.NDIS_ENCAPSULATION_IEEE_802_3
                    or getattr(encapsulation, f"{family}_header_size") != 14
                ):
                    return rndis.RNDIS_STATUS_NOT_SUPPORTED, None
            return rndis.RNDIS_STATUS_SUCCESS, None
        return rndis.RNDIS_STATUS_NOT_SUPPORTED, None  # host#42

    def _set_offload_parameters(self, value: bytes) -> tuple[int, bytes | None]:
        """host#43/#44: type 0x80, revision >= 1, 20 <= size <= bytes sent; LSOv1 enable refused."""
        if len(value) < ndis.OFFLOAD_PARAMETERS_SIZE[1]:
            return rndis.RNDIS_STATUS_INVALID_DATA, None
        header = ndis.NDIS_OBJECT_HEADER.decode(value)
        if (
            header.type != ndis.NDIS_OBJECT_TYPE_DEFAULT
            or header.revision < 1
            or not (ndis.OFFLOAD_PARAMETERS_SIZE[1] <= header.size <= len(value))
        ):
            return rndis.RNDIS_STATUS_INVALID_DATA, None
        params = ndis.decode_offload_parameters(value)
        if params.lso_v1 == ndis.OFFLOAD_LSO_ENABLED:
            return rndis.RNDIS_STATUS_NOT_SUPPORTED, None
        current = dict(ndis.decode_offload_capabilities(self._offload_config)._asdict())
        capabilities = ndis.decode_offload_capabilities(self._offload_capabilities())
        fields = {
            "ipv4_checksum": ("ipv4", ndis.CHECKSUM_CAP_IPV4_HEADER),
            "tcp4_checksum": ("ipv4", ndis.CHECKSUM_CAP_IPV4_TCP),
            "udp4_checksum": ("ipv4", ndis.CHECKSUM_CAP_IPV4_UDP),
            "tcp6_checksum": ("ipv6", ndis.CHECKSUM_CAP_IPV6_TCP),
            "udp6_checksum": ("ipv6", ndis.CHECKSUM_CAP_IPV6_UDP),
        }
        for name, (family, bit) in fields.items():
            setting = getattr(params, name)
            if setting == ndis.OFFLOAD_CHECKSUM_NO_CHANGE:
                continue
            tx_on = setting in (
                ndis.OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED,
                ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
            )
            rx_on = setting in (
                ndis.OFFLOAD_CHECKSUM_RX_ENABLED_TX_DISABLED,
                ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
            )
            for direction, on in (("tx", tx_on), ("rx", rx_on)):
                key = f"{family}_{direction}_flags"
                allowed = getattr(capabilities, key) & bit
                current[key] = (current[key] | allowed) if on else (current[key] & ~bit)
        for family in ("ipv4", "ipv6"):
            setting = getattr(params, f"lso_v2_{family}")
            if setting == ndis.OFFLOAD_LSO_NO_CHANGE:
                continue
            for suffix in ("encapsulation", "max_size", "min_segments"):
                key = f"lso_v2_{family}_{suffix}"
                current[key] = getattr(capabilities, key) if setting == ndis.OFFLOAD_LSO_ENABLED else 0
        current.pop("header_type", None)
        current.pop("header_revision", None)
        current.pop("header_size", None)
        self._offload_config = ndis.encode_offload_capabilities(**current)
        indication = None
        if self.rndis.state is rndis_proto.RndisState.OPERATIONAL:
            indication = self.rndis.encode_indication(
                rndis.RNDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG, self._offload_config
            )
        return rndis.RNDIS_STATUS_SUCCESS, indication

    def _set_rss_parameters(self, value: bytes) -> int:
        """host#45/#46 in OpenVMM's order (host.md 4.7); the header is not validated."""
        try:
            params = ndis.decode_rss_parameters(value)
        except ProtocolError:
            return rndis.RNDIS_STATUS_INVALID_DATA
        function = params.hash_information & ndis.NDIS_HASH_FUNCTION_MASK
        if params.flags & ndis.RSS_PARAM_FLAG_DISABLE_RSS or function == 0:
            self._set_rss(None)
            return rndis.RNDIS_STATUS_SUCCESS
        if params.hash_secret_key_size != ndis.RSS_HASH_KEY_SIZE:
            return rndis.RNDIS_STATUS_INVALID_DATA
        table = list(params.indirection_table)
        if not table:
            return rndis.RNDIS_STATUS_INVALID_DATA
        table = table[: ndis.RSS_INDIRECTION_TABLE_ENTRIES]
        if any(entry >= self.config.max_queues for entry in table):
            return rndis.RNDIS_STATUS_INVALID_DATA
        # A shorter table repeats cyclically to fill the 128 entries.
        full = [table[i % len(table)] for i in range(ndis.RSS_INDIRECTION_TABLE_ENTRIES)]
        _rxpath, _txpath, rss = _datapath()
        try:
            state = rss.RssState(params.hash_secret_key, full, params.hash_information, True)
        except ConfigError:
            return rndis.RNDIS_STATUS_INVALID_DATA
        self._set_rss(state, tuple(full))
        return rndis.RNDIS_STATUS_SUCCESS

    def _set_rss(self, state: Any, table: tuple[int, ...] = ()) -> None:
        self._rss = state
        self._rss_table = table
        self._update_active_queues()

    def _update_active_queues(self) -> None:
        """host.md 2.3: only queues the table names get data slots; without RSS all traffic is on 0.
        An entry naming a channel not open yet is folded by modulo, as RssState.steer does."""
        if self._slots is None:
            return
        if self._rss is None:
            self._slots.set_active_queues([0])
        else:
            channels = len(self.channels)
            self._slots.set_active_queues(sorted({entry % channels for entry in self._rss_table}))

    # -- receive: backend -> guest ---------------------------------------------------------------

    def poll_backend(self) -> bool:
        """Pull frames from the backend and deliver them (filter, RSS, slots in ReceivePath).
        Returns whether any reached the guest: frames all dropped (filter, no slot, a full ring)
        are no reason for the server to keep polling without a pause (host.md 2.6: the backend
        then drops)."""
        if self._closed:
            return False
        link = bool(getattr(self.backend, "link_up", True))
        if link != self._backend_link:
            self._backend_link = link
            self._set_link(link)
        if (
            self._rx_path is None
            or self.session.state is not nvsp_proto.NvspState.READY
            or self._states[0].stopped
        ):
            return False
        batch = self._rx_batch
        batch.clear()
        received = self.backend.poll(batch, batch.capacity)
        if received <= 0:
            return False
        self.counts["rx_frames_from_backend"] += received
        steered = 0
        if self._vf_steer is not None:  # data path on the VF: unicast for us leaves by the VF
            steered = self._vf_steer.steer(batch, self.config.mac)
            self.counts["vf_steered_frames"] += steered
            if batch.count == 0:
                return steered > 0
        # A fail-stopped or revoked subchannel produces nothing: frames steered to it are dropped
        # (counted by ReceivePath as ring-full drops, their slots freed at once).
        channels = [
            None if state.stopped else channel
            for channel, state in zip(self.channels, self._states, strict=True)
        ]
        delivered = self._rx_path.deliver(
            batch, channels, mac=self.config.mac, packet_filter=self._packet_filter, rss=self._rss
        )
        self.counts["rx_frames_delivered"] += delivered
        self._flush_signals()
        return delivered > 0 or steered > 0

    # -- timers ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Paced link indications, delayed completions, queued control output, ring backlogs."""
        if self._closed:
            return
        if self._held_completions:
            due = [h for h in self._held_completions if h[0] <= now]
            self._held_completions = [h for h in self._held_completions if h[0] > now]
            for _due, index, transaction_id, status in due:
                self._send_rndis_completion(index, transaction_id, status)
        self._pace_link(now)
        self._process_control()
        for index in range(len(self.channels)):
            self._flush_backlog(index)
        self._flush_signals()

    def _set_link(self, up: bool) -> None:
        self._link_up = up
        self.counts["link_changes"] += 1

    def _pace_link(self, now: float) -> None:
        """host#51/#52: tell the guest about a changed link, transitions at least the delay apart."""
        if self._link_up == self._link_told:
            return
        if self.rndis.state is not rndis_proto.RndisState.OPERATIONAL or self._rx_path is None:
            return
        if now - self._last_link_change < self.config.link_change_delay_s:
            return
        status = rndis.RNDIS_STATUS_MEDIA_CONNECT if self._link_up else rndis.RNDIS_STATUS_MEDIA_DISCONNECT
        self._queue_control(self.rndis.encode_indication(status))
        self._link_told = self._link_up
        self._last_link_change = now
        self.counts["link_indications"] += 1

    def _set_link_speed(self, speed_bps: object) -> dict:
        """A new link speed: answered by OID_GEN_LINK_SPEED from now on and indicated to the guest
        as LINK_SPEED_CHANGE with the speed in 100 bit/s units (nvsp-rndis.md 6)."""
        unit = ndis.LINK_SPEED_UNIT_BPS
        valid = isinstance(speed_bps, int) and not isinstance(speed_bps, bool)
        if not valid or not unit <= speed_bps < unit << 32:
            raise ConfigError("link speed_bps", speed_bps, f"an integer {unit}..{(unit << 32) - 1} bit/s")
        self.config.link_speed_bps = speed_bps
        if self.rndis.state is rndis_proto.RndisState.OPERATIONAL and self._rx_path is not None:
            buffer = (speed_bps // unit).to_bytes(4, "little")
            self._queue_control(self.rndis.encode_indication(rndis.RNDIS_STATUS_LINK_SPEED_CHANGE, buffer))
            self.counts["link_speed_indications"] += 1
            self._process_control()
            self._flush_signals()
        return {"link_speed_bps": speed_bps}

    # -- VF ---------------------------------------------------------------------------------------

    def _vf_allowed(self) -> bool:
        session = self.session
        return (
            self._vf is not None
            and session.state is nvsp_proto.NvspState.READY
            and session.version >= nvsp.NVSP_VERSION_4
            and bool(session.negotiated.capabilities & nvsp.NDIS_CONFIG_CAP_SRIOV)
            and self.rndis.state is rndis_proto.RndisState.OPERATIONAL
        )

    def _advertise_vf(self) -> None:
        """host#53/#55: SEND_VF_ASSOCIATION {1, serial}, completion requested, never waited for."""
        if not self._vf_allowed() or self._vf_advertised_serial is not None:
            return
        serial = int(self._vf["serial"])
        payload = self.session.encode_vf_association(True, serial)
        self._queue_nvsp(payload, nvsp.VF_ASSOCIATION_TRANSACTION_ID, True)
        self._vf_advertised_serial = serial
        # host#54: the VF device shows up no earlier than the delay after the association.
        self._vf_ready_at = self.clock() + self.config.vf_offer_delay_s
        self.counts["vf_associations"] += 1

    def _revoke_vf(self) -> None:
        """host#58: back to synthetic first, then the notice and {0, the same serial}."""
        was_vf = self._data_path == nvsp.DATA_PATH_VF
        self._data_path = nvsp.DATA_PATH_SYNTHETIC
        self._close_vf_peer()
        serial = self._vf_advertised_serial
        self._vf = None
        self._vf_ready_at = math.inf
        if serial is None or self.session.state is not nvsp_proto.NvspState.READY:
            self._vf_advertised_serial = None
            return
        if was_vf:
            notice = self.session.encode_switch_data_path_notice(nvsp.DATA_PATH_SYNTHETIC)
            self._send(0, vmbus_wire.PACKET_TYPE_INBAND, notice, nvsp.SWITCH_DATA_PATH_TRANSACTION_ID, True)
        payload = self.session.encode_vf_association(False, serial)
        self._send(0, vmbus_wire.PACKET_TYPE_INBAND, payload, nvsp.VF_ASSOCIATION_TRANSACTION_ID, True)
        self._vf_advertised_serial = None
        self.counts["vf_revokes"] += 1

    def _open_vf_peer(self, netdev: object) -> None:
        """A VF played by a veth end: its peer is where the VF's frames come and go (host.md 7)."""
        self._close_vf_peer()
        if not isinstance(netdev, str) or not netdev:
            return
        from netvsc.host.vfpeer import VfPeer  # only a host with a VF needs raw sockets

        try:
            self._vf_peer = VfPeer(netdev)
        except (ConfigError, DeviceError) as error:
            self.counts["vf_peer_errors"] += 1
            log.info("VF %s has no far side here (%s): its frames are not carried", netdev, error)
            return
        self.counts["vf_peer_opens"] += 1
        self._steer_vf()

    def _close_vf_peer(self) -> None:
        peer, self._vf_peer, self._vf_steer = self._vf_peer, None, None
        if peer is not None:
            self.counts.update(peer.counters)
            peer.close()

    def _steer_vf(self) -> None:
        self._vf_steer = self._vf_peer if self._data_path == nvsp.DATA_PATH_VF else None

    def vf_fileno(self) -> int | None:
        """The descriptor the server waits on for frames the guest sent on its VF (None: no VF)."""
        return self._vf_peer.fileno() if self._vf_peer is not None else None

    def poll_vf(self) -> bool:
        """Frames the guest sent on the VF netdev, to the backend as if sent on the synthetic
        path; returns whether there were any."""
        peer = self._vf_peer
        if peer is None or self._closed:
            return False
        if self._vf_batch is None:
            self._vf_batch = FrameBatch(TX_BATCH * 4, RX_FRAME_CAPACITY)
        batch = self._vf_batch
        batch.clear()
        got = peer.receive(batch, batch.capacity)
        if not got:
            return False
        self.counts["vf_tx_frames"] += got
        self._transmit_frames(batch, self._tx_out)
        return True

    @property
    def vf_visible(self) -> bool:
        """Whether the VF device may be shown to the guest now (host#54)."""
        return self._vf is not None and self.clock() >= self._vf_ready_at

    # -- lifecycle and control ----------------------------------------------------------------------

    def channel_closed(self) -> None:
        """The guest closed the primary: subchannels go, state is forgotten, back to VERSION
        (host.md 1.1, host#66). A VF already given is kept."""
        if len(self.channels) > 1:
            self.resources.rescind_subchannels()
        self.channels = [self.channels[0]]
        vf = self._vf
        self._reset_state()
        self._vf = vf
        self._vf_advertised_serial = None
        self._link_told = True
        self.counts["channel_closes"] += 1

    def channel_opened(self, primary: Channel) -> None:
        """The guest opened the device again: serve the primary over its re-initialised rings."""
        self.channels[0] = primary

    def control(self, command: str, **args: Any) -> dict:
        """ctl commands (host.md 6, 7, issue 3 items 7-8), each returning a JSON-able dict:

        - ``link`` up=bool, or flap=True: link state, indicated to the guest paced
          ``link_change_delay_s`` apart;
        - ``mtu`` mtu=int: the L3 MTU that caps the guest's NDIS frame size;
        - ``vf_offer`` serial=int, netdev=str; ``vf_revoke``;
        - ``rescind``: rescind the subchannels;
        - ``fault`` kind (or name)=one of FAULT_KINDS, with count / seconds / message / target /
          channel+on, or value= for any of them;
        - ``counters``.
        """
        if command == "link" and "speed_bps" in args:
            return self._set_link_speed(args["speed_bps"])
        if command == "link":
            if "up" not in args and not args.get("flap"):
                raise ConfigError("link up", None, "up=True, up=False, flap=True or speed_bps=N")
            if args.get("flap"):
                # host.md 6: a flap is the opposite state at once, the original one a delay later.
                original = self._link_up
                self._set_link(not original)
                self._pace_link(self.clock())
                self._set_link(original)
            else:
                self._set_link(bool(args["up"]))
            self._pace_link(self.clock())
            self._process_control()
            self._flush_signals()
            return {"link_up": self._link_up, "told": self._link_told}
        if command == "mtu":
            mtu = args.get("mtu")
            max_frame = nvsp.NDIS_CONFIG_MTU_MAX - nvsp.NDIS_CONFIG_MTU_ETHERNET_HEADER
            if not isinstance(mtu, int) or not 68 <= mtu <= max_frame:
                raise ConfigError("mtu", mtu, f"an integer 68..{max_frame}")
            self.config.mtu = mtu
            return {"mtu": mtu}
        if command == "vf_offer":
            serial = args.get("serial")
            if not isinstance(serial, int) or not 0 <= serial <= 0xFFFFFFFF:
                raise ConfigError("vf serial", serial, "an integer 0..0xffffffff")
            self._vf = {"serial": serial, "netdev": args.get("netdev")}
            self._open_vf_peer(args.get("netdev"))
            self._advertise_vf()
            self._process_control()
            self._flush_signals()
            return {"vf_serial": serial, "advertised": self._vf_advertised_serial is not None}
        if command == "vf_revoke":
            self._revoke_vf()
            self._flush_signals()
            return {"data_path": self._data_path}
        if command == "rescind":
            self.resources.rescind_subchannels()
            del self.channels[1:]
            del self._states[1:]
            self.unfinished.intersection_update({0})
            self._granted_subchannels = 0
            self._update_active_queues()
            return {"channels": len(self.channels)}
        if command == "fault":
            # ``name`` is what the ctl socket sends ({name, value}); ``kind`` reads better in code.
            kind = args.pop("kind", None) or args.pop("name", None)
            self._set_fault(kind, **args)
            return {"faults": dict(self._faults)}
        if command == "counters":
            return self.counters()
        raise ConfigError("command", command, "link, mtu, vf_offer, vf_revoke, rescind, fault, counters")

    def _set_fault(self, kind: str | None, **args: Any) -> None:
        if kind not in FAULT_KINDS:
            raise ConfigError("fault kind", kind, ", ".join(FAULT_KINDS))
        value = args.get("value")
        if kind == "clear":
            self._faults.clear()
            for state in self._states if hasattr(self, "_states") else ():
                state.stalled = False
            return
        if kind in ("drop_completions", "reorder_completions", "subchannel_grant"):
            count = args.get("count", value)
            if not isinstance(count, int) or count < 0:
                raise ConfigError(f"{kind} count", count, "an integer >= 0")
            self._faults[kind] = count
        elif kind in ("delay_completions", "delay_control"):
            seconds = args.get("seconds", value)
            if kind == "delay_control" and seconds in ("never", math.inf):
                self._faults[kind] = "never"
            elif isinstance(seconds, int | float) and 0 <= seconds <= 3600:
                if seconds == 0:
                    self._faults.pop(kind, None)
                else:
                    self._faults[kind] = float(seconds)
            else:
                raise ConfigError(
                    f"{kind} seconds", seconds, "0..3600" + (" or 'never'" if kind == "delay_control" else "")
                )
        elif kind == "inject":
            message = args.get("message", value)
            if message not in ("indirection_table", "unknown"):
                raise ConfigError("inject message", message, "'indirection_table' or 'unknown'")
            self._faults[kind] = message
        elif kind == "corrupt":
            target = args.get("target", value)
            if target not in _RX_FAULT_OF_TARGET:
                raise ConfigError("corrupt target", target, ", ".join(_RX_FAULT_OF_TARGET))
            self._faults[kind] = target
            if hasattr(self, "_rx_path"):
                self._arm_rx_faults()
        elif kind == "stall":
            channel = args.get("channel", value if value is not None else 0)
            states = getattr(self, "_states", [])
            if not isinstance(channel, int) or not 0 <= channel < max(len(states), 1):
                raise ConfigError("stall channel", channel, f"0..{max(len(states), 1) - 1}")
            if states:
                states[channel].stalled = bool(args.get("on", True))

    def counters(self) -> dict[str, int]:
        out = {key: int(value) for key, value in self.counts.items()}
        if self._rx_path is not None:
            for key, value in dict(self._rx_path.counters).items():
                out[key if key.startswith("rx_") else f"rx_{key}"] = int(value)
            # Receive slots the guest holds (sent, not completed): per channel and in total.
            held = [self._rx_path.slots.outstanding(index) for index in range(len(self.channels))]
            for index, count in enumerate(held):
                out[f"rx_slots_outstanding_ch{index}"] = count
            out["rx_slots_outstanding"] = sum(held)
        out["channels"] = len(self.channels)
        out["fail_stopped_channels"] = sum(
            1 for s in self._states if s.session.state is nvsp_proto.NvspState.DEAD
        )
        out["packet_filter"] = self._packet_filter
        out["link_up"] = int(self._link_up)
        out["data_path"] = self._data_path
        peer = self._vf_peer
        out["vf_peer_open"] = int(peer is not None)
        if peer is not None:
            for key, value in peer.counters.items():
                out[key] = out.get(key, 0) + int(value)
        return out

    def close(self) -> None:
        self._closed = True
        self._close_vf_peer()


NetVsp._EVENT_HANDLERS = {
    nvsp_proto.FailStop: NetVsp._on_fail_stop,
    nvsp_proto.Ignored: NetVsp._on_ignored,
    nvsp_proto.InitRequest: NetVsp._on_init,
    nvsp_proto.NdisVersion: NetVsp._on_ndis_version,
    nvsp_proto.NdisConfig: NetVsp._on_ndis_config,
    nvsp_proto.BufferOffered: NetVsp._on_buffer,
    nvsp_proto.BufferRevoked: NetVsp._on_revoke,
    nvsp_proto.RndisPacket: NetVsp._on_rndis_packet,
    nvsp_proto.RndisPacketCompletion: NetVsp._on_receive_completion,
    nvsp_proto.SwitchDataPath: NetVsp._on_switch,
    nvsp_proto.OidQueryEx: NetVsp._on_oid_query_ex,
    nvsp_proto.SubchannelRequest: NetVsp._on_subchannel,
}
