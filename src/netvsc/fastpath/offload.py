"""Offload kernels of the emulated host: frame header parsing, transmit checksums, LSO, VLAN
insertion, and the receive-side checksum verification and VLAN stripping (spec/host.md 2.4, 3.3,
3.4). This is the one place these exist: the host's transmit path (``host.txpath``) does here
whatever a backend does not claim, its receive path (``host.rxpath``) strips tags and verifies
checksums here, and backends only call the helpers (``parse_frame``, ``fill_ipv4_header_checksum``,
``pseudo_header_sum``, ``fill_l4_checksum``, ``receive_checksum_state``) for their own formats,
such as the TAP's virtio-net header.

Layer 3 (fastpath). Every kernel works on ``FrameBatch``-shaped arrays (one byte arena with
fixed-size frame slots plus one array per metadata field) and handles a whole batch per call.
Checksums are computed from scratch over the frame (DESIGN.md §7 decision 10): the pseudo-header
seeds guests leave in the fields are ignored. Frames come from a guest (transmit) or a backend
(receive), so every length and offset is checked before it is used; a frame that cannot be
processed is dropped and counted, never indexed out of range.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.checksum import (
    fold_checksum,
    ones_complement_sum,
    pseudo_header_sum_ipv4,
    pseudo_header_sum_ipv6,
)
from netvsc.wire.rndis import CHECKSUM_RX_IP_FAILED as RX_IP_FAILED
from netvsc.wire.rndis import CHECKSUM_RX_IP_SUCCEEDED as RX_IP_SUCCEEDED
from netvsc.wire.rndis import CHECKSUM_RX_TCP_FAILED as RX_TCP_FAILED
from netvsc.wire.rndis import CHECKSUM_RX_TCP_SUCCEEDED as RX_TCP_SUCCEEDED
from netvsc.wire.rndis import CHECKSUM_RX_UDP_FAILED as RX_UDP_FAILED
from netvsc.wire.rndis import CHECKSUM_RX_UDP_SUCCEEDED as RX_UDP_SUCCEEDED

# Offload requests of a frame (FrameBatch.tx_flags): defined here, where the kernels that
# perform them live; host.frames re-exports them.
TX_IPV4 = 0x01
TX_IPV6 = 0x02
TX_CSUM_IP = 0x04  # fill in the IPv4 header checksum
TX_CSUM_TCP = 0x08
TX_CSUM_UDP = 0x10
TX_LSO = 0x20  # segment to ``mss``, with TCP (and IPv4 header) checksums per segment
# Extra bit of the "do in software" mask: insert the VLAN tag carried in ``vlan_tci``.
DO_VLAN_INSERT = 0x100

ETH_HEADER = 14
VLAN_TAG = 4
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
IPV4_MIN_HEADER = 20
IPV6_HEADER = 40
TCP_MIN_HEADER = 20
UDP_HEADER = 8
PROTO_TCP = 6
PROTO_UDP = 17
TCP_CHECKSUM_FIELD = 16  # offset of the checksum in the TCP header
UDP_CHECKSUM_FIELD = 6
TCP_FLAG_FIN = 0x01
TCP_FLAG_PSH = 0x08
TCP_FLAG_CWR = 0x80

# Indices of the ``stats`` array the batch kernels update.
STAT_DROPPED = 0
STAT_SEGMENTS = 1
STAT_CHECKSUMS = 2
STAT_VLAN_INSERTED = 3
STAT_WORDS = 4


@njit(nogil=True, cache=True)
def read_be16(buf, at):
    """The big-endian 16-bit value at ``buf[at]`` (the caller checked ``at + 1`` is in range)."""
    return (np.int64(buf[at]) << 8) | np.int64(buf[at + 1])


@njit(nogil=True, cache=True)
def write_be16(buf, at, value):
    """Store ``value`` big-endian at ``buf[at:at+2]`` (the caller checked the range)."""
    buf[at] = np.uint8((value >> 8) & 0xFF)
    buf[at + 1] = np.uint8(value & 0xFF)


@njit(nogil=True, cache=True)
def _get32(buf, at):
    return (read_be16(buf, at) << 16) | read_be16(buf, at + 2)


@njit(nogil=True, cache=True)
def _put32(buf, at, value):
    write_be16(buf, at, (value >> 16) & 0xFFFF)
    write_be16(buf, at + 2, value & 0xFFFF)


# Result of ``parse_frame``: offsets relative to the frame start, -1 = absent.
PARSE_FIELDS = 6  # l3 offset, ethertype, l4 offset, ip protocol, l4 length (from the IP header), fragment


@njit(nogil=True, cache=True)
def parse_frame(data, start, length, out):
    """Fill ``out`` (int64[6]) for the frame at ``data[start:start+length]``, which may carry an
    inline 802.1Q tag.

    out = [l3 offset, ethertype, l4 offset, protocol, l4 length, is_fragment]; -1 where the
    frame does not have that layer. The l4 length comes from the IP header's length field
    (0 when the field is 0, as in an LSO frame) and is checked to fit in the frame. IPv6
    extension headers are not walked: TCP/UDP directly after the fixed header only.
    """
    for k in range(PARSE_FIELDS):
        out[k] = -1
    if length < ETH_HEADER or start < 0 or start + length > data.shape[0]:
        return
    ethertype = read_be16(data, start + 12)
    l3 = ETH_HEADER
    if ethertype == ETHERTYPE_VLAN:
        if length < ETH_HEADER + VLAN_TAG:
            return
        ethertype = read_be16(data, start + 16)
        l3 = ETH_HEADER + VLAN_TAG
    out[0] = l3
    out[1] = ethertype
    out[5] = 0
    if ethertype == ETHERTYPE_IPV4:
        if l3 + IPV4_MIN_HEADER > length or (data[start + l3] >> 4) != 4:
            return
        header_len = np.int64(data[start + l3] & 0x0F) * 4
        if header_len < IPV4_MIN_HEADER or l3 + header_len > length:
            return
        total_len = read_be16(data, start + l3 + 2)
        if total_len != 0 and (total_len < header_len or l3 + total_len > length):
            return
        if read_be16(data, start + l3 + 6) & 0x3FFF:
            out[5] = 1
        out[2] = l3 + header_len
        out[3] = np.int64(data[start + l3 + 9])
        out[4] = total_len - header_len if total_len != 0 else 0
    elif ethertype == ETHERTYPE_IPV6:
        if l3 + IPV6_HEADER > length or (data[start + l3] >> 4) != 6:
            return
        payload_len = read_be16(data, start + l3 + 4)
        if l3 + IPV6_HEADER + payload_len > length:
            return
        out[2] = l3 + IPV6_HEADER
        out[3] = np.int64(data[start + l3 + 6])
        out[4] = payload_len


@njit(nogil=True, cache=True)
def _ip_version_flags(buf, base, length, flags):
    """``flags`` with TX_IPV4 or TX_IPV6 taken from the Ethernet type when the sender gave
    neither (backends and host-built frames may ask for checksums without them)."""
    if flags & (TX_IPV4 | TX_IPV6) or length < ETH_HEADER:
        return flags
    ethertype = read_be16(buf, base + 12)
    if ethertype == ETHERTYPE_IPV4:
        return flags | TX_IPV4
    if ethertype == ETHERTYPE_IPV6:
        return flags | TX_IPV6
    return flags


@njit(nogil=True, cache=True)
def _l3_end(buf, base, length, is_ipv4):
    """End (relative to the frame) of the IP packet: the header's length field when it is sane,
    else the frame end (LSO senders zero the length; short frames may carry Ethernet padding)."""
    if is_ipv4:
        total = read_be16(buf, base + ETH_HEADER + 2)
        if IPV4_MIN_HEADER <= total <= length - ETH_HEADER:
            return ETH_HEADER + total
        return length
    payload = read_be16(buf, base + ETH_HEADER + 4)
    if 0 < payload <= length - ETH_HEADER - IPV6_HEADER:
        return ETH_HEADER + IPV6_HEADER + payload
    return length


@njit(nogil=True, cache=True)
def _ipv4_header_length(buf, base, l4_offset):
    """IHL in bytes when it fits before the transport header, else the bytes up to it."""
    ihl = np.int64(buf[base + ETH_HEADER] & 0x0F) * 4
    if IPV4_MIN_HEADER <= ihl <= l4_offset - ETH_HEADER:
        return ihl
    return l4_offset - ETH_HEADER


@njit(nogil=True, cache=True)
def fill_ipv4_header_checksum(buf, base, l3, header_length):
    """Write the checksum of the IPv4 header of ``header_length`` bytes at ``base + l3``."""
    at = base + l3
    write_be16(buf, at + 10, 0)
    write_be16(buf, at + 10, np.int64(fold_checksum(ones_complement_sum(buf, at, header_length))))


@njit(nogil=True, cache=True)
def pseudo_header_sum(buf, ip_at, is_ipv4, proto, l4_length):
    """Unfolded pseudo-header sum of the IP header at ``ip_at`` (the caller checked it fits)."""
    if is_ipv4:
        return pseudo_header_sum_ipv4(buf, ip_at, proto, l4_length)
    return pseudo_header_sum_ipv6(buf, ip_at, proto, l4_length)


@njit(nogil=True, cache=True)
def fill_l4_checksum(buf, base, l3, l4_offset, l4_length, is_ipv4, proto):
    """Write the TCP or UDP checksum of ``l4_length`` bytes at ``base + l4_offset``, from scratch
    (the IP header at ``base + l3``); the caller checked both ranges lie in the frame."""
    field = l4_offset + (TCP_CHECKSUM_FIELD if proto == PROTO_TCP else UDP_CHECKSUM_FIELD)
    write_be16(buf, base + field, 0)
    total = pseudo_header_sum(buf, base + l3, is_ipv4, proto, l4_length)
    total += ones_complement_sum(buf, base + l4_offset, l4_length)
    value = np.int64(fold_checksum(total))
    if value == 0 and proto == PROTO_UDP:
        value = 0xFFFF  # a computed 0 is sent as all ones (RFC 768)
    write_be16(buf, base + field, value)


@njit(nogil=True, cache=True)
def _default_l4_offset(flags, l4_offset):
    if l4_offset != 0:
        return l4_offset
    return ETH_HEADER + (IPV4_MIN_HEADER if flags & TX_IPV4 else IPV6_HEADER)


@njit(nogil=True, cache=True)
def _checksum_frame(buf, base, length, flags, l4_offset, do_mask):
    """Fill the checksums ``flags & do_mask`` asks for; returns False if the frame's layout does
    not allow it (nothing is written then)."""
    want = flags & do_mask
    is_ipv4 = (flags & TX_IPV4) != 0
    if not (want & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP)):
        return True
    if not is_ipv4 and not (flags & TX_IPV6):
        return False
    l4 = _default_l4_offset(flags, l4_offset)
    minimum_l3 = IPV4_MIN_HEADER if is_ipv4 else IPV6_HEADER
    if l4 < ETH_HEADER + minimum_l3 or l4 >= length:
        return False
    if want & TX_CSUM_IP and is_ipv4:
        fill_ipv4_header_checksum(buf, base, ETH_HEADER, _ipv4_header_length(buf, base, l4))
    if want & (TX_CSUM_TCP | TX_CSUM_UDP):
        proto = PROTO_TCP if want & TX_CSUM_TCP else PROTO_UDP
        end = _l3_end(buf, base, length, is_ipv4)
        l4_length = end - l4
        if l4_length < (TCP_MIN_HEADER if proto == PROTO_TCP else UDP_HEADER):
            return False
        fill_l4_checksum(buf, base, ETH_HEADER, l4, l4_length, is_ipv4, proto)
    return True


@njit(nogil=True, cache=True)
def _insert_vlan(buf, base, length, tci):
    """Insert an 802.1Q tag after the MAC addresses (the caller checked ``length + 4`` fits)."""
    i = length - 1
    while i >= 12:
        buf[base + i + 4] = buf[base + i]
        i -= 1
    write_be16(buf, base + 12, ETHERTYPE_VLAN)
    write_be16(buf, base + 14, tci & 0xFFFF)


@njit(nogil=True, cache=True)
def _lso_layout(src, base, length, flags, l4_offset):
    """(l4 offset, header length) of an LSO frame, or (-1, -1) when its headers do not fit."""
    is_ipv4 = (flags & TX_IPV4) != 0
    if not is_ipv4 and not (flags & TX_IPV6):
        return -1, -1
    l4 = _default_l4_offset(flags, l4_offset)
    minimum_l3 = IPV4_MIN_HEADER if is_ipv4 else IPV6_HEADER
    if l4 < ETH_HEADER + minimum_l3 or l4 + TCP_MIN_HEADER > length:
        return -1, -1
    tcp_header = np.int64(src[base + l4 + 12] >> 4) * 4
    if tcp_header < TCP_MIN_HEADER or l4 + tcp_header > length:
        return -1, -1
    return l4, l4 + tcp_header


@njit(nogil=True, cache=True)
def _segment(
    src,
    src_base,
    length,
    flags,
    l4,
    header_length,
    mss,
    out_data,
    out_cap,
    out_index,
    out_length,
    max_out,
    vlan_tci,
    vlan_sw,
):
    """Cut one LSO frame into MSS-sized TCP segments at ``out_index``...; returns the number of
    segments written, or -1 when they would not fit in ``out``."""
    payload = length - header_length
    segments = 1 if payload <= 0 else (payload + mss - 1) // mss
    extra = 4 if vlan_sw else 0
    largest = header_length + (mss if payload > mss else payload) + extra
    if out_index + segments > max_out or largest > out_cap:
        return -1
    is_ipv4 = (flags & TX_IPV4) != 0
    ip = src_base + ETH_HEADER
    first_id = read_be16(src, ip + 4)
    first_seq = _get32(src, src_base + l4 + 4)
    tcp_flags = np.int64(src[src_base + l4 + 13])
    ip_header = _ipv4_header_length(src, src_base, l4) if is_ipv4 else 0
    for k in range(segments):
        start = k * mss
        chunk = payload - start
        if chunk > mss:
            chunk = mss
        if chunk < 0:
            chunk = 0
        total = header_length + chunk
        dst = (out_index + k) * out_cap
        copy_bytes(out_data, dst, src, src_base, header_length)
        copy_bytes(out_data, dst + header_length, src, src_base + header_length + start, chunk)
        if is_ipv4:
            write_be16(out_data, dst + ETH_HEADER + 2, total - ETH_HEADER)
            write_be16(out_data, dst + ETH_HEADER + 4, (first_id + k) & 0xFFFF)
            fill_ipv4_header_checksum(out_data, dst, ETH_HEADER, ip_header)
        else:
            write_be16(out_data, dst + ETH_HEADER + 4, total - ETH_HEADER - IPV6_HEADER)
        _put32(out_data, dst + l4 + 4, (first_seq + start) & 0xFFFFFFFF)
        segment_flags = tcp_flags
        if k + 1 < segments:
            segment_flags &= ~(TCP_FLAG_FIN | TCP_FLAG_PSH)
        if k > 0:
            segment_flags &= ~TCP_FLAG_CWR
        out_data[dst + l4 + 13] = np.uint8(segment_flags)
        fill_l4_checksum(out_data, dst, ETH_HEADER, l4, total - l4, is_ipv4, PROTO_TCP)
        if vlan_sw:
            _insert_vlan(out_data, dst, total, vlan_tci)
            total += 4
        out_length[out_index + k] = total
    return segments


@njit(nogil=True, cache=True)
def software_offload_batch(
    in_data,
    in_cap,
    in_length,
    in_vlan,
    in_flags,
    in_l4,
    in_mss,
    in_queue,
    count,
    out_data,
    out_cap,
    out_length,
    out_vlan,
    out_flags,
    out_l4,
    out_mss,
    out_queue,
    out_count,
    do_mask,
    stats,
):
    """Copy ``count`` frames into ``out`` (from ``out_count``), doing the offloads in ``do_mask``.

    ``do_mask`` holds the ``TX_*`` bits the backend cannot do (plus ``DO_VLAN_INSERT``); the
    bits done here are cleared from the frames' flags, the rest are passed on. Frames whose
    layout does not allow the requested work, or that do not fit in ``out``, are dropped and
    counted in ``stats``. Returns the new ``out`` count.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    in_data, in_length, in_vlan = borrowed(in_data), borrowed(in_length), borrowed(in_vlan)
    in_flags, in_l4, in_mss = borrowed(in_flags), borrowed(in_l4), borrowed(in_mss)
    in_queue, out_data, out_length = borrowed(in_queue), borrowed(out_data), borrowed(out_length)
    out_vlan, out_flags, out_l4 = borrowed(out_vlan), borrowed(out_flags), borrowed(out_l4)
    out_mss, out_queue, stats = borrowed(out_mss), borrowed(out_queue), borrowed(stats)
    max_out = out_length.shape[0]
    if count > in_length.shape[0]:
        count = in_length.shape[0]
    if in_cap * count > in_data.shape[0] or out_cap * max_out > out_data.shape[0]:
        return out_count
    for i in range(count):
        length = np.int64(in_length[i])
        base = i * in_cap
        flags = np.int64(in_flags[i])
        if length < ETH_HEADER or length > in_cap or out_count >= max_out:
            stats[STAT_DROPPED] += 1
            continue
        # The IP version the layout helpers use; the frame's own flags are passed on unchanged.
        layout = _ip_version_flags(in_data, base, length, flags)
        tci = np.int64(in_vlan[i])
        vlan_sw = tci >= 0 and (do_mask & DO_VLAN_INSERT) != 0
        extra = 4 if vlan_sw else 0
        l4 = np.int64(in_l4[i])
        if flags & TX_LSO and do_mask & TX_LSO:
            mss = np.int64(in_mss[i])
            l4, header_length = _lso_layout(in_data, base, length, layout, l4)
            if l4 < 0 or mss < 1:
                stats[STAT_DROPPED] += 1
                continue
            made = _segment(
                in_data,
                base,
                length,
                layout,
                l4,
                header_length,
                mss,
                out_data,
                out_cap,
                out_count,
                out_length,
                max_out,
                tci,
                vlan_sw,
            )
            if made < 0:
                stats[STAT_DROPPED] += 1
                continue
            left = flags & ~(TX_LSO | TX_CSUM_TCP | TX_CSUM_IP | TX_CSUM_UDP)
            for k in range(made):
                out_vlan[out_count + k] = -1 if vlan_sw else tci
                out_flags[out_count + k] = left
                out_l4[out_count + k] = l4 + extra
                out_mss[out_count + k] = 0
                out_queue[out_count + k] = in_queue[i]
            out_count += made
            stats[STAT_SEGMENTS] += made
            if vlan_sw:
                stats[STAT_VLAN_INSERTED] += made
            continue
        if length + extra > out_cap:
            stats[STAT_DROPPED] += 1
            continue
        dst = out_count * out_cap
        copy_bytes(out_data, dst, in_data, base, length)
        done = flags & do_mask & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP)
        if flags & TX_LSO:
            done = 0  # the backend segments, and fills the checksums of each segment itself
        if done:
            if not _checksum_frame(out_data, dst, length, layout, l4, done):
                stats[STAT_DROPPED] += 1
                continue
            stats[STAT_CHECKSUMS] += 1
        if vlan_sw:
            _insert_vlan(out_data, dst, length, tci)
            length += 4
            stats[STAT_VLAN_INSERTED] += 1
        out_length[out_count] = length
        out_vlan[out_count] = -1 if vlan_sw else tci
        out_flags[out_count] = flags & ~done
        out_l4[out_count] = (l4 + extra) if l4 != 0 else 0
        out_mss[out_count] = in_mss[i]
        out_queue[out_count] = in_queue[i]
        out_count += 1
    return out_count


@njit(nogil=True, cache=True)
def software_work_needed(cap, length, vlan_tci, flags, count, do_mask):
    """Whether ``software_offload_batch`` with ``do_mask`` would change any of the ``count``
    frames: a checksum, LSO or tag insertion to do, or a frame it drops for its length. When
    not, the frames can go to the backend as they are, without the copy."""
    count = min(count, length.shape[0], vlan_tci.shape[0], flags.shape[0])
    work = do_mask & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP | TX_LSO)
    insert_tags = (do_mask & DO_VLAN_INSERT) != 0
    for i in range(count):
        n = np.int64(length[i])
        if n < ETH_HEADER or n > cap or (flags[i] & work) != 0 or (insert_tags and vlan_tci[i] >= 0):
            return True
    return False


@njit(nogil=True, cache=True)
def _verify_l4(buf, at_ip, l4_at, l4_length, is_ipv4, proto):
    total = pseudo_header_sum(buf, at_ip, is_ipv4, proto, l4_length)
    total += ones_complement_sum(buf, l4_at, l4_length)
    return fold_checksum(total) == 0


@njit(nogil=True, cache=True)
def receive_checksum_state(buf, base, length, l3, trusted):
    """The RX checksum PPI bits for one frame whose IP header starts at ``l3`` (14 untagged, 18
    behind an inline tag), verified over its bytes (0 = not IP).

    ``trusted``: the source already verified the checksums (a TAP's DATA_VALID), so only the
    headers are checked and the sums are not recomputed; the host never reports good on
    anything else without checking (DESIGN.md §7 decision 10).
    """
    if l3 < ETH_HEADER or length < l3:
        return 0
    ethertype = read_be16(buf, base + l3 - 2)
    ip = base + l3
    if ethertype == ETHERTYPE_IPV4:
        if length < l3 + IPV4_MIN_HEADER or buf[ip] >> 4 != 4:
            return 0
        ihl = np.int64(buf[ip] & 0x0F) * 4
        total = read_be16(buf, ip + 2)
        if ihl < IPV4_MIN_HEADER or total < ihl or l3 + total > length:
            return RX_IP_FAILED
        if not trusted and fold_checksum(ones_complement_sum(buf, ip, ihl)) != 0:
            return RX_IP_FAILED
        state = RX_IP_SUCCEEDED
        if read_be16(buf, ip + 6) & 0x3FFF:
            return state  # a fragment: the transport checksum covers the reassembled packet
        proto = np.int64(buf[ip + 9])
        l4_at = ip + ihl
        l4_length = total - ihl
        is_ipv4 = True
    elif ethertype == ETHERTYPE_IPV6:
        if length < l3 + IPV6_HEADER or buf[ip] >> 4 != 6:
            return 0
        payload = read_be16(buf, ip + 4)
        if l3 + IPV6_HEADER + payload > length:
            return 0
        state = 0
        proto = np.int64(buf[ip + 6])
        l4_at = ip + IPV6_HEADER
        l4_length = payload
        is_ipv4 = False
    else:
        return 0
    if proto == PROTO_TCP:
        smallest, succeeded, failed = TCP_MIN_HEADER, RX_TCP_SUCCEEDED, RX_TCP_FAILED
    elif proto == PROTO_UDP:
        smallest, succeeded, failed = UDP_HEADER, RX_UDP_SUCCEEDED, RX_UDP_FAILED
    else:
        return state
    if l4_length < smallest:
        return state | failed
    if proto == PROTO_UDP and read_be16(buf, l4_at + UDP_CHECKSUM_FIELD) == 0:
        # IPv4 allows "no checksum"; IPv6 forbids it (RFC 8200 8.1).
        return state | (succeeded if is_ipv4 else failed)
    # One call site for both protocols: the kernel stays small enough to be compiled well
    # (two inlined copies of the sum made every call about 4 times slower).
    good = trusted or _verify_l4(buf, ip, l4_at, l4_length, is_ipv4, proto)
    return state | (succeeded if good else failed)


@njit(nogil=True, cache=True)
def receive_prepare_batch(data, cap, length, vlan_tci, rx_checksum, count):
    """Strip an 802.1Q tag into ``vlan_tci`` (NDIS always strips it) and set ``rx_checksum``
    for ``count`` frames received from a backend. Returns the number of tags stripped.

    This is the only place a received tag is stripped, so backends hand frames over as they
    came off the wire. A non-zero ``rx_checksum`` is a state the backend already established
    (a TAP's DATA_VALID frames) and is kept; every other frame is verified here in software.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, vlan_tci = borrowed(data), borrowed(length), borrowed(vlan_tci)
    rx_checksum = borrowed(rx_checksum)
    count = min(count, length.shape[0], vlan_tci.shape[0], rx_checksum.shape[0])
    if cap * count > data.shape[0]:
        return 0
    stripped = 0
    for i in range(count):
        base = i * cap
        n = np.int64(length[i])
        if n < 0 or n > cap:
            rx_checksum[i] = 0
            continue
        if n >= ETH_HEADER + VLAN_TAG and vlan_tci[i] < 0 and read_be16(data, base + 12) == ETHERTYPE_VLAN:
            vlan_tci[i] = read_be16(data, base + 14)
            for j in range(12, n - VLAN_TAG):
                data[base + j] = data[base + j + VLAN_TAG]
            n -= VLAN_TAG
            length[i] = n
            stripped += 1
        if rx_checksum[i] == 0:
            rx_checksum[i] = receive_checksum_state(data, base, n, ETH_HEADER, False)
    return stripped


@njit(nogil=True, cache=True)
def fill_checksums_in_place(data, cap, length, flags, l4_offset, count):
    """Fill the checksums ``flags`` ask for in frames ``0..count-1`` where they lie (no copy, no
    LSO, no VLAN), for frames a backend builds itself; returns how many could not be done."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, flags, l4_offset = borrowed(data), borrowed(length), borrowed(flags), borrowed(l4_offset)
    count = min(count, length.shape[0], flags.shape[0], l4_offset.shape[0])
    if cap * count > data.shape[0]:
        return count
    all_checksums = TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP
    refused = 0
    for i in range(count):
        base = i * cap
        n = np.int64(length[i])
        if n < ETH_HEADER or n > cap:
            refused += 1
            continue
        layout = _ip_version_flags(data, base, n, np.int64(flags[i]))
        if not _checksum_frame(data, base, n, layout, np.int64(l4_offset[i]), all_checksums):
            refused += 1
    return refused
