"""Transmit resources and their return: descriptors, chimney sections, send completions.

Layer 5 (pmd; spec/pmd.md 3.1, 3.7). Descriptors belong to one TX queue and bound its
outstanding sends; chimney sections are a pool shared by all queues of the port, guarded by the
port's spin lock and not tied to descriptors (pmd.md 3.8 pitfall: a frame falls back to GPA
ranges when no section is free). A completion returns all three: section, mbuf, descriptor.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev import mempool as mp
from netvsc.fastpath.addrtable import table_array
from netvsc.pmd import qlayout as L
from netvsc.pmd.chan_kernels import get_u16, get_u32, get_u64, pool_at, port_lock, port_unlock
from netvsc.pmd.stats import ERRORS, count_completed
from netvsc.wire import nvsp


@njit(nogil=True, cache=True, _nrt=False)
def chimney_take(table):
    """The lowest-effort free section (a stack), or -1 when every section is in flight."""
    port_lock(table)
    sync = table_array(table, L.T_PORT_SYNC, np.uint32)
    top = np.int64(sync[1])
    section = -1
    if top > 0:
        top -= 1
        section = table_array(table, L.T_CHIMNEY_STACK, np.int32)[top]
        sync[1] = top
    port_unlock(table)
    return section


@njit(nogil=True, cache=True, _nrt=False)
def chimney_give(table, section):
    port_lock(table)
    sync = table_array(table, L.T_PORT_SYNC, np.uint32)
    stack = table_array(table, L.T_CHIMNEY_STACK, np.int32)
    top = np.int64(sync[1])
    if top < stack.shape[0]:
        stack[top] = section
        sync[1] = top + 1
    port_unlock(table)


@njit(nogil=True, cache=True, _nrt=False)
def descriptor_take(table, q):
    """A free descriptor, reset and marked in flight (packets = 0), or -1."""
    top = q[L.Q_TXD_FREE_TOP]
    if top == 0:
        return -1
    top -= 1
    d = table_array(table, L.T_TXD_FREE, np.int32)[top]
    q[L.Q_TXD_FREE_TOP] = top
    table_array(table, L.T_TXD_MBUF, np.int32)[d] = -1
    table_array(table, L.T_TXD_CHIMNEY, np.int32)[d] = -1
    table_array(table, L.T_TXD_BOUNCE, np.int32)[d] = -1
    table_array(table, L.T_TXD_PACKETS, np.int32)[d] = 0
    table_array(table, L.T_TXD_BYTES, np.int64)[d] = 0
    return d


@njit(nogil=True, cache=True, _nrt=False)
def descriptor_give(table, q, d):
    table_array(table, L.T_TXD_PACKETS, np.int32)[d] = -1  # free
    free = table_array(table, L.T_TXD_FREE, np.int32)
    free[q[L.Q_TXD_FREE_TOP]] = d
    q[L.Q_TXD_FREE_TOP] += 1


@njit(nogil=True, cache=True, _nrt=False)
def bounce_take(q):
    """A free bounce buffer of the queue (qlayout.BOUNCE_SLOTS of them), or -1."""
    free = q[L.Q_BOUNCE_FREE]
    for slot in range(L.BOUNCE_SLOTS):
        if free & (1 << slot):
            q[L.Q_BOUNCE_FREE] = free & ~(1 << slot)
            return slot
    return -1


@njit(nogil=True, cache=True, _nrt=False)
def bounce_give(q, slot):
    if 0 <= slot < L.BOUNCE_SLOTS:
        q[L.Q_BOUNCE_FREE] |= 1 << slot


@njit(nogil=True, cache=True, _nrt=False)
def free_later(table, q, slot, head):
    """Free the packet ``head`` of the pool in registry slot ``slot``; segments whose last
    reference goes return to the pool at ``release_freed``, under one lock for many packets."""
    released = table_array(table, L.T_RELEASED, np.int32)
    count = q[L.Q_RELEASED]
    if count > 0 and (q[L.Q_RELEASED_POOL] != slot or count + mp.SEGMENTS_MAX > released.shape[0]):
        release_freed(table, q)
        count = 0
    q[L.Q_RELEASED_POOL] = slot
    q[L.Q_RELEASED] = mp.mp_free_deferred(pool_at(table, slot), head, released, count)


@njit(nogil=True, cache=True, _nrt=False)
def release_freed(table, q):
    """Return the segments ``free_later`` kept to their pool. Every kernel that frees with
    ``free_later`` calls this before it returns."""
    count = q[L.Q_RELEASED]
    if count > 0:
        q[L.Q_RELEASED] = 0
        released = table_array(table, L.T_RELEASED, np.int32)
        mp.mp_release_bulk(pool_at(table, q[L.Q_RELEASED_POOL]), released, count)


@njit(nogil=True, cache=True, _nrt=False)
def release_descriptor(table, q, d):
    """Return what a send held: its chimney section or bounce buffer, its mbuf, the descriptor."""
    section = table_array(table, L.T_TXD_CHIMNEY, np.int32)[d]
    if section >= 0:
        chimney_give(table, section)
    bounce_give(q, table_array(table, L.T_TXD_BOUNCE, np.int32)[d])
    head = table_array(table, L.T_TXD_MBUF, np.int32)[d]
    if head >= 0:
        free_later(table, q, table_array(table, L.T_TXD_POOL, np.int32)[d], head)
    descriptor_give(table, q, d)


@njit(nogil=True, cache=True, _nrt=False)
def on_send_completion(table, q, event, length):
    """A completion whose transaction id carries the data tag (pmd#78)."""
    transaction_id = get_u64(event, 8)
    d = transaction_id & 0xFFFFFFFF
    queue = (transaction_id >> L.TID_QUEUE_SHIFT) & 0xFFFF
    hlen = get_u16(event, 2) * 8
    packets = table_array(table, L.T_TXD_PACKETS, np.int32)
    if queue != q[L.Q_QUEUE_ID] or d >= q[L.Q_NB_DESC] or packets[d] < 0 or d == q[L.Q_AGG_DESC]:
        q[L.Q_UNKNOWN_COMPLETIONS] += 1
        return
    counters = table_array(table, L.T_TX_COUNTERS, np.int64)
    ok = (
        hlen + 8 <= length
        and get_u32(event, hlen) == nvsp.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE
        and get_u32(event, hlen + 4) == nvsp.NVSP_STATUS_SUCCESS
    )
    if ok:
        count_completed(counters, packets[d], table_array(table, L.T_TXD_BYTES, np.int64)[d])
    else:
        counters[ERRORS] += 1
    release_descriptor(table, q, d)
