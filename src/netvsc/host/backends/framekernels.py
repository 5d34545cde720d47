"""Per-frame kernels that only the host backends need: the TAP's virtio-net header, frame queues,
frame pools and the vswitch's MAC table.

Layer 7 (host), numba kernels over the arrays of a ``FrameBatch`` (frame ``i`` lives at
``data[i * frame_capacity:]`` for ``length[i]`` bytes). Every offset read from a frame is
checked against the frame's length before it is used: the frames come from the guest or
from the wire, and numba does not bounds-check.

Header parsing, checksums, LSO, VLAN insertion/stripping and receive verification are not
here: they live once in ``netvsc.fastpath.offload``, done by the host's transmit and receive
paths for every backend; the TAP kernels below only call its helpers.

- ``prepare_tap_tx``: the guest's offload requests turned into a virtio-net header for a
  TAP, with only what the kernel cannot do (the IPv4 header) done here.
- ``tap_rx_checksums``: the receive checksum state a TAP's virtio-net header vouches for.
- ``queue_push`` / ``queue_pop``: a bounded FIFO of frames with metadata (loopback, vswitch).
- ``pool_copy``: copies frames from a prebuilt pool into a batch (gen, pcap replay).
- ``switch_forward``: the vswitch's MAC learning and egress choice.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.checksum import fold_checksum
from netvsc.fastpath.offload import (
    ETH_HEADER,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPV6_HEADER,
    PROTO_TCP,
    PROTO_UDP,
    TCP_CHECKSUM_FIELD,
    UDP_CHECKSUM_FIELD,
    VLAN_TAG,
    fill_ipv4_header_checksum,
    fill_l4_checksum,
    parse_frame,
    pseudo_header_sum,
    read_be16,
    receive_checksum_state,
    write_be16,
)
from netvsc.host.frames import TX_CSUM_IP, TX_CSUM_TCP, TX_CSUM_UDP, TX_LSO

# virtio-net header (include/uapi/linux/virtio_net.h), the 12-byte form with num_buffers.
VNET_HDR_LEN = 12
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4


@njit(nogil=True, cache=True)
def _l4_request(flags, protocol):
    """Which transport checksum the request means: 6 (TCP), 17 (UDP) or 0; TCP wins (host.md 3.3)."""
    if (flags & (TX_CSUM_TCP | TX_LSO)) != 0:
        return PROTO_TCP if protocol == PROTO_TCP else 0
    if (flags & TX_CSUM_UDP) != 0:
        return PROTO_UDP if protocol == PROTO_UDP else 0
    return 0


@njit(nogil=True, cache=True)
def _refuse_offload(vnet, verdict, index):
    """Frame ``index`` goes out as the guest wrote it: a plain virtio header, verdict 2."""
    for k in range(VNET_HDR_LEN):
        vnet[index, k] = 0
    verdict[index] = 2


@njit(nogil=True, cache=True)
def prepare_tap_tx(data, frame_capacity, length, tx_flags, mss, vlan_tci, count, vnet, parsed):
    """Build one virtio-net header per frame in ``vnet`` (uint8[count, 12]); returns a verdict per frame.

    Verdict 1: send with the header; 2: the headers do not allow the requested offload, send
    the frame as it is (plain header) and count it; 0: the frame's length is impossible, drop.

    Checksum requests become NEEDS_CSUM with csum_start/csum_offset, and the checksum field is
    set to the pseudo-header sum the kernel expects there (the guest's seed is not trusted);
    LSO becomes GSO TCPv4/TCPv6 with gso_size = MSS and hdr_len = l2 + l3 + l4 headers. The
    IPv4 header (and the lengths LSO leaves zero) are done here: a TAP has no offload for
    them. A VLAN tag to insert (``vlan_tci >= 0``) shifts every offset by 4.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, tx_flags, mss = borrowed(data), borrowed(length), borrowed(tx_flags), borrowed(mss)
    vlan_tci, vnet, parsed = borrowed(vlan_tci), borrowed(vnet), borrowed(parsed)
    limit = min(count, length.shape[0], tx_flags.shape[0], mss.shape[0], vlan_tci.shape[0], vnet.shape[0])
    ok = np.zeros(limit, dtype=np.uint8)
    for i in range(limit):
        for k in range(VNET_HDR_LEN):
            vnet[i, k] = 0
        frame_len = np.int64(length[i])
        start = np.int64(i) * frame_capacity
        if frame_len < ETH_HEADER or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            continue
        flags = tx_flags[i]
        shift = VLAN_TAG if vlan_tci[i] >= 0 else 0
        if (flags & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            ok[i] = 1
            continue
        is_lso = (flags & TX_LSO) != 0
        # An LSO frame has its IP length fields zeroed by the guest (NDIS LSOv2): fill them first,
        # since the kernel segments by them.
        if is_lso and frame_len >= ETH_HEADER + IPV6_HEADER:
            if read_be16(data, start + 12) == ETHERTYPE_IPV4 and (data[start + 14] >> 4) == 4:
                write_be16(data, start + 16, frame_len - ETH_HEADER)
            elif read_be16(data, start + 12) == ETHERTYPE_IPV6 and (data[start + 14] >> 4) == 6:
                write_be16(data, start + 18, frame_len - ETH_HEADER - IPV6_HEADER)
        parse_frame(data, start, frame_len, parsed)
        l3 = parsed[0]
        ethertype = parsed[1]
        l4 = parsed[2]
        if l4 < 0:
            _refuse_offload(vnet, ok, i)
            continue
        if ethertype == ETHERTYPE_IPV4 and (flags & (TX_CSUM_IP | TX_LSO)) != 0:
            fill_ipv4_header_checksum(data, start, l3, l4 - l3)
        if (flags & (TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            ok[i] = 1
            continue
        protocol = _l4_request(flags, parsed[3])
        if protocol == 0 or parsed[5] == 1:
            _refuse_offload(vnet, ok, i)
            continue
        l4_len = parsed[4] if parsed[4] > 0 else frame_len - l4
        field = TCP_CHECKSUM_FIELD if protocol == PROTO_TCP else UDP_CHECKSUM_FIELD
        if l4 + l4_len > frame_len or l4_len < field + 2:
            _refuse_offload(vnet, ok, i)
            continue
        tcp_header_len = 0
        segment = np.int64(mss[i])
        if is_lso:
            # Checked before anything is written, so a refused frame leaves exactly as it came.
            if protocol != PROTO_TCP or l4 + 20 > frame_len:
                _refuse_offload(vnet, ok, i)
                continue
            tcp_header_len = np.int64(data[start + l4 + 12] >> 4) * 4
            if tcp_header_len < 20 or l4 + tcp_header_len > frame_len or segment <= 0 or segment > 0xFFFF:
                _refuse_offload(vnet, ok, i)
                continue
        # The kernel adds the sum from csum_start to the end into this field and complements it.
        pseudo = pseudo_header_sum(data, start + l3, ethertype == ETHERTYPE_IPV4, protocol, l4_len)
        write_be16(data, start + l4 + field, np.uint16(0xFFFF) ^ fold_checksum(pseudo))
        csum_start = l4 + shift
        vnet[i, 0] = VNET_F_NEEDS_CSUM
        vnet[i, 6] = np.uint8(csum_start & 0xFF)
        vnet[i, 7] = np.uint8(csum_start >> 8)
        vnet[i, 8] = np.uint8(field)
        if is_lso and frame_len - l4 - tcp_header_len > segment:
            header_len = l4 + tcp_header_len + shift
            vnet[i, 1] = VNET_GSO_TCPV4 if ethertype == ETHERTYPE_IPV4 else VNET_GSO_TCPV6
            vnet[i, 2] = np.uint8(header_len & 0xFF)
            vnet[i, 3] = np.uint8(header_len >> 8)
            vnet[i, 4] = np.uint8(segment & 0xFF)
            vnet[i, 5] = np.uint8(segment >> 8)
        ok[i] = 1
    return ok


@njit(nogil=True, cache=True)
def tap_rx_checksums(data, frame_capacity, length, rx_checksum, vnet_flags, first, count, parsed):
    """Set ``rx_checksum`` of frames ``first..first+count-1`` from their virtio-net flags.

    ``vnet_flags[i - first]``: DATA_VALID (the kernel verified the checksums) gives the good
    bits of the frame's protocols; NEEDS_CSUM (the kernel left the transport checksum partial)
    has it computed here from scratch, then reported good; anything else is left 0 so the
    host's receive path verifies it. Frames may still carry their 802.1Q tag: the receive path
    strips it later, exactly once.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, rx_checksum = borrowed(data), borrowed(length), borrowed(rx_checksum)
    vnet_flags, parsed = borrowed(vnet_flags), borrowed(parsed)
    end = min(first + count, length.shape[0], rx_checksum.shape[0])
    for i in range(first, end):
        rx_checksum[i] = 0
        source_flags = vnet_flags[i - first] if i - first < vnet_flags.shape[0] else 0
        if (source_flags & (VNET_F_DATA_VALID | VNET_F_NEEDS_CSUM)) == 0:
            continue
        start = np.int64(i) * frame_capacity
        frame_len = np.int64(length[i])
        if frame_len < 0 or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            continue
        parse_frame(data, start, frame_len, parsed)
        l3 = parsed[0]
        if l3 < 0:
            continue
        if (source_flags & VNET_F_NEEDS_CSUM) != 0:
            l4 = parsed[2]
            protocol = parsed[3]
            l4_len = parsed[4]
            field = TCP_CHECKSUM_FIELD if protocol == PROTO_TCP else UDP_CHECKSUM_FIELD
            if (
                l4 < 0
                or parsed[5] == 1
                or (protocol != PROTO_TCP and protocol != PROTO_UDP)
                or l4_len < field + 2
                or l4 + l4_len > frame_len
            ):
                continue  # nothing we can complete: left to the receive path's verification
            fill_l4_checksum(data, start, l3, l4, l4_len, parsed[1] == ETHERTYPE_IPV4, protocol)
        rx_checksum[i] = receive_checksum_state(data, start, frame_len, l3, True)


# Queue state: [head (next to pop), count, dropped_full, dropped_oversize]
Q_HEAD = 0
Q_COUNT = 1
Q_DROPPED_FULL = 2
Q_DROPPED_OVERSIZE = 3


@njit(nogil=True, cache=True)
def queue_push(
    src_data,
    src_capacity,
    src_length,
    src_vlan,
    src_checksum,
    count,
    egress,
    port,
    q_data,
    q_capacity,
    q_length,
    q_vlan,
    q_checksum,
    q_state,
):
    """Append frames ``i < count`` with ``egress[i] == port`` or ``egress[i] == -1`` (flood).

    A full queue or a frame longer than a queue slot drops the frame (counted in q_state).
    Returns how many were queued.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    src_data, src_length, src_vlan = borrowed(src_data), borrowed(src_length), borrowed(src_vlan)
    src_checksum, egress, q_data = borrowed(src_checksum), borrowed(egress), borrowed(q_data)
    q_length, q_vlan, q_checksum = borrowed(q_length), borrowed(q_vlan), borrowed(q_checksum)
    q_state = borrowed(q_state)
    slots = q_length.shape[0]
    queued = 0
    limit = min(count, src_length.shape[0], src_vlan.shape[0], src_checksum.shape[0], egress.shape[0])
    for i in range(limit):
        if egress[i] != port and egress[i] != -1:
            continue
        frame_len = np.int64(src_length[i])
        start = np.int64(i) * src_capacity
        if frame_len < 0 or frame_len > q_capacity or start + frame_len > src_data.shape[0]:
            q_state[Q_DROPPED_OVERSIZE] += 1
            continue
        if q_state[Q_COUNT] >= slots:
            q_state[Q_DROPPED_FULL] += 1
            continue
        slot = (q_state[Q_HEAD] + q_state[Q_COUNT]) % slots
        at = slot * q_capacity
        if at + frame_len > q_data.shape[0]:
            q_state[Q_DROPPED_OVERSIZE] += 1
            continue
        copy_bytes(q_data, at, src_data, start, frame_len)
        q_length[slot] = frame_len
        q_vlan[slot] = src_vlan[i]
        q_checksum[slot] = src_checksum[i]
        q_state[Q_COUNT] += 1
        queued += 1
    return queued


@njit(nogil=True, cache=True)
def _set_rx_metadata(
    length, vlan_tci, rx_checksum, tx_flags, l4_offset, mss, hash_value, hash_info, queue,
    index, frame_len, frame_vlan, frame_checksum,
):
    """Metadata of a received frame just copied into batch slot ``index``: its length, VLAN and
    checksum state; the transmit-side and RSS fields cleared (rxpath fills RSS)."""
    length[index] = frame_len
    vlan_tci[index] = frame_vlan
    rx_checksum[index] = frame_checksum
    tx_flags[index] = 0
    l4_offset[index] = 0
    mss[index] = 0
    hash_value[index] = 0
    hash_info[index] = 0
    queue[index] = 0


@njit(nogil=True, cache=True)
def queue_pop(
    q_data,
    q_capacity,
    q_length,
    q_vlan,
    q_checksum,
    q_state,
    dst_data,
    dst_capacity,
    dst_length,
    dst_vlan,
    dst_checksum,
    dst_tx_flags,
    dst_l4_offset,
    dst_mss,
    dst_hash_value,
    dst_hash_info,
    dst_queue,
    first,
    limit,
):
    """Move up to ``limit`` queued frames into batch slots ``first..``; returns how many."""
    # No reference counting inside the call (fastpath/borrow.py).
    q_data, q_length, q_vlan = borrowed(q_data), borrowed(q_length), borrowed(q_vlan)
    q_checksum, q_state, dst_data = borrowed(q_checksum), borrowed(q_state), borrowed(dst_data)
    dst_length, dst_vlan, dst_checksum = borrowed(dst_length), borrowed(dst_vlan), borrowed(dst_checksum)
    dst_tx_flags, dst_l4_offset = borrowed(dst_tx_flags), borrowed(dst_l4_offset)
    dst_mss, dst_hash_value = borrowed(dst_mss), borrowed(dst_hash_value)
    dst_hash_info, dst_queue = borrowed(dst_hash_info), borrowed(dst_queue)
    slots = q_length.shape[0]
    moved = 0
    while moved < limit and q_state[Q_COUNT] > 0:
        index = first + moved
        if index >= dst_length.shape[0]:
            break
        slot = q_state[Q_HEAD]
        frame_len = np.int64(q_length[slot])
        at = slot * q_capacity
        to = np.int64(index) * dst_capacity
        q_state[Q_HEAD] = (slot + 1) % slots
        q_state[Q_COUNT] -= 1
        if frame_len > dst_capacity or to + frame_len > dst_data.shape[0] or at + frame_len > q_data.shape[0]:
            q_state[Q_DROPPED_OVERSIZE] += 1
            continue
        copy_bytes(dst_data, to, q_data, at, frame_len)
        _set_rx_metadata(
            dst_length, dst_vlan, dst_checksum, dst_tx_flags, dst_l4_offset, dst_mss, dst_hash_value,
            dst_hash_info, dst_queue, index, frame_len, q_vlan[slot], q_checksum[slot],
        )
        moved += 1
    return moved


@njit(nogil=True, cache=True)
def pool_copy(
    pool_data,
    pool_offset,
    pool_length,
    pool_vlan,
    pool_checksum,
    cursor,
    dst_data,
    dst_capacity,
    dst_length,
    dst_vlan,
    dst_checksum,
    dst_tx_flags,
    dst_l4_offset,
    dst_mss,
    dst_hash_value,
    dst_hash_info,
    dst_queue,
    first,
    count,
):
    """Copy pool frames ``cursor, cursor+1, ...`` (wrapping) into batch slots ``first..first+count-1``.

    Frames that do not fit a batch slot are skipped. Returns (copied, consumed): frames put
    in the batch, and pool positions used (copied + skipped), so the caller's cursor moves
    past a frame that can never fit instead of stalling on it.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    pool_data, pool_offset, pool_length = borrowed(pool_data), borrowed(pool_offset), borrowed(pool_length)
    pool_vlan, pool_checksum, dst_data = borrowed(pool_vlan), borrowed(pool_checksum), borrowed(dst_data)
    dst_length, dst_vlan, dst_checksum = borrowed(dst_length), borrowed(dst_vlan), borrowed(dst_checksum)
    dst_tx_flags, dst_l4_offset = borrowed(dst_tx_flags), borrowed(dst_l4_offset)
    dst_mss, dst_hash_value = borrowed(dst_mss), borrowed(dst_hash_value)
    dst_hash_info, dst_queue = borrowed(dst_hash_info), borrowed(dst_queue)
    pool_size = pool_length.shape[0]
    copied = 0
    consumed = 0
    if pool_size == 0:
        return 0, 0
    for n in range(count):
        index = first + copied
        if index >= dst_length.shape[0]:
            break
        consumed = n + 1
        frame = (cursor + n) % pool_size
        frame_len = np.int64(pool_length[frame])
        at = np.int64(pool_offset[frame])
        to = np.int64(index) * dst_capacity
        if (
            frame_len > dst_capacity
            or to + frame_len > dst_data.shape[0]
            or at < 0
            or at + frame_len > pool_data.shape[0]
        ):
            continue
        copy_bytes(dst_data, to, pool_data, at, frame_len)
        _set_rx_metadata(
            dst_length, dst_vlan, dst_checksum, dst_tx_flags, dst_l4_offset, dst_mss, dst_hash_value,
            dst_hash_info, dst_queue, index, frame_len, pool_vlan[frame], pool_checksum[frame],
        )
        copied += 1
    return copied, consumed


# MAC learning table (vswitch): open addressing, key = MAC | 1 << 48 (0 = empty slot).
MAC_PRESENT = np.int64(1) << 48
EGRESS_FLOOD = -1
EGRESS_DROP = -2


@njit(nogil=True, cache=True)
def _mac_at(data, at):
    value = np.int64(0)
    for k in range(6):
        value = (value << 8) | np.int64(data[at + k])
    return value


@njit(nogil=True, cache=True)
def _table_find(keys, key):
    size = keys.shape[0]
    slot = (key ^ (key >> 13) ^ (key >> 29)) & (size - 1)
    for _ in range(size):
        if keys[slot] == key or keys[slot] == 0:
            return slot
        slot = (slot + 1) & (size - 1)
    return -1


@njit(nogil=True, cache=True)
def switch_forward(data, frame_capacity, length, count, ingress_port, mac_keys, mac_ports, egress):
    """Learn each frame's source MAC on ``ingress_port`` and pick its egress port.

    egress[i] = a port, EGRESS_FLOOD (unknown unicast, broadcast, multicast) or EGRESS_DROP
    (runt, or destination learned on the ingress port: never sent back where it came from).
    ``mac_keys`` size is a power of two; a full table learns nothing more (frames flood).
    Returns the number of frames dropped.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, mac_keys = borrowed(data), borrowed(length), borrowed(mac_keys)
    mac_ports, egress = borrowed(mac_ports), borrowed(egress)
    limit = min(count, length.shape[0], egress.shape[0])
    dropped = 0
    for i in range(limit):
        start = np.int64(i) * frame_capacity
        frame_len = np.int64(length[i])
        if frame_len < ETH_HEADER or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            egress[i] = EGRESS_DROP
            dropped += 1
            continue
        source = _mac_at(data, start + 6)
        if (data[start + 6] & 1) == 0:  # a group address is never learned
            slot = _table_find(mac_keys, source | MAC_PRESENT)
            if slot >= 0:
                mac_keys[slot] = source | MAC_PRESENT
                mac_ports[slot] = ingress_port
        if (data[start] & 1) != 0:
            egress[i] = EGRESS_FLOOD
            continue
        slot = _table_find(mac_keys, _mac_at(data, start) | MAC_PRESENT)
        if slot < 0 or mac_keys[slot] == 0:
            egress[i] = EGRESS_FLOOD
        elif mac_ports[slot] == ingress_port:
            egress[i] = EGRESS_DROP
            dropped += 1
        else:
            egress[i] = mac_ports[slot]
    return dropped
