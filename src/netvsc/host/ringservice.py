"""The data path of a channel's guest-to-host ring: sends and receive completions, a batch per call.

Layer 7 (host). ``NetVsp.service`` drains a channel with ``RingDrain.drain`` first. One kernel call
takes, in ring order, every packet it can handle completely:

- a SEND_RNDIS_PACKET carrying data: in-band with a send-buffer section, or GPA-direct (host.md
  3.1) with its pages in guest memory regions the host has mapped. Its RNDIS stream goes through
  ``txpath.stream_to_batch`` (the one parser of PACKET messages) into the caller's ``FrameBatch``,
  and its transaction id is kept for the completion the caller sends once the frames have gone
  to the backend (host#28, host.md 3.2);
- a receive completion (SEND_RNDIS_PACKET_COMPLETE), which frees the slots of its transfer-page
  packet (``rxslots.release_packet``; an unknown id frees nothing and is counted, host#23);

and stops in front of the first packet it does not take, which the NetVSP then reads and hands to
the NVSP session engine as it always did: control messages, every other NVSP message, anything
malformed or refused (those end in a FAILURE completion or a fail-stop, decided by the engine and
``txpath`` only), LSO sends, and GPAs outside the mapped regions. The kernel therefore decides no
protocol rule of its own: it recognises the well-formed common case and leaves the rest.

Each packet is copied out of the ring once (``ring_peek_packet``) and only that private copy is
parsed; GPA pages are looked up in ``GpaRegions``, learnt from ``GuestMemory.view`` the first time
a page is missed. The ring's read index is published by the caller (``Channel.commit``) after the
batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.errors import ProtocolError
from netvsc.fastpath.addrtable import ArrayTable, table_array
from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.ring import ring_consume, ring_peek_packet
from netvsc.host.frames import FrameBatch
from netvsc.host.rxslots import release_packet
from netvsc.host.txpath import ERR_NO_ROOM, MAX_MESSAGES_PER_PACKET, stream_to_batch
from netvsc.wire import nvsp
from netvsc.wire.vmbus import (
    GPA_DIRECT_HEADER_SIZE,
    GPA_PAGE_RANGE_SIZE,
    GPA_PFN_SIZE,
    GPA_RANGE_HEADER_SIZE,
    GPA_RANGE_MAX_BYTE_OFFSET,
    HV_PAGE_SHIFT,
    HV_PAGE_SIZE,
    KNOWN_PACKET_FLAGS,
    PACKET_ALIGNMENT,
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND,
)

__all__ = ["STOP_EMPTY", "STOP_FULL", "STOP_OTHER", "GpaRegions", "RingDrain"]

# Why the kernel stopped.
STOP_EMPTY = 0  # the ring is empty
STOP_FULL = 1  # the batch (or the completion list) is full: flush and call again
STOP_OTHER = 2  # the next packet is for the session engine (or needs a GPA region learnt)

# results words
_STOP, _FRAMES, _SENDS, _COMPLETIONS, _RELEASED, _UNKNOWN, _MISSING_GPA = range(7)
_RESULT_WORDS = 8

_SEND_RNDIS_PACKET = nvsp.NVSP_MSG_SEND_RNDIS_PACKET
_SEND_RNDIS_PACKET_COMPLETE = nvsp.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE
_SECTION_NONE = nvsp.SEND_SECTION_INDEX_NONE
# The ids of host notices (host.md 7.2) as (high word, lowest low word, highest low word).
_HOST_IDS_HIGH = nvsp.VF_ASSOCIATION_TRANSACTION_ID >> 32
_HOST_IDS_LOW_FIRST = nvsp.VF_ASSOCIATION_TRANSACTION_ID & 0xFFFFFFFF
_HOST_IDS_LOW_LAST = nvsp.SWITCH_DATA_PATH_TRANSACTION_ID & 0xFFFFFFFF
assert nvsp.SWITCH_DATA_PATH_TRANSACTION_ID >> 32 == _HOST_IDS_HIGH
_NVSP_PACKET_BODY = 16  # SEND_RNDIS_PACKET up to the section size
_NVSP_COMPLETE_BODY = 8
_RNDIS_PACKET_MSG = 1

PACKET_SCRATCH_BYTES = 16384  # a GPA-direct packet with 32 ranges of 16 pages fits
STREAM_SCRATCH_BYTES = 1 << 17  # the gathered RNDIS stream of one GPA-direct send
MAX_STREAM_PIECES = 1024  # contiguous pieces (the section, then one per page) of one stream
_NOT_IN_REGIONS_MAX = 4096


@njit(nogil=True, cache=True)
def _u16(buf, at):
    return np.int64(buf[at]) | (np.int64(buf[at + 1]) << 8)


@njit(nogil=True, cache=True)
def _u32(buf, at):
    return _u16(buf, at) | (_u16(buf, at + 2) << 16)


@njit(nogil=True, cache=True)
def _u64(buf, at):
    return _u32(buf, at) | (_u32(buf, at + 4) << 32)


@njit(nogil=True, cache=True)
def _region_of(bases, sizes, gpa, length):
    """Index of the region holding ``[gpa, gpa + length)``, or -1."""
    low = 0
    high = bases.shape[0]
    while low < high:
        middle = (low + high) // 2
        if bases[middle] <= gpa:
            low = middle + 1
        else:
            high = middle
    index = low - 1
    if index < 0 or gpa + length > bases[index] + sizes[index]:
        return -1
    return index


@njit(nogil=True, cache=True)
def _gather_gpa(packet, header_length, range_count, gpa_bases, gpa_sizes, gpa_table, stream, at_stream,
                range_ends, pieces, results):
    """Copy the bytes of the packet's GPA ranges after ``stream[:at_stream]``, one piece per page
    as ``TransmitPath`` reads them. Returns (stream length, pieces), or (-1, 0) when the kernel
    must leave the packet (malformed: the engine decides; a page not mapped: learn it)."""
    at = GPA_DIRECT_HEADER_SIZE
    for _ in range(range_count):
        if at + GPA_RANGE_HEADER_SIZE > header_length:
            return -1, 0
        byte_count = _u32(packet, at)
        offset = _u32(packet, at + 4)
        if byte_count == 0 or offset > GPA_RANGE_MAX_BYTE_OFFSET:
            return -1, 0
        pages = (offset + byte_count + HV_PAGE_SIZE - 1) >> HV_PAGE_SHIFT
        end = at + GPA_RANGE_HEADER_SIZE + GPA_PFN_SIZE * pages
        if end > header_length:
            return -1, 0
        left = byte_count
        for page in range(pages):
            take = min(left, HV_PAGE_SIZE - offset)
            gpa = (_u64(packet, at + GPA_RANGE_HEADER_SIZE + GPA_PFN_SIZE * page) << HV_PAGE_SHIFT) + offset
            region = _region_of(gpa_bases, gpa_sizes, gpa, take)
            if region < 0:
                results[_MISSING_GPA] = gpa
                return -1, 0
            if at_stream + take > stream.shape[0] or pieces >= range_ends.shape[0]:
                return -1, 0
            source = table_array(gpa_table, region, np.uint8)
            copy_bytes(stream, at_stream, source, gpa - gpa_bases[region], take)
            at_stream += take
            range_ends[pieces] = at_stream
            pieces += 1
            left -= take
            offset = 0
        at = end
    return at_stream, pieces


@njit(nogil=True, cache=True)
def drain_kernel(
    ring_header, ring_data, ring_state, packet, send_buffer, send_section_size,
    gpa_bases, gpa_sizes, gpa_table, max_gpa_ranges, stream, range_ends, meta,
    data, frame_capacity, length, vlan_tci, tx_flags, l4_offset, mss, queue, rx_checksum,
    hash_value, hash_info, slot_table, list_table, outstanding, control_slots, channel_index,
    completions, work_limit, results,
):
    """Take packets off the ring while they are sends or receive completions (module docstring),
    until ``work_limit`` frames and completions are taken.

    ``send_buffer`` is empty when the guest has none; ``slot_table`` has no columns when there is
    no receive path. Frames go to the batch arrays from index 0; the ids of sends that asked for
    a completion to ``completions``. ``results`` (``_STOP`` ...) say what happened.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    ring_header, ring_data, ring_state = borrowed(ring_header), borrowed(ring_data), borrowed(ring_state)
    packet, send_buffer, gpa_bases = borrowed(packet), borrowed(send_buffer), borrowed(gpa_bases)
    gpa_sizes, stream, range_ends = borrowed(gpa_sizes), borrowed(stream), borrowed(range_ends)
    meta, data, length, vlan_tci = borrowed(meta), borrowed(data), borrowed(length), borrowed(vlan_tci)
    tx_flags, l4_offset, mss = borrowed(tx_flags), borrowed(l4_offset), borrowed(mss)
    queue, rx_checksum, hash_value = borrowed(queue), borrowed(rx_checksum), borrowed(hash_value)
    hash_info, slot_table, list_table = borrowed(hash_info), borrowed(slot_table), borrowed(list_table)
    outstanding, completions, results = borrowed(outstanding), borrowed(completions), borrowed(results)
    results[:] = 0
    frames = 0
    completion_count = 0
    while True:
        if (
            frames + results[_RELEASED] + results[_UNKNOWN] >= work_limit
            or completion_count >= completions.shape[0]
            or frames + MAX_MESSAGES_PER_PACKET > length.shape[0]
        ):
            results[_STOP] = STOP_FULL
            break
        packet_length = ring_peek_packet(ring_header, ring_data, ring_state, packet)
        if packet_length == 0:
            results[_STOP] = STOP_EMPTY
            break
        results[_STOP] = STOP_OTHER  # from here on, every ``break`` leaves the packet in the ring
        if packet_length < 0:
            break  # a corrupt ring or a packet too large for the scratch: the engine's case
        packet_type = _u16(packet, 0)
        header_length = _u16(packet, 2) * PACKET_ALIGNMENT
        flags = _u16(packet, 6)
        transaction_id = _u64(packet, 8)  # a u64 as int64: compared only with slot numbers
        if flags & ~KNOWN_PACKET_FLAGS or header_length > packet_length:
            break
        body = packet_length - header_length
        if packet_type == PACKET_TYPE_COMPLETION:
            # A guest's receive completion: {108, status}, ids of host notices aside.
            host_notice = _u32(packet, 12) == _HOST_IDS_HIGH and (
                _HOST_IDS_LOW_FIRST <= _u32(packet, 8) <= _HOST_IDS_LOW_LAST
            )
            if host_notice or slot_table.shape[1] == 0:
                break
            if body < _NVSP_COMPLETE_BODY or _u32(packet, header_length) != _SEND_RNDIS_PACKET_COMPLETE:
                break
            freed = release_packet(
                slot_table, list_table, outstanding, control_slots, channel_index, transaction_id
            )
            if freed:
                results[_RELEASED] += 1
            else:
                results[_UNKNOWN] += 1
            ring_consume(ring_data, ring_state, packet_length)
            continue
        if packet_type != PACKET_TYPE_INBAND and packet_type != PACKET_TYPE_GPA_DIRECT:
            break
        if body < _NVSP_PACKET_BODY or _u32(packet, header_length) != _SEND_RNDIS_PACKET:
            break
        section_index = _u32(packet, header_length + 8)
        section_bytes = _u32(packet, header_length + 12)
        stream_length = 0
        pieces = 0
        source = stream
        if section_index != _SECTION_NONE:
            start = section_index * send_section_size
            if send_buffer.shape[0] == 0 or start + section_bytes > send_buffer.shape[0]:
                break
            if packet_type == PACKET_TYPE_INBAND:
                # The section alone: parsed where it lies, no copy.
                source = send_buffer[start : start + section_bytes]
            elif section_bytes:
                if section_bytes > stream.shape[0]:
                    break
                copy_bytes(stream, 0, send_buffer, start, section_bytes)
            if section_bytes:
                stream_length = section_bytes
                range_ends[0] = section_bytes
                pieces = 1
        if packet_type == PACKET_TYPE_GPA_DIRECT:
            if header_length < GPA_DIRECT_HEADER_SIZE:
                break
            range_count = _u32(packet, 20)
            if range_count == 0 or range_count > max_gpa_ranges:
                break
            if GPA_DIRECT_HEADER_SIZE + GPA_PAGE_RANGE_SIZE * range_count > header_length:
                break
            stream_length, pieces = _gather_gpa(
                packet, header_length, range_count, gpa_bases, gpa_sizes, gpa_table, stream,
                stream_length, range_ends, pieces, results,
            )
            if stream_length < 0:
                break
        # The first message decides: anything but PACKET is control (host.md 3.2).
        if stream_length < 8 or _u32(source, 0) != _RNDIS_PACKET_MSG:
            break
        appended = stream_to_batch(
            source, stream_length, range_ends[:pieces], frame_capacity, meta, False, data, length,
            vlan_tci, tx_flags, l4_offset, mss, queue, rx_checksum, hash_value, hash_info, frames,
            channel_index,
        )
        if appended == ERR_NO_ROOM:
            results[_STOP] = STOP_FULL
            break
        if appended < 0:
            break  # a malformed send (FAILURE) or an LSO one: the engine's path
        frames += appended
        results[_SENDS] += 1
        if flags & PACKET_FLAG_COMPLETION_REQUESTED:
            completions[completion_count] = transaction_id
            completion_count += 1
        ring_consume(ring_data, ring_state, packet_length)
    results[_FRAMES] = frames
    results[_COMPLETIONS] = completion_count
    return frames


class GpaRegions:
    """Guest memory regions the kernel may read GPA pages from: sorted bases and sizes and, in
    the same order, the region arrays as an ``ArrayTable`` (no per-call unboxing, nothing to
    compile at first use); learnt one region at a time from ``GuestMemory.view``."""

    def __init__(self, guest_memory) -> None:
        self.guest_memory = guest_memory
        self.bases = np.zeros(0, dtype=np.int64)
        self.sizes = np.zeros(0, dtype=np.int64)
        self.arrays: list[np.ndarray] = []
        self.table = ArrayTable(1)
        self._not_in_regions: set[int] = set()  # pages the engine reads another way (or refuses)

    def learn(self, gpa: int) -> bool:
        """Map the region holding the page of ``gpa``; False when no region has it (the engine
        then reads it, from the guest process, or refuses it)."""
        view_of = getattr(self.guest_memory, "view", None)  # regions without a copy, if it has them
        page = gpa & ~(HV_PAGE_SIZE - 1)
        if view_of is None or page in self._not_in_regions:
            return False
        try:
            view = view_of(page, HV_PAGE_SIZE)
        except ProtocolError:
            if len(self._not_in_regions) >= _NOT_IN_REGIONS_MAX:
                self._not_in_regions.clear()
            self._not_in_regions.add(page)
            return False
        region = view.base
        inside = (
            isinstance(region, np.ndarray)
            and region.dtype == np.uint8
            and region.ndim == 1
            and region.flags.c_contiguous
            and region.ctypes.data <= view.ctypes.data
            and view.ctypes.data + view.shape[0] <= region.ctypes.data + region.shape[0]
        )
        if not inside:
            region = view  # the page alone
        base = page - (view.ctypes.data - region.ctypes.data)
        if _region_of(self.bases, self.sizes, base, region.shape[0]) >= 0:
            return True
        order = int(np.searchsorted(self.bases, base))
        self.bases = np.insert(self.bases, order, base)
        self.sizes = np.insert(self.sizes, order, region.shape[0])
        self.arrays.insert(order, region)
        table = ArrayTable(len(self.arrays))
        for slot, array in enumerate(self.arrays):
            table.set(slot, array)
        self.table = table
        return True


class RingDrain:
    """A channel drain's scratch memory and batch: frames of at most ``frame_capacity`` bytes
    (longer ones take the engine's path), up to ``batch_frames`` per call."""

    def __init__(self, frame_capacity: int, batch_frames: int, guest_memory, max_gpa_ranges: int) -> None:
        self.batch = FrameBatch(batch_frames, frame_capacity)
        # Where frames go when offloads are done in software: one frame each (no LSO here).
        self.out = FrameBatch(batch_frames, frame_capacity + 4)
        self.regions = GpaRegions(guest_memory)
        self.max_gpa_ranges = max_gpa_ranges
        self.completions = np.zeros(batch_frames, dtype=np.int64)
        self.results = np.zeros(_RESULT_WORDS, dtype=np.int64)
        self._packet = np.zeros(PACKET_SCRATCH_BYTES, dtype=np.uint8)
        self._stream = np.zeros(STREAM_SCRATCH_BYTES, dtype=np.uint8)
        self._range_ends = np.zeros(MAX_STREAM_PIECES, dtype=np.int64)
        self._meta = np.zeros((MAX_MESSAGES_PER_PACKET + 1, 6), dtype=np.int64)
        self._no_slots = (np.zeros((4, 0), dtype=np.int32), np.zeros((4, 1), dtype=np.int64))
        self._no_outstanding = np.zeros(1, dtype=np.int64)

    def drain(self, channel, channel_index: int, send_buffer: np.ndarray | None, section_size: int,
              slots, work_limit: int) -> int:
        """One kernel call over ``channel``'s ring until ``work_limit`` frames and completions
        are taken (see the module docstring); returns why it stopped (``STOP_*``). Frames are
        in ``batch``, ids to complete in ``completions`` (``completion_count``), counts in
        ``sends``, ``released``, ``unknown``."""
        batch = self.batch
        batch.clear()
        if slots is None:
            slot_table, list_table = self._no_slots
            outstanding, control_slots = self._no_outstanding, 0
        else:
            slot_table, list_table = slots.slot_table, slots.list_table
            outstanding, control_slots = slots.outstanding_slots, slots.control_slots
        buffer = send_buffer if send_buffer is not None else self._stream[:0]
        regions = self.regions
        learnt = False
        while True:
            batch.count = int(
                drain_kernel(
                    channel.rx.header, channel.rx.data, channel.rx.state, self._packet, buffer, section_size,
                    regions.bases, regions.sizes, regions.table.table, self.max_gpa_ranges, self._stream,
                    self._range_ends, self._meta, batch.data, batch.frame_capacity, batch.length,
                    batch.vlan_tci, batch.tx_flags, batch.l4_offset, batch.mss, batch.queue,
                    batch.rx_checksum, batch.hash_value, batch.hash_info, slot_table, list_table,
                    outstanding, control_slots, channel_index, self.completions, work_limit,
                    self.results,
                )
            )
            missing = int(self.results[_MISSING_GPA])
            if missing and not learnt and regions.learn(missing):
                # A page of a region not seen before, now mapped: go on (after the caller has
                # flushed what this call took). Once per call: a page still missed after that
                # is the engine's to read.
                learnt = True
                if self.taken:
                    return STOP_FULL
                continue
            return int(self.results[_STOP])

    @property
    def taken(self) -> int:
        """Packets the last call took off the ring."""
        results = self.results
        return int(results[_SENDS] + results[_RELEASED] + results[_UNKNOWN])

    @property
    def sends(self) -> int:
        return int(self.results[_SENDS])

    @property
    def completion_count(self) -> int:
        return int(self.results[_COMPLETIONS])

    @property
    def released(self) -> int:
        return int(self.results[_RELEASED])

    @property
    def unknown(self) -> int:
        return int(self.results[_UNKNOWN])
