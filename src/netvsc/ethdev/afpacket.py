"""``AfPacketPort``: a Port on a kernel network interface through AF_PACKET sockets.

Layer 6 (ethdev), beside ``pmd/``: the NetVSC port's VF manager (pmd/vf.py) drives one of these
on the VF's kernel netdev (DESIGN.md section 2, item 6), and it is usable on its own on any
interface (a veth end, a TAP). It imports ``ethdev.api``/``mempool``/``batch`` and ``fastpath``,
never ``pmd``.

One socket per queue. Each socket has a TPACKET_V2 receive ring (queues below the RX count)
and a transmit ring (queues below the TX count), mapped into this process; with more than one
RX queue the receiving sockets join one PACKET_FANOUT_HASH group, so the kernel spreads flows
over them by its flow hash. The rings are walked by the numba kernels below, one call per
burst: RX copies each ready frame into mbufs of the queue's mempool (chained when longer than
one buffer) and hands the slot back to the kernel; TX copies each packet's segments into the
next free slot, marks it for sending, frees the mbuf, and the burst ends with one ``send`` that
tells the kernel to transmit what the ring holds. Every length and offset read from a ring slot
is checked against the slot before use: the kernel writes those slots, but a bad value must
never index outside the map.

Semantics kept from the NetVSC port: a ``PacketBatch`` holds mbuf indices, ``rx_burst`` returns
up to ``nb_pkts`` (default the batch's capacity), ``tx_burst`` removes the packets it took from
the batch and moves the rest to its front. Hardware-like filtering is done on the packet type
the kernel reports: frames for other hosts pass only in promiscuous mode, multicast only with
allmulticast (or a multicast list), frames this host sent are never received.

Offloads: VLAN strip and insert (the kernel carries the tag out of band in the ring slot);
RX and TX IPv4/TCP/UDP checksums are done in software (verified on receive, filled in the ring
slot on transmit), so a port with this VF keeps those capabilities; no TSO (a frame longer than
the MTU is dropped and counted) and no RSS hash value (TPACKET_V2 does not carry one).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import mmap
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import config as numba_config
from numba import njit

from netvsc.errors import ConfigError, DeviceError, NotSupportedError
from netvsc.ethdev import api
from netvsc.ethdev import mempool as mp
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool, pool_from_table
from netvsc.fastpath.addrtable import ArrayTable, table_array
from netvsc.fastpath.atomics import atomic_load_u32, atomic_store_u32, copy_bytes
from netvsc.fastpath.offload import fill_ipv4_header_checksum, fill_l4_checksum, receive_checksum_state
from netvsc.wire import rndis as wire_rndis

__all__ = ["MAX_QUEUES", "AfPacketPort", "NET_CLASS_DIR", "netdev_mac"]

log = logging.getLogger(__name__)

NET_CLASS_DIR = Path("/sys/class/net")
MAX_QUEUES = 16  # DPDK's af_packet limit of queue pairs
DESC_DEFAULT = 1024
DESC_MAX = 65536
MIN_MTU = 68
MAX_MTU = 65535 - 18
SPEED_DEFAULT_MBPS = 10_000  # what an interface without a speed (veth) reports
IFNAMSIZ = 16

# Socket options and values (linux/if_packet.h, linux/if_ether.h).
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
TPACKET_V2 = 1
PACKET_MR_MULTICAST = 0
PACKET_MR_PROMISC = 1
PACKET_MR_ALLMULTI = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
ETH_P_ALL = 0x0003
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
IFF_UP = 0x1

# TPACKET_V2 slot: struct tpacket2_hdr (32 bytes), then struct sockaddr_ll; frame data at tp_mac.
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1 << 0
TP_STATUS_COPY = 1 << 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1 << 0
TP_STATUS_WRONG_FORMAT = 1 << 2
TPACKET2_HEADER = 32  # sizeof(struct tpacket2_hdr), already a multiple of TPACKET_ALIGNMENT (16)
SLL_PKTTYPE = TPACKET2_HEADER + 10  # sockaddr_ll.sll_pkttype in an RX slot
# A TX slot's data starts where the kernel reads it without PACKET_TX_HAS_OFF: TPACKET2_HDRLEN
# minus sizeof(struct sockaddr_ll), i.e. right behind the 32-byte header.
TX_DATA_OFFSET = TPACKET2_HEADER
RX_SLOT_OVERHEAD = 128  # header, sockaddr_ll and alignment in front of an RX frame (tp_mac is 66)
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST, PACKET_OUTGOING = range(5)

ETHER_HEADER = 14
VLAN_TAG = 4
ETHERTYPE_VLAN = 0x8100
ETHERTYPE_QINQ = 0x88A8

RX_OFFLOAD_CAPA = (
    api.RX_OFFLOAD_VLAN_STRIP
    | api.RX_OFFLOAD_IPV4_CKSUM
    | api.RX_OFFLOAD_UDP_CKSUM
    | api.RX_OFFLOAD_TCP_CKSUM
    | api.RX_OFFLOAD_SCATTER
)
TX_OFFLOAD_CAPA = (
    api.TX_OFFLOAD_VLAN_INSERT
    | api.TX_OFFLOAD_IPV4_CKSUM
    | api.TX_OFFLOAD_UDP_CKSUM
    | api.TX_OFFLOAD_TCP_CKSUM
    | api.TX_OFFLOAD_MULTI_SEGS
)
# The kernel's flow hash covers addresses and ports: what the fanout group spreads on.
RSS_FLOW_TYPES = api.RSS_IP | api.RSS_TCP | api.RSS_UDP
RX_CHECKSUM_OFFLOADS = api.RX_OFFLOAD_IPV4_CKSUM | api.RX_OFFLOAD_UDP_CKSUM | api.RX_OFFLOAD_TCP_CKSUM

# -- per-queue state words (int64), shared by the Python side and the kernels ---------------------
S_RX_FRAMES = 0  # slots of the RX ring (0: this socket has none)
S_RX_FRAME_SIZE = 1
S_RX_CURSOR = 2  # next RX slot to look at
S_TX_FRAMES = 3
S_TX_FRAME_SIZE = 4
S_TX_CURSOR = 5
S_TX_BASE = 6  # byte offset of the TX ring in the map (after the RX ring)
S_PORT_ID = 7  # stamped on received mbufs (a NetVSC port owning this one as its VF sets its own)
S_QUEUE_ID = 8
S_FLAGS = 9  # F_* below
S_MAX_FRAME = 10  # longest untagged frame the interface sends: MTU + 14
S_TX_QUEUED = 11  # slots marked for sending since the last kick
S_WORDS = 12

F_VLAN_STRIP = 1
F_PROMISCUOUS = 2
F_ALLMULTI = 4
F_RX_CHECKSUM = 8

# -- per-queue counters (int64) -------------------------------------------------------------------
COUNTER_NAMES = (
    "rx_packets",
    "rx_bytes",
    "rx_errors",  # a slot whose lengths did not check out, or a frame truncated by the ring
    "rx_nombuf",
    "rx_filtered",  # dropped by the MAC filter emulation (other host, multicast)
    "tx_packets",
    "tx_bytes",
    "tx_errors",  # a bad mbuf, a frame too long for the MTU or the slot
    "tx_ring_full",
    "tx_kicks",
    "tx_kick_errors",
    "kernel_drops",  # the kernel found the RX ring full (PACKET_STATISTICS)
)
(
    C_RX_PACKETS,
    C_RX_BYTES,
    C_RX_ERRORS,
    C_RX_NOMBUF,
    C_RX_FILTERED,
    C_TX_PACKETS,
    C_TX_BYTES,
    C_TX_ERRORS,
    C_TX_RING_FULL,
    C_TX_KICKS,
    C_TX_KICK_ERRORS,
    C_KERNEL_DROPS,
) = range(len(COUNTER_NAMES))
C_WORDS = len(COUNTER_NAMES)

# -- kernel table slots ---------------------------------------------------------------------------
T_RING = 0  # uint8 view of the whole map (RX ring, then TX ring)
T_RING32 = 1  # the same map as uint32 (slot status words, read and written atomically)
T_STATE = 2
T_COUNTERS = 3
T_POOL = 4  # the RX mempool's table
T_CHAIN = 5  # int32 scratch for the segments of one chain
T_SCRATCH = 6  # uint8 scratch (a VLAN tag being inserted)
T_SLOTS = 7


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _be16(buf, at):
    return (np.int64(buf[at]) << 8) | np.int64(buf[at + 1])


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _chain_put(pool, chain, room, position, src, src_at, length):
    """Write ``src[src_at:src_at + length]`` at byte ``position`` of the chain's data (segments of
    ``room`` bytes from each one's data offset); the caller sized the chain for it."""
    data_room = pool.state[mp.ST_DATA_ROOM]
    while length > 0:
        k = position // room
        within = position - k * room
        piece = min(room - within, length)
        segment = chain[k]
        at = np.int64(segment) * data_room + pool.data_off[segment] + within
        copy_bytes(pool.data, at, src, src_at, piece)
        position += piece
        src_at += piece
        length -= piece


@njit(nogil=True, cache=True, _nrt=False)
def _accepted(pkttype, flags):
    """The MAC filter a NIC applies in hardware, on the packet type the kernel reports."""
    if pkttype in (PACKET_HOST, PACKET_BROADCAST):
        return True
    if pkttype == PACKET_MULTICAST:
        return (flags & (F_ALLMULTI | F_PROMISCUOUS)) != 0
    if pkttype == PACKET_OTHERHOST:
        return (flags & F_PROMISCUOUS) != 0
    return False


@njit(nogil=True, cache=True, _nrt=False)
def _rx_checksum_flags(pool, head, length):
    """ol_flags of a received single-segment frame verified in software (as the NetVSC port's
    flags: IP good/bad, L4 good/bad, unknown where there is nothing to check)."""
    at = np.int64(head) * pool.state[mp.ST_DATA_ROOM] + pool.data_off[head]
    l3 = ETHER_HEADER
    if length >= ETHER_HEADER + VLAN_TAG and _be16(pool.data, at + 12) == ETHERTYPE_VLAN:
        l3 += VLAN_TAG
    state = receive_checksum_state(pool.data, at, length, l3, False)
    flags = np.uint64(0)
    if state & wire_rndis.CHECKSUM_RX_IP_SUCCEEDED:
        flags |= np.uint64(mp.RX_IP_CKSUM_GOOD)
    elif state & wire_rndis.CHECKSUM_RX_IP_FAILED:
        flags |= np.uint64(mp.RX_IP_CKSUM_BAD)
    if state & (wire_rndis.CHECKSUM_RX_TCP_SUCCEEDED | wire_rndis.CHECKSUM_RX_UDP_SUCCEEDED):
        flags |= np.uint64(mp.RX_L4_CKSUM_GOOD)
    elif state & (wire_rndis.CHECKSUM_RX_TCP_FAILED | wire_rndis.CHECKSUM_RX_UDP_FAILED):
        flags |= np.uint64(mp.RX_L4_CKSUM_BAD)
    return flags


@njit(nogil=True, cache=True, _nrt=False)
def _rx_one(ring, ring32, base, size, status, state, counters, pool, chain, scratch):
    """The frame in the RX slot at ``base`` as a new mbuf chain: its head, or -1 (dropped)."""
    flags = state[S_FLAGS]
    pkttype = np.int64(ring[base + SLL_PKTTYPE])
    if pkttype == PACKET_OUTGOING:
        return -1  # our own transmit seen by another socket of the port (PACKET_IGNORE_OUTGOING missing)
    if not _accepted(pkttype, flags):
        counters[C_RX_FILTERED] += 1
        return -1
    tp_len = np.int64(ring32[(base + 4) >> 2])
    snaplen = np.int64(ring32[(base + 8) >> 2])
    mac = np.int64(ring32[(base + 12) >> 2]) & 0xFFFF
    if (
        mac < TPACKET2_HEADER
        or snaplen < ETHER_HEADER
        or mac + snaplen > size
        or snaplen != tp_len
        or (status & TP_STATUS_COPY) != 0
    ):
        counters[C_RX_ERRORS] += 1  # out of the slot, a runt, or truncated by the ring
        return -1
    frame = base + mac
    vlan_word = np.int64(ring32[(base + 24) >> 2])
    tci = vlan_word & 0xFFFF
    tpid = (vlan_word >> 16) & 0xFFFF
    if (status & TP_STATUS_VLAN_TPID_VALID) == 0 or tpid == 0:
        tpid = ETHERTYPE_VLAN
    out_of_band = (status & TP_STATUS_VLAN_VALID) != 0
    strip = (flags & F_VLAN_STRIP) != 0
    inline = (
        not out_of_band
        and snaplen >= ETHER_HEADER + VLAN_TAG
        and (_be16(ring, frame + 12) == ETHERTYPE_VLAN or _be16(ring, frame + 12) == ETHERTYPE_QINQ)
    )
    insert = out_of_band and not strip  # the frame as it was on the wire
    remove = inline and strip
    if remove:
        tci = _be16(ring, frame + 14)
    total = snaplen + VLAN_TAG if insert else (snaplen - VLAN_TAG if remove else snaplen)
    room = pool.state[mp.ST_DATA_ROOM] - pool.state[mp.ST_HEADROOM]
    needed = (total + room - 1) // room
    if needed > mp.SEGMENTS_MAX or needed > chain.shape[0]:
        counters[C_RX_ERRORS] += 1
        return -1
    if mp.mp_alloc_bulk(pool, chain, needed) == 0:
        counters[C_RX_NOMBUF] += 1
        return -1
    for k in range(needed):
        segment = chain[k]
        pool.data_len[segment] = min(room, total - k * room)
        pool.next_seg[segment] = chain[k + 1] if k + 1 < needed else -1
    if insert:
        scratch[0] = (tpid >> 8) & 0xFF
        scratch[1] = tpid & 0xFF
        scratch[2] = (tci >> 8) & 0xFF
        scratch[3] = tci & 0xFF
        _chain_put(pool, chain, room, 0, ring, frame, 12)
        _chain_put(pool, chain, room, 12, scratch, 0, VLAN_TAG)
        _chain_put(pool, chain, room, 12 + VLAN_TAG, ring, frame + 12, snaplen - 12)
    elif remove:
        _chain_put(pool, chain, room, 0, ring, frame, 12)
        _chain_put(pool, chain, room, 12, ring, frame + 12 + VLAN_TAG, snaplen - 12 - VLAN_TAG)
    else:
        _chain_put(pool, chain, room, 0, ring, frame, snaplen)
    head = chain[0]
    pool.pkt_len[head] = total
    pool.nb_segs[head] = needed
    ol_flags = np.uint64(0)
    if out_of_band or remove:
        pool.vlan_tci[head] = tci
        ol_flags |= np.uint64(mp.RX_VLAN_STRIPPED | mp.RX_VLAN) if strip else np.uint64(mp.RX_VLAN)
    if (flags & F_RX_CHECKSUM) != 0 and needed == 1:
        ol_flags |= _rx_checksum_flags(pool, head, total)
    pool.ol_flags[head] = ol_flags
    pool.port[head] = state[S_PORT_ID]
    pool.queue[head] = state[S_QUEUE_ID]
    counters[C_RX_PACKETS] += 1
    counters[C_RX_BYTES] += total
    return head


@njit(nogil=True, cache=True, _nrt=False)
def rx_kernel(qtable, out, start, count):
    """Up to ``count`` received frames into ``out[start:]`` as mbuf heads; returns how many."""
    ring = table_array(qtable, T_RING, np.uint8)
    ring32 = table_array(qtable, T_RING32, np.uint32)
    state = table_array(qtable, T_STATE, np.int64)
    counters = table_array(qtable, T_COUNTERS, np.int64)
    pool = pool_from_table(table_array(qtable, T_POOL, np.int64))
    chain = table_array(qtable, T_CHAIN, np.int32)
    scratch = table_array(qtable, T_SCRATCH, np.uint8)
    frames = state[S_RX_FRAMES]
    size = state[S_RX_FRAME_SIZE]
    cursor = state[S_RX_CURSOR]
    if frames <= 0 or size < RX_SLOT_OVERHEAD or size % 16 != 0 or frames * size > ring.shape[0]:
        return 0
    if cursor < 0 or cursor >= frames or start < 0:
        return 0
    limit = min(count, out.shape[0] - start)
    got = 0
    seen = 0
    while got < limit and seen < frames:
        base = cursor * size
        status = np.int64(atomic_load_u32(ring32, base >> 2))
        if (status & TP_STATUS_USER) == 0:
            break
        seen += 1
        head = _rx_one(ring, ring32, base, size, status, state, counters, pool, chain, scratch)
        if head >= 0:
            out[start + got] = head
            got += 1
        atomic_store_u32(ring32, base >> 2, TP_STATUS_KERNEL)  # the slot goes back to the kernel
        cursor += 1
        if cursor == frames:
            cursor = 0
    state[S_RX_CURSOR] = cursor
    return got


@njit(nogil=True, cache=True, _nrt=False)
def rx_ready_kernel(qtable):
    """Frames waiting in the RX ring from the cursor on (DPDK's rx_queue_count)."""
    ring32 = table_array(qtable, T_RING32, np.uint32)
    state = table_array(qtable, T_STATE, np.int64)
    frames = state[S_RX_FRAMES]
    size = state[S_RX_FRAME_SIZE]
    cursor = state[S_RX_CURSOR]
    if frames <= 0 or size <= 0 or frames * size > ring32.shape[0] * 4 or not 0 <= cursor < frames:
        return 0
    ready = 0
    while ready < frames:
        slot = (cursor + ready) % frames
        if (np.int64(atomic_load_u32(ring32, (slot * size) >> 2)) & TP_STATUS_USER) == 0:
            break
        ready += 1
    return ready


@njit(nogil=True, cache=True, _nrt=False)
def _tx_checksums(ring, at, length, ol_flags, l2_len, l3_len):
    """Fill the checksums a TX mbuf asked for in its slot copy; False if its headers do not fit."""
    l4_request = ol_flags & np.uint64(mp.TX_L4_MASK)
    ip_request = (ol_flags & np.uint64(mp.TX_IP_CKSUM)) != 0
    if l4_request == 0 and not ip_request:
        return True
    l2 = l2_len if l2_len > 0 else ETHER_HEADER
    is_ipv4 = (ol_flags & np.uint64(mp.TX_IPV4)) != 0 or ip_request
    l3 = l3_len if l3_len > 0 else (20 if is_ipv4 else 40)
    if l2 + l3 > length or l3 < 20:
        return False
    if ip_request and is_ipv4:
        fill_ipv4_header_checksum(ring, at, l2, l3)
    if l4_request == np.uint64(mp.TX_TCP_CKSUM) or l4_request == np.uint64(mp.TX_UDP_CKSUM):
        proto = 6 if l4_request == np.uint64(mp.TX_TCP_CKSUM) else 17
        l4_length = _be16(ring, at + l2 + 2) - l3 if is_ipv4 else _be16(ring, at + l2 + 4)
        minimum = 20 if proto == 6 else 8
        if l4_length < minimum or l2 + l3 + l4_length > length:
            return False
        fill_l4_checksum(ring, at, l2, l2 + l3, l4_length, is_ipv4, proto)
    return True


@njit(nogil=True, cache=True, _nrt=False)
def _tx_one(ring, at, capacity, max_frame, pool, head):
    """Copy the packet at ``head`` into a TX slot's data at ``ring[at:]``: its length, or -1 when
    the mbuf is malformed or the frame too long (for the slot or for the MTU)."""
    n = pool.refcnt.shape[0]
    ol_flags = pool.ol_flags[head]
    insert = (ol_flags & np.uint64(mp.TX_VLAN)) != 0
    shift = VLAN_TAG if insert else 0
    length = np.int64(0)
    segment = np.int64(head)
    steps = 0
    while segment >= 0:
        if segment >= n or steps >= mp.SEGMENTS_MAX or pool.refcnt[segment] <= 0:
            return -1
        source, source_at = mp.mp_segment_source(pool, segment)
        if source_at < 0:
            return -1
        piece = np.int64(pool.data_len[segment])
        if length + piece + shift > capacity:
            return -1
        copy_bytes(ring, at + shift + length, source, source_at, piece)
        length += piece
        segment = np.int64(pool.next_seg[segment])
        steps += 1
    if length < ETHER_HEADER:
        return -1
    if insert:
        for i in range(12):
            ring[at + i] = ring[at + VLAN_TAG + i]
        tci = np.int64(pool.vlan_tci[head])
        ring[at + 12] = ETHERTYPE_VLAN >> 8
        ring[at + 13] = ETHERTYPE_VLAN & 0xFF
        ring[at + 14] = (tci >> 8) & 0xFF
        ring[at + 15] = tci & 0xFF
        length += VLAN_TAG
    tagged = insert or _be16(ring, at + 12) == ETHERTYPE_VLAN
    if length > max_frame + (VLAN_TAG if tagged else 0):
        return -1  # no TSO here: a frame longer than the MTU cannot be sent
    l2 = np.int64(pool.l2_len[head]) + shift
    if not _tx_checksums(ring, at, length, ol_flags, l2, np.int64(pool.l3_len[head])):
        return -1
    return length


@njit(nogil=True, cache=True, _nrt=False)
def tx_kernel(qtable, pool_table, indices, count):
    """Put up to ``count`` packets of ``indices`` in the TX ring and free their mbufs; returns
    how many were taken (queued, or dropped as malformed and counted)."""
    ring = table_array(qtable, T_RING, np.uint8)
    ring32 = table_array(qtable, T_RING32, np.uint32)
    state = table_array(qtable, T_STATE, np.int64)
    counters = table_array(qtable, T_COUNTERS, np.int64)
    pool = pool_from_table(pool_table)
    frames = state[S_TX_FRAMES]
    size = state[S_TX_FRAME_SIZE]
    cursor = state[S_TX_CURSOR]
    tx_base = state[S_TX_BASE]
    if frames <= 0 or size <= TX_DATA_OFFSET or size % 16 != 0 or tx_base < 0:
        return 0
    if tx_base + frames * size > ring.shape[0] or not 0 <= cursor < frames:
        return 0
    n = pool.refcnt.shape[0]
    taken = 0
    for k in range(min(count, indices.shape[0])):
        base = tx_base + cursor * size
        status = np.int64(atomic_load_u32(ring32, base >> 2))
        if status == TP_STATUS_WRONG_FORMAT:
            counters[C_TX_ERRORS] += 1  # the kernel refused an earlier frame in this slot
            status = TP_STATUS_AVAILABLE
        if status != TP_STATUS_AVAILABLE:
            counters[C_TX_RING_FULL] += 1  # still queued or being sent
            break
        head = np.int64(indices[k])
        taken += 1
        if head < 0 or head >= n or pool.refcnt[head] <= 0:
            counters[C_TX_ERRORS] += 1  # not a packet in use: nothing to free
            continue
        length = _tx_one(ring, base + TX_DATA_OFFSET, size - TX_DATA_OFFSET, state[S_MAX_FRAME], pool, head)
        mp.mp_free(pool, head)  # copied (or refused): the mbuf is done either way
        if length < 0:
            counters[C_TX_ERRORS] += 1
            continue
        ring32[(base + 4) >> 2] = np.uint32(length)  # tp_len
        atomic_store_u32(ring32, base >> 2, TP_STATUS_SEND_REQUEST)  # after the data (seq_cst)
        counters[C_TX_PACKETS] += 1
        counters[C_TX_BYTES] += length
        state[S_TX_QUEUED] += 1
        cursor += 1
        if cursor == frames:
            cursor = 0
    state[S_TX_CURSOR] = cursor
    return taken


_KERNEL_SIGNATURES = (
    (rx_kernel, "(int64[::1], int32[::1], int64, int64)"),
    (tx_kernel, "(int64[::1], int64[::1], int32[::1], int64)"),
    (rx_ready_kernel, "(int64[::1],)"),
)


def compile_kernels() -> None:
    """Compile (or load from numba's cache) the burst kernels before the first burst."""
    if numba_config.DISABLE_JIT:
        return
    for kernel, signature in _KERNEL_SIGNATURES:
        kernel.compile(signature)


# ---------------------------------------------------------------------------------------------
# The interface seen from sysfs and ioctls
# ---------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text().strip()


def netdev_mac(ifname: str, net_dir: Path = NET_CLASS_DIR) -> bytes | None:
    """The MAC address of interface ``ifname`` (None when it has none we can read)."""
    try:
        text = _read(net_dir / ifname / "address")
        value = bytes.fromhex(text.replace(":", ""))
    except (OSError, ValueError):
        return None
    return value if len(value) == 6 else None


def _valid_ifname(ifname: object) -> bool:
    return (
        isinstance(ifname, str)
        and 0 < len(ifname) < IFNAMSIZ
        and "/" not in ifname
        and ifname not in (".", "..")
        and not any(c.isspace() for c in ifname)
    )


def _ifreq(ifname: str, payload: bytes) -> bytes:
    return ifname.encode().ljust(IFNAMSIZ, b"\0") + payload.ljust(24, b"\0")


def _ioctl(request: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return fcntl.ioctl(sock.fileno(), request, data)


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------------


@dataclass
class _RxSetup:
    nb_desc: int
    mempool: Mempool


@dataclass
class _TxSetup:
    nb_desc: int


class _Queue:
    """Queue q's socket, its mapped rings and the table its kernels take."""

    def __init__(self, port: AfPacketPort, queue_id: int, rx: _RxSetup | None, tx: _TxSetup | None) -> None:
        self.queue_id = queue_id
        self.mempool = rx.mempool if rx is not None else None
        self.state = np.zeros(S_WORDS, dtype=np.int64)
        self.counters = port._counters[queue_id]
        self.table = ArrayTable(T_SLOTS)
        self.map: mmap.mmap | None = None
        self.ring: np.ndarray | None = None
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # receives nothing until bound
        try:
            self._build(port, rx, tx)
        except BaseException:
            self.close()
            raise

    def _build(self, port: AfPacketPort, rx: _RxSetup | None, tx: _TxSetup | None) -> None:
        sock = self.sock
        sock.setblocking(False)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        if tx is not None:  # options the kernel takes only before any ring exists
            # A refused frame is skipped, not left to stall the ring (WRONG_FORMAT without it).
            sock.setsockopt(SOL_PACKET, PACKET_LOSS, 1)
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        page = mmap.PAGESIZE
        max_frame = port.mtu + ETHER_HEADER
        frame_size = _next_power_of_two(max(2048, RX_SLOT_OVERHEAD + max_frame + VLAN_TAG))
        block_size = max(frame_size, page)
        per_block = block_size // frame_size
        state = self.state

        def ring(option: int, nb_desc: int, frames_word: int, size_word: int) -> int:
            """Ask the kernel for a ring of at least ``nb_desc`` frames; its size in bytes."""
            blocks = -(-nb_desc // per_block)
            sock.setsockopt(
                SOL_PACKET, option, struct.pack("4I", block_size, blocks, frame_size, blocks * per_block)
            )
            state[frames_word] = blocks * per_block
            state[size_word] = frame_size
            return blocks * block_size

        rx_bytes = ring(PACKET_RX_RING, rx.nb_desc, S_RX_FRAMES, S_RX_FRAME_SIZE) if rx is not None else 0
        tx_bytes = 0
        if tx is not None:
            tx_bytes = ring(PACKET_TX_RING, tx.nb_desc, S_TX_FRAMES, S_TX_FRAME_SIZE)
            state[S_TX_BASE] = rx_bytes
        with contextlib.suppress(OSError):  # Linux 4.20+; the kernel filter drops them otherwise
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        self.map = mmap.mmap(
            sock.fileno(), rx_bytes + tx_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.ring = np.frombuffer(self.map, dtype=np.uint8)
        state[S_PORT_ID] = port.rx_port_id
        state[S_QUEUE_ID] = self.queue_id
        state[S_MAX_FRAME] = max_frame
        t = self.table
        t.set(T_RING, self.ring)
        t.set(T_RING32, self.ring.view(np.uint32))
        t.set(T_STATE, state)
        t.set(T_COUNTERS, self.counters)
        t.set(T_POOL, self.mempool.table.table if self.mempool is not None else np.zeros(2 * 26, np.int64))
        t.set(T_CHAIN, np.zeros(mp.SEGMENTS_MAX + 1, dtype=np.int32))
        t.set(T_SCRATCH, np.zeros(16, dtype=np.uint8))
        # Bound last: frames reach the socket only once its rings exist.
        sock.bind((port.ifname, ETH_P_ALL if rx is not None else 0))

    def join_fanout(self, group: int | None) -> int:
        """Join the port's hash fanout group (``None``: create one with a kernel-chosen id)."""
        if group is None:
            value = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_UNIQUEID
            self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, value << 16)
            return struct.unpack("I", self.sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
        self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, group | (PACKET_FANOUT_HASH << 16))
        return group

    def kick(self) -> None:
        """Ask the kernel to send what the TX ring holds (one syscall per burst)."""
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
            self.counters[C_TX_KICKS] += 1
            self.state[S_TX_QUEUED] = 0
        except (BlockingIOError, InterruptedError):
            self.counters[C_TX_KICK_ERRORS] += 1  # stays queued: the next burst kicks again
        except OSError as error:
            self.counters[C_TX_KICK_ERRORS] += 1
            if error.errno not in (errno.ENOBUFS, errno.ENETDOWN, errno.ENXIO):
                raise DeviceError(f"AF_PACKET send on queue {self.queue_id}: {error}") from None

    def collect_drops(self) -> None:
        """Add the kernel's RX-ring-full drops (PACKET_STATISTICS; reading resets them)."""
        if self.state[S_RX_FRAMES] == 0:
            return
        with contextlib.suppress(OSError):
            _packets, drops = struct.unpack("2I", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.counters[C_KERNEL_DROPS] += drops

    def close(self) -> None:
        self.table.clear()
        self.ring = None  # the map cannot close while a view of it lives
        if self.map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self.map.close()
            self.map = None
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# The port
# ---------------------------------------------------------------------------------------------

_PORT_IDS = itertools.count(0x100)  # apart from NetVSC port ids, so a relabel is visible


class AfPacketPort:
    """A kernel interface as a Port. ``AfPacketPort(ifname)`` needs CAP_NET_RAW."""

    driver_name = "net_af_packet"

    def __init__(self, ifname: str, *, port_id: int | None = None, net_dir: Path = NET_CLASS_DIR) -> None:
        if not _valid_ifname(ifname) or not (Path(net_dir) / ifname).is_dir():
            raise ConfigError(
                "ifname", ifname, f"the name of an existing network interface (under {net_dir})"
            )
        try:
            self.ifindex = socket.if_nametoindex(ifname)
        except OSError:
            raise ConfigError("ifname", ifname, "an interface of this network namespace") from None
        self.ifname = ifname
        self.net_dir = Path(net_dir)
        self.port_id = next(_PORT_IDS) if port_id is None else int(port_id)
        self.rx_port_id = self.port_id  # stamped on received mbufs; a VF's owner sets its own (pmd#69)
        self.promiscuous = False
        self.allmulticast = False
        self._mc_addrs: list[bytes] = []
        self._nb_rxq = self._nb_txq = 1
        self._rx_offloads = self._tx_offloads = 0
        self._configured = False
        self._started = False
        self._closed = False
        self._rx_setup: list[_RxSetup | None] = [None]
        self._tx_setup: list[_TxSetup | None] = [None]
        self._counters = np.zeros((1, C_WORDS), dtype=np.int64)
        self._queues: list[_Queue] = []
        self._rx_queues: list[_Queue | None] = []  # by queue id while started
        self._tx_queues: list[_Queue | None] = []
        self._link_callback: api.LinkCallback | None = None

    @classmethod
    def open(cls, ifname: str, **kw: object) -> AfPacketPort:
        return cls(ifname, **kw)

    # -- identity ----------------------------------------------------------------------------

    @property
    def mac_address(self) -> bytes:
        mac = netdev_mac(self.ifname, self.net_dir)
        if mac is None:
            raise DeviceError(f"{self.ifname}: no readable MAC address")
        return mac

    @property
    def mtu(self) -> int:
        try:
            return int(_read(self.net_dir / self.ifname / "mtu"))
        except (OSError, ValueError) as error:
            raise DeviceError(f"{self.ifname}: MTU unreadable: {error}") from None

    @property
    def started(self) -> bool:
        return self._started

    @property
    def nb_rx_queues(self) -> int:
        return self._nb_rxq

    @property
    def nb_tx_queues(self) -> int:
        return self._nb_txq

    def _check_open(self) -> None:
        if self._closed:
            raise DeviceError(f"port {self.ifname} is closed")

    def _check_stopped(self, what: str) -> None:
        if self._started:
            raise ConfigError(what, "while started", "a stopped port (stop() first)")

    def dev_info(self) -> api.DevInfo:
        self._check_open()
        return api.DevInfo(
            driver_name=self.driver_name,
            device=self.ifname,
            max_rx_queues=MAX_QUEUES,
            max_tx_queues=MAX_QUEUES,
            min_rx_bufsize=0,
            max_rx_pktlen=MAX_MTU + 18,
            max_mac_addrs=1,
            rx_offload_capa=RX_OFFLOAD_CAPA,
            tx_offload_capa=TX_OFFLOAD_CAPA,
            flow_type_rss_offloads=RSS_FLOW_TYPES,
            hash_key_size=0,
            reta_size=0,
            rx_desc_lim=api.DescLimits(1, DESC_MAX, 1),
            tx_desc_lim=api.DescLimits(1, DESC_MAX, 1),
            min_mtu=MIN_MTU,
            max_mtu=MAX_MTU,
            speed_capa_mbps=self._speed_mbps(),
            nvs_version=0,
            ndis_version=0,
        )

    def _speed_mbps(self) -> int:
        try:
            speed = int(_read(self.net_dir / self.ifname / "speed"))
        except (OSError, ValueError):
            return SPEED_DEFAULT_MBPS
        return speed if speed > 0 else SPEED_DEFAULT_MBPS

    # -- configuration -------------------------------------------------------------------------

    def configure(
        self,
        nb_rxq: int,
        nb_txq: int,
        *,
        rss: api.RssConf | None = None,
        rx_offloads: int = 0,
        tx_offloads: int = 0,
    ) -> None:
        """Queue counts (one socket each, hashed fanout over the RX ones) and offloads."""
        self._check_open()
        self._check_stopped("configure")
        for name, value in (("nb_rx_queues", nb_rxq), ("nb_tx_queues", nb_txq)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUEUES:
                raise ConfigError(name, value, f"1..{MAX_QUEUES}")
        for name, value, capa in (
            ("rx_offloads", rx_offloads, RX_OFFLOAD_CAPA),
            ("tx_offloads", tx_offloads, TX_OFFLOAD_CAPA),
        ):
            if not isinstance(value, int) or value < 0 or value & ~capa:
                raise ConfigError(name, value, f"a subset of {capa:#x}")
        if rss is not None:
            if not isinstance(rss, api.RssConf):
                raise ConfigError("rss", rss, "an RssConf or None")
            if rss.key:
                raise ConfigError("rss key", rss.key.hex(), "empty: the kernel's flow hash has no key")
            if rss.hash_types & ~RSS_FLOW_TYPES:
                raise ConfigError("rss hash_types", hex(rss.hash_types), f"a subset of {RSS_FLOW_TYPES:#x}")
        self._nb_rxq, self._nb_txq = nb_rxq, nb_txq
        self._rx_offloads, self._tx_offloads = rx_offloads, tx_offloads
        self._rx_setup = [None] * nb_rxq
        self._tx_setup = [None] * nb_txq
        counters = np.zeros((max(nb_rxq, nb_txq), C_WORDS), dtype=np.int64)
        kept = min(counters.shape[0], self._counters.shape[0])
        counters[:kept] = self._counters[:kept]
        self._counters = counters
        self._configured = True

    def rx_queue_setup(
        self, queue: int, nb_desc: int = 0, *, mempool: Mempool | None = None, **kw: object
    ) -> None:
        """RX queue ``queue``: ``nb_desc`` ring slots (0: 1024), mbufs from ``mempool``."""
        self._check_open()
        self._check_stopped("rx_queue_setup")
        if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue < self._nb_rxq:
            raise ConfigError("rx queue", queue, f"0..{self._nb_rxq - 1}")
        if isinstance(nb_desc, bool) or not isinstance(nb_desc, int) or not 0 <= nb_desc <= DESC_MAX:
            raise ConfigError("nb_desc", nb_desc, f"0 (default {DESC_DEFAULT})..{DESC_MAX}")
        if not isinstance(mempool, Mempool):
            raise ConfigError("mempool", type(mempool).__name__, "a netvsc.ethdev.mempool.Mempool")
        if kw:
            raise ConfigError("rx_queue_setup", sorted(kw), "queue, nb_desc, mempool")
        self._rx_setup[queue] = _RxSetup(nb_desc or DESC_DEFAULT, mempool)

    def tx_queue_setup(self, queue: int, nb_desc: int = 0, *, tx_free_thresh: int | None = None) -> None:
        """TX queue ``queue``: ``nb_desc`` ring slots (0: 1024). Slots are reused as soon as the
        kernel has sent them, so ``tx_free_thresh`` has nothing to set (only checked)."""
        self._check_open()
        self._check_stopped("tx_queue_setup")
        if isinstance(queue, bool) or not isinstance(queue, int) or not 0 <= queue < self._nb_txq:
            raise ConfigError("tx queue", queue, f"0..{self._nb_txq - 1}")
        if isinstance(nb_desc, bool) or not isinstance(nb_desc, int) or not 0 <= nb_desc <= DESC_MAX:
            raise ConfigError("nb_desc", nb_desc, f"0 (default {DESC_DEFAULT})..{DESC_MAX}")
        if tx_free_thresh is not None and (not isinstance(tx_free_thresh, int) or tx_free_thresh < 0):
            raise ConfigError("tx_free_thresh", tx_free_thresh, "None or a non-negative integer")
        self._tx_setup[queue] = _TxSetup(nb_desc or DESC_DEFAULT)

    # -- start / stop ----------------------------------------------------------------------------

    def start(self) -> None:
        """Sockets and rings for every queue; the interface is set up if it was down."""
        self._check_open()
        if self._started:
            return
        if not self._configured:
            raise ConfigError("port state", "not configured", "configure() before start()")
        missing = [q for q, setup in enumerate(self._rx_setup) if setup is None]
        if missing:
            raise ConfigError("rx queue", missing[0], "set up with rx_queue_setup() before start()")
        tx_setup = [setup or _TxSetup(DESC_DEFAULT) for setup in self._tx_setup]
        compile_kernels()
        self._set_up()
        queues: list[_Queue] = []
        try:
            group = None
            for q in range(max(self._nb_rxq, self._nb_txq)):
                rx = self._rx_setup[q] if q < self._nb_rxq else None
                tx = tx_setup[q] if q < self._nb_txq else None
                queue = _Queue(self, q, rx, tx)
                queues.append(queue)
                if rx is not None and self._nb_rxq > 1:
                    group = queue.join_fanout(group)
            self._queues = queues
            self._apply_flags()
            self._apply_membership(queues[0], add=True)
        except OSError as error:
            self._queues = []
            for queue in queues:
                queue.close()
            raise DeviceError(f"{self.ifname}: AF_PACKET set-up failed: {error}") from None
        self._rx_queues = [queues[q] for q in range(self._nb_rxq)]
        self._tx_queues = [queues[q] for q in range(self._nb_txq)]
        self._started = True

    def _set_up(self) -> None:
        try:
            flags = struct.unpack_from("H", _ioctl(SIOCGIFFLAGS, _ifreq(self.ifname, b"")), IFNAMSIZ)[0]
            if not flags & IFF_UP:
                _ioctl(SIOCSIFFLAGS, _ifreq(self.ifname, struct.pack("H", flags | IFF_UP)))
        except OSError as error:
            raise DeviceError(f"{self.ifname}: cannot bring the interface up: {error}") from None

    def stop(self) -> None:
        """Close the sockets (frames still in the RX rings are dropped); counters are kept."""
        if not self._started:
            return
        self._started = False
        self._rx_queues = [None] * len(self._rx_queues)
        self._tx_queues = [None] * len(self._tx_queues)
        for queue in self._queues:
            if queue.state[S_TX_QUEUED]:
                with contextlib.suppress(DeviceError):
                    queue.kick()
            queue.collect_drops()
            queue.close()
        self._queues = []

    def close(self) -> None:
        """Stop and release everything; idempotent."""
        if self._closed:
            return
        self.stop()
        self._closed = True

    def reset(self) -> None:
        self._check_open()
        self.stop()
        self.configure(1, 1)
        self._configured = False
        self._counters[:] = 0

    def __enter__(self) -> AfPacketPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- filters ---------------------------------------------------------------------------------

    def _apply_flags(self) -> None:
        flags = 0
        if self._rx_offloads & api.RX_OFFLOAD_VLAN_STRIP:
            flags |= F_VLAN_STRIP
        if self._rx_offloads & RX_CHECKSUM_OFFLOADS:
            flags |= F_RX_CHECKSUM
        if self.promiscuous:
            flags |= F_PROMISCUOUS
        if self.allmulticast or self._mc_addrs:
            flags |= F_ALLMULTI
        for queue in self._queues:
            queue.state[S_FLAGS] = flags
            queue.state[S_PORT_ID] = self.rx_port_id

    def _membership(self, kind: int, address: bytes = b"") -> bytes:
        return struct.pack("iHH8s", self.ifindex, kind, len(address), address)

    def _apply_membership(self, queue: _Queue, *, add: bool) -> None:
        """The interface's own filter follows ours (a real NIC behind the netdev needs it)."""
        option = PACKET_ADD_MEMBERSHIP if add else PACKET_DROP_MEMBERSHIP
        wanted = []
        if self.promiscuous:
            wanted.append(self._membership(PACKET_MR_PROMISC))
        if self.allmulticast:
            wanted.append(self._membership(PACKET_MR_ALLMULTI))
        wanted += [self._membership(PACKET_MR_MULTICAST, address) for address in self._mc_addrs]
        for request in wanted:
            queue.sock.setsockopt(SOL_PACKET, option, request)

    def _refilter(self, change) -> None:
        self._check_open()
        if self._started:
            self._apply_membership(self._queues[0], add=False)
        change()
        if self._started:
            self._apply_membership(self._queues[0], add=True)
            self._apply_flags()

    def promiscuous_enable(self) -> None:
        self._refilter(lambda: setattr(self, "promiscuous", True))

    def promiscuous_disable(self) -> None:
        self._refilter(lambda: setattr(self, "promiscuous", False))

    def allmulticast_enable(self) -> None:
        self._refilter(lambda: setattr(self, "allmulticast", True))

    def allmulticast_disable(self) -> None:
        self._refilter(lambda: setattr(self, "allmulticast", False))

    def set_mc_addr_list(self, addrs: Sequence[bytes]) -> None:
        accepted = "6-byte multicast MAC addresses (group bit set in the first byte)"
        if isinstance(addrs, bytes | bytearray | str) or not isinstance(addrs, Sequence):
            raise ConfigError("mc_addr_list", addrs, f"a sequence of {accepted}")
        addresses = []
        for index, addr in enumerate(addrs):
            if (
                not isinstance(addr, bytes | bytearray | memoryview)
                or len(addr) != 6
                or not bytes(addr)[0] & 1
            ):
                raise ConfigError(f"mc_addr_list[{index}]", addr, accepted)
            addresses.append(bytes(addr))
        self._refilter(lambda: setattr(self, "_mc_addrs", addresses))

    # -- MTU and link ----------------------------------------------------------------------------

    def set_mtu(self, mtu: int) -> None:
        """The interface's MTU (SIOCSIFMTU); the port must be stopped (the ring slots fit it)."""
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
            raise ConfigError("mtu", mtu, f"{MIN_MTU}..{MAX_MTU}")
        self._check_open()
        self._check_stopped("set_mtu")
        try:
            _ioctl(SIOCSIFMTU, _ifreq(self.ifname, struct.pack("i", mtu)))
        except OSError as error:
            raise DeviceError(f"{self.ifname}: MTU {mtu} refused by the kernel: {error}") from None

    def link_update(self, wait: bool = False) -> api.LinkStatus:
        self._check_open()
        try:
            up = (
                _read(self.net_dir / self.ifname / "operstate") in ("up", "unknown")
                and _read(self.net_dir / self.ifname / "carrier") == "1"
            )
        except OSError:
            up = False  # carrier is unreadable while the interface is down
        return api.LinkStatus(up, self._speed_mbps() if up else 0, True, False)

    def on_link_change(self, callback: api.LinkCallback | None) -> None:
        """Kept, never called: the kernel interface's link is not watched (a VF's link is not
        the port's link, pmd.md 7.8; ``link_update`` reads it)."""
        self._link_callback = callback

    # -- what AF_PACKET cannot do --------------------------------------------------------------

    def mac_addr_set(self, mac: bytes) -> None:
        raise NotSupportedError("mac_addr_set", "the interface's address belongs to the kernel")

    def vlan_filter_set(self, vlan_id: int, on: bool = True) -> None:
        raise NotSupportedError("vlan_filter_set", "AF_PACKET sees every VLAN of the interface")

    def flow_ctrl_set(self, conf: object) -> None:
        raise NotSupportedError("flow_ctrl_set", "pause frames belong to the kernel's driver")

    def _no_queue_switch(self, operation: str) -> NotSupportedError:
        return NotSupportedError(operation, "queues start and stop with the port")

    def rx_queue_start(self, queue: int) -> None:
        raise self._no_queue_switch("rx_queue_start")

    def rx_queue_stop(self, queue: int) -> None:
        raise self._no_queue_switch("rx_queue_stop")

    def tx_queue_start(self, queue: int) -> None:
        raise self._no_queue_switch("tx_queue_start")

    def tx_queue_stop(self, queue: int) -> None:
        raise self._no_queue_switch("tx_queue_stop")

    def rss_hash_update(self, conf: api.RssConf) -> None:
        raise NotSupportedError("rss_hash_update", "the kernel's fanout hash has no key or hash types to set")

    def rss_hash_conf_get(self) -> api.RssConf:
        raise NotSupportedError("rss_hash_conf_get", "the kernel's fanout hash has no key")

    def reta_update(self, entries: Sequence[int], mask: Sequence[bool] | None = None) -> None:
        raise NotSupportedError("reta_update", "the fanout group has no redirection table")

    def reta_query(self) -> list[int]:
        raise NotSupportedError("reta_query", "the fanout group has no redirection table")

    # -- data path -------------------------------------------------------------------------------

    def _queue(self, queues: list, queue: int, direction: str) -> _Queue | None:
        if isinstance(queue, int) and 0 <= queue < len(queues):
            return queues[queue]
        if self._started:
            raise ConfigError(f"{direction} queue", queue, f"0..{len(queues) - 1}")
        return None

    def rx_burst(self, queue: int, batch: PacketBatch, nb_pkts: int = 0) -> int:
        """Receive up to ``nb_pkts`` (default: the batch's capacity) frames of queue ``queue``
        into ``batch``; returns how many. 0 while the port is stopped."""
        q = self._queue(self._rx_queues, queue, "rx")
        if q is None:
            batch.count = 0
            return 0
        count = int(rx_kernel(q.table.table, batch.indices, 0, nb_pkts or batch.indices.shape[0]))
        batch.count = count
        batch.mempool = q.mempool
        return count

    def rx_burst_into(self, queue: int, indices: np.ndarray, start: int, nb_pkts: int) -> int:
        """Up to ``nb_pkts`` frames of queue ``queue`` into ``indices[start:]`` (mbufs of the
        queue's mempool): the form a port that owns this one fills the rest of its burst with."""
        q = self._queue(self._rx_queues, queue, "rx")
        if q is None or nb_pkts <= 0:
            return 0
        return int(rx_kernel(q.table.table, indices, start, nb_pkts))

    def rx_queue_count(self, queue: int) -> int:
        """Frames waiting in queue ``queue``'s ring."""
        q = self._queue(self._rx_queues, queue, "rx")
        return 0 if q is None else int(rx_ready_kernel(q.table.table))

    def tx_burst(self, queue: int, batch: PacketBatch, nb_pkts: int = 0) -> int:
        """Send the first ``nb_pkts`` (default all) packets of ``batch`` on queue ``queue``.

        Returns how many the port took (queued, or refused as malformed and counted as errors);
        those leave the batch and the rest move to its front (a full ring ends the burst early).
        """
        q = self._queue(self._tx_queues, queue, "tx")
        count = batch.count if not nb_pkts else min(nb_pkts, batch.count)
        if q is None or count <= 0:
            return 0
        pool = batch.mempool
        if not isinstance(pool, Mempool):
            raise ConfigError("batch.mempool", type(pool).__name__, "the Mempool the packets come from")
        taken = int(tx_kernel(q.table.table, pool.table.table, batch.indices, count))
        if q.state[S_TX_QUEUED] or taken < count:
            q.kick()
        if pool.arrays.state[mp.ST_PARKED]:
            pool.drain_external()  # freed mbufs that carried a callback owner's external buffer
        if taken:
            remaining = batch.count - taken
            if remaining:
                batch.indices[:remaining] = batch.indices[taken : batch.count]
            batch.count = remaining
        return taken

    # -- statistics --------------------------------------------------------------------------------

    def _collect(self) -> np.ndarray:
        for queue in self._queues:
            queue.collect_drops()
        return self._counters

    def stats(self) -> api.PortStats:
        c = self._collect()
        stats = api.PortStats(
            ipackets=int(c[:, C_RX_PACKETS].sum()),
            opackets=int(c[:, C_TX_PACKETS].sum()),
            ibytes=int(c[:, C_RX_BYTES].sum()),
            obytes=int(c[:, C_TX_BYTES].sum()),
            imissed=int(c[:, C_KERNEL_DROPS].sum()),
            ierrors=int(c[:, C_RX_ERRORS].sum()),
            oerrors=int(c[:, C_TX_ERRORS].sum()),
            rx_nombuf=int(c[:, C_RX_NOMBUF].sum()),
        )
        for q in range(min(self._nb_rxq, api.STATS_QUEUE_COUNT, c.shape[0])):
            stats.q_ipackets[q] = int(c[q, C_RX_PACKETS])
            stats.q_ibytes[q] = int(c[q, C_RX_BYTES])
            stats.q_errors[q] = int(c[q, C_RX_ERRORS])
        for q in range(min(self._nb_txq, api.STATS_QUEUE_COUNT, c.shape[0])):
            stats.q_opackets[q] = int(c[q, C_TX_PACKETS])
            stats.q_obytes[q] = int(c[q, C_TX_BYTES])
        return stats

    def stats_reset(self) -> None:
        self._collect()
        self._counters[:] = 0

    def xstats(self) -> list[tuple[str, int]]:
        """Per queue: ``rx_qN_<counter>`` for the RX queues, ``tx_qN_<counter>`` for the TX ones."""
        c = self._collect()
        pairs = []
        for q in range(self._nb_rxq):
            for column, name in enumerate(COUNTER_NAMES):
                if not name.startswith("tx_"):
                    pairs.append((f"rx_q{q}_{name.removeprefix('rx_')}", int(c[q, column])))
        for q in range(self._nb_txq):
            for column, name in enumerate(COUNTER_NAMES):
                if name.startswith("tx_"):
                    pairs.append((f"tx_q{q}_{name.removeprefix('tx_')}", int(c[q, column])))
        return pairs

    def xstats_reset(self) -> None:
        self.stats_reset()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._started else "stopped")
        return f"AfPacketPort({self.ifname}, {state})"
