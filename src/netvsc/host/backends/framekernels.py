"""Per-frame kernels shared by the host backends: header parsing, checksums, VLAN, frame queues.

Layer 7 (host), numba kernels over the arrays of a ``FrameBatch`` (frame ``i`` lives at
``data[i * frame_capacity:]`` for ``length[i]`` bytes). Every offset read from a frame is
checked against the frame's length before it is used: the frames come from the guest or
from the wire, and numba does not bounds-check.

- ``fill_tx_checksums``: does the checksum work the guest asked for (IPv4 header, TCP, UDP,
  and the lengths an LSO frame leaves zero), computed from scratch (DESIGN.md §7.10).
- ``prepare_tap_tx``: the same requests turned into a virtio-net header for a TAP, with
  only what the kernel cannot do (the IPv4 header) done here.
- ``finish_rx``: strips an 802.1Q tag into ``vlan_tci`` and sets the RNDIS receive checksum
  bits, verifying checksums in software unless the source vouched for them.
- ``queue_push`` / ``queue_pop``: a bounded FIFO of frames with metadata (loopback, vswitch).
- ``pool_copy``: copies frames from a prebuilt pool into a batch (gen, pcap replay).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.fastpath.checksum import (
    fold_checksum,
    ones_complement_sum,
    pseudo_header_sum_ipv4,
    pseudo_header_sum_ipv6,
)
from netvsc.host.frames import TX_CSUM_IP, TX_CSUM_TCP, TX_CSUM_UDP, TX_LSO
from netvsc.wire.rndis import (
    CHECKSUM_RX_IP_FAILED,
    CHECKSUM_RX_IP_SUCCEEDED,
    CHECKSUM_RX_TCP_FAILED,
    CHECKSUM_RX_TCP_SUCCEEDED,
    CHECKSUM_RX_UDP_FAILED,
    CHECKSUM_RX_UDP_SUCCEEDED,
)

ETH_HEADER_LEN = 14
VLAN_TAG_LEN = 4
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_CHECKSUM_OFFSET = 16
UDP_CHECKSUM_OFFSET = 6

# virtio-net header (include/uapi/linux/virtio_net.h), the 12-byte form with num_buffers.
VNET_HDR_LEN = 12
VNET_F_NEEDS_CSUM = 1
VNET_F_DATA_VALID = 2
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
VNET_GSO_TCPV6 = 4

# Result of ``parse_frame``: offsets relative to the frame start, -1 = absent.
PARSE_FIELDS = 6  # l3 offset, ethertype, l4 offset, ip protocol, l4 length (from the IP header), fragment


@njit(nogil=True, cache=True)
def _be16(data, at):
    return (np.int64(data[at]) << 8) | np.int64(data[at + 1])


@njit(nogil=True, cache=True)
def _put_be16(data, at, value):
    data[at] = np.uint8((value >> 8) & 0xFF)
    data[at + 1] = np.uint8(value & 0xFF)


@njit(nogil=True, cache=True)
def parse_frame(data, start, length, out):
    """Fill ``out`` (int64[6]) for the frame at ``data[start:start+length]``.

    out = [l3 offset, ethertype, l4 offset, protocol, l4 length, is_fragment]; -1 where the
    frame does not have that layer. The l4 length comes from the IP header's length field
    (0 when the field is 0, as in an LSO frame) and is checked to fit in the frame.
    """
    for k in range(PARSE_FIELDS):
        out[k] = -1
    if length < ETH_HEADER_LEN or start < 0 or start + length > data.shape[0]:
        return
    ethertype = _be16(data, start + 12)
    l3 = ETH_HEADER_LEN
    if ethertype == ETHERTYPE_VLAN:
        if length < ETH_HEADER_LEN + VLAN_TAG_LEN:
            return
        ethertype = _be16(data, start + 16)
        l3 = ETH_HEADER_LEN + VLAN_TAG_LEN
    out[0] = l3
    out[1] = ethertype
    out[5] = 0
    if ethertype == ETHERTYPE_IPV4:
        if l3 + 20 > length or (data[start + l3] >> 4) != 4:
            return
        header_len = np.int64(data[start + l3] & 0x0F) * 4
        if header_len < 20 or l3 + header_len > length:
            return
        total_len = _be16(data, start + l3 + 2)
        if total_len != 0 and (total_len < header_len or l3 + total_len > length):
            return
        fragment_field = _be16(data, start + l3 + 6)
        if (fragment_field & 0x2000) != 0 or (fragment_field & 0x1FFF) != 0:
            out[5] = 1
        out[2] = l3 + header_len
        out[3] = np.int64(data[start + l3 + 9])
        out[4] = total_len - header_len if total_len != 0 else 0
    elif ethertype == ETHERTYPE_IPV6:
        if l3 + 40 > length or (data[start + l3] >> 4) != 6:
            return
        payload_len = _be16(data, start + l3 + 4)
        if l3 + 40 + payload_len > length:
            return
        # Extension headers are not walked: TCP/UDP directly after the fixed header only.
        out[2] = l3 + 40
        out[3] = np.int64(data[start + l3 + 6])
        out[4] = payload_len


@njit(nogil=True, cache=True)
def _pseudo_sum(data, start, l3, ethertype, protocol, l4_len):
    if ethertype == ETHERTYPE_IPV4:
        return pseudo_header_sum_ipv4(data, start + l3, protocol, l4_len)
    return pseudo_header_sum_ipv6(data, start + l3, protocol, l4_len)


@njit(nogil=True, cache=True)
def _fill_ipv4_header(data, start, l3, frame_len, fix_length):
    """Set total length (when asked, for LSO frames) and the header checksum, by the header's IHL."""
    header_len = np.int64(data[start + l3] & 0x0F) * 4
    if fix_length:
        _put_be16(data, start + l3 + 2, frame_len - l3)
    data[start + l3 + 10] = 0
    data[start + l3 + 11] = 0
    _put_be16(data, start + l3 + 10, fold_checksum(ones_complement_sum(data, start + l3, header_len)))


@njit(nogil=True, cache=True)
def _l4_request(flags, protocol):
    """Which transport checksum the request means: 6 (TCP), 17 (UDP) or 0; TCP wins (host.md 3.3)."""
    if (flags & (TX_CSUM_TCP | TX_LSO)) != 0:
        return IPPROTO_TCP if protocol == IPPROTO_TCP else 0
    if (flags & TX_CSUM_UDP) != 0:
        return IPPROTO_UDP if protocol == IPPROTO_UDP else 0
    return 0


@njit(nogil=True, cache=True)
def fill_tx_checksums(data, frame_capacity, length, tx_flags, count, parsed):
    """Do the requested checksums of frames ``0..count-1`` in place; returns how many were refused.

    A frame whose headers do not support its request (not IP, transport header outside the
    frame, protocol other than requested) is left as is and counted: the guest gets what it
    sent. ``parsed`` is an int64[6] scratch array.
    """
    refused = 0
    limit = min(count, length.shape[0], tx_flags.shape[0])
    for i in range(limit):
        flags = tx_flags[i]
        if (flags & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            continue
        frame_len = np.int64(length[i])
        start = np.int64(i) * frame_capacity
        if frame_len < 0 or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            refused += 1
            continue
        is_lso = (flags & TX_LSO) != 0
        # An LSO frame has its IP length fields zeroed by the guest (NDIS LSOv2): fill them first.
        if is_lso and frame_len >= ETH_HEADER_LEN + 40:
            if _be16(data, start + 12) == ETHERTYPE_IPV4 and (data[start + 14] >> 4) == 4:
                _put_be16(data, start + 16, frame_len - ETH_HEADER_LEN)
            elif _be16(data, start + 12) == ETHERTYPE_IPV6 and (data[start + 14] >> 4) == 6:
                _put_be16(data, start + 18, frame_len - ETH_HEADER_LEN - 40)
        parse_frame(data, start, frame_len, parsed)
        l3 = parsed[0]
        ethertype = parsed[1]
        l4 = parsed[2]
        if l4 < 0:
            refused += 1
            continue
        if ethertype == ETHERTYPE_IPV4 and (flags & (TX_CSUM_IP | TX_LSO)) != 0:
            _fill_ipv4_header(data, start, l3, frame_len, False)
        protocol = _l4_request(flags, parsed[3])
        if (flags & (TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            continue
        if protocol == 0 or parsed[5] == 1:
            refused += 1
            continue
        l4_len = parsed[4] if parsed[4] > 0 else frame_len - l4
        field = TCP_CHECKSUM_OFFSET if protocol == IPPROTO_TCP else UDP_CHECKSUM_OFFSET
        if l4 + l4_len > frame_len or l4_len < field + 2:
            refused += 1
            continue
        data[start + l4 + field] = 0
        data[start + l4 + field + 1] = 0
        total = _pseudo_sum(data, start, l3, ethertype, protocol, l4_len)
        total += ones_complement_sum(data, start + l4, l4_len)
        checksum = fold_checksum(total)
        if protocol == IPPROTO_UDP and checksum == 0:
            checksum = np.uint16(0xFFFF)  # 0 means "no checksum" in UDP
        _put_be16(data, start + l4 + field, checksum)
    return refused


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
    limit = min(count, length.shape[0], tx_flags.shape[0], mss.shape[0], vlan_tci.shape[0], vnet.shape[0])
    ok = np.zeros(limit, dtype=np.uint8)
    for i in range(limit):
        for k in range(VNET_HDR_LEN):
            vnet[i, k] = 0
        frame_len = np.int64(length[i])
        start = np.int64(i) * frame_capacity
        if frame_len < ETH_HEADER_LEN or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            continue
        flags = tx_flags[i]
        shift = VLAN_TAG_LEN if vlan_tci[i] >= 0 else 0
        if (flags & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            ok[i] = 1
            continue
        is_lso = (flags & TX_LSO) != 0
        if is_lso and frame_len >= ETH_HEADER_LEN + 40:
            if _be16(data, start + 12) == ETHERTYPE_IPV4 and (data[start + 14] >> 4) == 4:
                _put_be16(data, start + 16, frame_len - ETH_HEADER_LEN)
            elif _be16(data, start + 12) == ETHERTYPE_IPV6 and (data[start + 14] >> 4) == 6:
                _put_be16(data, start + 18, frame_len - ETH_HEADER_LEN - 40)
        parse_frame(data, start, frame_len, parsed)
        l3 = parsed[0]
        ethertype = parsed[1]
        l4 = parsed[2]
        if l4 < 0:
            _refuse_offload(vnet, ok, i)
            continue
        if ethertype == ETHERTYPE_IPV4 and (flags & (TX_CSUM_IP | TX_LSO)) != 0:
            _fill_ipv4_header(data, start, l3, frame_len, False)
        if (flags & (TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)) == 0:
            ok[i] = 1
            continue
        protocol = _l4_request(flags, parsed[3])
        if protocol == 0 or parsed[5] == 1:
            _refuse_offload(vnet, ok, i)
            continue
        l4_len = parsed[4] if parsed[4] > 0 else frame_len - l4
        field = TCP_CHECKSUM_OFFSET if protocol == IPPROTO_TCP else UDP_CHECKSUM_OFFSET
        if l4 + l4_len > frame_len or l4_len < field + 2:
            _refuse_offload(vnet, ok, i)
            continue
        tcp_header_len = 0
        segment = np.int64(mss[i])
        if is_lso:
            # Checked before anything is written, so a refused frame leaves exactly as it came.
            if protocol != IPPROTO_TCP or l4 + 20 > frame_len:
                _refuse_offload(vnet, ok, i)
                continue
            tcp_header_len = np.int64(data[start + l4 + 12] >> 4) * 4
            if tcp_header_len < 20 or l4 + tcp_header_len > frame_len or segment <= 0 or segment > 0xFFFF:
                _refuse_offload(vnet, ok, i)
                continue
        # The kernel adds the sum from csum_start to the end into this field and complements it.
        seed = np.uint16(0xFFFF) ^ fold_checksum(_pseudo_sum(data, start, l3, ethertype, protocol, l4_len))
        _put_be16(data, start + l4 + field, seed)
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
def _checksum_state(data, start, frame_len, trusted, parsed):
    """RNDIS receive checksum bits for one frame: trusted = the source vouched (DATA_VALID)."""
    parse_frame(data, start, frame_len, parsed)
    l3 = parsed[0]
    ethertype = parsed[1]
    l4 = parsed[2]
    if l4 < 0:
        return 0
    state = 0
    if ethertype == ETHERTYPE_IPV4:
        header_len = l4 - l3
        if trusted or fold_checksum(ones_complement_sum(data, start + l3, header_len)) == 0:
            state = CHECKSUM_RX_IP_SUCCEEDED
        else:
            return CHECKSUM_RX_IP_FAILED
    protocol = parsed[3]
    l4_len = parsed[4]
    if parsed[5] == 1 or l4_len <= 0 or (protocol != IPPROTO_TCP and protocol != IPPROTO_UDP):
        return state
    good = CHECKSUM_RX_TCP_SUCCEEDED if protocol == IPPROTO_TCP else CHECKSUM_RX_UDP_SUCCEEDED
    bad = CHECKSUM_RX_TCP_FAILED if protocol == IPPROTO_TCP else CHECKSUM_RX_UDP_FAILED
    field = TCP_CHECKSUM_OFFSET if protocol == IPPROTO_TCP else UDP_CHECKSUM_OFFSET
    if l4_len < field + 2:
        return state | bad
    if trusted:
        return state | good
    if protocol == IPPROTO_UDP and _be16(data, start + l4 + field) == 0:
        # No checksum: allowed over IPv4, forbidden over IPv6 (RFC 8200 8.1).
        return state | (good if ethertype == ETHERTYPE_IPV4 else bad)
    total = _pseudo_sum(data, start, l3, ethertype, protocol, l4_len)
    total += ones_complement_sum(data, start + l4, l4_len)
    return state | (good if fold_checksum(total) == 0 else bad)


@njit(nogil=True, cache=True)
def finish_rx(
    data, frame_capacity, length, vlan_tci, rx_checksum, vnet_flags, first, count, strip_vlan, parsed
):
    """For frames ``first..first+count-1``: strip a VLAN tag, then set ``rx_checksum``.

    ``vnet_flags[i - first]`` holds the source's virtio flags (DATA_VALID: trust the checksums;
    NEEDS_CSUM: complete them here), or 0 to verify in software.
    """
    end = min(first + count, length.shape[0], vlan_tci.shape[0], rx_checksum.shape[0])
    for i in range(first, end):
        start = np.int64(i) * frame_capacity
        frame_len = np.int64(length[i])
        if frame_len < 0 or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            rx_checksum[i] = 0
            continue
        if (
            strip_vlan
            and frame_len >= ETH_HEADER_LEN + VLAN_TAG_LEN
            and _be16(data, start + 12) == ETHERTYPE_VLAN
        ):
            vlan_tci[i] = np.int32(_be16(data, start + 14))
            for k in range(start + 12, start + frame_len - VLAN_TAG_LEN):
                data[k] = data[k + VLAN_TAG_LEN]
            frame_len -= VLAN_TAG_LEN
            length[i] = frame_len
        source_flags = vnet_flags[i - first] if i - first < vnet_flags.shape[0] else 0
        trusted = (source_flags & VNET_F_DATA_VALID) != 0
        if (source_flags & VNET_F_NEEDS_CSUM) != 0:
            # The source left the checksum to us: compute it like a transmit request.
            parse_frame(data, start, frame_len, parsed)
            one_flag = np.zeros(1, dtype=np.uint32)
            one_flag[0] = TX_CSUM_TCP if parsed[3] == IPPROTO_TCP else TX_CSUM_UDP
            one_len = np.zeros(1, dtype=np.int32)
            one_len[0] = frame_len
            fill_tx_checksums(data[start : start + frame_len], frame_capacity, one_len, one_flag, 1, parsed)
            trusted = True
        rx_checksum[i] = _checksum_state(data, start, frame_len, trusted, parsed)


@njit(nogil=True, cache=True)
def checksum_states(data, frame_capacity, length, first, count, out, parsed):
    """Verify frames ``first..first+count-1`` in software and store their RNDIS checksum bits."""
    end = min(first + count, length.shape[0], out.shape[0])
    for i in range(first, end):
        start = np.int64(i) * frame_capacity
        frame_len = np.int64(length[i])
        if frame_len < 0 or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            out[i] = 0
            continue
        out[i] = _checksum_state(data, start, frame_len, False, parsed)


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
        q_data[at : at + frame_len] = src_data[start : start + frame_len]
        q_length[slot] = frame_len
        q_vlan[slot] = src_vlan[i]
        q_checksum[slot] = src_checksum[i]
        q_state[Q_COUNT] += 1
        queued += 1
    return queued


@njit(nogil=True, cache=True)
def _reset_rx_metadata(tx_flags, l4_offset, mss, hash_value, hash_info, queue, index):
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
        dst_data[to : to + frame_len] = q_data[at : at + frame_len]
        dst_length[index] = frame_len
        dst_vlan[index] = q_vlan[slot]
        dst_checksum[index] = q_checksum[slot]
        _reset_rx_metadata(
            dst_tx_flags, dst_l4_offset, dst_mss, dst_hash_value, dst_hash_info, dst_queue, index
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
        dst_data[to : to + frame_len] = pool_data[at : at + frame_len]
        dst_length[index] = frame_len
        dst_vlan[index] = pool_vlan[frame]
        dst_checksum[index] = pool_checksum[frame]
        _reset_rx_metadata(
            dst_tx_flags, dst_l4_offset, dst_mss, dst_hash_value, dst_hash_info, dst_queue, index
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
    """
    limit = min(count, length.shape[0], egress.shape[0])
    for i in range(limit):
        start = np.int64(i) * frame_capacity
        frame_len = np.int64(length[i])
        if frame_len < ETH_HEADER_LEN or frame_len > frame_capacity or start + frame_len > data.shape[0]:
            egress[i] = EGRESS_DROP
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
        else:
            egress[i] = mac_ports[slot]
