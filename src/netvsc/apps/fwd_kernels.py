"""The per-packet work of ``netvsc testpmd``'s forwarding modes, one numba call per burst.

Layer 8 (apps). Each kernel takes a mempool's table (``Mempool.table.table``: one int64 argument
that ``pool_from_table`` turns into the pool's arrays, instead of the microseconds numba spends
unboxing a tuple of arrays) and ``indices[:count]``, the head buffers of a burst, and does the
mode's work on every packet: swap or rewrite MAC addresses, build frames from a template into
freshly allocated buffers, vary the flows of generated frames, prepare checksum offload
requests, answer ARP and ICMP echo requests. The forwarding loop (``apps.forwarding``) calls
them between ``rx_burst`` and ``tx_burst``, through ``entry(name)`` (the compiled function
without numba's per-call dispatch); nothing here loops per packet in Python.

A packet's first segment may lie in the mempool or, with ``rx_extmbuf_enable``, in the
receive buffer the host shares (an external buffer): ``_head_segment`` finds it either way and
checks its range before anything is read. Headers are looked for in the first segment only; a
packet whose headers do not fit there is left alone (csum) or dropped (icmpecho).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev import mempool as mp
from netvsc.ethdev.mempool import pool_from_table
from netvsc.fastpath.addrtable import table_array
from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.checksum import fold_checksum, internet_checksum, ones_complement_sum
from netvsc.fastpath.entry import compiled
from netvsc.fastpath.offload import (
    ETH_HEADER,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    PARSE_FIELDS,
    PROTO_TCP,
    PROTO_UDP,
    parse_frame,
    pseudo_header_sum,
    read_be16,
    write_be16,
)

__all__ = [
    "CSUM_COUNTERS",
    "CSUM_HW_IP",
    "CSUM_HW_L4",
    "ECHO_COUNTERS",
    "FLOW_STATE_WORDS",
    "PARSE_FIELDS",
    "build_flows",
    "build_frames",
    "csum_prepare",
    "entry",
    "free_burst",
    "icmp_echo",
    "set_macs",
    "swap_macs",
]

ETHERTYPE_ARP = 0x0806
ARP_LENGTH = 28  # Ethernet/IPv4 ARP payload
ARP_REQUEST = 1
ARP_REPLY = 2
PROTO_ICMP = 1
ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0

# csum_prepare's mode bits: offload the IPv4 header checksum / the TCP and UDP checksums to the
# port (TX offload flags); a cleared bit means the checksum is computed here in software.
CSUM_HW_IP = 1
CSUM_HW_L4 = 2

# csum_prepare's counters (int64 array of CSUM_COUNTERS words, added to).
CSUM_RX_BAD_IP = 0  # received with the IP checksum flagged bad by the port
CSUM_RX_BAD_L4 = 1  # received with the TCP/UDP checksum flagged bad
CSUM_IPV4 = 2
CSUM_IPV6 = 3
CSUM_UDP = 4
CSUM_TCP = 5
CSUM_OTHER = 6  # neither TCP nor UDP over IP: forwarded without a checksum request
CSUM_COUNTERS = 7

# icmp_echo's counters.
ECHO_ARP_REPLIES = 0
ECHO_ICMP_REPLIES = 1
ECHO_DROPPED = 2
ECHO_COUNTERS = 3

# build_flows' state words (int64 array).
FLOW_NEXT = 0  # the flow the next frame gets
FLOW_COUNT = 1  # how many flows
FLOW_STATE_WORDS = 2

_IPV4_DST = 30  # offsets in the UDP/IPv4 template (no VLAN tag)
_IPV4_CHECKSUM = 24
_UDP_SRC_PORT = 34


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _head_segment(pool, head):
    """(memory, start, length) of the first segment of the packet at ``head``; start is -1 when
    the index or the recorded range is not valid."""
    if head < 0 or head >= pool.refcnt.shape[0]:
        return pool.data, np.int64(-1), np.int64(0)
    offset = np.int64(pool.data_off[head])
    length = np.int64(pool.data_len[head])
    owner = np.int64(pool.ext_owner[head])
    if owner >= 0:
        if 2 * owner + 1 >= pool.ext_memory.shape[0]:
            return pool.data, np.int64(-1), np.int64(0)
        memory = table_array(pool.ext_memory, owner, np.uint8)
        start = np.int64(pool.ext_base[head]) + offset
    else:
        memory = pool.data
        start = np.int64(head) * pool.state[mp.ST_DATA_ROOM] + offset
    if offset < 0 or length < 0 or start < 0 or start + length > memory.shape[0]:
        return memory, np.int64(-1), np.int64(0)
    return memory, start, length


@njit(nogil=True, cache=True, _nrt=False)
def free_burst(ptab, indices, count):
    """Free ``indices[:count]`` (one reference each); returns how many frees were accepted."""
    return mp.mp_free_bulk(pool_from_table(ptab), indices, count)


@njit(nogil=True, cache=True, _nrt=False)
def swap_macs(ptab, indices, count):
    """macswap: exchange the destination and source MAC addresses of every packet."""
    pool = pool_from_table(ptab)
    for k in range(count):
        memory, start, length = _head_segment(pool, indices[k])
        if start < 0 or length < ETH_HEADER:
            continue
        for b in range(6):
            byte = memory[start + b]
            memory[start + b] = memory[start + 6 + b]
            memory[start + 6 + b] = byte


@njit(nogil=True, cache=True, _nrt=False)
def set_macs(ptab, indices, count, destination, source):
    """mac: destination MAC := ``destination``, source MAC := ``source`` (uint8[6] each)."""
    pool = pool_from_table(ptab)
    for k in range(count):
        memory, start, length = _head_segment(pool, indices[k])
        if start < 0 or length < ETH_HEADER:
            continue
        for b in range(6):
            memory[start + b] = destination[b]
            memory[start + 6 + b] = source[b]


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _fill_from_template(pool, out, count, template, length):
    """Take ``count`` buffers into ``out`` and copy ``template[:length]`` into each; all or none."""
    if count <= 0 or length <= 0 or length > template.shape[0]:
        return 0
    if mp.mp_alloc_bulk(pool, out, count) != count:
        return 0
    data_room = pool.state[mp.ST_DATA_ROOM]
    for k in range(count):
        index = out[k]
        offset = np.int64(pool.data_off[index])
        copy_bytes(pool.data, np.int64(index) * data_room + offset, template, 0, length)
        pool.data_len[index] = length
        pool.pkt_len[index] = length
    return count


@njit(nogil=True, cache=True, _nrt=False)
def build_frames(ptab, out, count, template, length):
    """txonly: ``count`` new packets, each a copy of ``template[:length]``, into ``out``.

    Returns ``count``, or 0 (nothing taken) when the mempool has fewer free buffers. The caller
    checked that ``length`` fits in one buffer after the headroom.
    """
    return _fill_from_template(pool_from_table(ptab), out, count, template, length)


@njit(nogil=True, cache=True, _nrt=False)
def build_flows(ptab, out, count, template, length, state):
    """flowgen: like ``build_frames`` from a UDP/IPv4 template, then frame k of the burst goes
    to flow ``state[FLOW_NEXT] + k`` (mod ``state[FLOW_COUNT]``): that number is added to the
    destination address and to the UDP source port, and the IPv4 header checksum is redone."""
    pool = pool_from_table(ptab)
    made = _fill_from_template(pool, out, count, template, length)
    if made == 0:
        return 0
    flows = max(state[FLOW_COUNT], 1)
    flow = state[FLOW_NEXT] % flows
    base_address = (read_be16(template, _IPV4_DST) << 16) | read_be16(template, _IPV4_DST + 2)
    base_port = read_be16(template, _UDP_SRC_PORT)
    data_room = pool.state[mp.ST_DATA_ROOM]
    for k in range(made):
        index = out[k]
        start = np.int64(index) * data_room + np.int64(pool.data_off[index])
        address = (base_address + flow) & 0xFFFFFFFF
        write_be16(pool.data, start + _IPV4_DST, address >> 16)
        write_be16(pool.data, start + _IPV4_DST + 2, address & 0xFFFF)
        write_be16(pool.data, start + _UDP_SRC_PORT, (base_port + flow) & 0xFFFF)
        write_be16(pool.data, start + _IPV4_CHECKSUM, 0)
        header = start + ETH_HEADER
        write_be16(pool.data, start + _IPV4_CHECKSUM, np.int64(internet_checksum(pool.data, header, 20)))
        flow += 1
        if flow >= flows:
            flow = 0
    state[FLOW_NEXT] = flow
    return made


@njit(nogil=True, cache=True, _nrt=False)
def csum_prepare(ptab, indices, count, destination, source, hw, counters, parse):
    """csum: count bad receive checksums, rewrite the MACs (as mac does), and for IPv4/IPv6
    with TCP or UDP ask the port for the checksums (TX offload flags, header lengths, the
    pseudo-header sum seeded in the L4 field as DPDK's csum engine does) or, for the parts
    whose ``hw`` bit is clear, compute them here. ``parse`` is scratch (int64[PARSE_FIELDS])."""
    pool = pool_from_table(ptab)
    for k in range(count):
        head = indices[k]
        memory, start, length = _head_segment(pool, head)
        if start < 0:
            continue
        rx_flags = pool.ol_flags[head]
        if (rx_flags & np.uint64(mp.RX_IP_CKSUM_MASK)) == np.uint64(mp.RX_IP_CKSUM_BAD):
            counters[CSUM_RX_BAD_IP] += 1
        if (rx_flags & np.uint64(mp.RX_L4_CKSUM_MASK)) == np.uint64(mp.RX_L4_CKSUM_BAD):
            counters[CSUM_RX_BAD_L4] += 1
        if length < ETH_HEADER:
            continue
        for b in range(6):
            memory[start + b] = destination[b]
            memory[start + 6 + b] = source[b]
        pool.ol_flags[head] = np.uint64(0)  # what the packet asks of the TX path, nothing else
        parse_frame(memory, start, length, parse)
        l3, ethertype, l4, protocol, l4_length, fragment = (
            parse[0],
            parse[1],
            parse[2],
            parse[3],
            parse[4],
            parse[5],
        )
        is_ipv4 = ethertype == ETHERTYPE_IPV4
        if l3 < 0 or not (is_ipv4 or ethertype == ETHERTYPE_IPV6) or l4 < 0:
            counters[CSUM_OTHER] += 1
            continue
        flags = np.uint64(0)
        if is_ipv4:
            counters[CSUM_IPV4] += 1
            flags |= np.uint64(mp.TX_IPV4)
            if hw & CSUM_HW_IP:
                write_be16(memory, start + l3 + 10, 0)
                flags |= np.uint64(mp.TX_IP_CKSUM)
            else:
                write_be16(memory, start + l3 + 10, 0)
                write_be16(memory, start + l3 + 10, np.int64(internet_checksum(memory, start + l3, l4 - l3)))
        else:
            counters[CSUM_IPV6] += 1
            flags |= np.uint64(mp.TX_IPV6)
        pool.l2_len[head] = l3
        pool.l3_len[head] = l4 - l3
        whole = pool.next_seg[head] < 0 and l4 + l4_length <= length
        if fragment != 0 or l4_length <= 0 or protocol not in (PROTO_UDP, PROTO_TCP):
            counters[CSUM_OTHER] += 1
            pool.ol_flags[head] = flags
            continue
        if protocol == PROTO_UDP:
            counters[CSUM_UDP] += 1
            field = l4 + 6
            header_length = 8
            l4_flag = np.uint64(mp.TX_UDP_CKSUM)
        else:
            counters[CSUM_TCP] += 1
            field = l4 + 16
            header_length = np.int64(memory[start + l4 + 12] >> 4) * 4 if l4 + 13 <= length else 20
            l4_flag = np.uint64(mp.TX_TCP_CKSUM)
        if l4 + header_length > length or field + 2 > length:
            pool.ol_flags[head] = flags
            continue
        pool.l4_len[head] = header_length
        if hw & CSUM_HW_L4:
            # The pseudo-header sum, folded, not complemented: what a NIC adds the rest to.
            seed = pseudo_header_sum(memory, start + l3, is_ipv4, protocol, l4_length)
            write_be16(memory, start + field, 0xFFFF ^ np.int64(fold_checksum(seed)))
            flags |= l4_flag
        elif whole:
            write_be16(memory, start + field, 0)
            total = pseudo_header_sum(memory, start + l3, is_ipv4, protocol, l4_length)
            total += ones_complement_sum(memory, start + l4, l4_length)
            value = np.int64(fold_checksum(total))
            if value == 0 and protocol == PROTO_UDP:
                value = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
            write_be16(memory, start + field, value)
        pool.ol_flags[head] = flags


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _answer_arp(memory, start, length, mac):
    """Turn an Ethernet/IPv4 ARP request into the reply from ``mac`` in place; False if it is not one."""
    arp = start + ETH_HEADER
    if length < ETH_HEADER + ARP_LENGTH:
        return False
    if read_be16(memory, arp) != 1 or read_be16(memory, arp + 2) != ETHERTYPE_IPV4:
        return False
    if memory[arp + 4] != 6 or memory[arp + 5] != 4 or read_be16(memory, arp + 6) != ARP_REQUEST:
        return False
    write_be16(memory, arp + 6, ARP_REPLY)
    for b in range(6):
        requester = memory[arp + 8 + b]
        memory[start + b] = requester  # Ethernet destination: the requester
        memory[start + 6 + b] = mac[b]
        memory[arp + 18 + b] = requester  # target hardware address
        memory[arp + 8 + b] = mac[b]  # sender hardware address: the answer
    for b in range(4):
        asked = memory[arp + 24 + b]
        memory[arp + 24 + b] = memory[arp + 14 + b]  # target protocol address: the requester's
        memory[arp + 14 + b] = asked  # sender protocol address: the one asked about
    return True


@njit(nogil=True, cache=True, inline="always", _nrt=False)
def _answer_echo(memory, start, length, mac, parse):
    """Turn an ICMP echo request over IPv4 into its reply in place; False if it is not one."""
    parse_frame(memory, start, length, parse)
    l3, ethertype, l4, protocol, l4_length, fragment = (
        parse[0],
        parse[1],
        parse[2],
        parse[3],
        parse[4],
        parse[5],
    )
    if ethertype != ETHERTYPE_IPV4 or l4 < 0 or protocol != PROTO_ICMP or fragment != 0:
        return False
    if l4_length < 8 or l4 + l4_length > length or memory[start + l4] != ICMP_ECHO_REQUEST:
        return False
    for b in range(6):
        memory[start + b] = memory[start + 6 + b]
        memory[start + 6 + b] = mac[b]
    for b in range(4):  # swapping the addresses leaves the IPv4 header checksum as it was
        byte = memory[start + l3 + 12 + b]
        memory[start + l3 + 12 + b] = memory[start + l3 + 16 + b]
        memory[start + l3 + 16 + b] = byte
    memory[start + l4] = ICMP_ECHO_REPLY
    write_be16(memory, start + l4 + 2, 0)
    write_be16(memory, start + l4 + 2, np.int64(internet_checksum(memory, start + l4, l4_length)))
    return True


@njit(nogil=True, cache=True, _nrt=False)
def icmp_echo(ptab, indices, count, mac, counters, parse):
    """icmpecho: ARP requests and ICMP echo requests become their replies from ``mac`` and stay,
    at the front of ``indices``; every other packet is freed. Returns how many stay."""
    pool = pool_from_table(ptab)
    kept = 0
    for k in range(count):
        head = indices[k]
        memory, start, length = _head_segment(pool, head)
        answered = False
        if start >= 0 and length >= ETH_HEADER:
            ethertype = read_be16(memory, start + 12)
            if ethertype == ETHERTYPE_ARP:
                answered = _answer_arp(memory, start, length, mac)
                if answered:
                    counters[ECHO_ARP_REPLIES] += 1
            elif ethertype == ETHERTYPE_IPV4:
                answered = _answer_echo(memory, start, length, mac, parse)
                if answered:
                    counters[ECHO_ICMP_REPLIES] += 1
        if answered:
            pool.ol_flags[head] = np.uint64(0)
            indices[kept] = head
            kept += 1
        else:
            counters[ECHO_DROPPED] += 1
            mp.mp_free(pool, head)
    return kept


# What the forwarding loop passes each kernel: the pool table, int32 indices, a count, and the
# mode's own arrays (uint8 MACs and template, int64 counters and state).
_BURST = "int64[::1], int32[::1], int64"
SIGNATURES = {
    "free_burst": f"({_BURST})",
    "swap_macs": f"({_BURST})",
    "set_macs": f"({_BURST}, uint8[::1], uint8[::1])",
    "build_frames": f"({_BURST}, uint8[::1], int64)",
    "build_flows": f"({_BURST}, uint8[::1], int64, int64[::1])",
    "csum_prepare": f"({_BURST}, uint8[::1], uint8[::1], int64, int64[::1], int64[::1])",
    "icmp_echo": f"({_BURST}, uint8[::1], int64[::1], int64[::1])",
}


def entry(name: str):
    """Kernel ``name`` compiled for the forwarding loop's argument types, called directly."""
    return compiled(globals()[name], SIGNATURES[name])
