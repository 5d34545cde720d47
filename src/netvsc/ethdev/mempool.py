"""Packet buffers: the ``Mempool`` and the numba kernels that allocate, share and free them.

Layer 6 (ethdev), below ``pmd/``: the NetVSC RX and TX queues import this module and call its
kernels from their burst kernels. DESIGN.md section 5: packets live in fixed-size buffers of one
shared, DMA-able region (``vmbus.dma.allocate_dma``: a ``guest-mem`` file the emulated host maps,
or pinned pages with physical addresses on a real host), so a buffer can go to the host as GPA
ranges without a copy. Everything else a packet carries (spec/pmd.md 2.5 and 3.5: lengths, chain
links, refcount, offload flags, VLAN tci, RSS hash, port and queue, TX header lengths and MSS,
an attached external buffer) is one numpy array per field, indexed by buffer index. There is no
Python object per packet: the fast path moves int32 buffer indices.

The arrays travel together as ``PoolArrays`` (a named tuple numba accepts as one argument); the
``mp_*`` kernels take it first. The ``Mempool`` methods are thin wrappers over the same kernels,
so the Python API and the burst kernels cannot follow different rules.

A buffer is in exactly one of three places: the free stack (refcount 0), in use (refcount > 0),
or parked after its last reference went away while it still carried an external buffer, until
the owner of that external memory is told (``mp_drain_external`` / ``Mempool.drain_external``).
Parking is what lets the RX path complete a host receive-buffer slot only after the last mbuf
that points into it is freed (spec/pmd.md 2.5 step 2), in any thread and from numba, without
calling Python from a kernel.

The free stack and the parked list are guarded by a spin lock in the pool (``lock``), so any
thread may allocate and free; a buffer's own refcount and metadata belong to whoever holds it.
"""

from __future__ import annotations

import logging
import os
from collections import namedtuple
from collections.abc import Callable

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, NetvscError
from netvsc.fastpath.addrtable import ArrayTable, register_aliasing_call, table_array
from netvsc.fastpath.atomics import atomic_cas_u32, atomic_store_release_u32
from netvsc.vmbus.dma import allocate_dma
from netvsc.wire.vmbus import HV_PAGE_SHIFT, HV_PAGE_SIZE

__all__ = [
    "DATA_ROOM_MAX",
    "DATA_ROOM_MIN",
    "Mempool",
    "MempoolExhausted",
    "PoolArrays",
    "SEGMENTS_MAX",
    "mp_alloc_bulk",
    "mp_attach_external",
    "mp_chain_append",
    "mp_drain_external",
    "mp_drain_external_owner",
    "mp_external_memory",
    "mp_free",
    "mp_free_bulk",
    "mp_free_deferred",
    "mp_gpa_of",
    "mp_gpa_ranges",
    "mp_refcnt_update",
    "mp_release_bulk",
    "pool_from_table",
]

log = logging.getLogger(__name__)

DATA_ROOM_ALIGN = 64  # a cache line: buffers never share one
DATA_ROOM_MIN = 128
DATA_ROOM_MAX = 65536
DATA_MIN = 64  # bytes of data room that must remain after the headroom
SEGMENTS_MAX = 255  # segments of one packet chain
_REGION_MAX = 1 << 32  # what one DMA region can span (vmbus.guestmem.REGION_SIZE_MAX)
_INDEX_MAX = (1 << 31) - 1  # buffer indices are int32
EXT_OWNERS_MAX = 64  # external memories one pool can attach (a port registers one per RX queue)

# A PoolArrays built inside a kernel (``pool_from_table``) holds views of the pool's memory.
register_aliasing_call("PoolArrays", __name__)

# ---------------------------------------------------------------------------------------------
# Offload flags (``ol_flags``). Bit positions follow DPDK's RTE_MBUF_F_* so a flag word printed
# by a DPDK user reads the same; the two-bit checksum fields are values, not independent bits.
# ---------------------------------------------------------------------------------------------
RX_VLAN = 1 << 0  # vlan_tci holds a tag the host reported (VLAN PPI)
RX_RSS_HASH = 1 << 1  # rss_hash is valid (hash value and hash info PPIs both present)
RX_L4_CKSUM_BAD = 1 << 3
RX_IP_CKSUM_BAD = 1 << 4
RX_VLAN_STRIPPED = 1 << 6  # the tag was removed from the frame (always so on NetVSC)
RX_IP_CKSUM_GOOD = 1 << 7
RX_L4_CKSUM_GOOD = 1 << 8
RX_IP_CKSUM_MASK = RX_IP_CKSUM_BAD | RX_IP_CKSUM_GOOD  # both set: "none" (not checked)
RX_L4_CKSUM_MASK = RX_L4_CKSUM_BAD | RX_L4_CKSUM_GOOD
RX_IP_CKSUM_UNKNOWN = 0
RX_L4_CKSUM_UNKNOWN = 0

TX_TCP_SEG = 1 << 50  # LSO with tso_segsz as MSS; needs l2_len, l3_len, l4_len
# The L4 checksum request is a two-bit value: test ``flags & TX_L4_MASK == TX_UDP_CKSUM``, never a
# single bit (DPDK pitfall, spec/pmd.md 3.5: SCTP's value shares a bit with TCP's and UDP's).
TX_L4_NO_CKSUM = 0 << 52
TX_TCP_CKSUM = 1 << 52
TX_SCTP_CKSUM = 2 << 52
TX_UDP_CKSUM = 3 << 52
TX_L4_MASK = 3 << 52
TX_IP_CKSUM = 1 << 54  # fill the IPv4 header checksum
TX_IPV4 = 1 << 55
TX_IPV6 = 1 << 56
TX_VLAN = 1 << 57  # insert vlan_tci (sent as the VLAN PPI)

# ---------------------------------------------------------------------------------------------
# ``PoolArrays.state``: counters and constants of the pool, one int64 each
# ---------------------------------------------------------------------------------------------
ST_FREE_TOP = 0  # buffers on the free stack
ST_PARKED = 1  # buffers waiting in ``parked`` for their external buffer's owner
ST_DOUBLE_FREES = 2  # frees of a buffer whose refcount was already 0 (refused)
ST_REFCNT_ERRORS = 3  # refcount updates that would underflow or touch a free segment (refused)
ST_BAD_INDICES = 4  # indices out of range, or a chain that loops (refused)
ST_ALLOC_FAILS = 5  # bulk allocations refused for lack of buffers
ST_DATA_ROOM = 6
ST_HEADROOM = 7
ST_COUNT = 8

PoolArrays = namedtuple(
    "PoolArrays",
    [
        "state",  # int64[ST_COUNT]
        "free_stack",  # int32[n]: indices of free buffers, state[ST_FREE_TOP] of them valid
        "parked",  # int32[n]: buffers released with an external buffer still attached
        "refcnt",  # int32[n]: 0 = free (or parked)
        "data_off",  # int32[n]: first data byte, from the buffer start (or the external base)
        "data_len",  # int32[n]: bytes of data in this segment
        "pkt_len",  # int32[n]: bytes of the whole packet (head segment only)
        "next_seg",  # int32[n]: next segment of the chain, -1 = last
        "nb_segs",  # int32[n]: segments of the chain (head segment only)
        "ol_flags",  # uint64[n]: RX_* / TX_* flags
        "vlan_tci",  # uint16[n]
        "rss_hash",  # uint32[n]
        "port",  # uint16[n]
        "queue",  # uint16[n]
        "l2_len",  # uint16[n]: TX offloads: header lengths and MSS
        "l3_len",  # uint16[n]
        "l4_len",  # uint16[n]
        "tso_segsz",  # uint32[n]
        "ext_owner",  # int32[n]: registered external-memory owner, -1 = none
        "ext_id",  # int64[n]: the owner's id for the attached memory (a receive slot)
        "ext_base",  # int64[n]: offset of the attached memory in the owner's array
        "packet_type",  # uint32[n]: RX: software-parsed packet type (PTYPE_* bits)
        "ext_memory",  # int64[2 * EXT_OWNERS_MAX]: address and length of each owner's memory
        "lock",  # uint32[1]: spin lock over the free stack and the parked list
        "page_gpas",  # uint64[pages]: GPA of each 4 KiB page of the region
        "data",  # uint8[region size]: buffer i is data[i * data_room:(i + 1) * data_room]
    ],
)


class MempoolExhausted(NetvscError):
    """Not enough free buffers for a request that needs them all (nothing was taken)."""


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _lock(pool):
    """Take the pool's spin lock: the free stack and the parked list are shared by every thread
    that allocates or frees (an application thread, the port's control worker)."""
    while atomic_cas_u32(pool.lock, 0, 0, 1) != 0:
        pass


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _unlock(pool):
    atomic_store_release_u32(pool.lock, 0, 0)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _reset(pool, index):
    """A buffer as it leaves the free stack: one reference, empty, no flags, nothing attached."""
    pool.refcnt[index] = 1
    pool.data_off[index] = pool.state[ST_HEADROOM]
    pool.data_len[index] = 0
    pool.pkt_len[index] = 0
    pool.next_seg[index] = -1
    pool.nb_segs[index] = 1
    pool.ol_flags[index] = 0
    pool.vlan_tci[index] = 0
    pool.rss_hash[index] = 0
    pool.port[index] = 0
    pool.queue[index] = 0
    pool.l2_len[index] = 0
    pool.l3_len[index] = 0
    pool.l4_len[index] = 0
    pool.tso_segsz[index] = 0
    pool.ext_owner[index] = -1
    pool.ext_id[index] = -1
    pool.ext_base[index] = 0
    pool.packet_type[index] = 0


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_alloc_bulk(pool, out, count):
    """Take ``count`` buffers into ``out[:count]``: returns ``count``, or 0 and takes none.

    All or nothing, so a burst never has to give back half an allocation.
    """
    if count <= 0 or count > out.shape[0]:
        return 0
    _lock(pool)
    top = pool.state[ST_FREE_TOP]
    if top < count:
        pool.state[ST_ALLOC_FAILS] += 1
        _unlock(pool)
        return 0
    pool.state[ST_FREE_TOP] = top - count
    for k in range(count):
        out[k] = pool.free_stack[top - 1 - k]
    _unlock(pool)
    for k in range(count):
        _reset(pool, out[k])
    return count


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _release(pool, index, locked):
    """A segment whose last reference went away: back to the free stack, or parked. ``locked``:
    the caller holds the pool's lock already."""
    pool.next_seg[index] = -1
    if not locked:
        _lock(pool)
    if pool.ext_owner[index] >= 0:
        parked = pool.state[ST_PARKED]
        pool.parked[parked] = index
        pool.state[ST_PARKED] = parked + 1
    else:
        top = pool.state[ST_FREE_TOP]
        pool.free_stack[top] = index
        pool.state[ST_FREE_TOP] = top + 1
    if not locked:
        _unlock(pool)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_refcnt_update(pool, head, delta):
    """See ``_refcnt_update``; takes the pool's lock only to release a segment."""
    return _refcnt_update(pool, head, delta, False)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _chain_update_valid(pool, head, delta):
    """The check before a refcount update of the chain at ``head``: every segment in use, in
    range, not visited twice, and staying >= 0. Returns the number of segments, or -1 (counted)."""
    n = pool.refcnt.shape[0]
    if head < 0 or head >= n:
        pool.state[ST_BAD_INDICES] += 1
        return -1
    if pool.refcnt[head] <= 0:
        if delta < 0:
            pool.state[ST_DOUBLE_FREES] += 1
        else:
            pool.state[ST_REFCNT_ERRORS] += 1  # a reference to a free buffer is a use after free
        return -1
    segment = head
    steps = 0
    while segment >= 0:
        if segment >= n or steps >= n:
            pool.state[ST_BAD_INDICES] += 1
            return -1
        count = pool.refcnt[segment]
        if count <= 0 or count + delta < 0:
            pool.state[ST_REFCNT_ERRORS] += 1
            return -1
        segment = pool.next_seg[segment]
        steps += 1
    return steps


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _refcnt_update(pool, head, delta, locked):
    """Add ``delta`` to the refcount of every segment of the chain at ``head``.

    Segments that reach 0 are released (a decrement to zero is a free). Returns the head's new
    refcount, or -1 when refused; a refused update changes nothing but a counter: the whole chain
    is checked before any segment is touched, so a double free, an underflow, a bad index or a
    looping chain can never put a buffer on the free stack twice.
    """
    if _chain_update_valid(pool, head, delta) < 0:
        return -1
    new_head = pool.refcnt[head] + delta
    segment = head
    while segment >= 0:
        following = pool.next_seg[segment]  # read before _release clears it
        count = pool.refcnt[segment] + delta
        pool.refcnt[segment] = count
        if count == 0:
            _release(pool, segment, locked)
        segment = following
    return new_head


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_free_deferred(pool, head, released, count):
    """``mp_free`` without the pool's lock: segments whose last reference goes are appended to
    ``released[count:]`` and reach the free stack at ``mp_release_bulk``. Returns the new count.

    For a kernel freeing packet after packet: the lock is a locked instruction, which waits
    until every store before it is done (a frame just copied to the host's send buffer
    included), once per packet. A chain with more segments than ``released`` has room for is
    freed the ordinary way."""
    segments = _chain_update_valid(pool, head, -1)
    if segments < 0:
        return count
    if count + segments > released.shape[0]:
        _refcnt_update(pool, head, -1, False)
        return count
    segment = head
    while segment >= 0:
        following = pool.next_seg[segment]
        left = pool.refcnt[segment] - 1
        pool.refcnt[segment] = left
        if left == 0:
            released[count] = segment
            count += 1
        segment = following
    return count


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_release_bulk(pool, released, count):
    """Return the segments ``released[:count]`` of ``mp_free_deferred`` to the pool, one lock."""
    _lock(pool)
    for k in range(count):
        _release(pool, released[k], True)
    _unlock(pool)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_free(pool, head):
    """Drop one reference to the packet at ``head`` (every segment); 0 or more on success, -1 refused."""
    return mp_refcnt_update(pool, head, -1)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_free_bulk(pool, indices, count):
    """``mp_free`` each of ``indices[:count]``; returns how many frees were accepted. The pool's
    lock is taken once for the whole burst, not once per buffer."""
    accepted = 0
    _lock(pool)
    for k in range(min(count, indices.shape[0])):
        if _refcnt_update(pool, indices[k], -1, True) >= 0:
            accepted += 1
    _unlock(pool)
    return accepted


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_attach_external(pool, index, owner, ext_id, ext_base):
    """Point buffer ``index`` at memory of external owner ``owner`` (an id from
    ``Mempool.register_external``): its data is then ``owner memory[ext_base + data_off:][:data_len]``.

    When the buffer's last reference goes, it is parked until the owner is told ``ext_id`` was
    released. Returns False (and counts) for a bad or free index.
    """
    n = pool.refcnt.shape[0]
    if index < 0 or index >= n or owner < 0:
        pool.state[ST_BAD_INDICES] += 1
        return False
    if pool.refcnt[index] <= 0:
        pool.state[ST_REFCNT_ERRORS] += 1
        return False
    pool.ext_owner[index] = owner
    pool.ext_id[index] = ext_id
    pool.ext_base[index] = ext_base
    return True


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_drain_external(pool, out_owner, out_id):
    """Return parked buffers to the free stack, reporting ``(owner, ext_id)`` of each.

    At most ``len(out_owner)`` of them; returns how many. The caller then completes each external
    buffer (for the RX path: drops its reference on the receive slot, and completes the slot to
    the host when that was the last one).
    """
    done = 0
    limit = min(out_owner.shape[0], out_id.shape[0])
    _lock(pool)
    while done < limit and pool.state[ST_PARKED] > 0:
        parked = pool.state[ST_PARKED] - 1
        index = pool.parked[parked]
        pool.state[ST_PARKED] = parked
        out_owner[done] = pool.ext_owner[index]
        out_id[done] = pool.ext_id[index]
        pool.ext_owner[index] = -1
        pool.ext_id[index] = -1
        top = pool.state[ST_FREE_TOP]
        pool.free_stack[top] = index
        pool.state[ST_FREE_TOP] = top + 1
        done += 1
    _unlock(pool)
    return done


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_drain_external_owner(pool, owner, out_id):
    """Like ``mp_drain_external`` for the buffers of one owner only (an RX queue drains its own
    receive slots, whichever thread freed the mbufs). Returns how many ``out_id`` holds."""
    done = 0
    k = 0
    _lock(pool)
    while k < pool.state[ST_PARKED] and done < out_id.shape[0]:
        index = pool.parked[k]
        if pool.ext_owner[index] != owner:
            k += 1
            continue
        out_id[done] = pool.ext_id[index]
        done += 1
        last = pool.state[ST_PARKED] - 1
        pool.parked[k] = pool.parked[last]  # swap-remove; k is examined again
        pool.state[ST_PARKED] = last
        pool.ext_owner[index] = -1
        pool.ext_id[index] = -1
        top = pool.state[ST_FREE_TOP]
        pool.free_stack[top] = index
        pool.state[ST_FREE_TOP] = top + 1
    _unlock(pool)
    return done


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_external_memory(pool, owner):
    """The memory of external owner ``owner`` as a uint8 array (empty for an unknown owner)."""
    if owner < 0 or 2 * owner + 1 >= pool.ext_memory.shape[0]:
        return table_array(pool.ext_memory, 0, np.uint8)[:0]
    return table_array(pool.ext_memory, owner, np.uint8)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pool_from_table(table):
    """The ``PoolArrays`` of a mempool from its ``Mempool.table`` (one cheap kernel argument)."""
    return PoolArrays(
        table_array(table, 0, np.int64),
        table_array(table, 1, np.int32),
        table_array(table, 2, np.int32),
        table_array(table, 3, np.int32),
        table_array(table, 4, np.int32),
        table_array(table, 5, np.int32),
        table_array(table, 6, np.int32),
        table_array(table, 7, np.int32),
        table_array(table, 8, np.int32),
        table_array(table, 9, np.uint64),
        table_array(table, 10, np.uint16),
        table_array(table, 11, np.uint32),
        table_array(table, 12, np.uint16),
        table_array(table, 13, np.uint16),
        table_array(table, 14, np.uint16),
        table_array(table, 15, np.uint16),
        table_array(table, 16, np.uint16),
        table_array(table, 17, np.uint32),
        table_array(table, 18, np.int32),
        table_array(table, 19, np.int64),
        table_array(table, 20, np.int64),
        table_array(table, 21, np.uint32),
        table_array(table, 22, np.int64),
        table_array(table, 23, np.uint32),
        table_array(table, 24, np.uint64),
        table_array(table, 25, np.uint8),
    )


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_segment_source(pool, segment):
    """(memory, start) of a segment's data: the pool, or an external owner's memory; start -1
    when the recorded range does not lie inside that memory."""
    offset = np.int64(pool.data_off[segment])
    length = np.int64(pool.data_len[segment])
    owner = pool.ext_owner[segment]
    if owner >= 0:
        memory = mp_external_memory(pool, owner)
        start = pool.ext_base[segment] + offset
    else:
        memory = pool.data
        start = np.int64(segment) * pool.state[ST_DATA_ROOM] + offset
        if offset + length > pool.state[ST_DATA_ROOM]:
            return memory, np.int64(-1)
    if offset < 0 or length < 0 or start < 0 or start + length > memory.shape[0]:
        return memory, np.int64(-1)
    return memory, start


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_chain_append(pool, head, segment):
    """Link the chain at ``segment`` behind the last segment of the chain at ``head``.

    The head's ``pkt_len`` and ``nb_segs`` grow by the appended chain's. Returns False (and
    counts) for a bad index, a free buffer, a chain that loops or grows past SEGMENTS_MAX.
    """
    n = pool.refcnt.shape[0]
    if head < 0 or head >= n or segment < 0 or segment >= n or head == segment:
        pool.state[ST_BAD_INDICES] += 1
        return False
    if pool.refcnt[head] <= 0 or pool.refcnt[segment] <= 0:
        pool.state[ST_REFCNT_ERRORS] += 1
        return False
    if pool.nb_segs[head] + pool.nb_segs[segment] > SEGMENTS_MAX:
        pool.state[ST_BAD_INDICES] += 1
        return False
    last = head
    steps = 0
    while pool.next_seg[last] >= 0:
        last = pool.next_seg[last]
        steps += 1
        if last >= n or last == segment or steps >= n:
            pool.state[ST_BAD_INDICES] += 1
            return False
    pool.next_seg[last] = segment
    pool.nb_segs[head] += pool.nb_segs[segment]
    pool.pkt_len[head] += pool.pkt_len[segment]
    return True


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_gpa_of(pool, index, offset):
    """GPA of byte ``offset`` of buffer ``index`` (from the buffer start); 0 if out of range."""
    data_room = pool.state[ST_DATA_ROOM]
    if index < 0 or index >= pool.refcnt.shape[0] or offset < 0 or offset >= data_room:
        return np.uint64(0)
    position = np.int64(index) * data_room + offset
    return pool.page_gpas[position >> HV_PAGE_SHIFT] + np.uint64(position & (HV_PAGE_SIZE - 1))


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def mp_gpa_ranges(pool, head, out_gpa, out_len):
    """The packet at ``head`` as GPA ranges that each stay inside one 4 KiB Hyper-V page.

    Fills ``out_gpa``/``out_len`` segment by segment and returns the number of ranges; -1 when
    they do not fit in the output (the TX path then copies, DESIGN.md decision 6), -2 for a bad
    or free index, a looping chain, a segment whose data lies in external memory, or a data
    range outside its buffer.
    """
    n = pool.refcnt.shape[0]
    data_room = pool.state[ST_DATA_ROOM]
    limit = min(out_gpa.shape[0], out_len.shape[0])
    ranges = 0
    segment = head
    steps = 0
    while segment >= 0:
        if segment >= n or steps >= n or pool.refcnt[segment] <= 0 or pool.ext_owner[segment] >= 0:
            return -2
        offset = np.int64(pool.data_off[segment])
        length = np.int64(pool.data_len[segment])
        if offset < 0 or length < 0 or offset + length > data_room:
            return -2
        position = np.int64(segment) * data_room + offset
        end = position + length
        while position < end:
            in_page = position & (HV_PAGE_SIZE - 1)
            chunk = min(HV_PAGE_SIZE - in_page, end - position)
            if ranges >= limit:
                return -1
            out_gpa[ranges] = pool.page_gpas[position >> HV_PAGE_SHIFT] + np.uint64(in_page)
            out_len[ranges] = chunk
            ranges += 1
            position += chunk
        segment = pool.next_seg[segment]
        steps += 1
    return ranges


# One-argument forms for the Python methods below: a ``PoolArrays`` argument would cost numba a
# microsecond or more of unboxing per call, the table a few nanoseconds.


@njit(nogil=True, cache=True, _nrt=False)
def _alloc_bulk_t(table, out, count):
    return mp_alloc_bulk(pool_from_table(table), out, count)


@njit(nogil=True, cache=True, _nrt=False)
def _free_bulk_t(table, indices, count):
    return mp_free_bulk(pool_from_table(table), indices, count)


@njit(nogil=True, cache=True, _nrt=False)
def _refcnt_update_t(table, head, delta):
    return mp_refcnt_update(pool_from_table(table), head, delta)


@njit(nogil=True, cache=True, _nrt=False)
def _drain_owner_t(table, owner, out_id):
    return mp_drain_external_owner(pool_from_table(table), owner, out_id)


# ---------------------------------------------------------------------------------------------
# The Python face
# ---------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


class Mempool:
    """``n`` packet buffers of ``data_room`` bytes each in one DMA-able region.

    ``data_room`` is the whole buffer (a multiple of 64, DATA_ROOM_MIN..DATA_ROOM_MAX);
    ``headroom`` bytes of it are left in front of the data of every freshly allocated buffer (room
    to prepend a header without a copy). ``root`` selects emulated guest memory or real pinned
    pages exactly as ``vmbus.dma.allocate_dma`` does. ``arrays`` is the ``PoolArrays`` the
    kernels take.
    """

    def __init__(
        self,
        n: int,
        data_room: int = 2048,
        headroom: int = 128,
        *,
        root: str | os.PathLike[str] | None = None,
        name: str = "mempool",
    ) -> None:
        if not _is_int(data_room) or not DATA_ROOM_MIN <= data_room <= DATA_ROOM_MAX or data_room % 64:
            raise ConfigError(
                "data_room",
                data_room,
                f"a multiple of {DATA_ROOM_ALIGN} in {DATA_ROOM_MIN} .. {DATA_ROOM_MAX}",
            )
        n_max = min(_REGION_MAX // data_room, _INDEX_MAX)
        if not _is_int(n) or not 1 <= n <= n_max:
            raise ConfigError("n", n, f"1 .. {n_max} buffers of {data_room} bytes")
        if not _is_int(headroom) or not 0 <= headroom <= data_room - DATA_MIN:
            raise ConfigError(
                "headroom", headroom, f"0 .. {data_room - DATA_MIN} (data_room {data_room} minus {DATA_MIN})"
            )
        n, data_room, headroom = int(n), int(data_room), int(headroom)
        self.name = name
        self.n = n
        self.data_room = data_room
        self.headroom = headroom
        self.region = allocate_dma(n * data_room, root=root)
        self._externals: list[tuple[np.ndarray, Callable[[int], None] | None]] = []
        pages = self.region.size // HV_PAGE_SIZE
        if self.region.kind == "emulated":
            # Emulated guest memory is GPA-contiguous: base plus offset.
            page_gpas = np.uint64(self.region.gpa_of(0)) + np.arange(pages, dtype=np.uint64) * np.uint64(
                HV_PAGE_SIZE
            )
        else:
            # Physical pages of a real region need not be contiguous: ask for each one.
            page_gpas = np.array(
                [self.region.gpa_of(p * HV_PAGE_SIZE) for p in range(pages)], dtype=np.uint64
            )
        state = np.zeros(ST_COUNT, dtype=np.int64)
        state[ST_FREE_TOP] = n
        state[ST_DATA_ROOM] = data_room
        state[ST_HEADROOM] = headroom

        def per_buffer(dtype, fill=0):
            return np.full(n, fill, dtype=dtype)

        self.arrays = PoolArrays(
            state=state,
            # Reversed so that the first allocations get the lowest indices (easier to read in a dump).
            free_stack=np.arange(n - 1, -1, -1, dtype=np.int32),
            parked=per_buffer(np.int32, -1),
            refcnt=per_buffer(np.int32),
            data_off=per_buffer(np.int32, headroom),
            data_len=per_buffer(np.int32),
            pkt_len=per_buffer(np.int32),
            next_seg=per_buffer(np.int32, -1),
            nb_segs=per_buffer(np.int32, 1),
            ol_flags=per_buffer(np.uint64),
            vlan_tci=per_buffer(np.uint16),
            rss_hash=per_buffer(np.uint32),
            port=per_buffer(np.uint16),
            queue=per_buffer(np.uint16),
            l2_len=per_buffer(np.uint16),
            l3_len=per_buffer(np.uint16),
            l4_len=per_buffer(np.uint16),
            tso_segsz=per_buffer(np.uint32),
            ext_owner=per_buffer(np.int32, -1),
            ext_id=per_buffer(np.int64, -1),
            ext_base=per_buffer(np.int64),
            packet_type=per_buffer(np.uint32),
            ext_memory=np.zeros(2 * EXT_OWNERS_MAX, dtype=np.int64),
            lock=np.zeros(1, dtype=np.uint32),
            page_gpas=page_gpas,
            data=self.region.array,
        )
        self.table = ArrayTable(len(PoolArrays._fields))
        for slot, array in enumerate(self.arrays):
            self.table.set(slot, array)
        self._drain_owner = np.empty(n, dtype=np.int32)
        self._drain_id = np.empty(n, dtype=np.int64)
        log.debug("mempool %s: %d buffers of %d bytes (%s memory)", name, n, data_room, self.region.kind)

    # -- counts --------------------------------------------------------------------------------
    def available(self) -> int:
        """Buffers on the free stack."""
        return int(self.arrays.state[ST_FREE_TOP])

    def in_use(self) -> int:
        """Buffers with at least one reference."""
        return self.n - self.available() - self.parked()

    def parked(self) -> int:
        """Buffers released but waiting for their external buffer's owner (``drain_external``)."""
        return int(self.arrays.state[ST_PARKED])

    @property
    def double_frees(self) -> int:
        return int(self.arrays.state[ST_DOUBLE_FREES])

    @property
    def refcnt_errors(self) -> int:
        return int(self.arrays.state[ST_REFCNT_ERRORS])

    @property
    def bad_indices(self) -> int:
        return int(self.arrays.state[ST_BAD_INDICES])

    @property
    def alloc_failures(self) -> int:
        return int(self.arrays.state[ST_ALLOC_FAILS])

    @property
    def segment_room(self) -> int:
        """Data bytes one freshly allocated segment holds (data room minus headroom)."""
        return self.data_room - self.headroom

    def max_frame_length(self) -> int:
        """The longest frame one chain of this pool can hold."""
        return min(SEGMENTS_MAX, self.n) * self.segment_room

    # -- allocation and references -------------------------------------------------------------
    def alloc_bulk(self, out_indices: np.ndarray, n: int) -> int:
        """Take ``n`` buffers into ``out_indices[:n]`` (int32): ``n``, or 0 and nothing taken."""
        if not isinstance(out_indices, np.ndarray) or out_indices.dtype != np.int32 or out_indices.ndim != 1:
            raise ConfigError("out_indices", type(out_indices).__name__, "a 1-D numpy int32 array")
        return int(_alloc_bulk_t(self.table.table, out_indices, int(n)))

    def alloc(self) -> int:
        """One buffer's index; ``MempoolExhausted`` when none is free."""
        out = np.empty(1, dtype=np.int32)
        if not _alloc_bulk_t(self.table.table, out, 1):
            raise MempoolExhausted(f"mempool {self.name}: all {self.n} buffers in use")
        return int(out[0])

    def free(self, head: int) -> bool:
        """Drop one reference to the packet at ``head``; False if refused (double free, bad index)."""
        accepted = bool(int(_refcnt_update_t(self.table.table, int(head), -1)) >= 0)
        self.drain_external()
        return accepted

    def free_bulk(self, indices, count: int | None = None) -> int:
        """Free each of ``indices[:count]``; returns how many frees were accepted."""
        indices = np.ascontiguousarray(indices, dtype=np.int32)
        count = len(indices) if count is None else int(count)
        accepted = int(_free_bulk_t(self.table.table, indices, count))
        self.drain_external()
        return accepted

    def refcnt(self, index: int) -> int:
        self._check_index(index)
        return int(self.arrays.refcnt[index])

    def refcnt_update(self, head: int, delta: int) -> int:
        """Add ``delta`` to every segment's refcount; the head's new count, or -1 if refused."""
        result = int(mp_refcnt_update(self.arrays, int(head), int(delta)))
        self.drain_external()
        return result

    def chain_append(self, head: int, segment: int) -> bool:
        return bool(mp_chain_append(self.arrays, int(head), int(segment)))

    # -- external buffers ----------------------------------------------------------------------
    def register_external(self, memory: np.ndarray, on_release: Callable[[int], None] | None = None) -> int:
        """Make ``memory`` (uint8) attachable; returns the owner id for ``attach_external``.

        ``on_release(ext_id)`` is called by ``drain_external`` once per buffer whose last
        reference went while ``ext_id`` was attached. A kernel-side owner (the RX path) passes
        None and drains with ``mp_drain_external`` itself.
        """
        if not isinstance(memory, np.ndarray) or memory.dtype != np.uint8 or memory.ndim != 1:
            raise ConfigError("memory", type(memory).__name__, "a 1-D numpy uint8 array")
        if len(self._externals) >= EXT_OWNERS_MAX:
            raise ConfigError(
                "external memories", len(self._externals) + 1, f"at most {EXT_OWNERS_MAX} per mempool"
            )
        owner = len(self._externals)
        self._externals.append((memory, on_release))
        # Kernels reach an owner's memory by address (an external segment sent on TX is copied).
        self.arrays.ext_memory[2 * owner] = memory.ctypes.data
        self.arrays.ext_memory[2 * owner + 1] = memory.shape[0]
        return owner

    def attach_external(
        self, index: int, owner: int, ext_id: int, ext_base: int, data_off: int, data_len: int
    ):
        """Make buffer ``index`` (one segment, in use) a view of ``owner`` memory at ``ext_base``."""
        self._check_index(index)
        if not 0 <= owner < len(self._externals):
            raise ConfigError("owner", owner, f"0 .. {len(self._externals) - 1} (from register_external)")
        size = self._externals[owner][0].shape[0]
        if ext_base < 0 or data_off < 0 or data_len < 0 or ext_base + data_off + data_len > size:
            raise ConfigError("external range", (ext_base, data_off, data_len), f"inside {size} bytes")
        if not mp_attach_external(self.arrays, int(index), int(owner), int(ext_id), int(ext_base)):
            raise ConfigError("index", index, "a buffer in use")
        self.arrays.data_off[index] = data_off
        self.arrays.data_len[index] = data_len
        self.arrays.pkt_len[index] = data_len

    def drain_external(self) -> int:
        """Return parked buffers to the free stack and call their owners' ``on_release``."""
        if not self.arrays.state[ST_PARKED]:
            return 0
        # Only owners with a callback: a kernel-side owner (an RX queue) drains its own buffers,
        # since it must complete each receive slot to the host itself.
        done = 0
        for owner, (_memory, callback) in enumerate(self._externals):
            if callback is None:
                continue
            count = int(_drain_owner_t(self.table.table, owner, self._drain_id))
            for k in range(count):
                callback(int(self._drain_id[k]))
            done += count
        return done

    # -- addresses -----------------------------------------------------------------------------
    def gpa_of(self, index: int, offset: int = 0) -> int:
        """The guest physical address of byte ``offset`` of buffer ``index`` (from its start)."""
        self._check_index(index)
        if not _is_int(offset) or not 0 <= offset < self.data_room:
            raise ConfigError("offset", offset, f"0 .. {self.data_room - 1}")
        return int(mp_gpa_of(self.arrays, int(index), int(offset)))

    def page_ranges(self, head: int, max_ranges: int = 4 * SEGMENTS_MAX) -> list[tuple[int, int, list[int]]]:
        """The packet at ``head`` as ``(byte_count, byte_offset, [page])`` ranges, each in one 4 KiB
        page: the form ``wire.vmbus.encode_gpa_direct_packet`` takes."""
        gpas = np.empty(max_ranges, dtype=np.uint64)
        lengths = np.empty(max_ranges, dtype=np.int64)
        count = int(mp_gpa_ranges(self.arrays, int(head), gpas, lengths))
        if count == -1:
            raise ConfigError("max_ranges", max_ranges, "enough ranges for the packet")
        if count < 0:
            raise ConfigError("head", head, "a packet in use whose data lies in the mempool")
        return [
            (int(lengths[k]), int(gpas[k]) & (HV_PAGE_SIZE - 1), [int(gpas[k]) >> HV_PAGE_SHIFT])
            for k in range(count)
        ]

    # -- data ------------------------------------------------------------------------------------
    def _check_index(self, index: int) -> None:
        if not _is_int(index) or not 0 <= index < self.n:
            raise ConfigError("index", index, f"0 .. {self.n - 1}")

    def segment_data(self, index: int) -> np.ndarray:
        """The data of one segment (a uint8 view, no copy), in the pool or in external memory."""
        self._check_index(index)
        a = self.arrays
        offset, length = int(a.data_off[index]), int(a.data_len[index])
        owner = int(a.ext_owner[index])
        if owner >= 0:
            base = int(a.ext_base[index]) + offset
            return self._externals[owner][0][base : base + length]
        if offset < 0 or length < 0 or offset + length > self.data_room:
            raise ConfigError("data range", (offset, length), f"inside the {self.data_room}-byte buffer")
        start = index * self.data_room + offset
        return a.data[start : start + length]

    def segments(self, head: int) -> list[int]:
        """Indices of the chain at ``head``, in order."""
        self._check_index(head)
        chain = []
        segment = int(head)
        while segment >= 0:
            if segment >= self.n or len(chain) >= SEGMENTS_MAX:
                raise ConfigError("head", head, "the head of a well-formed chain")
            chain.append(segment)
            segment = int(self.arrays.next_seg[segment])
        return chain

    def packet_bytes(self, head: int) -> bytes:
        """The whole packet at ``head`` (all segments), copied."""
        return b"".join(self.segment_data(segment).tobytes() for segment in self.segments(head))

    def store_frame(self, frame) -> int:
        """Copy ``frame`` (bytes-like) into a new packet, chained when longer than one segment.

        Returns the head index. ConfigError if empty or longer than ``max_frame_length()``;
        MempoolExhausted (nothing taken) if the pool lacks buffers.
        """
        data = np.frombuffer(memoryview(frame).cast("B"), dtype=np.uint8)
        length = data.shape[0]
        if not 1 <= length <= self.max_frame_length():
            raise ConfigError(
                "frame length", length, f"1 .. {self.max_frame_length()} bytes (chains of this mempool)"
            )
        room = self.segment_room
        needed = -(-length // room)
        chain = np.empty(needed, dtype=np.int32)
        if not _alloc_bulk_t(self.table.table, chain, needed):
            raise MempoolExhausted(f"mempool {self.name}: {needed} buffers needed, {self.available()} free")
        a = self.arrays
        for k in range(needed):
            segment = int(chain[k])
            part = data[k * room : (k + 1) * room]
            start = segment * self.data_room + self.headroom
            a.data[start : start + part.shape[0]] = part
            a.data_len[segment] = part.shape[0]
            a.next_seg[segment] = int(chain[k + 1]) if k + 1 < needed else -1
        head = int(chain[0])
        a.pkt_len[head] = length
        a.nb_segs[head] = needed
        return head

    # -- life ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the region (idempotent); no buffer may be used afterwards."""
        # Drop our view first so the mapping can really go (a live view pins it).
        self.arrays = self.arrays._replace(data=np.empty(0, dtype=np.uint8))
        self.table.clear()
        self.region.close()

    def __enter__(self) -> Mempool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Mempool({self.name!r}, n={self.n}, data_room={self.data_room}, headroom={self.headroom}, "
            f"available={self.available()}, memory={self.region.kind})"
        )
