"""Channel-side pieces of the burst kernels: byte access, sends, signalling, the pool registry.

Layer 5 (pmd). Shared by pmd/rx_kernels.py and pmd/tx_kernels.py; every function takes the
queue's table (pmd/qlayout.py) or arrays already taken from it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev.mempool import PoolArrays, pool_from_table
from netvsc.fastpath.addrtable import table_array
from netvsc.fastpath.atomics import atomic_cas_u32, atomic_or_u32, atomic_store_u32, full_fence
from netvsc.fastpath.lebytes import load_u16, load_u32, load_u64, store_u16, store_u32, store_u64
from netvsc.fastpath.ring import (
    ring_commit,
    ring_publish,
    ring_stage_packet,
    ring_take_signal,
)
from netvsc.pmd.qlayout import (
    ATTENTION,
    CONTROL_NONE,
    Q_ACK_COUNT,
    Q_ACK_DEFERRED,
    Q_ACK_LOST,
    Q_CONTROL_KIND,
    Q_SIGNAL_MASK,
    Q_SIGNAL_PYTHON,
    Q_SIGNAL_WORD,
    Q_SIGNALS,
    T_ACK_PENDING,
    T_POOLS,
    T_PORT_SYNC,
    T_QSTATE,
    T_RX_DATA,
    T_RX_HEADER,
    T_RX_STATE,
    T_SCRATCH,
    T_SIGNAL_WORDS,
    T_TX_DATA,
    T_TX_HEADER,
    T_TX_STATE,
)
from netvsc.wire.nvsp import NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE, NVSP_STATUS_SUCCESS
from netvsc.wire.vmbus import PACKET_TYPE_COMPLETION

POOL_TABLE_WORDS = 2 * len(PoolArrays._fields)
_COMPLETION_BYTES = 24  # descriptor + NVSP RNDIS_PACKET_COMPLETE (type, status)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def get_u16(buf, at):
    return load_u16(buf, at)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def get_u32(buf, at):
    return load_u32(buf, at)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def get_u64(buf, at):
    return load_u64(buf, at)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def put_u16(buf, at, value):
    store_u16(buf, at, value)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def put_u32(buf, at, value):
    store_u32(buf, at, value)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def put_u64(buf, at, value):
    store_u64(buf, at, value)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pool_table(table, slot):
    """The table of the mempool registered in slot ``slot`` of the port's pool registry.

    Kernels pass this one array between functions and call ``pool_from_table`` where they use
    the pool: a ``PoolArrays`` tuple passed to a function that is not inlined is copied field by
    field, which cost more than the work of a whole packet.
    """
    registry = table_array(table, T_POOLS, np.int64)
    return registry[slot * POOL_TABLE_WORDS : (slot + 1) * POOL_TABLE_WORDS]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def pool_at(table, slot):
    """The mempool registered in slot ``slot`` of the port's pool registry."""
    return pool_from_table(pool_table(table, slot))


@njit(nogil=True, cache=True, _nrt=False)
def stage_packet(table, packet):
    """Write one pre-built VMBus packet to the guest-to-host ring, unpublished: the host sees it
    at the next publish, the burst's ``flush_tx_signal``. 1 written, 0 full, < 0 error."""
    return ring_stage_packet(
        table_array(table, T_TX_HEADER, np.uint32),
        table_array(table, T_TX_DATA, np.uint8),
        table_array(table, T_TX_STATE, np.int64),
        (packet,),
    )


@njit(nogil=True, cache=True, _nrt=False)
def _write_ack(table, transaction_id):
    packet = table_array(table, T_SCRATCH, np.uint8)[:_COMPLETION_BYTES]
    put_u16(packet, 0, PACKET_TYPE_COMPLETION)
    put_u16(packet, 2, 2)  # hlen: the descriptor only
    put_u16(packet, 4, _COMPLETION_BYTES // 8)
    put_u16(packet, 6, 0)
    put_u64(packet, 8, transaction_id)
    put_u32(packet, 16, NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE)
    put_u32(packet, 20, NVSP_STATUS_SUCCESS)
    return stage_packet(table, packet)  # published with the rest, by flush_tx_signal


@njit(nogil=True, cache=True, _nrt=False)
def acknowledge(table, transaction_id):
    """Complete a receive to the host; on a full ring it is queued and retried by ``retry_acks``,
    so every transfer-page packet is completed exactly once (pmd.md 2.3). The caller publishes
    it with ``flush_tx_signal``."""
    q = table_array(table, T_QSTATE, np.int64)
    if q[Q_ACK_COUNT] == 0 and _write_ack(table, transaction_id) == 1:
        return
    pending = table_array(table, T_ACK_PENDING, np.int64)
    if q[Q_ACK_COUNT] >= pending.shape[0]:
        q[Q_ACK_LOST] += 1
        return
    pending[q[Q_ACK_COUNT]] = transaction_id
    q[Q_ACK_COUNT] += 1
    q[Q_ACK_DEFERRED] += 1


@njit(nogil=True, cache=True, _nrt=False)
def retry_acks(table):
    """Send queued receive completions in order while the ring has room."""
    q = table_array(table, T_QSTATE, np.int64)
    count = q[Q_ACK_COUNT]
    if count == 0:
        return
    pending = table_array(table, T_ACK_PENDING, np.int64)
    done = 0
    while done < count and _write_ack(table, pending[done]) == 1:
        done += 1
    for k in range(count - done):
        pending[k] = pending[done + k]
    q[Q_ACK_COUNT] = count - done


@njit(nogil=True, cache=True, _nrt=False)
def signal_host(table):
    """Set the channel's monitor bit, or ask the Python side to signal by interrupt page."""
    q = table_array(table, T_QSTATE, np.int64)
    q[Q_SIGNALS] += 1
    if q[Q_SIGNAL_WORD] < 0:
        q[Q_SIGNAL_PYTHON] = 1
        return
    full_fence()
    atomic_or_u32(table_array(table, T_SIGNAL_WORDS, np.uint32), q[Q_SIGNAL_WORD], q[Q_SIGNAL_MASK])


@njit(nogil=True, cache=True, _nrt=False)
def flush_tx_signal(table):
    """Publish what is staged, then one signal for everything written since the last call, if
    the ring rule asks (pmd#77)."""
    header = table_array(table, T_TX_HEADER, np.uint32)
    state = table_array(table, T_TX_STATE, np.int64)
    ring_publish(header, state)
    if ring_take_signal(header, state):
        signal_host(table)


@njit(nogil=True, cache=True, _nrt=False)
def commit_rx(table):
    """Publish the read index; signal a host blocked on ring space (pending-send-size rule)."""
    if (
        ring_commit(
            table_array(table, T_RX_HEADER, np.uint32),
            table_array(table, T_RX_DATA, np.uint8),
            table_array(table, T_RX_STATE, np.int64),
        )
        == 1
    ):
        signal_host(table)


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def with_attention(q, count):
    """A burst kernel's result: ``count``, with ATTENTION set when the control path has work."""
    if q[Q_CONTROL_KIND] != CONTROL_NONE or q[Q_SIGNAL_PYTHON] != 0:
        return count | ATTENTION
    return count


@njit(nogil=True, cache=True, _nrt=False)
def port_lock(table):
    """Spin on the port's lock word (chimney sections are shared by every queue of the port)."""
    sync = table_array(table, T_PORT_SYNC, np.uint32)
    while atomic_cas_u32(sync, 0, 0, 1) != 0:
        pass


@njit(nogil=True, cache=True, _nrt=False)
def port_unlock(table):
    atomic_store_u32(table_array(table, T_PORT_SYNC, np.uint32), 0, 0)
