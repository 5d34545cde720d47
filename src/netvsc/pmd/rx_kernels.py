"""Receive kernels: transfer-page packets, RNDIS data messages, mbufs (spec/pmd.md 2.3-2.6).

Layer 5 (pmd). ``on_transfer_pages`` takes one transfer-page packet copied out of the ring (so
the host cannot change it under the checks), validates it (pmd#59), walks its ranges (pmd#60,
#61), validates each RNDIS data message (pmd#62, #63) and builds the mbuf: copied below
rx_copybreak, zero-copy above it when rx_extmbuf_enable is set (pmd#65, #66), chained when the
frame is larger than one buffer (scattered RX, pmd#64), with VLAN, checksum, hash and packet
type (pmd#53, #56-58). RNDIS control messages found among the ranges go to the mailbox for the
control path. The packet is acknowledged once, when no external mbuf holds it any more.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev import mempool as mp
from netvsc.ethdev.mempool import pool_from_table
from netvsc.fastpath.addrtable import table_array
from netvsc.fastpath.atomics import copy_bytes, prefetch_read
from netvsc.fastpath.lebytes import copy_by_aligned_words
from netvsc.fastpath.offload import parse_frame
from netvsc.pmd import qlayout as L
from netvsc.pmd.chan_kernels import acknowledge, get_u16, get_u32, pool_table, put_u32
from netvsc.pmd.stats import ERRORS as RX_ERRORS
from netvsc.pmd.stats import IMISSED, NOMBUF, RING_FULL, count_delivered
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import PACKET_DESCRIPTOR_SIZE

_XFER_EXT = 8  # set id u16, sender-owns u8, reserved u8, range count u32
_RANGE = 8  # byte count u32, byte offset u32
_NVSP_HEADER = 4
_RNDIS_BASE = rndis.RNDIS_OFFSET_BASE
_PACKET_HEADER = rndis.RNDIS_PACKET_HEADER_SIZE
_MIN_DATA_OFFSET = rndis.RNDIS_PACKET_MIN_DATA_OFFSET
_PPI_HEADER = rndis.PPI_HEADER_SIZE
_ETH_HEADER = 14
_MAILBOX_RECORD = 4  # each mailbox message: u32 length, then the bytes
_PREFETCH_AHEAD = 2  # ranges
_WORD_COPY_MAX = 256  # longer frames are copied by memcpy: one straddling load is a small share
_PREFETCH_BYTES = 320  # RNDIS header, PPIs and the first bytes of the frame (OpenVMM's layout)

# Software packet types (DPDK's RTE_PTYPE_* values).
PTYPE_L2_ETHER = 0x1
PTYPE_L2_ETHER_ARP = 0x2
PTYPE_L3_IPV4 = 0x10
PTYPE_L3_IPV4_EXT = 0x30
PTYPE_L3_IPV6 = 0x40
PTYPE_L4_TCP = 0x100
PTYPE_L4_UDP = 0x200
PTYPE_L4_FRAG = 0x300
PTYPE_L4_ICMP = 0x500

# Results of the PPI walk (info[]): flags of what was found, then the values.
_HAVE_CSUM, _HAVE_VLAN, _HAVE_HASH, _HAVE_HASH_INFO = 1, 2, 4, 8
_ALL_PPIS = 15


@njit(nogil=True, cache=True, _nrt=False)
def _walk_ppis(buf, start, length, info):
    """Parse the PPI area ``buf[start:start+length]``; False when malformed (pmd#63).

    info = [found flags, checksum, vlan, hash value, hash info]. Every element must hold a whole
    header, a size >= the header (a zero size would loop forever: DPDK pitfall), <= what remains,
    a multiple of 4, and a data offset inside it; known types need 4 bytes of data.
    """
    for k in range(5):
        info[k] = 0
    position = start
    end = start + length
    while end - position > 0:
        remaining = end - position
        if remaining < _PPI_HEADER:
            return False
        size = get_u32(buf, position)
        ppi_type = get_u32(buf, position + 4)
        offset = get_u32(buf, position + 8)
        if size < _PPI_HEADER or size > remaining or size % 4 != 0 or offset > size or offset < _PPI_HEADER:
            return False
        kind = -1
        if ppi_type == rndis.PPI_TYPE_CHECKSUM_INFO:
            kind = 0
        elif ppi_type == rndis.PPI_TYPE_IEEE_8021Q:
            kind = 1
        elif ppi_type == rndis.PPI_TYPE_HASH_VALUE:
            kind = 2
        elif ppi_type == rndis.PPI_TYPE_HASH_INFO:
            kind = 3
        if kind >= 0:
            if size - offset < 4:
                return False
            info[0] |= 1 << kind
            info[1 + kind] = get_u32(buf, position + offset)
            if info[0] == _ALL_PPIS:
                return True
        position += size
    return True


@njit(nogil=True, cache=True, _nrt=False)
def packet_type_of(buf, start, length, parse):
    """The software packet type of the frame at ``buf[start:start+length]`` (pmd#56)."""
    parse_frame(buf, start, length, parse)
    if parse[0] < 0:
        return 0
    ethertype = parse[1]
    ptype = PTYPE_L2_ETHER
    if ethertype == 0x0806:
        return PTYPE_L2_ETHER_ARP
    if ethertype == 0x0800:
        if parse[2] < 0:
            return ptype
        ptype |= PTYPE_L3_IPV4 if parse[2] - parse[0] == 20 else PTYPE_L3_IPV4_EXT
    elif ethertype == 0x86DD:
        if parse[2] < 0:
            return ptype
        ptype |= PTYPE_L3_IPV6
    else:
        return ptype
    if parse[5] == 1:
        return ptype | PTYPE_L4_FRAG
    protocol = parse[3]
    if protocol == 6:
        ptype |= PTYPE_L4_TCP
    elif protocol == 17:
        ptype |= PTYPE_L4_UDP
    elif protocol == 1 or protocol == 58:
        ptype |= PTYPE_L4_ICMP
    return ptype


@njit(nogil=True, cache=True, _nrt=False)
def _checksum_flags(value):
    """pmd#57: IP good, L4 good or bad; an IP failure and absent info stay unknown."""
    flags = np.uint64(0)
    if value == 0:
        return flags
    if value & rndis.CHECKSUM_RX_IP_SUCCEEDED:
        flags |= np.uint64(mp.RX_IP_CKSUM_GOOD)
    if value & (rndis.CHECKSUM_RX_TCP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED):
        flags |= np.uint64(mp.RX_L4_CKSUM_GOOD)
    elif value & (rndis.CHECKSUM_RX_TCP_FAILED | rndis.CHECKSUM_RX_UDP_FAILED):
        flags |= np.uint64(mp.RX_L4_CKSUM_BAD)
    return flags


@njit(nogil=True, cache=True, _nrt=False)
def _tci_of(vlan_ppi):
    priority = vlan_ppi & rndis.VLAN_PPI_PRIORITY_MASK
    dei = (vlan_ppi >> 3) & 1
    vlan_id = (vlan_ppi >> rndis.VLAN_PPI_VLAN_ID_SHIFT) & rndis.VLAN_ID_MAX
    return (priority << 13) | (dei << 12) | vlan_id


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _alloc_one(table, q, pool):
    """One mbuf of the RX pool through the queue's cache (qlayout.RX_CACHE_SIZE), or -1."""
    cache = table_array(table, L.T_RX_CACHE, np.int32)
    cached = q[L.Q_RX_CACHED]
    if cached == 0:
        want = min(cache.shape[0], max(q[L.Q_RX_RANGES_LEFT], 1))
        if mp.mp_alloc_bulk(pool, cache, want) == want:
            cached = want
        elif mp.mp_alloc_bulk(pool, cache, 1) == 1:
            cached = 1  # the pool runs low: what is left goes to frames one at a time
        else:
            return -1
    cached -= 1
    q[L.Q_RX_CACHED] = cached
    return cache[cached]


@njit(nogil=True, cache=True, _nrt=False)
def _copy_from_recv(dst, dst_start, recv, start, length):
    """Copy bytes of a received frame: short ones by aligned words (see copy_by_aligned_words).

    Not inline="always": inlined twice into _copy_frame by numba, it lost frames (the loopback
    signalling test never got them all), with no out-of-bounds access under BOUNDSCHECK."""
    if length <= _WORD_COPY_MAX and ((start + length + 7) & ~7) <= recv.shape[0]:
        copy_by_aligned_words(dst, dst_start, recv, start, length)
    else:
        copy_bytes(dst, dst_start, recv, start, length)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _copy_frame(table, q, pool, chain, recv, start, length, tci, reinsert):
    """Copy a frame into new mbufs (a chain when it exceeds one buffer); the head or -1.

    With ``reinsert`` the 802.1Q tag ``tci`` is put back after the MAC addresses (pmd#53).
    """
    total = length + 4 if reinsert else length
    room = pool.state[mp.ST_DATA_ROOM] - pool.state[mp.ST_HEADROOM]
    needed = 1 if total <= room else (total + room - 1) // room  # no division for most frames
    if needed > mp.SEGMENTS_MAX:
        return -2
    if needed == 1:
        chain[0] = _alloc_one(table, q, pool)
        if chain[0] < 0:
            return -1
    elif mp.mp_alloc_bulk(pool, chain, needed) == 0:
        return -1
    data_room = pool.state[mp.ST_DATA_ROOM]
    source = start
    left = total
    for k in range(needed):
        segment = chain[k]
        at = np.int64(segment) * data_room + pool.data_off[segment]
        piece = min(room, left)
        filled = 0
        if reinsert and k == 0:
            _copy_from_recv(pool.data, at, recv, source, 12)
            pool.data[at + 12] = 0x81
            pool.data[at + 13] = 0x00
            pool.data[at + 14] = (tci >> 8) & 0xFF
            pool.data[at + 15] = tci & 0xFF
            filled = 16
            source += 12
        _copy_from_recv(pool.data, at + filled, recv, source, piece - filled)
        source += piece - filled
        left -= piece
        pool.data_len[segment] = piece
        pool.next_seg[segment] = chain[k + 1] if k + 1 < needed else -1
    head = chain[0]
    pool.pkt_len[head] = total
    pool.nb_segs[head] = needed
    return head


@njit(nogil=True, cache=True, _nrt=False)
def _mailbox_put(table, q, recv, start, length):
    """Keep an RNDIS control message for the control path; False when the mailbox is full."""
    mailbox = table_array(table, L.T_MAILBOX, np.uint8)
    used = q[L.Q_MAILBOX_USED]
    if used + _MAILBOX_RECORD + length > mailbox.shape[0]:
        return False
    put_u32(mailbox, used, length)
    copy_bytes(mailbox, used + _MAILBOX_RECORD, recv, start, length)
    q[L.Q_MAILBOX_USED] = used + _MAILBOX_RECORD + length
    q[L.Q_MAILBOX_COUNT] += 1
    q[L.Q_CONTROL_KIND] = L.CONTROL_MAILBOX
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _stage(table, q, head):
    """Put a received mbuf in the staging ring; False when the ring is full."""
    staging = table_array(table, L.T_STAGING, np.int32)
    tail = q[L.Q_STAGING_TAIL]
    if tail - q[L.Q_STAGING_HEAD] >= staging.shape[0]:
        return False
    staging[tail & (staging.shape[0] - 1)] = head
    q[L.Q_STAGING_TAIL] = tail + 1
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _deliver(table, q, ptab, recv, start, entry, info, parse):
    """One RNDIS data message at ``recv[start:]`` (already bounds-checked against the buffer)
    to an mbuf in the staging ring. ``entry``: the transfer's zero-copy entry, or -1."""
    pool = pool_from_table(ptab)
    counters = table_array(table, L.T_RX_COUNTERS, np.int64)
    range_length = info[5]
    if range_length < _PACKET_HEADER:
        # pmd#62, checked before any header field is read: a short range at the end of the
        # receive buffer would otherwise have the reads below run past the buffer.
        counters[RX_ERRORS] += 1
        return
    message_length = get_u32(recv, start + 4)
    data_offset = get_u32(recv, start + 8)
    data_length = get_u32(recv, start + 12)
    oob_length = get_u32(recv, start + 20)
    ppi_offset = get_u32(recv, start + 28)
    ppi_length = get_u32(recv, start + 32)
    # pmd#62: each check failing counts one error and drops the frame.
    if (
        message_length > range_length
        or message_length < data_length + oob_length + ppi_length
        or data_length == 0
        or data_offset < _MIN_DATA_OFFSET
        or data_offset + _RNDIS_BASE + data_length > message_length
        or data_length < _ETH_HEADER
    ):
        counters[RX_ERRORS] += 1
        return
    if ppi_length > 0:
        if (
            ppi_offset < _MIN_DATA_OFFSET
            or ppi_offset % 4 != 0
            or ppi_offset + _RNDIS_BASE + ppi_length > message_length
        ):
            counters[RX_ERRORS] += 1
            return
        if not _walk_ppis(recv, start + _RNDIS_BASE + ppi_offset, ppi_length, info):
            counters[RX_ERRORS] += 1
            return
    else:
        for k in range(5):
            info[k] = 0
    frame = start + _RNDIS_BASE + data_offset
    found = info[0]
    has_vlan = (found & _HAVE_VLAN) != 0
    tci = _tci_of(info[2]) if has_vlan else 0
    reinsert = has_vlan and q[L.Q_VLAN_STRIP] == 0
    ptype = packet_type_of(recv, frame, data_length, parse)  # before any re-insertion (pmd.md 1.14)
    head = -1
    zero_copy = (
        entry >= 0
        and not reinsert
        and data_length > q[L.Q_RX_COPYBREAK]
        and q[L.Q_EXT_HELD] * 2 < q[L.Q_RECV_SECTIONS]
    )
    if zero_copy:
        head = _alloc_one(table, q, pool)
        if head >= 0:
            mp.mp_attach_external(pool, head, q[L.Q_RX_OWNER], entry, start)
            pool.data_off[head] = _RNDIS_BASE + data_offset
            pool.data_len[head] = data_length
            pool.pkt_len[head] = data_length
            refs = table_array(table, L.T_XFER_REFS, np.int32)
            refs[entry] += 1
            if refs[entry] == 2:  # the first external mbuf of this transfer
                q[L.Q_EXT_HELD] += 1
    else:
        chain = table_array(table, L.T_CHAIN, np.int32)
        head = _copy_frame(table, q, pool, chain, recv, frame, data_length, tci, reinsert)
        if head == -2:
            counters[RX_ERRORS] += 1
            return
        if head >= 0 and pool.nb_segs[head] > 1:
            q[L.Q_RX_SCATTERED] += 1
    if head < 0:
        counters[NOMBUF] += 1  # pmd#67: dropped; the section is still acknowledged
        return
    flags = _checksum_flags(info[1]) if (found & _HAVE_CSUM) else np.uint64(0)
    if has_vlan:
        pool.vlan_tci[head] = tci
        flags |= np.uint64(mp.RX_VLAN) if reinsert else np.uint64(mp.RX_VLAN | mp.RX_VLAN_STRIPPED)
    if (found & _HAVE_HASH) and (found & _HAVE_HASH_INFO):
        flags |= np.uint64(mp.RX_RSS_HASH)
        pool.rss_hash[head] = info[3]
    pool.ol_flags[head] = flags
    pool.packet_type[head] = ptype
    pool.port[head] = q[L.Q_PORT_ID]
    pool.queue[head] = q[L.Q_QUEUE_ID]
    count_delivered(counters, recv, frame, data_length)
    if not _stage(table, q, head):
        # pmd#68: counted as delivered above (as DPDK), then as missed; the mbuf goes back.
        counters[RING_FULL] += 1
        counters[IMISSED] += 1
        mp.mp_free(pool, head)


@njit(nogil=True, cache=True, _nrt=False)
def _take_entry(table, q, transaction_id):
    """A zero-copy bookkeeping entry for this transfer (the driver's reference), or -1."""
    top = q[L.Q_XFER_FREE_TOP]
    if top == 0:
        return -1
    top -= 1
    entry = table_array(table, L.T_XFER_FREE, np.int32)[top]
    q[L.Q_XFER_FREE_TOP] = top
    table_array(table, L.T_XFER_ID, np.int64)[entry] = transaction_id
    table_array(table, L.T_XFER_REFS, np.int32)[entry] = 1
    return entry


@njit(nogil=True, cache=True, _nrt=False)
def release_entry(table, q, entry, external):
    """Drop one reference on a transfer; the last one acknowledges it to the host."""
    refs = table_array(table, L.T_XFER_REFS, np.int32)
    if entry < 0 or entry >= refs.shape[0] or refs[entry] <= 0:
        q[L.Q_UNKNOWN_COMPLETIONS] += 1
        return
    refs[entry] -= 1
    if refs[entry] == 0:
        if external:
            q[L.Q_EXT_HELD] -= 1
        acknowledge(table, table_array(table, L.T_XFER_ID, np.int64)[entry])
        free = table_array(table, L.T_XFER_FREE, np.int32)
        free[q[L.Q_XFER_FREE_TOP]] = entry
        q[L.Q_XFER_FREE_TOP] += 1


@njit(nogil=True, cache=True, _nrt=False)
def on_transfer_pages(table, q, event, length, info, parse):
    """Handle one transfer-page packet ``event[:length]`` (pmd.md 2.3)."""
    hlen = get_u16(event, 2) * 8
    transaction_id = np.int64(get_u32(event, 8)) | (np.int64(get_u32(event, 12)) << 32)
    # pmd#59: structurally unusable packets are dropped without acknowledgement.
    if hlen < PACKET_DESCRIPTOR_SIZE + _XFER_EXT or hlen > length or length - hlen < 8:
        q[L.Q_BAD_XFER] += 1
        return
    if get_u32(event, hlen) != nvsp.NVSP_MSG_SEND_RNDIS_PACKET:
        q[L.Q_BAD_XFER] += 1
        return
    if get_u16(event, PACKET_DESCRIPTOR_SIZE) != nvsp.RECEIVE_BUFFER_ID:
        q[L.Q_BAD_XFER] += 1
        return
    ranges = get_u32(event, PACKET_DESCRIPTOR_SIZE + 4)
    if PACKET_DESCRIPTOR_SIZE + _XFER_EXT + ranges * _RANGE > hlen:
        q[L.Q_BAD_XFER] += 1
        return
    recv = table_array(table, L.T_RECV_BUFFER, np.uint8)
    size = recv.shape[0]
    started = q[L.Q_STARTED] != 0 and q[L.Q_RX_POOL] >= 0
    pool_slot = q[L.Q_RX_POOL] if q[L.Q_RX_POOL] >= 0 else 0
    ptab = pool_table(table, pool_slot)
    entry = -1
    if started and q[L.Q_RX_EXTMBUF] != 0 and q[L.Q_RX_OWNER] >= 0:
        entry = _take_entry(table, q, transaction_id)
    for r in range(ranges):
        base = PACKET_DESCRIPTOR_SIZE + _XFER_EXT + r * _RANGE
        range_length = get_u32(event, base)
        offset = get_u32(event, base + 4)
        if r + _PREFETCH_AHEAD < ranges:
            # The host wrote these lines from another core: ask for a later message's header,
            # PPIs and frame start now, so that their cache misses overlap this one's work.
            ahead = get_u32(event, base + _PREFETCH_AHEAD * _RANGE + 4)
            for line in range(0, _PREFETCH_BYTES, 64):
                prefetch_read(recv, ahead + line)
        if range_length == 0 or offset >= size or range_length > size - offset:
            q[L.Q_BAD_RANGES] += 1  # pmd#60: skipped, the other ranges still delivered
            continue
        if range_length < 8:
            table_array(table, L.T_RX_COUNTERS, np.int64)[RX_ERRORS] += 1
            continue
        message_type = get_u32(recv, offset)
        if message_type == rndis.RNDIS_MSG_PACKET:
            if not started:
                q[L.Q_STOPPED_DROPS] += 1
                continue
            info[5] = range_length
            q[L.Q_RX_RANGES_LEFT] = ranges - r
            _deliver(table, q, ptab, recv, offset, entry, info, parse)
        else:
            # Completions and indications travel with the data ranges: the control path's.
            if _mailbox_put(table, q, recv, offset, range_length):
                q[L.Q_CONTROL_MESSAGES] += 1
            else:
                table_array(table, L.T_RX_COUNTERS, np.int64)[RX_ERRORS] += 1
    if q[L.Q_RX_CACHED] > 0:  # mbufs taken for ranges that were not frames
        mp.mp_free_bulk(pool_from_table(ptab), table_array(table, L.T_RX_CACHE, np.int32), q[L.Q_RX_CACHED])
        q[L.Q_RX_CACHED] = 0
    if entry >= 0:
        release_entry(table, q, entry, False)
    else:
        acknowledge(table, transaction_id)
