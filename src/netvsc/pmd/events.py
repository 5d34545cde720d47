"""Channel event processing and the RX burst kernel (spec/pmd.md 2.1, 2.2, 2.6).

Layer 5 (pmd). ``process_events`` reads the queue's ring: send completions of data sends and
transfer-page packets are handled here, in the kernel; anything else (NVSP completions of
control requests, in-band notifications, RNDIS control messages found among the ranges) stops
the loop with ``Q_CONTROL_KIND`` set, for the control path in Python to handle before the next
call. Events are consumed even when frames must be dropped, so send completions sharing the ring
are never starved (pmd#70).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev import mempool as mp
from netvsc.fastpath.addrtable import table_array
from netvsc.fastpath.ring import ERR_BUFFER_TOO_SMALL, ring_read_packet, ring_skip
from netvsc.pmd import qlayout as L
from netvsc.pmd.chan_kernels import (
    commit_rx,
    flush_tx_signal,
    get_u16,
    get_u64,
    pool_at,
    retry_acks,
    with_attention,
)
from netvsc.pmd.rx_kernels import on_transfer_pages, release_entry
from netvsc.pmd.tx_resources import on_send_completion, release_freed
from netvsc.wire.vmbus import PACKET_TYPE_COMPLETION, PACKET_TYPE_XFER_PAGES

EVENTS_BUDGET = 1024  # VMBus packets per call: bounded work however fast the host writes


@njit(nogil=True, cache=True, _nrt=False)
def drain_external(table, q):
    """Receive slots whose last external mbuf was freed since the last call: acknowledge them."""
    if q[L.Q_RX_OWNER] < 0 or q[L.Q_RX_POOL] < 0:
        return
    pool = pool_at(table, q[L.Q_RX_POOL])
    if pool.state[mp.ST_PARKED] == 0:
        return
    done = table_array(table, L.T_EXT_DONE, np.int64)
    while True:
        count = mp.mp_drain_external_owner(pool, q[L.Q_RX_OWNER], done)
        for k in range(count):
            release_entry(table, q, done[k], True)
        if count < done.shape[0]:
            break


@njit(nogil=True, cache=True, _nrt=False)
def staged(q):
    return q[L.Q_STAGING_TAIL] - q[L.Q_STAGING_HEAD]


@njit(nogil=True, cache=True, _nrt=False)
def process_events(table, tx_limit, rx_wanted):
    """Handle up to EVENTS_BUDGET VMBus packets. ``tx_limit`` > 0: stop after that many send
    completions; ``rx_wanted`` > 0: stop once the staging ring holds that many mbufs (an RX burst
    takes no more from the ring than it returns, so the mbufs it fills are the ones just freed
    and still in cache, not thousands of cold ones). Returns the send completions handled."""
    q = table_array(table, L.T_QSTATE, np.int64)
    if q[L.Q_CONTROL_KIND] != L.CONTROL_NONE:
        return 0  # the control path has not taken the previous item yet
    retry_acks(table)
    drain_external(table, q)
    header = table_array(table, L.T_RX_HEADER, np.uint32)
    data = table_array(table, L.T_RX_DATA, np.uint8)
    state = table_array(table, L.T_RX_STATE, np.int64)
    event = table_array(table, L.T_EVENT, np.uint8)
    words = table_array(table, L.T_PARSE, np.int64)
    parse = words[:8]
    info = words[8:16]
    completions = 0
    handled = 0
    while handled < EVENTS_BUDGET:
        length = ring_read_packet(header, data, state, event)
        if length == 0:
            break
        if length == ERR_BUFFER_TOO_SMALL:  # larger than any packet this queue handles
            ring_skip(header, data, state)
            q[L.Q_OVERSIZE_EVENTS] += 1
            continue
        if length < 0:
            q[L.Q_RING_ERRORS] += 1
            break
        handled += 1
        packet_type = get_u16(event, 0)
        if packet_type == PACKET_TYPE_XFER_PAGES:
            on_transfer_pages(table, q, event, length, info, parse)
            if q[L.Q_CONTROL_KIND] != L.CONTROL_NONE or (rx_wanted > 0 and staged(q) >= rx_wanted):
                break
            continue
        if packet_type == PACKET_TYPE_COMPLETION and (get_u64(event, 8) >> L.TID_TAG_SHIFT) == 1:
            on_send_completion(table, q, event, length)
            completions += 1
            if tx_limit > 0 and completions >= tx_limit:
                break
            continue
        q[L.Q_CONTROL_KIND] = L.CONTROL_RAW  # for the control path, in T_EVENT
        q[L.Q_CONTROL_LENGTH] = length
        break
    commit_rx(table)
    flush_tx_signal(table)  # receive completions written above
    release_freed(table, q)  # mbufs of the sends completed above
    return completions


@njit(nogil=True, cache=True, _nrt=False)
def rx_burst_kernel(table, out, count):
    """Up to ``count`` received mbufs into ``out``; channel events are processed first when the
    staging ring holds fewer than asked (pmd.md 2.1, 2.6). Returns how many, with
    ``qlayout.ATTENTION`` set when the control path has work."""
    q = table_array(table, L.T_QSTATE, np.int64)
    count = max(min(count, out.shape[0]), 0)
    if staged(q) < count:
        process_events(table, 0, count)
    staging = table_array(table, L.T_STAGING, np.int32)
    mask = staging.shape[0] - 1
    head = q[L.Q_STAGING_HEAD]
    taken = min(count, staged(q))
    for k in range(taken):
        out[k] = staging[(head + k) & mask]
    q[L.Q_STAGING_HEAD] = head + taken
    return with_attention(q, taken)
