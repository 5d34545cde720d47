"""The host-to-guest receive path of the emulated host: receive-buffer slots and the transfer-page
packets that carry RNDIS messages in them (spec/host.md 2.2-2.6, 4.5).

Layer 7 (host).

- ``ReceiveSlots`` divides the guest's receive buffer into fixed-size slots: 0..15 are kept for
  control responses and indications on the primary, the rest are split between the active
  queues (2.3) and handed out FIFO. A slot comes back only when the guest completes the
  transaction id it was sent under, on the channel it was sent on (2.5); completions are
  accepted in any order and an unknown or repeated id releases nothing.
- ``ReceivePath`` delivers a ``FrameBatch`` from a backend: VLAN tags stripped and checksums
  verified (fastpath.offload; the one place for both, for every backend: a state a backend
  already set, a TAP's DATA_VALID, is kept, a frame with state 0 is verified), RSS steering
  (host.rss), the packet filter (4.5), one RNDIS PACKET_MSG per slot in OpenVMM's layout
  (2.4), and up to 375 ranges per transfer-page packet.
  With no free slot a frame is dropped and counted, never queued (2.6); when the channel's ring
  is full the whole packet is dropped and its slots freed at once.

Per-frame work (filter decision, RNDIS headers and PPIs, frame copies) runs in numba kernels,
one call per batch. A fault hook lets the NetVSP corrupt the next packet or place the next
RNDIS header across a 4 KiB page (issue 3, item 8).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, ProtocolError, RingFullError
from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.offload import receive_prepare_batch
from netvsc.host.frames import FrameBatch
from netvsc.host.rss import RssState
from netvsc.vmbus.channel import Channel, encode_descriptor
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    PACKET_ALIGNMENT,
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_XFER_PAGES,
    TRANSFER_PAGE_HEADER_SIZE,
    TRANSFER_PAGE_RANGE_SIZE,
)

__all__ = [
    "FAULTS",
    "MAX_RANGES_PER_PACKET",
    "RX_CONTROL_SLOTS",
    "RX_DATA_OFFSET",
    "RX_RING_LOW_WATER",
    "ReceivePath",
    "ReceiveSlots",
]

log = logging.getLogger(__name__)

RX_CONTROL_SLOTS = 16  # OpenVMM RX_RESERVED_CONTROL_BUFFERS (host.md 2.2)
MAX_RANGES_PER_PACKET = 375  # NVSP_MAX_PACKETS_PER_RECEIVE (host.md 2.4)
RX_HEADER_ROOM = 256  # OpenVMM RX_HEADER_LEN: the frame sits 256 bytes into a data slot
RX_DATA_OFFSET = RX_HEADER_ROOM - rndis.RNDIS_OFFSET_BASE  # 248, counted from byte 8
_RNDIS_BASE = rndis.RNDIS_OFFSET_BASE
_PACKET_HEADER = rndis.RNDIS_PACKET_HEADER_SIZE  # 44
_MIN_DATA_OFFSET = rndis.RNDIS_PACKET_MIN_DATA_OFFSET  # 36
_PPI_HEADER = rndis.PPI_HEADER_SIZE
_MSG_PACKET = rndis.RNDIS_MSG_PACKET
_PPI_CHECKSUM = rndis.PPI_TYPE_CHECKSUM_INFO
_PPI_VLAN = rndis.PPI_TYPE_IEEE_8021Q
_PPI_HASH_VALUE = rndis.PPI_TYPE_HASH_VALUE
_PPI_HASH_INFO = rndis.PPI_TYPE_HASH_INFO
_PPI_ELEMENT = rndis.PPI_HEADER_SIZE + 4  # every PPI the host sends carries a u32
_PPI_AREA_MAX = 4 * _PPI_ELEMENT  # checksum, VLAN, hash value, hash info

RX_RING_LOW_WATER = 2048  # OpenVMM stops pulling from the backend below this (host.md 2.6)
FAULTS = ("corrupt_xfer_packet", "corrupt_rndis_header", "straddle_page")

# Filter verdicts of the classify kernel.
_PASS = 0
_FILTERED = 1
_RUNT = 2
_TOO_BIG = 3

_DIRECTED = ndis.NDIS_PACKET_TYPE_DIRECTED
_MULTICAST = ndis.NDIS_PACKET_TYPE_MULTICAST
_ALL_MULTICAST = ndis.NDIS_PACKET_TYPE_ALL_MULTICAST
_BROADCAST = ndis.NDIS_PACKET_TYPE_BROADCAST
_PROMISCUOUS = ndis.NDIS_PACKET_TYPE_PROMISCUOUS


# ---------------------------------------------------------------------------------------------
# Slots
# ---------------------------------------------------------------------------------------------


class ReceiveSlots:
    """Slot allocator over the guest receive buffer (host.md 2.2, 2.3, 2.5).

    A slot is free (in its owner queue's FIFO), taken (handed out, not yet sent) or outstanding
    (sent under a transaction id on one channel, waiting for the guest's completion).
    """

    _FREE, _TAKEN, _OUTSTANDING = 0, 1, 2

    def __init__(self, buffer_size: int, slot_size: int, control_slots: int = RX_CONTROL_SLOTS) -> None:
        if not isinstance(slot_size, int | np.integer) or slot_size < 68:
            # Linux requires sub_alloc_size >= 68 (host.md 2.1).
            raise ConfigError("slot_size", slot_size, "an integer >= 68 bytes")
        if not isinstance(buffer_size, int | np.integer) or buffer_size < slot_size:
            raise ConfigError("buffer_size", buffer_size, f"an integer >= the slot size ({slot_size})")
        if not isinstance(control_slots, int | np.integer) or control_slots < 0:
            raise ConfigError("control_slots", control_slots, "an integer >= 0")
        buffer_size, slot_size, control_slots = int(buffer_size), int(slot_size), int(control_slots)
        self.slot_size = slot_size
        self.slot_count = buffer_size // slot_size
        self.control_slots = min(control_slots, self.slot_count)
        self._state = np.zeros(self.slot_count, dtype=np.uint8)
        self._owner = np.full(self.slot_count, -1, dtype=np.int32)
        self._control_free: deque[int] = deque(range(self.control_slots))
        self._fifo: dict[int, deque[int]] = {}
        self._spare: list[int] = []  # free data slots no active queue owns
        self._outstanding: dict[int, dict[int, list[int]]] = {}
        self._outstanding_slots: dict[int, int] = {}
        self.active_queues: tuple[int, ...] = ()
        self.set_active_queues([0])

    # -- queues ------------------------------------------------------------------------------

    def set_active_queues(self, queues: Sequence[int]) -> None:
        """Split the data slots between ``queues`` (2.3): each gets (count - 16) / n, the last
        also the remainder. Free slots move at once; outstanding ones when completed."""
        active = sorted({int(q) for q in queues})
        if not active or active[0] < 0:
            raise ConfigError("active queues", list(queues), "one or more queue indices >= 0")
        first = self.control_slots
        data_slots = self.slot_count - first
        share = data_slots // len(active)
        self._owner[first:] = -1
        for position, queue in enumerate(active):
            start = first + position * share
            end = self.slot_count if position == len(active) - 1 else start + share
            self._owner[start:end] = queue
        previous = [s for fifo in self._fifo.values() for s in fifo] + self._spare
        self._fifo = {queue: deque() for queue in active}
        self._spare = []
        for slot in previous:
            self._return(slot)
        if not self.active_queues:
            # First split: every data slot starts free, in ascending order.
            for slot in range(first, self.slot_count):
                self._return(slot)
        self.active_queues = tuple(active)

    def _return(self, slot: int) -> None:
        self._state[slot] = self._FREE
        if slot < self.control_slots:
            self._control_free.append(slot)
            return
        owner = int(self._owner[slot])
        fifo = self._fifo.get(owner)
        if fifo is None:
            self._spare.append(slot)
        else:
            fifo.append(slot)

    # -- handing out -------------------------------------------------------------------------

    def take_control(self) -> int | None:
        """A reserved slot (0..control_slots-1) for a control message, or None."""
        if not self._control_free:
            return None
        slot = self._control_free.popleft()
        self._state[slot] = self._TAKEN
        return slot

    def take_data(self, queue: int) -> int | None:
        """The next free data slot of ``queue`` (FIFO), or None."""
        fifo = self._fifo.get(queue)
        if not fifo:
            return None
        slot = fifo.popleft()
        self._state[slot] = self._TAKEN
        return slot

    def take_data_many(self, queue: int, wanted: int) -> np.ndarray:
        """Up to ``wanted`` data slots of ``queue`` at once, FIFO order."""
        fifo = self._fifo.get(queue)
        count = min(wanted, len(fifo)) if fifo else 0
        slots = np.fromiter((fifo.popleft() for _ in range(count)), dtype=np.int64, count=count)
        self._state[slots] = self._TAKEN
        return slots

    def take_data_matching(self, queue: int, accept: Callable[[int], bool]) -> int | None:
        """The first free data slot of ``queue`` that ``accept`` takes (fault injection only)."""
        fifo = self._fifo.get(queue)
        for slot in fifo or ():
            if accept(slot):
                fifo.remove(slot)
                self._state[slot] = self._TAKEN
                return slot
        return None

    def free_data(self, queue: int) -> int:
        fifo = self._fifo.get(queue)
        return len(fifo) if fifo else 0

    def give_back(self, slots: Sequence[int]) -> None:
        """Return taken slots that were never sent (the ring was full)."""
        for slot in slots:
            slot = int(slot)
            if self._state[slot] != self._TAKEN:
                raise ConfigError("slot", slot, "a slot taken and not yet sent")
            self._return(slot)

    def mark_outstanding(self, channel_index: int, slots: Sequence[int]) -> int:
        """Record taken ``slots`` as sent in one packet on ``channel_index``; returns the
        transaction id (the first slot: unique while outstanding, below the slot count)."""
        batch = [int(slot) for slot in slots]
        if not batch:
            raise ConfigError("slots", 0, "at least one slot")
        for slot in batch:
            if self._state[slot] != self._TAKEN:
                raise ConfigError("slot", slot, "a slot taken and not yet sent")
            self._state[slot] = self._OUTSTANDING
        transaction_id = batch[0]
        self._outstanding.setdefault(channel_index, {})[transaction_id] = batch
        self._outstanding_slots[channel_index] = self._outstanding_slots.get(channel_index, 0) + len(batch)
        return transaction_id

    # -- completions -------------------------------------------------------------------------

    def release(self, channel_index: int, transaction_id: int) -> bool:
        """The guest completed ``transaction_id`` on ``channel_index``: free every slot of that
        packet. False (nothing freed) for an unknown or repeated id, or the wrong channel."""
        batch = self._outstanding.get(channel_index, {}).pop(transaction_id, None)
        if batch is None:
            return False
        self._outstanding_slots[channel_index] -= len(batch)
        for slot in batch:
            self._return(slot)
        return True

    def outstanding(self, channel_index: int) -> int:
        """Slots sent on ``channel_index`` and not yet completed by the guest."""
        return self._outstanding_slots.get(channel_index, 0)

    def outstanding_ids(self, channel_index: int) -> list[int]:
        return list(self._outstanding.get(channel_index, {}))

    def release_all(self) -> None:
        """Forget every outstanding packet (the channel closed, host.md 1.1)."""
        for batches in self._outstanding.values():
            for batch in batches.values():
                for slot in batch:
                    self._return(slot)
        self._outstanding.clear()
        self._outstanding_slots.clear()


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _classify_kernel(data, cap, length, vlan_tci, count, mac, packet_filter, slot_size, with_hash, verdict):
    """Filter decision and size check per frame (host.md 4.5); returns frames that pass."""
    if count > length.shape[0]:
        count = length.shape[0]
    if cap * count > data.shape[0] or mac.shape[0] < 6:
        return 0
    passed = 0
    for i in range(count):
        base = i * cap
        n = np.int64(length[i])
        if n < 14 or n > cap:
            verdict[i] = _RUNT
            continue
        ppi = _PPI_ELEMENT * (1 + (1 if vlan_tci[i] >= 0 else 0) + (2 if with_hash else 0))
        if RX_HEADER_ROOM + n > slot_size and _PACKET_HEADER + ppi + n > slot_size:
            verdict[i] = _TOO_BIG
            continue
        ok = False
        if packet_filter & _PROMISCUOUS:
            ok = True
        else:
            broadcast = True
            for b in range(6):
                if data[base + b] != 0xFF:
                    broadcast = False
                    break
            if broadcast:
                ok = (packet_filter & _BROADCAST) != 0
            elif data[base] & 1:
                # The multicast list is always empty (host.md 4.5): MULTICAST alone passes nothing.
                ok = (packet_filter & _ALL_MULTICAST) != 0
            elif packet_filter & _DIRECTED:
                ok = True
                for b in range(6):
                    if data[base + b] != mac[b]:
                        ok = False
                        break
        if ok:
            verdict[i] = _PASS
            passed += 1
        else:
            verdict[i] = _FILTERED
    return passed


@njit(nogil=True, cache=True)
def _put_u32(buf, at, value):
    buf[at] = np.uint8(value & 0xFF)
    buf[at + 1] = np.uint8((value >> 8) & 0xFF)
    buf[at + 2] = np.uint8((value >> 16) & 0xFF)
    buf[at + 3] = np.uint8((value >> 24) & 0xFF)


@njit(nogil=True, cache=True)
def _put_ppi(buf, at, ppi_type, value):
    _put_u32(buf, at, _PPI_ELEMENT)
    _put_u32(buf, at + 4, ppi_type)
    _put_u32(buf, at + 8, _PPI_HEADER)
    _put_u32(buf, at + 12, value)
    return at + _PPI_ELEMENT


@njit(nogil=True, cache=True)
def _build_kernel(
    data,
    cap,
    length,
    vlan_tci,
    rx_checksum,
    hash_value,
    hash_info,
    frames,
    slots,
    message_start,
    count,
    recv,
    slot_size,
    with_hash,
    byte_count,
):
    """Write one RNDIS PACKET_MSG per frame into its slot (host.md 2.4).

    ``message_start[k]`` < 0 means the OpenVMM layout at the slot start (message and range
    claim the whole slot, the frame at offset 256); otherwise the message is packed (frame
    right after the PPIs, length = what it holds) at that absolute offset, which must lie in
    the slot. A frame too big for the OpenVMM layout is packed at the slot start. Sets
    ``byte_count[k]`` (0 for a frame that could not be written) and returns frames written.
    """
    written = 0
    recv_size = recv.shape[0]
    for k in range(count):
        byte_count[k] = 0
        i = np.int64(frames[k])
        if i < 0 or i >= length.shape[0] or (i + 1) * cap > data.shape[0]:
            continue
        n = np.int64(length[i])
        slot_start = np.int64(slots[k]) * slot_size
        if n < 14 or n > cap or slot_start < 0 or slot_start + slot_size > recv_size:
            continue
        tagged = vlan_tci[i] >= 0
        ppi_length = _PPI_ELEMENT * (1 + (1 if tagged else 0) + (2 if with_hash else 0))
        packed_length = _PACKET_HEADER + ppi_length + n
        start = np.int64(message_start[k])
        if start < 0 and RX_HEADER_ROOM + n <= slot_size:
            data_offset = RX_DATA_OFFSET
            message_length = slot_size
            start = slot_start
        else:
            if start < 0:
                start = slot_start
            if start < slot_start or start + packed_length > slot_start + slot_size:
                continue
            data_offset = _MIN_DATA_OFFSET + ppi_length
            message_length = packed_length
        _put_u32(recv, start, _MSG_PACKET)
        _put_u32(recv, start + 4, message_length)
        _put_u32(recv, start + 8, data_offset)
        _put_u32(recv, start + 12, n)
        for word in range(16, 28, 4):  # OOB offset, length, element count
            _put_u32(recv, start + word, 0)
        _put_u32(recv, start + 28, _MIN_DATA_OFFSET)
        _put_u32(recv, start + 32, ppi_length)
        _put_u32(recv, start + 36, 0)  # vc_handle
        _put_u32(recv, start + 40, 0)
        at = start + _PACKET_HEADER
        at = _put_ppi(recv, at, _PPI_CHECKSUM, np.int64(rx_checksum[i]))
        if tagged:
            tci = np.int64(vlan_tci[i])
            value = (tci >> 13) | (((tci >> 12) & 1) << 3) | ((tci & 0xFFF) << 4)
            at = _put_ppi(recv, at, _PPI_VLAN, value)
        if with_hash:
            at = _put_ppi(recv, at, _PPI_HASH_VALUE, np.int64(hash_value[i]))
            at = _put_ppi(recv, at, _PPI_HASH_INFO, np.int64(hash_info[i]))
        copy_bytes(recv, start + _RNDIS_BASE + data_offset, data, i * cap, n)
        byte_count[k] = message_length
        written += 1
    return written


# ---------------------------------------------------------------------------------------------
# Receive path
# ---------------------------------------------------------------------------------------------


class ReceivePath:
    """Builds transfer-page packets into channels (host.md 2.4, 2.6)."""

    def __init__(
        self, recv_buffer: np.ndarray, slots: ReceiveSlots, set_id: int, nvsp_message_size: int
    ) -> None:
        if not isinstance(recv_buffer, np.ndarray) or recv_buffer.dtype != np.uint8 or recv_buffer.ndim != 1:
            raise ConfigError("recv_buffer", type(recv_buffer).__name__, "a 1-D uint8 numpy array")
        if slots.slot_count * slots.slot_size > recv_buffer.shape[0]:
            raise ConfigError(
                "slots", f"{slots.slot_count} x {slots.slot_size}", f"within {recv_buffer.shape[0]} bytes"
            )
        if not 0 <= set_id <= 0xFFFF:
            raise ConfigError("set_id", set_id, "0..0xffff")
        if nvsp_message_size not in (nvsp.NVSP_HOST_MESSAGE_SIZE_V1, nvsp.NVSP_HOST_MESSAGE_SIZE_V61):
            raise ConfigError(
                "nvsp_message_size",
                nvsp_message_size,
                f"{nvsp.NVSP_HOST_MESSAGE_SIZE_V1} or {nvsp.NVSP_HOST_MESSAGE_SIZE_V61}",
            )
        self.recv_buffer = recv_buffer
        self.slots = slots
        self.set_id = set_id
        self.nvsp_message_size = nvsp_message_size
        self._payload = {
            channel_type: np.frombuffer(
                nvsp.encode_send_rndis_packet(channel_type, size=nvsp_message_size), dtype=np.uint8
            ).copy()
            for channel_type in (nvsp.RNDIS_CHANNEL_TYPE_DATA, nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
        }
        self._armed: set[str] = set()
        self.counters: dict[str, int] = {
            name: 0
            for name in (
                "rx_frames",
                "rx_packets",
                "rx_dropped_filter",
                "rx_dropped_no_slot",
                "rx_dropped_ring_full",
                "rx_ring_low",
                "rx_dropped_too_big",
                "rx_dropped_runt",
                "rx_vlan_stripped",
                "control_sent",
                "control_no_slot",
                "control_ring_full",
                "completions",
                "completions_unknown",
                "faults_applied",
            )
        }
        self._verdict = np.zeros(0, dtype=np.uint8)

    # -- faults ------------------------------------------------------------------------------

    def arm_fault(self, kind: str) -> None:
        """Apply ``kind`` to the next data packet: ``corrupt_xfer_packet`` (a range outside the
        buffer), ``corrupt_rndis_header`` (message length past its range), ``straddle_page``
        (the RNDIS header across a 4 KiB page boundary of the receive buffer)."""
        if kind not in FAULTS:
            raise ConfigError("rx fault", kind, ", ".join(FAULTS))
        self._armed.add(kind)

    @property
    def armed_faults(self) -> frozenset[str]:
        return frozenset(self._armed)

    # -- flow control ------------------------------------------------------------------------

    def ring_has_room(self, channel: Channel) -> bool:
        """Whether the host may pull more frames for ``channel`` (host.md 2.6, 8).

        Below 2 KiB free in the guest's receive ring the answer is False and pending-send-size
        is set to ``max(2 KiB, ring / 4)``, so the guest signals once it has read enough; the
        request is withdrawn as soon as the space is back.
        """
        writer = channel.tx
        if writer.avail_write() > RX_RING_LOW_WATER:
            if writer.view.pending_send_size:
                writer.clear_pending_send()
            return True
        needed = max(RX_RING_LOW_WATER, writer.dsize // 4) & ~(PACKET_ALIGNMENT - 1)
        needed = min(needed, writer.dsize - PACKET_ALIGNMENT)
        if writer.request_space(needed):
            return True
        self.counters["rx_ring_low"] += 1
        return False

    # -- control -----------------------------------------------------------------------------

    def send_control(self, channel: Channel, channel_index: int, rndis_message: bytes) -> bool:
        """Send one RNDIS control message in a reserved slot (channel_type 1, byte_count = its
        length). False when no control slot is free or the ring is full: the caller keeps it."""
        message = np.frombuffer(bytes(rndis_message), dtype=np.uint8)
        if not rndis.RNDIS_HEADER_SIZE <= message.shape[0] <= self.slots.slot_size:
            raise ConfigError(
                "rndis control message length", message.shape[0], f"8..{self.slots.slot_size} bytes"
            )
        slot = self.slots.take_control()
        if slot is None:
            self.counters["control_no_slot"] += 1
            return False
        start = slot * self.slots.slot_size
        self.recv_buffer[start : start + message.shape[0]] = message
        ranges = np.array([message.shape[0], start], dtype=np.uint32)
        header = self._packet_header(slot, ranges)
        try:
            channel.send_raw(header, self._payload[nvsp.RNDIS_CHANNEL_TYPE_CONTROL])
        except RingFullError:
            self.slots.give_back([slot])
            self.counters["control_ring_full"] += 1
            return False
        except ProtocolError:
            self.slots.give_back([slot])
            raise
        self.slots.mark_outstanding(channel_index, [slot])
        self.counters["control_sent"] += 1
        return True

    def complete(self, channel_index: int, transaction_id: int) -> bool:
        """The guest's receive completion; False for an unknown, repeated or misplaced id."""
        if self.slots.release(channel_index, transaction_id):
            self.counters["completions"] += 1
            return True
        self.counters["completions_unknown"] += 1
        return False

    # -- data --------------------------------------------------------------------------------

    def deliver(
        self,
        batch: FrameBatch,
        channels: Sequence[Channel],
        *,
        mac: bytes,
        packet_filter: int,
        rss: RssState | None,
    ) -> int:
        """Deliver the frames of ``batch`` to the guest; returns how many were sent.

        The batch is modified in place (tags stripped, checksum state, queue and hash set).
        Drops are counted in ``counters``.
        """
        count = batch.count
        if count == 0:
            return 0
        if not channels:
            raise ConfigError("channels", 0, "at least the primary channel")
        if packet_filter == 0:
            # Filter 0 (the initial value) delivers nothing (host.md 2.6, 4.5).
            self.counters["rx_dropped_filter"] += count
            return 0
        mac_array = np.frombuffer(bytes(mac), dtype=np.uint8)
        if mac_array.shape[0] != 6:
            raise ConfigError("mac", bytes(mac).hex(":"), "6 bytes")
        self.counters["rx_vlan_stripped"] += int(
            receive_prepare_batch(
                batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, count
            )
        )
        with_hash = rss is not None and rss.enabled
        if with_hash:
            rss.steer(batch, len(channels))
        else:
            batch.queue[:count] = 0
            batch.hash_value[:count] = 0
            batch.hash_info[:count] = 0
        if self._verdict.shape[0] < batch.capacity:
            self._verdict = np.zeros(batch.capacity, dtype=np.uint8)
        verdict = self._verdict
        _classify_kernel(
            batch.data,
            batch.frame_capacity,
            batch.length,
            batch.vlan_tci,
            count,
            mac_array,
            packet_filter,
            self.slots.slot_size,
            with_hash,
            verdict,
        )
        verdicts = verdict[:count]
        self.counters["rx_dropped_filter"] += int(np.count_nonzero(verdicts == _FILTERED))
        self.counters["rx_dropped_runt"] += int(np.count_nonzero(verdicts == _RUNT))
        self.counters["rx_dropped_too_big"] += int(np.count_nonzero(verdicts == _TOO_BIG))
        passing = np.flatnonzero(verdicts == _PASS)
        if passing.shape[0] == 0:
            return 0
        queues = batch.queue[passing]
        delivered = 0
        for queue in np.unique(queues):
            frames = passing[queues == queue]
            delivered += self._deliver_queue(batch, channels, int(queue), frames, with_hash)
        return delivered

    def _deliver_queue(
        self, batch: FrameBatch, channels: Sequence[Channel], queue: int, frames: np.ndarray, with_hash: bool
    ) -> int:
        channel_index = queue if queue < len(channels) else 0
        channel = channels[channel_index]
        slots = self.slots.take_data_many(queue, frames.shape[0])
        if slots.shape[0] < frames.shape[0]:
            # Never queued waiting for a slot (host.md 2.6).
            self.counters["rx_dropped_no_slot"] += frames.shape[0] - slots.shape[0]
            frames = frames[: slots.shape[0]]
        if frames.shape[0] == 0:
            return 0
        message_start = np.full(frames.shape[0], -1, dtype=np.int64)
        if "straddle_page" in self._armed and self._place_straddling(
            batch, queue, frames, slots, message_start, with_hash
        ):
            self._armed.discard("straddle_page")
            self.counters["faults_applied"] += 1
        byte_count = np.zeros(frames.shape[0], dtype=np.int64)
        written = _build_kernel(
            batch.data,
            batch.frame_capacity,
            batch.length,
            batch.vlan_tci,
            batch.rx_checksum,
            batch.hash_value,
            batch.hash_info,
            frames,
            slots,
            message_start,
            frames.shape[0],
            self.recv_buffer,
            self.slots.slot_size,
            with_hash,
            byte_count,
        )
        if written < frames.shape[0]:
            bad = byte_count == 0
            self.slots.give_back(slots[bad])
            self.counters["rx_dropped_too_big"] += int(np.count_nonzero(bad))
            slots, byte_count, message_start = slots[~bad], byte_count[~bad], message_start[~bad]
        offsets = np.where(message_start >= 0, message_start, slots * self.slots.slot_size)
        delivered = 0
        payload = self._payload[nvsp.RNDIS_CHANNEL_TYPE_DATA]
        for first in range(0, slots.shape[0], MAX_RANGES_PER_PACKET):
            part = slice(first, first + MAX_RANGES_PER_PACKET)
            part_slots = slots[part]
            ranges = np.empty(2 * part_slots.shape[0], dtype=np.uint32)
            ranges[0::2] = byte_count[part]
            ranges[1::2] = offsets[part]
            self._apply_corruption(ranges)
            header = self._packet_header(int(part_slots[0]), ranges)
            try:
                channel.send_raw(header, payload, defer_signal=True)
            except RingFullError:
                # The whole packet is dropped and its slots go straight back (host.md 2.6).
                self.slots.give_back(part_slots)
                self.counters["rx_dropped_ring_full"] += part_slots.shape[0]
                log.debug("channel %d: ring full, %d frames dropped", channel_index, part_slots.shape[0])
                continue
            except ProtocolError:
                # The guest broke its ring: return every slot not sent, let the caller fail-stop.
                self.slots.give_back(slots[first:])
                raise
            self.slots.mark_outstanding(channel_index, part_slots)
            self.counters["rx_packets"] += 1
            delivered += part_slots.shape[0]
        channel.flush_signal()
        self.counters["rx_frames"] += delivered
        return delivered

    # -- helpers -----------------------------------------------------------------------------

    def _packet_header(self, transaction_id: int, ranges: np.ndarray) -> np.ndarray:
        """Descriptor + transfer-page header + ranges of one type-7 packet."""
        range_count = ranges.shape[0] // 2
        header_length = TRANSFER_PAGE_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * range_count
        total = header_length + self.nvsp_message_size
        total8 = (total + PACKET_ALIGNMENT - 1) // PACKET_ALIGNMENT
        header = np.zeros(header_length, dtype=np.uint8)
        header[:16] = encode_descriptor(
            PACKET_TYPE_XFER_PAGES,
            header_length // PACKET_ALIGNMENT,
            total8,
            PACKET_FLAG_COMPLETION_REQUESTED,
            transaction_id,
        )
        header[16:18].view("<u2")[0] = self.set_id
        header[20:24].view("<u4")[0] = range_count
        header[TRANSFER_PAGE_HEADER_SIZE:].view("<u4")[:] = ranges
        return header

    def _apply_corruption(self, ranges: np.ndarray) -> None:
        if "corrupt_xfer_packet" in self._armed:
            # The first range points past the end of the receive buffer.
            ranges[1] = self.recv_buffer.shape[0]
            self._armed.discard("corrupt_xfer_packet")
            self.counters["faults_applied"] += 1
        if "corrupt_rndis_header" in self._armed:
            # The first message claims more bytes than its range holds, and a data offset past it.
            start = int(ranges[1])
            if start + 16 <= self.recv_buffer.shape[0]:
                words = self.recv_buffer[start : start + 16].view("<u4")
                words[1] = int(ranges[0]) + HV_PAGE_SIZE
                words[2] = 0xFFFFFF00
                self._armed.discard("corrupt_rndis_header")
                self.counters["faults_applied"] += 1

    def _place_straddling(
        self,
        batch: FrameBatch,
        queue: int,
        frames: np.ndarray,
        slots: np.ndarray,
        message_start: np.ndarray,
        with_hash: bool,
    ) -> bool:
        """Pack the first frame's message so its 44-byte header crosses a 4 KiB page boundary,
        swapping in a free slot of the queue that has a boundary at a usable place."""
        slot_size = self.slots.slot_size
        i = int(frames[0])
        ppis = _PPI_ELEMENT * (1 + int(batch.vlan_tci[i] >= 0) + (2 if with_hash else 0))
        needed = rndis.RNDIS_PACKET_HEADER_SIZE + ppis + int(batch.length[i])

        def straddling_start(slot: int) -> int:
            slot_start = slot * slot_size
            boundary = (slot_start + 20 + HV_PAGE_SIZE - 1) // HV_PAGE_SIZE * HV_PAGE_SIZE
            start = boundary - 20  # 20 bytes of the header before the boundary, 24 after it
            return start if start + needed <= slot_start + slot_size else -1

        start = straddling_start(int(slots[0]))
        if start < 0:
            other = self.slots.take_data_matching(queue, lambda slot: straddling_start(slot) >= 0)
            if other is None:
                return False  # stays armed for a later packet
            self.slots.give_back([int(slots[0])])
            slots[0] = other
            start = straddling_start(other)
        message_start[0] = start
        return True
