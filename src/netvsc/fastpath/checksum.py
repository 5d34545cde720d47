"""Internet checksum (RFC 1071) and pseudo-header sums, as numba kernels.

Layer 3 (fastpath). Used by the emulated host to fill in checksums the guest
asked for and to verify received ones (DESIGN.md §7 decision 10: computed from
scratch, never trusting a seed), and by the driver for the software fallback
(UDP over IPv4 larger than 1420 bytes without DF, which Azure drops when
offloaded).

Partial sums over several ranges (pseudo header, header, payload) are added as
64-bit integers before one final fold.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.fastpath.atomics import load_u64_le


@njit(nogil=True, cache=True)
def ones_complement_sum(data, offset, length):
    """One's complement sum of the 16-bit big-endian words of ``data[offset:offset+length]``,
    folded to 16 bits (0 only for all-zero data), to add to other sums before ``fold_checksum``.

    An odd trailing byte is padded with zero, as RFC 1071 says. The words are summed eight
    bytes at a time in the machine's little-endian order and the folded sum is byte-swapped at
    the end (RFC 1071 2(B): the sum does not depend on byte order). The caller guarantees the
    range lies inside ``data``.
    """
    total = np.uint64(0)
    end = offset + length
    i = offset
    while i + 8 <= end:
        word = load_u64_le(data, i)
        total += (word & np.uint64(0xFFFFFFFF)) + (word >> np.uint64(32))
        i += 8
    while i + 1 < end:
        total += np.uint64(data[i]) | (np.uint64(data[i + 1]) << np.uint64(8))
        i += 2
    if i < end:
        total += np.uint64(data[i])  # the pad byte is the high half of the big-endian word
    while total >> np.uint64(16):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return ((total & np.uint64(0xFF)) << np.uint64(8)) | (total >> np.uint64(8))


@njit(nogil=True, cache=True)
def fold_checksum(total):
    """Fold an unfolded sum to 16 bits and complement it: the value to store in a header."""
    mask = np.uint64(0xFFFF)
    shift = np.uint64(16)
    total = np.uint64(total)
    while total >> shift:
        total = (total & mask) + (total >> shift)
    return np.uint16(np.uint64(0xFFFF) ^ total)


@njit(nogil=True, cache=True)
def pseudo_header_sum_ipv4(frame, ip_offset, protocol, l4_length):
    """Unfolded sum of the IPv4 pseudo header (addresses from the IPv4 header at ``ip_offset``)."""
    total = ones_complement_sum(frame, ip_offset + 12, 8)
    return total + np.uint64(protocol) + np.uint64(l4_length)


@njit(nogil=True, cache=True)
def pseudo_header_sum_ipv6(frame, ip_offset, next_header, l4_length):
    """Unfolded sum of the IPv6 pseudo header (addresses from the IPv6 header at ``ip_offset``)."""
    total = ones_complement_sum(frame, ip_offset + 8, 32)
    return total + np.uint64(next_header) + np.uint64(l4_length)


@njit(nogil=True, cache=True)
def internet_checksum(data, offset, length):
    """The checksum to store for ``data[offset:offset+length]`` (checksum field zeroed by the caller)."""
    return fold_checksum(ones_complement_sum(data, offset, length))
