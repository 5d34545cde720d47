"""Toeplitz hash (the RSS hash function of NDIS, spec/nvsp-rndis.md 5.6), as numba kernels.

Layer 3 (fastpath). Two forms of one function:

- ``toeplitz_hash_bitwise``: the definition, one key bit per input bit; the
  reference the tests check against Microsoft's published verification vectors.
- ``toeplitz_table`` + ``toeplitz_hash``: the same hash from a per-key lookup
  table (one XOR per input byte), for the data path. The table is built once
  per key, so a key change costs one rebuild, never per-packet work.

The input is the RSS tuple as NDIS defines it: source address, destination
address, then (for L4 hashing) source port and destination port, all in
network byte order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The longest RSS input is IPv6 with ports: 16 + 16 + 2 + 2 bytes.
RSS_INPUT_MAX = 36


@njit(nogil=True, cache=True)
def toeplitz_hash_bitwise(key, data, length):
    """Hash ``data[:length]`` with ``key`` (uint8 arrays) bit by bit; ``len(key) >= length + 4``."""
    result = np.uint32(0)
    # window = the 32 key bits aligned with the current input bit
    window = np.uint32(0)
    for k in range(4):
        window = np.uint32((window << 8) | key[k])
    for i in range(length):
        next_key_byte = np.uint32(key[i + 4])
        byte = data[i]
        for bit in range(8):
            if byte & (0x80 >> bit):
                result ^= window
            window = np.uint32((window << 1) | ((next_key_byte >> (7 - bit)) & 1))
    return result


@njit(nogil=True, cache=True)
def toeplitz_table(key):
    """Lookup table [position][byte value] -> contribution, for inputs up to ``len(key) - 4`` bytes."""
    positions = min(len(key) - 4, RSS_INPUT_MAX)
    table = np.zeros((positions, 256), dtype=np.uint32)
    for position in range(positions):
        for bit in range(8):
            # the 32 key bits starting at input bit position*8 + bit
            start = position * 8 + bit
            window = np.uint32(0)
            for k in range(32):
                key_bit = start + k
                if (key[key_bit >> 3] >> (7 - (key_bit & 7))) & 1:
                    window |= np.uint32(1) << np.uint32(31 - k)
            for value in range(256):
                if value & (0x80 >> bit):
                    table[position, value] ^= window
    return table


@njit(nogil=True, cache=True)
def toeplitz_hash(table, data, offset, length):
    """Hash ``data[offset:offset+length]`` with a table from ``toeplitz_table``.

    The caller guarantees ``length <= table.shape[0]`` and that the range is inside ``data``.
    """
    result = np.uint32(0)
    for i in range(length):
        result ^= table[i, data[offset + i]]
    return result
