"""The TX burst kernel: chimney aggregation, GPA sends, RNDIS header and PPIs (spec/pmd.md 3).

Layer 5 (pmd). Per packet: a descriptor (none: ``ring_full``, the burst stops, pmd#79), an
in-band 802.1Q tag moved to the VLAN PPI (pmd#54), the PPIs from the mbuf's masked offload
flags (pmd#75, #76), then the chimney path for frames up to tx_copybreak (aggregated, pmd#71-73)
or the GPA path (pmd#74). A full ring counts ``channel_full`` and stops the burst with the
packet not consumed; nothing leaks on any failure. Packets are staged in the ring and published
once, at the end of the burst, and the host is signalled at most once per burst (pmd#77).

Beyond DPDK (spec/pmd.md 3.4, 3.8 pitfalls): a frame falls back to GPA ranges when no chimney
section is free; a packet whose segments need more than 31 ranges, or whose data lies in
external memory (a zero-copy RX mbuf), is copied into as few mempool buffers as possible
first; UDP over IPv4 larger than 1420 bytes without DF gets its checksum here, since Azure drops
such packets with an offloaded UDP checksum.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev import mempool as mp
from netvsc.ethdev.mempool import pool_from_table
from netvsc.fastpath.addrtable import table_array
from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.offload import fill_l4_checksum, parse_frame, read_be16
from netvsc.pmd import qlayout as L
from netvsc.pmd.chan_kernels import (
    flush_tx_signal,
    pool_table,
    put_u16,
    put_u32,
    put_u64,
    stage_packet,
    with_attention,
)
from netvsc.pmd.events import process_events
from netvsc.pmd.stats import CHANNEL_FULL, ERRORS, RING_FULL, count_accepted
from netvsc.pmd.tx_resources import (
    bounce_give,
    bounce_take,
    chimney_take,
    descriptor_give,
    descriptor_take,
    free_later,
    release_freed,
)
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import (
    GPA_DIRECT_HEADER_SIZE,
    HV_PAGE_SHIFT,
    HV_PAGE_SIZE,
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND,
)

PACKET_WORST_CASE = rndis.RNDIS_PACKET_WORST_CASE_HEADER  # 108: header + 4 PPIs (pmd.md 3.2)
_HEADER = rndis.RNDIS_PACKET_HEADER_SIZE
_PPI = rndis.PPI_HEADER_SIZE + 4
_BASE = rndis.RNDIS_OFFSET_BASE
_NVSP_RNDIS = 16  # NVSP SEND_RNDIS_PACKET as a guest sends it
_GPA_RANGE = 16  # byte count, byte offset, one page number
UDP_SOFT_CHECKSUM_ABOVE = 1420  # Azure drops larger non-DF UDP/IPv4 with an offloaded checksum
_MIN_AGGREGATE = 64 + PACKET_WORST_CASE

# Results of sending one packet.
_STOP = 0  # resources ran out: not consumed, the burst ends
_SENT = 1
_REFUSED = 2  # a bad packet: freed and counted, the burst goes on


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _align(value, alignment):
    return (value + alignment - 1) & ~(alignment - 1)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _copy_out(pool, head, dst, at, limit):
    """Copy the whole packet at ``head`` to ``dst[at:]``; bytes copied, or -1 if malformed."""
    segment = head
    copied = 0
    steps = 0
    n = pool.refcnt.shape[0]
    while segment >= 0:
        if segment >= n or steps > mp.SEGMENTS_MAX:
            return -1
        memory, start = mp.mp_segment_source(pool, segment)
        length = np.int64(pool.data_len[segment])
        if start < 0 or copied + length > limit:
            return -1
        copy_bytes(dst, at + copied, memory, start, length)
        copied += length
        segment = pool.next_seg[segment]
        steps += 1
    return copied


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _chain_valid(pool, head):
    """Every segment in use with its data inside its memory, and the lengths add up."""
    n = pool.refcnt.shape[0]
    segment = head
    total = np.int64(0)
    steps = 0
    while segment >= 0:
        if segment >= n or steps >= mp.SEGMENTS_MAX or pool.refcnt[segment] <= 0:
            return False
        memory, start = mp.mp_segment_source(pool, segment)
        if start < 0:
            return False
        total += pool.data_len[segment]
        segment = pool.next_seg[segment]
        steps += 1
    return total == pool.pkt_len[head] and total > 0


@njit(nogil=True, cache=True, _nrt=False)
def _write_at(pool, head, position, value):
    """Store a big-endian u16 at byte ``position`` of the packet, whichever segments hold it.

    Not inline="always": numba (0.68) dropped the two stores when this was inlined into
    _soft_udp_checksum, and large non-DF UDP went out with no checksum at all."""
    segment = head
    offset = position
    for byte in range(2):
        steps = 0
        while segment >= 0 and offset >= pool.data_len[segment] and steps <= mp.SEGMENTS_MAX:
            offset -= pool.data_len[segment]
            segment = pool.next_seg[segment]
            steps += 1
        if segment < 0 or steps > mp.SEGMENTS_MAX:
            return
        memory, start = mp.mp_segment_source(pool, segment)
        if start < 0:
            return
        memory[start + offset] = (value >> (8 - 8 * byte)) & 0xFF
        offset += 1


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _move_inband_tag(table, q, pool, head):
    """pmd#54: an 802.1Q tag in the frame goes to the VLAN PPI; the frame is sent untagged."""
    if pool.ol_flags[head] & np.uint64(mp.TX_VLAN) or pool.data_len[head] < 18:
        return
    memory, start = mp.mp_segment_source(pool, head)
    if start < 0 or memory[start + 12] != 0x81 or memory[start + 13] != 0x00:
        return
    tci = read_be16(memory, start + 14)
    for k in range(11, -1, -1):
        memory[start + 4 + k] = memory[start + k]
    pool.data_off[head] += 4
    pool.data_len[head] -= 4
    pool.pkt_len[head] -= 4
    pool.vlan_tci[head] = tci
    pool.ol_flags[head] |= np.uint64(mp.TX_VLAN)
    q[L.Q_TX_VLAN_MOVED] += 1


@njit(nogil=True, cache=True, _nrt=False)
def _soft_udp_checksum(table, q, ptab, head, parse):
    """UDP/IPv4 larger than 1420 bytes without DF: checksum computed here. True when done."""
    pool = pool_from_table(ptab)
    scratch = table_array(table, L.T_SCRATCH, np.uint8)
    length = _copy_out(pool, head, scratch, 0, scratch.shape[0])
    if length < 0:
        return False
    parse_frame(scratch, 0, length, parse)
    l3, ethertype, l4, protocol, l4_length, fragment = (
        parse[0],
        parse[1],
        parse[2],
        parse[3],
        parse[4],
        parse[5],
    )
    if ethertype != 0x0800 or l4 < 0 or protocol != 17 or fragment != 0 or l4_length < 8:
        return False
    if read_be16(scratch, l3 + 6) & 0x4000:  # DF set: the offload is fine
        return False
    fill_l4_checksum(scratch, 0, l3, l4, l4_length, True, 17)
    _write_at(pool, head, l4 + 6, read_be16(scratch, l4 + 6))
    q[L.Q_TX_SOFT_CHECKSUM] += 1
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _put_ppi(buf, at, ppi_type, value):
    put_u32(buf, at, _PPI)
    put_u32(buf, at + 4, ppi_type)
    put_u32(buf, at + 8, rndis.PPI_HEADER_SIZE)
    put_u32(buf, at + 12, value)
    return at + _PPI


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _offload_ppis(pool, head, ppis):
    """ppis = [vlan value or -1, lso value or -1, checksum value or -1]; False for impossible
    lengths (pmd.md 3.5: offset <= 1023, MSS < 2^20, lengths set)."""
    flags = pool.ol_flags[head]
    ppis[0] = -1
    ppis[1] = -1
    ppis[2] = -1
    if flags & np.uint64(mp.TX_VLAN):
        tci = np.int64(pool.vlan_tci[head])
        ppis[0] = (
            ((tci >> 13) & 7) | (((tci >> 12) & 1) << 3) | ((tci & 0xFFF) << rndis.VLAN_PPI_VLAN_ID_SHIFT)
        )
    offset = np.int64(pool.l2_len[head]) + np.int64(pool.l3_len[head])
    ipv6 = (flags & np.uint64(mp.TX_IPV6)) != 0
    if flags & np.uint64(mp.TX_TCP_SEG):
        mss = np.int64(pool.tso_segsz[head])
        if pool.l2_len[head] == 0 or pool.l3_len[head] == 0 or mss == 0:
            return False
        if offset > rndis.LSO_V2_TCP_OFFSET_MAX or mss > rndis.LSO_V2_MSS_MAX:
            return False
        value = mss | (offset << rndis.LSO_V2_TCP_OFFSET_SHIFT) | rndis.LSO_V2_TYPE
        if ipv6:
            value |= rndis.LSO_V2_IPV6
        ppis[1] = value
        return True
    l4 = flags & np.uint64(mp.TX_L4_MASK)  # a two-bit value, never tested bit by bit
    want_ip = (flags & np.uint64(mp.TX_IP_CKSUM)) != 0 and (flags & np.uint64(mp.TX_IPV4)) != 0
    if l4 == np.uint64(mp.TX_TCP_CKSUM) or l4 == np.uint64(mp.TX_UDP_CKSUM) or want_ip:
        value = rndis.CHECKSUM_TX_IPV6 if ipv6 else rndis.CHECKSUM_TX_IPV4
        if want_ip:
            value |= rndis.CHECKSUM_TX_IP_HEADER
        if l4 == np.uint64(mp.TX_TCP_CKSUM) or l4 == np.uint64(mp.TX_UDP_CKSUM):
            if offset == 0 or offset > rndis.CHECKSUM_TX_TRANSPORT_OFFSET_MAX:
                return False
            value |= rndis.CHECKSUM_TX_TCP if l4 == np.uint64(mp.TX_TCP_CKSUM) else rndis.CHECKSUM_TX_UDP
            value |= offset << rndis.CHECKSUM_TX_TRANSPORT_OFFSET_SHIFT
        ppis[2] = value
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _write_header(buf, at, frame_length, queue_id, ppis):
    """RNDIS PACKET_MSG header and PPIs at ``buf[at:]`` (pmd.md 3.5); returns its length."""
    position = _put_ppi(buf, at + _HEADER, rndis.PPI_TYPE_HASH_VALUE, queue_id)  # pmd#75
    if ppis[0] >= 0:
        position = _put_ppi(buf, position, rndis.PPI_TYPE_IEEE_8021Q, ppis[0])
    if ppis[1] >= 0:
        position = _put_ppi(buf, position, rndis.PPI_TYPE_LSO, ppis[1])
    if ppis[2] >= 0:
        position = _put_ppi(buf, position, rndis.PPI_TYPE_CHECKSUM_INFO, ppis[2])
    header = position - at
    put_u32(buf, at, rndis.RNDIS_MSG_PACKET)
    put_u32(buf, at + 4, header + frame_length)
    put_u32(buf, at + 8, header - _BASE)  # data offset
    put_u32(buf, at + 12, frame_length)
    for word in range(16, 28, 4):  # out-of-band data: none
        put_u32(buf, at + word, 0)
    put_u32(buf, at + 28, _HEADER - _BASE)  # PPI offset
    put_u32(buf, at + 32, header - _HEADER)
    put_u32(buf, at + 36, 0)
    put_u32(buf, at + 40, 0)
    return header


@njit(nogil=True, cache=True, _nrt=False)
def _transaction_id(q, d):
    return L.TID_DATA_TAG | (q[L.Q_QUEUE_ID] << L.TID_QUEUE_SHIFT) | d


@njit(nogil=True, cache=True, _nrt=False)
def flush_aggregation(table, q):
    """Send the chimney section being filled (pmd#73). True when nothing is pending any more."""
    d = q[L.Q_AGG_DESC]
    if d < 0:
        return True
    packet = table_array(table, L.T_SCRATCH, np.uint8)[: 16 + _NVSP_RNDIS]
    put_u16(packet, 0, PACKET_TYPE_INBAND)
    put_u16(packet, 2, 2)
    put_u16(packet, 4, (16 + _NVSP_RNDIS) // 8)
    put_u16(packet, 6, PACKET_FLAG_COMPLETION_REQUESTED)
    put_u64(packet, 8, _transaction_id(q, d))
    put_u32(packet, 16, nvsp.NVSP_MSG_SEND_RNDIS_PACKET)
    put_u32(packet, 20, nvsp.RNDIS_CHANNEL_TYPE_DATA)
    put_u32(packet, 24, table_array(table, L.T_TXD_CHIMNEY, np.int32)[d])
    put_u32(packet, 28, q[L.Q_AGG_USED])
    result = stage_packet(table, packet)
    if result == 1:
        q[L.Q_AGG_DESC] = -1
        return True
    counters = table_array(table, L.T_TX_COUNTERS, np.int64)
    if result == 0:
        counters[CHANNEL_FULL] += 1  # kept pending, retried by the next burst
    else:
        counters[ERRORS] += 1
    return False


@njit(nogil=True, cache=True, _nrt=False)
def _place_in_chimney(table, q, ptab, pool_slot, head, d, frame_length, ppis):
    """pmd#71-73: copy the frame into the section being filled (or a new one). Returns _SENT,
    _STOP (a flush failed), or -1 when no section is free (the caller sends by GPA)."""
    pool = pool_from_table(ptab)
    size = frame_length + PACKET_WORST_CASE
    alignment = q[L.Q_ALIGNMENT]
    full = q[L.Q_AGG_PACKETS_LEFT] <= 0 or _align(size, alignment) > q[L.Q_AGG_BYTES_LEFT]
    if q[L.Q_AGG_DESC] >= 0 and full and not flush_aggregation(table, q):
        return _STOP
    send = table_array(table, L.T_SEND_BUFFER, np.uint8)
    chimney = table_array(table, L.T_TXD_CHIMNEY, np.int32)
    agg = q[L.Q_AGG_DESC]
    if agg < 0:
        section = chimney_take(table)
        if section < 0:
            return -1
        agg = d
        chimney[agg] = section
        q[L.Q_AGG_DESC] = agg
        q[L.Q_AGG_PACKETS_LEFT] = q[L.Q_AGG_MAX_PACKETS] - 1
        q[L.Q_AGG_BYTES_LEFT] = q[L.Q_AGG_MAX_BYTES] - size
        used = np.int64(0)
    else:
        # Pad the previous message to the alignment; its length grows by the padding.
        base = np.int64(chimney[agg]) * q[L.Q_CHIMNEY_SIZE]
        used = q[L.Q_AGG_USED]
        padded = _align(used, alignment)
        for k in range(used, padded):
            send[base + k] = 0
        previous = base + q[L.Q_AGG_PREVIOUS]
        put_u32(send, previous + 4, (used - q[L.Q_AGG_PREVIOUS]) + (padded - used))
        used = padded
        q[L.Q_AGG_PACKETS_LEFT] -= 1
        q[L.Q_AGG_BYTES_LEFT] -= size
        if q[L.Q_AGG_BYTES_LEFT] < _align(_MIN_AGGREGATE, alignment):
            q[L.Q_AGG_PACKETS_LEFT] = 0  # nothing more fits: flush proactively
        descriptor_give(table, q, d)  # the packet rides on the aggregating descriptor
    base = np.int64(chimney[agg]) * q[L.Q_CHIMNEY_SIZE]
    at = base + used
    header = _write_header(send, at, frame_length, q[L.Q_QUEUE_ID], ppis)
    _copy_out(pool, head, send, at + header, q[L.Q_CHIMNEY_SIZE] - used - header)  # chain checked
    q[L.Q_AGG_PREVIOUS] = used
    q[L.Q_AGG_USED] = used + header + frame_length
    table_array(table, L.T_TXD_PACKETS, np.int32)[agg] += 1
    table_array(table, L.T_TXD_BYTES, np.int64)[agg] += frame_length
    memory, start = mp.mp_segment_source(pool, head)
    count_accepted(table_array(table, L.T_TX_COUNTERS, np.int64), memory, start, frame_length)
    free_later(table, q, pool_slot, head)  # copied: the mbuf is done (pmd.md 3.3)
    if q[L.Q_AGG_PACKETS_LEFT] <= 0:
        flush_aggregation(table, q)  # a failure keeps it pending; the packet is placed either way
    return _SENT


@njit(nogil=True, cache=True, _nrt=False)
def _linearize(ptab, chain, head):
    """A copy of the packet in as few pool buffers as possible, or -1 (no buffers)."""
    pool = pool_from_table(ptab)
    total = np.int64(pool.pkt_len[head])
    room = pool.state[mp.ST_DATA_ROOM] - pool.state[mp.ST_HEADROOM]
    needed = (total + room - 1) // room
    if needed < 1 or needed > mp.SEGMENTS_MAX:
        return -1
    if mp.mp_alloc_bulk(pool, chain, needed) == 0:
        return -1
    # Gather the source into the new chain segment by segment.
    data_room = pool.state[mp.ST_DATA_ROOM]
    k = 0
    filled = np.int64(0)
    segment = head
    while segment >= 0 and k < needed:
        memory, start = mp.mp_segment_source(pool, segment)
        left = np.int64(pool.data_len[segment])
        if start < 0:
            mp.mp_free_bulk(pool, chain, needed)
            return -1
        while left > 0 and k < needed:
            target = chain[k]
            piece = min(left, room - filled)
            copy_bytes(
                pool.data, np.int64(target) * data_room + pool.data_off[target] + filled, memory, start, piece
            )
            start += piece
            left -= piece
            filled += piece
            if filled == room:
                pool.data_len[target] = room
                k += 1
                filled = 0
        segment = pool.next_seg[segment]
    if k < needed:
        pool.data_len[chain[k]] = filled
    for j in range(needed):
        pool.next_seg[chain[j]] = chain[j + 1] if j + 1 < needed else -1
    new = chain[0]
    pool.pkt_len[new] = total
    pool.nb_segs[new] = needed
    pool.ol_flags[new] = pool.ol_flags[head]
    pool.vlan_tci[new] = pool.vlan_tci[head]
    pool.l2_len[new] = pool.l2_len[head]
    pool.l3_len[new] = pool.l3_len[head]
    pool.l4_len[new] = pool.l4_len[head]
    pool.tso_segsz[new] = pool.tso_segsz[head]
    return new


@njit(nogil=True, cache=True, _nrt=False)
def _bounce_ranges(table, ptab, head, slot, out_gpa, out_len):
    """Copy the packet into bounce buffer ``slot`` and describe it by ranges that each stay in
    one 4 KiB page; the number of ranges, or < 0 (malformed, longer than the buffer, too many)."""
    pool = pool_from_table(ptab)
    area = table_array(table, L.T_BOUNCE, np.uint8)
    page_gpas = table_array(table, L.T_BOUNCE_GPAS, np.uint64)
    base = np.int64(slot) * L.BOUNCE_SLOT
    length = _copy_out(pool, head, area, base, min(L.BOUNCE_SLOT, area.shape[0] - base))
    if length <= 0:
        return -2
    ranges = 0
    position = base
    end = base + length
    while position < end:
        in_page = position & (HV_PAGE_SIZE - 1)
        chunk = min(HV_PAGE_SIZE - in_page, end - position)
        if ranges >= out_gpa.shape[0]:
            return -1
        out_gpa[ranges] = page_gpas[position >> HV_PAGE_SHIFT] + np.uint64(in_page)
        out_len[ranges] = chunk
        ranges += 1
        position += chunk
    return ranges


@njit(nogil=True, cache=True, _nrt=False)
def _send_gpa(table, q, ptab, pool_slot, head, d, frame_length, ppis):
    """pmd#74: the RNDIS header from the descriptor's slot, then the frame's pages."""
    pool = pool_from_table(ptab)
    if not flush_aggregation(table, q):  # ordering: the pending section goes first
        descriptor_give(table, q, d)
        return _STOP
    gpas = table_array(table, L.T_GPA, np.uint64)
    lengths = table_array(table, L.T_GPA_LEN, np.int64)
    limit = min(q[L.Q_MAX_RANGES], gpas.shape[0])
    sent_head = head
    ranges = mp.mp_gpa_ranges(pool, head, gpas[1:limit], lengths[1:limit])
    bounce = -1
    if ranges == -1:
        # More ranges than one send may carry (a 64 KiB LSO frame of 2 KiB mbufs): a contiguous
        # copy needs 17 at most. With no bounce buffer free, the copy into fewer mbufs below is
        # the last resort.
        bounce = bounce_take(q)
        if bounce >= 0:
            ranges = _bounce_ranges(table, ptab, head, bounce, gpas[1:limit], lengths[1:limit])
            if ranges < 0:
                bounce_give(q, bounce)
                bounce = -1
    if ranges < 0:
        release_freed(table, q)  # buffers freed earlier in the burst may be needed here
        sent_head = _linearize(ptab, table_array(table, L.T_CHAIN, np.int32), head)
        if sent_head < 0:
            descriptor_give(table, q, d)
            table_array(table, L.T_TX_COUNTERS, np.int64)[RING_FULL] += 1
            return _STOP
        q[L.Q_TX_LINEARIZED] += 1
        ranges = mp.mp_gpa_ranges(pool, sent_head, gpas[1:limit], lengths[1:limit])
        if ranges < 0:
            mp.mp_free(pool, sent_head)
            descriptor_give(table, q, d)
            table_array(table, L.T_TX_COUNTERS, np.int64)[ERRORS] += 1
            q[L.Q_TX_BAD_OFFLOAD] += 1
            mp.mp_free(pool, head)
            return _REFUSED
    slots = table_array(table, L.T_TXD_HEADER, np.uint8)
    at = np.int64(d) * L.TXD_HEADER_SLOT
    header = _write_header(slots, at, frame_length, q[L.Q_QUEUE_ID], ppis)
    page_gpas = table_array(table, L.T_TXD_HEADER_GPAS, np.uint64)
    gpas[0] = page_gpas[at >> HV_PAGE_SHIFT] + np.uint64(at & (HV_PAGE_SIZE - 1))
    lengths[0] = header
    count = ranges + 1
    hlen = GPA_DIRECT_HEADER_SIZE + _GPA_RANGE * count
    packet = table_array(table, L.T_SCRATCH, np.uint8)[: hlen + _NVSP_RNDIS]
    put_u16(packet, 0, PACKET_TYPE_GPA_DIRECT)
    put_u16(packet, 2, hlen // 8)
    put_u16(packet, 4, (hlen + _NVSP_RNDIS) // 8)
    put_u16(packet, 6, PACKET_FLAG_COMPLETION_REQUESTED)
    put_u64(packet, 8, _transaction_id(q, d))
    put_u32(packet, 16, 0)
    put_u32(packet, 20, count)
    for k in range(count):
        at_range = GPA_DIRECT_HEADER_SIZE + _GPA_RANGE * k
        gpa = gpas[k]
        put_u32(packet, at_range, lengths[k])
        put_u32(packet, at_range + 4, np.int64(gpa & np.uint64(HV_PAGE_SIZE - 1)))
        put_u64(packet, at_range + 8, np.int64(gpa >> np.uint64(HV_PAGE_SHIFT)))
    put_u32(packet, hlen, nvsp.NVSP_MSG_SEND_RNDIS_PACKET)
    put_u32(packet, hlen + 4, nvsp.RNDIS_CHANNEL_TYPE_DATA)
    put_u32(packet, hlen + 8, nvsp.SEND_SECTION_INDEX_NONE)
    put_u32(packet, hlen + 12, 0)
    result = stage_packet(table, packet)
    if result != 1:
        counters = table_array(table, L.T_TX_COUNTERS, np.int64)
        if result == 0:
            counters[CHANNEL_FULL] += 1
        else:
            counters[ERRORS] += 1
        if sent_head != head:
            mp.mp_free(pool, sent_head)
        bounce_give(q, bounce)
        descriptor_give(table, q, d)
        return _STOP  # not consumed: the caller still owns the packet
    table_array(table, L.T_TXD_POOL, np.int32)[d] = pool_slot
    table_array(table, L.T_TXD_PACKETS, np.int32)[d] = 1
    table_array(table, L.T_TXD_BYTES, np.int64)[d] = frame_length
    counters = table_array(table, L.T_TX_COUNTERS, np.int64)
    if bounce >= 0:
        # The host reads the bounce buffer (held until the completion); the mbuf is done.
        table_array(table, L.T_TXD_BOUNCE, np.int32)[d] = bounce
        q[L.Q_TX_BOUNCED] += 1
        count_accepted(counters, table_array(table, L.T_BOUNCE, np.uint8), np.int64(bounce) * L.BOUNCE_SLOT,
                       frame_length)
        free_later(table, q, pool_slot, head)
        return _SENT
    table_array(table, L.T_TXD_MBUF, np.int32)[d] = sent_head
    memory, start = mp.mp_segment_source(pool, sent_head)
    count_accepted(counters, memory, start, frame_length)
    if sent_head != head:
        free_later(table, q, pool_slot, head)  # the copy is what the host reads
    return _SENT


@njit(nogil=True, cache=True, _nrt=False)
def _send_one(table, q, ptab, pool_slot, head, parse, ppis):
    pool = pool_from_table(ptab)
    counters = table_array(table, L.T_TX_COUNTERS, np.int64)
    if head < 0 or head >= pool.refcnt.shape[0] or pool.refcnt[head] <= 0:
        counters[ERRORS] += 1
        return _REFUSED
    if not _chain_valid(pool, head):
        q[L.Q_TX_MALFORMED] += 1
        counters[ERRORS] += 1
        mp.mp_free(pool, head)
        return _REFUSED
    d = descriptor_take(table, q)
    if d < 0:
        counters[RING_FULL] += 1
        return _STOP
    _move_inband_tag(table, q, pool, head)
    frame_length = np.int64(pool.pkt_len[head])
    flags = pool.ol_flags[head]
    if (
        (flags & np.uint64(mp.TX_L4_MASK)) == np.uint64(mp.TX_UDP_CKSUM)
        and (flags & np.uint64(mp.TX_IPV4)) != 0
        and frame_length > UDP_SOFT_CHECKSUM_ABOVE
        and _soft_udp_checksum(table, q, ptab, head, parse)
    ):
        pool.ol_flags[head] = flags & ~np.uint64(mp.TX_L4_MASK)
    if not _offload_ppis(pool, head, ppis):
        descriptor_give(table, q, d)
        q[L.Q_TX_BAD_OFFLOAD] += 1
        counters[ERRORS] += 1
        mp.mp_free(pool, head)
        return _REFUSED
    if frame_length <= q[L.Q_TX_COPYBREAK] and frame_length + PACKET_WORST_CASE <= q[L.Q_AGG_MAX_BYTES]:
        result = _place_in_chimney(table, q, ptab, pool_slot, head, d, frame_length, ppis)
        if result == _STOP:
            descriptor_give(table, q, d)
            return _STOP
        if result == _SENT:
            return _SENT
        q[L.Q_TX_CHIMNEY_FALLBACK] += 1
    return _send_gpa(table, q, ptab, pool_slot, head, d, frame_length, ppis)


@njit(nogil=True, cache=True, _nrt=False)
def reap_completions(table, q, wanted):
    """Collect send completions first when descriptors run short (pmd.md 3.2 step 1)."""
    if q[L.Q_QUEUE_ID] == 0 or q[L.Q_TXD_FREE_TOP] < max(q[L.Q_TX_FREE_THRESH], wanted):
        process_events(table, 0, 0)


@njit(nogil=True, cache=True, _nrt=False)
def tx_burst_kernel(table, pool_slot, indices, count):
    """Send up to ``count`` packets ``indices[:count]`` of the pool in ``pool_slot``; returns how
    many were consumed (sent, or refused as malformed and counted), with ``qlayout.ATTENTION``
    set when the control path has work."""
    q = table_array(table, L.T_QSTATE, np.int64)
    count = min(count, indices.shape[0])
    reap_completions(table, q, count)
    words = table_array(table, L.T_PARSE, np.int64)
    parse = words[:8]
    ppis = words[8:11]
    ptab = pool_table(table, pool_slot)
    done = 0
    if flush_aggregation(table, q):
        while done < count:
            if _send_one(table, q, ptab, pool_slot, indices[done], parse, ppis) == _STOP:
                break
            done += 1
        flush_aggregation(table, q)
    flush_tx_signal(table)
    release_freed(table, q)
    return with_attention(q, done)
