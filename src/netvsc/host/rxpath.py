"""The host-to-guest receive path of the emulated host: the transfer-page packets that carry RNDIS
messages in receive-buffer slots (spec/host.md 2.4-2.6, 4.5).

Layer 7 (host).

- ``ReceiveSlots`` (host/rxslots.py, re-exported here) divides the guest's receive buffer into
  slots and keeps who owns and who holds each.
- ``ReceivePath`` delivers a ``FrameBatch`` from a backend: VLAN tags stripped and checksums
  verified (fastpath.offload; the one place for both, for every backend: a state a backend
  already set, a TAP's DATA_VALID, is kept, a frame with state 0 is verified), RSS steering
  (host.rss), the packet filter (4.5), one RNDIS PACKET_MSG per slot in OpenVMM's layout
  (2.4), and up to 375 ranges per transfer-page packet.
  With no free slot a frame is dropped and counted, never queued (2.6); when the channel's ring
  is full the whole packet is dropped and its slots freed at once.

Per batch: one kernel for tags and checksums, one for the filter, then one per queue that takes
the slots, writes the messages, builds the transfer-page packets and writes them to the ring
with one ring write (``_deliver_queue_kernel``). Control messages go through the same packet
writer. A fault hook lets the NetVSP corrupt the next packet or place the next RNDIS header
across a 4 KiB page (issue 3, item 8); with one armed, the queue's steps run one by one with the
fault applied between them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, ProtocolError
from netvsc.fastpath.atomics import copy_bytes, prefetch_write
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.offload import receive_prepare_batch
from netvsc.fastpath.ring import ring_write_batch
from netvsc.host.frames import FrameBatch
from netvsc.host.rss import RssState
from netvsc.host.rxslots import (
    MAX_QUEUES,
    RX_CONTROL_SLOTS,
    ReceiveSlots,
    give_back_slots,
    mark_outstanding,
    take_slots,
)
from netvsc.vmbus.channel import Channel
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

_PREFETCH_AHEAD = 4  # slots
RX_RING_LOW_WATER = 2048  # OpenVMM stops pulling from the backend below this (host.md 2.6)
FAULTS = ("corrupt_xfer_packet", "corrupt_rndis_header", "straddle_page")

# Filter verdicts of the classify kernel.
_PASS = 0
_FILTERED = 1
_RUNT = 2
_TOO_BIG = 3
_STRIPPED = 4  # the slot of ``verdicts`` after the verdict counts
# Rows of the per-batch work array: frame index, slot, message start (-1: the slot's layout),
# message length (the range's byte count), range offset.
W_FRAMES, W_SLOTS, W_START, W_BYTES, W_OFFSETS = range(5)
W_ROWS = 5
# Words of the per-call results.
R_DELIVERED, R_NO_SLOT, R_TOO_BIG, R_RING_FULL, R_PACKETS = range(5)
R_WORDS = 8
# Room for one transfer-page packet: header, 375 ranges, the largest NVSP message.
_MAX_PACKET_BYTES = (
    TRANSFER_PAGE_HEADER_SIZE
    + TRANSFER_PAGE_RANGE_SIZE * MAX_RANGES_PER_PACKET
    + nvsp.NVSP_HOST_MESSAGE_SIZE_V61
)

_DIRECTED = ndis.NDIS_PACKET_TYPE_DIRECTED
_MULTICAST = ndis.NDIS_PACKET_TYPE_MULTICAST
_ALL_MULTICAST = ndis.NDIS_PACKET_TYPE_ALL_MULTICAST
_BROADCAST = ndis.NDIS_PACKET_TYPE_BROADCAST
_PROMISCUOUS = ndis.NDIS_PACKET_TYPE_PROMISCUOUS


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _classify_kernel(
    data, cap, length, vlan_tci, count, mac, packet_filter, slot_size, with_hash, verdict, verdicts
):
    """Filter decision and size check per frame (host.md 4.5); ``verdicts[v]`` counts the frames
    of each verdict. Returns the frames that pass."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, vlan_tci, mac = borrowed(data), borrowed(length), borrowed(vlan_tci), borrowed(mac)
    verdict, verdicts = borrowed(verdict), borrowed(verdicts)
    verdicts[:] = 0
    count = min(count, length.shape[0], verdict.shape[0])
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
    for i in range(count):
        verdicts[verdict[i]] += 1
    return passed


@njit(nogil=True, cache=True)
def _prepare_kernel(
    data, cap, length, vlan_tci, rx_checksum, queue, hash_value, hash_info, count, with_hash, mac,
    packet_filter, slot_size, verdict, verdicts,
):
    """A batch from a backend made ready for its queues: tags stripped and checksums verified
    (``receive_prepare_batch``), no queue or hash yet when RSS is off (``RssState.steer`` sets
    them otherwise), then the filter verdicts; ``verdicts[_STRIPPED]`` counts the tags stripped.
    Returns the frames that pass."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, vlan_tci = borrowed(data), borrowed(length), borrowed(vlan_tci)
    rx_checksum, queue = borrowed(rx_checksum), borrowed(queue)
    hash_value, hash_info = borrowed(hash_value), borrowed(hash_info)
    stripped = receive_prepare_batch(data, cap, length, vlan_tci, rx_checksum, count)
    if not with_hash:
        for i in range(min(count, queue.shape[0], hash_value.shape[0], hash_info.shape[0])):
            queue[i] = 0
            hash_value[i] = 0
            hash_info[i] = 0
    passed = _classify_kernel(
        data, cap, length, vlan_tci, count, mac, packet_filter, slot_size, with_hash, verdict, verdicts
    )
    verdicts[_STRIPPED] = stripped
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
        if k + _PREFETCH_AHEAD < count:
            # The receive buffer is swept slot by slot, mostly cold: start its lines coming early.
            ahead = np.int64(slots[k + _PREFETCH_AHEAD]) * slot_size
            prefetch_write(recv, ahead)
            prefetch_write(recv, ahead + RX_HEADER_ROOM)
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


@njit(nogil=True, cache=True)
def _put_u16(buf, at, value):
    buf[at] = np.uint8(value & 0xFF)
    buf[at + 1] = np.uint8((value >> 8) & 0xFF)


@njit(nogil=True, cache=True)
def _gather_queue(verdict, queue_of, count, queue, frames):
    """Indices of the frames that passed and are steered to ``queue``; returns how many."""
    found = 0
    for i in range(min(count, verdict.shape[0], queue_of.shape[0], frames.shape[0])):
        if verdict[i] == _PASS and queue_of[i] == queue:
            frames[found] = i
            found += 1
    return found


@njit(nogil=True, cache=True)
def _build_and_compact(
    data, cap, length, vlan_tci, rx_checksum, hash_value, hash_info, work, count,
    recv, slot_size, with_hash, slot_table, list_table, control_slots, results,
):
    """Write the RNDIS messages of the ``count`` frames with slots in ``work``; frames that could
    not be written give their slot back (too big). The rest are packed to the front of ``work``
    with their range (byte count, offset). Returns how many remain."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, vlan_tci = borrowed(data), borrowed(length), borrowed(vlan_tci)
    rx_checksum, hash_value, hash_info = borrowed(rx_checksum), borrowed(hash_value), borrowed(hash_info)
    work, recv, slot_table = borrowed(work), borrowed(recv), borrowed(slot_table)
    list_table, results = borrowed(list_table), borrowed(results)
    _build_kernel(
        data, cap, length, vlan_tci, rx_checksum, hash_value, hash_info, work[W_FRAMES],
        work[W_SLOTS], work[W_START], count, recv, slot_size, with_hash, work[W_BYTES],
    )
    kept = 0
    for k in range(count):
        slot = work[W_SLOTS, k]
        if work[W_BYTES, k] == 0:
            give_back_slots(slot_table, list_table, control_slots, work[W_SLOTS], k, 1)
            results[R_TOO_BIG] += 1
            continue
        start = work[W_START, k]
        work[W_SLOTS, kept] = slot
        work[W_BYTES, kept] = work[W_BYTES, k]
        work[W_OFFSETS, kept] = start if start >= 0 else slot * slot_size
        kept += 1
    return kept


@njit(nogil=True, cache=True)
def _put_transfer_packet(blob, at, work, first, ranges, set_id, payload):
    """One type-7 packet at ``blob[at:]`` (host.md 2.4): descriptor (transaction id = the first
    slot), transfer-page header, the ranges ``work[..., first:first+ranges]``, the NVSP message.
    Returns the end of the packet (the ring pads it)."""
    header_length = TRANSFER_PAGE_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * ranges
    total = header_length + payload.shape[0]
    _put_u16(blob, at, PACKET_TYPE_XFER_PAGES)
    _put_u16(blob, at + 2, header_length // PACKET_ALIGNMENT)
    _put_u16(blob, at + 4, (total + PACKET_ALIGNMENT - 1) // PACKET_ALIGNMENT)
    _put_u16(blob, at + 6, PACKET_FLAG_COMPLETION_REQUESTED)
    transaction_id = work[W_SLOTS, first]
    _put_u32(blob, at + 8, transaction_id & 0xFFFFFFFF)
    _put_u32(blob, at + 12, 0)
    _put_u16(blob, at + 16, set_id)
    _put_u16(blob, at + 18, 0)
    _put_u32(blob, at + 20, ranges)
    for r in range(ranges):
        _put_u32(blob, at + TRANSFER_PAGE_HEADER_SIZE + 8 * r, work[W_BYTES, first + r])
        _put_u32(blob, at + TRANSFER_PAGE_HEADER_SIZE + 8 * r + 4, work[W_OFFSETS, first + r])
    copy_bytes(blob, at + header_length, payload, 0, payload.shape[0])
    return at + total


@njit(nogil=True, cache=True)
def _write_transfer_packets(
    ring_header, ring_data, ring_state, stopped, work, count, set_id, payload, blob, blob_offsets,
    slot_table, list_table, outstanding, control_slots, channel, results,
):
    """Send the ``count`` ranges in ``work`` as packets of up to 375 ranges with one ring write.
    Sent packets become outstanding on ``channel``; a packet the ring has no room for is dropped
    whole and its slots go straight back (host.md 2.6), as do all of them on a ring error,
    whose code is returned (else 0)."""
    # No reference counting inside the call (fastpath/borrow.py).
    ring_header, ring_data, ring_state = borrowed(ring_header), borrowed(ring_data), borrowed(ring_state)
    work, payload, blob = borrowed(work), borrowed(payload), borrowed(blob)
    blob_offsets, slot_table = borrowed(blob_offsets), borrowed(slot_table)
    list_table, outstanding, results = borrowed(list_table), borrowed(outstanding), borrowed(results)
    packets = (count + MAX_RANGES_PER_PACKET - 1) // MAX_RANGES_PER_PACKET
    if packets + 1 > blob_offsets.shape[0] or blob.shape[0] < packets * _MAX_PACKET_BYTES:
        packets = 0  # the caller sized the scratch for its batch; never write past it
    at = 0
    for p in range(packets):
        first = p * MAX_RANGES_PER_PACKET
        blob_offsets[p] = at
        ranges = min(MAX_RANGES_PER_PACKET, count - first)
        at = _put_transfer_packet(blob, at, work, first, ranges, set_id, payload)
    blob_offsets[packets] = at
    written = 0
    if packets and not stopped:
        written = ring_write_batch(ring_header, ring_data, ring_state, blob, blob_offsets, packets)
    if written < 0:
        give_back_slots(slot_table, list_table, control_slots, work[W_SLOTS], 0, count)
        return written
    for p in range(packets):
        first = p * MAX_RANGES_PER_PACKET
        ranges = min(MAX_RANGES_PER_PACKET, count - first)
        if p < written:
            mark_outstanding(slot_table, outstanding, channel, work[W_SLOTS], first, ranges)
            results[R_PACKETS] += 1
            results[R_DELIVERED] += ranges
        else:
            give_back_slots(slot_table, list_table, control_slots, work[W_SLOTS], first, ranges)
            results[R_RING_FULL] += ranges
    return 0


@njit(nogil=True, cache=True)
def _deliver_queue_kernel(
    data, cap, length, vlan_tci, rx_checksum, hash_value, hash_info, queue_of, verdict, count,
    queue, channel, with_hash, recv, slot_size, set_id, payload,
    slot_table, list_table, outstanding, control_slots,
    ring_header, ring_data, ring_state, stopped, work, blob, blob_offsets, results,
):
    """Everything ``ReceivePath`` does for one queue of a batch, in one call: the frames of the
    queue, a slot each (FIFO; none left: dropped, never queued), their RNDIS messages, the
    transfer-page packets and the ring write. Returns 0 or a ring error code."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, vlan_tci = borrowed(data), borrowed(length), borrowed(vlan_tci)
    rx_checksum, hash_value, hash_info = borrowed(rx_checksum), borrowed(hash_value), borrowed(hash_info)
    queue_of, verdict, recv = borrowed(queue_of), borrowed(verdict), borrowed(recv)
    payload, slot_table, list_table = borrowed(payload), borrowed(slot_table), borrowed(list_table)
    outstanding, ring_header, ring_data = borrowed(outstanding), borrowed(ring_header), borrowed(ring_data)
    ring_state, work, blob = borrowed(ring_state), borrowed(work), borrowed(blob)
    blob_offsets, results = borrowed(blob_offsets), borrowed(results)
    frames = _gather_queue(verdict, queue_of, count, queue, work[W_FRAMES])
    taken = 0
    if 0 <= queue < MAX_QUEUES:
        taken = take_slots(slot_table, list_table, queue, frames, work[W_SLOTS], 0)
    results[R_NO_SLOT] += frames - taken
    for k in range(taken):
        work[W_START, k] = -1
    kept = _build_and_compact(
        data, cap, length, vlan_tci, rx_checksum, hash_value, hash_info, work, taken,
        recv, slot_size, with_hash, slot_table, list_table, control_slots, results,
    )
    return _write_transfer_packets(
        ring_header, ring_data, ring_state, stopped, work, kept, set_id, payload, blob, blob_offsets,
        slot_table, list_table, outstanding, control_slots, channel, results,
    )


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
        self._mac_key = b""
        self._mac = np.zeros(6, dtype=np.uint8)
        self._verdicts = np.zeros(5, dtype=np.int64)
        self._results = np.zeros(R_WORDS, dtype=np.int64)
        # Stand-ins for a stopped channel's ring (never written: the kernel is told it is stopped).
        self._no_ring = (
            np.zeros(4, dtype=np.uint32),
            np.zeros(8, dtype=np.uint8),
            np.zeros(8, dtype=np.int64),
        )
        self._control_work = np.zeros((W_ROWS, 1), dtype=np.int64)
        self._control_blob = np.zeros(_MAX_PACKET_BYTES, dtype=np.uint8)
        self._control_offsets = np.zeros(2, dtype=np.int64)
        self._size_scratch(64)

    def _size_scratch(self, frames: int) -> None:
        """Work arrays for batches of up to ``frames`` frames."""
        self._capacity = frames
        self._verdict = np.zeros(frames, dtype=np.uint8)
        self._work = np.zeros((W_ROWS, frames), dtype=np.int64)
        packets = (frames + MAX_RANGES_PER_PACKET - 1) // MAX_RANGES_PER_PACKET
        self._blob = np.zeros(packets * _MAX_PACKET_BYTES, dtype=np.uint8)
        self._blob_offsets = np.zeros(packets + 1, dtype=np.int64)

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
        work = self._control_work
        work[W_SLOTS, 0], work[W_BYTES, 0], work[W_OFFSETS, 0] = slot, message.shape[0], start
        results = self._results
        results[:] = 0
        self._write(channel, channel_index, work, 1, nvsp.RNDIS_CHANNEL_TYPE_CONTROL,
                    self._control_blob, self._control_offsets)
        if results[R_RING_FULL]:
            self.counters["control_ring_full"] += 1
            return False
        self.counters["control_sent"] += 1
        channel.flush_signal()
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
        channels: Sequence[Channel | None],
        *,
        mac: bytes,
        packet_filter: int,
        rss: RssState | None,
    ) -> int:
        """Deliver the frames of ``batch`` to the guest; returns how many were sent.

        ``channels[i]`` is None for a channel that is stopped: what is steered to it is dropped
        as if its ring were full. The batch is modified in place (tags stripped, checksum state,
        queue and hash set). Drops are counted in ``counters``.
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
        if mac != self._mac_key:
            mac_array = np.frombuffer(bytes(mac), dtype=np.uint8)
            if mac_array.shape[0] != 6:
                raise ConfigError("mac", bytes(mac).hex(":"), "6 bytes")
            self._mac, self._mac_key = mac_array.copy(), mac
        with_hash = rss is not None and rss.enabled
        if self._capacity < batch.capacity:
            self._size_scratch(batch.capacity)
        verdicts = self._verdicts
        passed = _prepare_kernel(
            batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, batch.queue,
            batch.hash_value, batch.hash_info, count, with_hash, self._mac, packet_filter,
            self.slots.slot_size, self._verdict, verdicts,
        )
        if with_hash:
            rss.steer(batch, len(channels))
        counters = self.counters
        counters["rx_vlan_stripped"] += int(verdicts[_STRIPPED])
        counters["rx_dropped_filter"] += int(verdicts[_FILTERED])
        counters["rx_dropped_runt"] += int(verdicts[_RUNT])
        counters["rx_dropped_too_big"] += int(verdicts[_TOO_BIG])
        if passed == 0:
            return 0
        if with_hash:
            queues = np.unique(batch.queue[:count][self._verdict[:count] == _PASS]).tolist()
        else:
            queues = (0,)
        delivered = 0
        for queue in queues:
            delivered += self._deliver_queue(batch, channels, queue, with_hash)
        return delivered

    def _deliver_queue(
        self, batch: FrameBatch, channels: Sequence[Channel | None], queue: int, with_hash: bool
    ) -> int:
        channel_index = queue if queue < len(channels) else 0
        channel = channels[channel_index]
        results = self._results
        results[:] = 0
        if self._armed:
            self._deliver_queue_faulted(batch, channel, channel_index, queue, with_hash)
        else:
            code = _deliver_queue_kernel(
                batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum,
                batch.hash_value, batch.hash_info, batch.queue, self._verdict, batch.count,
                queue, channel_index, with_hash, self.recv_buffer, self.slots.slot_size, self.set_id,
                self._payload[nvsp.RNDIS_CHANNEL_TYPE_DATA],
                self.slots.slot_table, self.slots.list_table, self.slots.outstanding_slots,
                self.slots.control_slots, *self._ring(channel), channel is None, self._work, self._blob,
                self._blob_offsets, results,
            )
            self._count(results)
            if code < 0:
                self._ring_error(channel, code)
        if results[R_RING_FULL]:
            log.debug("channel %d: ring full, %d frames dropped", channel_index, int(results[R_RING_FULL]))
        if channel is not None:
            channel.flush_signal()
        return int(results[R_DELIVERED])

    def _count(self, results: np.ndarray) -> None:
        counters = self.counters
        counters["rx_dropped_no_slot"] += int(results[R_NO_SLOT])
        counters["rx_dropped_too_big"] += int(results[R_TOO_BIG])
        counters["rx_dropped_ring_full"] += int(results[R_RING_FULL])
        counters["rx_packets"] += int(results[R_PACKETS])
        counters["rx_frames"] += int(results[R_DELIVERED])

    def _write(self, channel, channel_index, work, count, channel_type, blob, blob_offsets) -> None:
        """The ranges in ``work`` to ``channel`` (None: stopped) with the kernel every packet uses."""
        code = _write_transfer_packets(
            *self._ring(channel), channel is None, work, count, self.set_id,
            self._payload[channel_type], blob, blob_offsets, self.slots.slot_table,
            self.slots.list_table, self.slots.outstanding_slots, self.slots.control_slots,
            channel_index, self._results,
        )
        if code < 0:
            self._ring_error(channel, code)

    def _ring(self, channel: Channel | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The arrays of ``channel``'s host-to-guest ring (placeholders for a stopped channel)."""
        if channel is None:
            return self._no_ring
        return channel.tx.header, channel.tx.data, channel.tx.state

    @staticmethod
    def _ring_error(channel: Channel, code: int) -> None:
        # The guest broke its ring: every slot of the batch is back; the caller fail-stops.
        raise ProtocolError(f"{channel.tx_view.name}: ring refused the receive packets (code {code})")

    def _deliver_queue_faulted(
        self, batch: FrameBatch, channel: Channel | None, channel_index: int, queue: int, with_hash: bool
    ) -> None:
        """``_deliver_queue_kernel`` step by step, with the armed faults applied between steps."""
        work, results, slots = self._work, self._results, self.slots
        frames = _gather_queue(self._verdict, batch.queue, batch.count, queue, work[W_FRAMES])
        taken = 0
        if 0 <= queue < MAX_QUEUES:
            taken = take_slots(slots.slot_table, slots.list_table, queue, frames, work[W_SLOTS], 0)
        results[R_NO_SLOT] += frames - taken
        work[W_START, :taken] = -1
        if taken and "straddle_page" in self._armed and self._place_straddling(batch, queue, with_hash):
            self._armed.discard("straddle_page")
            self.counters["faults_applied"] += 1
        kept = _build_and_compact(
            batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum,
            batch.hash_value, batch.hash_info, work, taken, self.recv_buffer, slots.slot_size,
            with_hash, slots.slot_table, slots.list_table, slots.control_slots, results,
        )
        if kept:
            self._apply_corruption(work)
        try:
            self._write(channel, channel_index, work, kept, nvsp.RNDIS_CHANNEL_TYPE_DATA, self._blob,
                        self._blob_offsets)
        finally:
            self._count(results)

    # -- faults ------------------------------------------------------------------------------

    def _apply_corruption(self, work: np.ndarray) -> None:
        if "corrupt_xfer_packet" in self._armed:
            # The first range points past the end of the receive buffer.
            work[W_OFFSETS, 0] = self.recv_buffer.shape[0]
            self._armed.discard("corrupt_xfer_packet")
            self.counters["faults_applied"] += 1
        if "corrupt_rndis_header" in self._armed:
            # The first message claims more bytes than its range holds, and a data offset past it.
            start = int(work[W_OFFSETS, 0])
            if start + 16 <= self.recv_buffer.shape[0]:
                words = self.recv_buffer[start : start + 16].view("<u4")
                words[1] = int(work[W_BYTES, 0]) + HV_PAGE_SIZE
                words[2] = 0xFFFFFF00
                self._armed.discard("corrupt_rndis_header")
                self.counters["faults_applied"] += 1

    def _place_straddling(self, batch: FrameBatch, queue: int, with_hash: bool) -> bool:
        """Pack the first frame's message so its 44-byte header crosses a 4 KiB page boundary,
        swapping in a free slot of the queue that has a boundary at a usable place."""
        slot_size = self.slots.slot_size
        work = self._work
        i = int(work[W_FRAMES, 0])
        ppis = _PPI_ELEMENT * (1 + int(batch.vlan_tci[i] >= 0) + (2 if with_hash else 0))
        needed = rndis.RNDIS_PACKET_HEADER_SIZE + ppis + int(batch.length[i])

        def straddling_start(slot: int) -> int:
            slot_start = slot * slot_size
            boundary = (slot_start + 20 + HV_PAGE_SIZE - 1) // HV_PAGE_SIZE * HV_PAGE_SIZE
            start = boundary - 20  # 20 bytes of the header before the boundary, 24 after it
            return start if start + needed <= slot_start + slot_size else -1

        start = straddling_start(int(work[W_SLOTS, 0]))
        if start < 0:
            other = self.slots.take_data_matching(queue, lambda slot: straddling_start(slot) >= 0)
            if other is None:
                return False  # stays armed for a later packet
            self.slots.give_back([int(work[W_SLOTS, 0])])
            work[W_SLOTS, 0] = other
            start = straddling_start(other)
        work[W_START, 0] = start
        return True
