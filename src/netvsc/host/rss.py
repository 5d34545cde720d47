"""RSS on the emulated host: the guest's key, indirection table and hash types, and the
steering of received frames to channels (spec/host.md 4.7; DESIGN.md §7 decision 9).

Layer 7 (host). ``RssState`` holds what the guest set through OID_GEN_RECEIVE_SCALE_PARAMETERS;
``steer`` hashes a whole ``FrameBatch`` in one numba call: Toeplitz over the NDIS tuple (source
address, destination address, then source and destination port when the matching L4 type is
enabled), the channel ``table[hash & 127]``, and the hash value and hash-info PPI values.
UDP is hashed on addresses only unless the guest enabled a UDP hash type, as on Hyper-V.
Non-IP frames, and IP frames whose type is not enabled, get no hash and go to channel 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from netvsc.errors import ConfigError
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.toeplitz import toeplitz_hash, toeplitz_table
from netvsc.host.frames import FrameBatch
from netvsc.wire import ndis

__all__ = ["RSS_TABLE_ENTRIES", "RssState"]

RSS_TABLE_ENTRIES = ndis.RSS_INDIRECTION_TABLE_ENTRIES  # 128: Hyper-V's receive table

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = 0x8100
_HASH_IPV4 = ndis.NDIS_HASH_IPV4
_HASH_TCP_IPV4 = ndis.NDIS_HASH_TCP_IPV4
_HASH_UDP_IPV4 = ndis.NDIS_HASH_UDP_IPV4
_HASH_IPV6 = ndis.NDIS_HASH_IPV6
_HASH_TCP_IPV6 = ndis.NDIS_HASH_TCP_IPV6
_HASH_UDP_IPV6 = ndis.NDIS_HASH_UDP_IPV6


@njit(nogil=True, cache=True)
def _steer_kernel(
    data,
    cap,
    length,
    count,
    table,
    key_table,
    hash_types,
    function,
    queue_count,
    out_queue,
    out_hash,
    out_info,
    scratch,
):
    """Per frame: pick the tuple, hash it, look the channel up; one call per batch."""
    # No reference counting inside the call (fastpath/borrow.py).
    data, length, table, key_table = borrowed(data), borrowed(length), borrowed(table), borrowed(key_table)
    out_queue, out_hash, out_info = borrowed(out_queue), borrowed(out_hash), borrowed(out_info)
    scratch = borrowed(scratch)
    if count > length.shape[0]:
        count = length.shape[0]
    if cap * count > data.shape[0] or queue_count < 1:
        return 0
    hashed = 0
    mask = table.shape[0] - 1
    for i in range(count):
        out_queue[i] = 0
        out_hash[i] = 0
        out_info[i] = 0
        base = i * cap
        n = np.int64(length[i])
        if n < 14 or n > cap:
            continue
        l3 = 14
        ethertype = (np.int64(data[base + 12]) << 8) | data[base + 13]
        if ethertype == _ETHERTYPE_VLAN and n >= 18:
            l3 = 18
            ethertype = (np.int64(data[base + 16]) << 8) | data[base + 17]
        ip = base + l3
        tuple_length = 0
        hash_type = 0
        l4 = -1
        if ethertype == _ETHERTYPE_IPV4:
            if n < l3 + 20 or data[ip] >> 4 != 4:
                continue
            ihl = np.int64(data[ip] & 0x0F) * 4
            if ihl < 20 or l3 + ihl > n:
                continue
            for b in range(8):
                scratch[b] = data[ip + 12 + b]
            fragment = ((np.int64(data[ip + 6]) << 8) | data[ip + 7]) & 0x3FFF
            proto = data[ip + 9]
            ports_enabled = (proto == 6 and hash_types & _HASH_TCP_IPV4) or (
                proto == 17 and hash_types & _HASH_UDP_IPV4
            )
            if fragment == 0 and l3 + ihl + 4 <= n and ports_enabled:
                l4 = ip + ihl
                hash_type = _HASH_TCP_IPV4 if proto == 6 else _HASH_UDP_IPV4
            if l4 < 0 and hash_types & _HASH_IPV4:
                hash_type = _HASH_IPV4
            if hash_type == 0:
                continue
            tuple_length = 8
        elif ethertype == _ETHERTYPE_IPV6:
            if n < l3 + 40 or data[ip] >> 4 != 6:
                continue
            for b in range(32):
                scratch[b] = data[ip + 8 + b]
            next_header = data[ip + 6]
            ports_enabled = (next_header == 6 and hash_types & _HASH_TCP_IPV6) or (
                next_header == 17 and hash_types & _HASH_UDP_IPV6
            )
            if l3 + 44 <= n and ports_enabled:
                l4 = ip + 40
                hash_type = _HASH_TCP_IPV6 if next_header == 6 else _HASH_UDP_IPV6
            if l4 < 0 and hash_types & _HASH_IPV6:
                hash_type = _HASH_IPV6
            if hash_type == 0:
                continue
            tuple_length = 32
        else:
            continue
        if l4 >= 0:
            for b in range(4):
                scratch[tuple_length + b] = data[l4 + b]
            tuple_length += 4
        value = toeplitz_hash(key_table, scratch, 0, tuple_length)
        queue = np.int64(table[np.int64(value) & mask])
        if queue >= queue_count:
            queue = queue % queue_count
        out_queue[i] = queue
        out_hash[i] = value
        out_info[i] = function | hash_type
        hashed += 1
    return hashed


class RssState:
    """The guest's RSS parameters (host.md 4.7) and the steering computed from them."""

    def __init__(self, key: bytes, indirection: Sequence[int], hash_types: int, enabled: bool = True) -> None:
        key = bytes(key)
        if len(key) != ndis.RSS_HASH_KEY_SIZE:
            raise ConfigError("rss key length", len(key), f"exactly {ndis.RSS_HASH_KEY_SIZE} bytes")
        entries = [int(entry) for entry in indirection]
        if not entries or len(entries) > RSS_TABLE_ENTRIES:
            raise ConfigError("indirection table entries", len(entries), f"1..{RSS_TABLE_ENTRIES}")
        if min(entries) < 0:
            raise ConfigError("indirection table entry", min(entries), "a channel index >= 0")
        if not 0 <= hash_types <= 0xFFFFFFFF:
            raise ConfigError("rss hash types", hash_types, "0..0xffffffff (NDIS hash information)")
        self.key = key
        # A shorter table is repeated cyclically to fill all 128 entries (OpenVMM, host.md 4.7).
        self.table = np.array([entries[i % len(entries)] for i in range(RSS_TABLE_ENTRIES)], dtype=np.int32)
        self.hash_types = hash_types & ndis.NDIS_HASH_TYPE_MASK
        # ``hash_types`` may be the whole NDIS hash information (function in the low byte) or the
        # type bits alone; Toeplitz is the only function, and the caller turns RSS off for
        # DISABLE or function 0 (host.md 4.7) by passing ``enabled=False``.
        self.function = ndis.NDIS_HASH_FUNCTION_TOEPLITZ
        self.enabled = bool(enabled)
        self._key_table = toeplitz_table(np.frombuffer(key, dtype=np.uint8).copy())
        self._scratch = np.zeros(40, dtype=np.uint8)

    @property
    def active_queues(self) -> list[int]:
        """The channels the table names: only they get data slots (host.md 2.3)."""
        return sorted({int(q) for q in self.table}) if self.enabled else [0]

    def steer(self, batch: FrameBatch, queue_count: int) -> None:
        """Set ``queue``, ``hash_value`` and ``hash_info`` of every frame of ``batch``.

        The channel is ``table[hash & 127]``; an entry beyond ``queue_count`` channels (not yet
        opened) is folded into range by modulo. Disabled RSS: everything on channel 0, no hash.
        """
        if queue_count < 1:
            raise ConfigError("queue_count", queue_count, "at least 1 channel")
        count = batch.count
        if not self.enabled:
            batch.queue[:count] = 0
            batch.hash_value[:count] = 0
            batch.hash_info[:count] = 0
            return
        _steer_kernel(
            batch.data,
            batch.frame_capacity,
            batch.length,
            count,
            self.table,
            self._key_table,
            self.hash_types,
            self.function,
            queue_count,
            batch.queue,
            batch.hash_value,
            batch.hash_info,
            self._scratch,
        )
