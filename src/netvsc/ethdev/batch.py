"""``PacketBatch``: the buffer indices a burst moves, and the user-facing views of its packets.

Layer 6 (ethdev), beside ``ethdev.mempool`` and below ``pmd/``. ``rx_burst`` fills
``indices[:count]`` with packets of its mempool and ``tx_burst`` consumes them (DESIGN.md section
5): a batch is an int32 array and a count, never a Python object per packet. The views
(``bytes``, ``memoryview``, ``to_scapy``) and ``from_frames`` are for people, not the fast path.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from netvsc.errors import ConfigError
from netvsc.ethdev.mempool import Mempool, MempoolExhausted

__all__ = ["BATCH_CAPACITY_MAX", "PacketBatch"]

BATCH_CAPACITY_MAX = 1 << 16


class PacketBatch:
    """Up to ``capacity`` packets of ``mempool``: ``indices[:count]`` are their head buffers."""

    def __init__(self, capacity: int, mempool: Mempool | None = None) -> None:
        if (
            isinstance(capacity, bool)
            or not isinstance(capacity, int)
            or not 1 <= capacity <= BATCH_CAPACITY_MAX
        ):
            raise ConfigError("capacity", capacity, f"1 .. {BATCH_CAPACITY_MAX}")
        self.indices = np.full(capacity, -1, dtype=np.int32)
        self.count = 0
        self.mempool = mempool

    @property
    def capacity(self) -> int:
        return self.indices.shape[0]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices[: self.count].tolist())

    def _pool(self) -> Mempool:
        if self.mempool is None:
            raise ConfigError(
                "mempool", None, "a batch filled from a mempool (set by rx_burst or from_frames)"
            )
        return self.mempool

    def _head(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not -self.count <= i < self.count:
            raise ConfigError("i", i, f"a packet position 0 .. {self.count - 1} of the batch")
        return int(self.indices[i])

    def append(self, head: int) -> None:
        if self.count >= self.capacity:
            raise ConfigError("count", self.count + 1, f"at most the capacity {self.capacity}")
        self.indices[self.count] = head
        self.count += 1

    # -- views ---------------------------------------------------------------------------------
    def bytes(self, i: int) -> bytes:
        """The frame of packet ``i`` (every segment), copied."""
        return self._pool().packet_bytes(self._head(i))

    def memoryview(self, i: int) -> memoryview:
        """The frame of single-segment packet ``i`` in place (writable; valid until it is freed)."""
        pool = self._pool()
        head = self._head(i)
        segments = int(pool.arrays.nb_segs[head])
        if segments != 1 or pool.arrays.next_seg[head] >= 0:
            raise ConfigError(
                "i", i, "a single-segment packet", f"packet {i} has {segments} segments; use bytes()"
            )
        return memoryview(pool.segment_data(head))

    def to_scapy(self, i: int):
        """Packet ``i`` as a scapy ``Ether`` (a copy)."""
        from scapy.layers.l2 import Ether  # scapy is slow to import; only views need it

        return Ether(self.bytes(i))

    # -- building and releasing ----------------------------------------------------------------
    @classmethod
    def from_frames(cls, mempool: Mempool, frames: Iterable, capacity: int | None = None) -> PacketBatch:
        """A batch holding a copy of each frame (bytes-like or scapy packet), in order.

        A frame longer than one segment becomes a chain. All or nothing: on a bad frame
        (``ConfigError``) or an exhausted pool (``MempoolExhausted``) every buffer taken so far
        goes back.
        """
        frames = list(frames)
        batch = cls(capacity if capacity is not None else max(1, len(frames)), mempool)
        if len(frames) > batch.capacity:
            raise ConfigError("frames", len(frames), f"at most the capacity {batch.capacity}")
        try:
            for frame in frames:
                raw = (
                    frame if isinstance(frame, bytes | bytearray | memoryview | np.ndarray) else bytes(frame)
                )
                batch.append(mempool.store_frame(raw))
        except (ConfigError, MempoolExhausted):
            batch.free_all()
            raise
        return batch

    def free_all(self) -> int:
        """Free every packet of the batch (one reference each); returns how many frees were accepted."""
        if self.count == 0:
            return 0
        accepted = self._pool().free_bulk(self.indices, self.count)
        self.indices[: self.count] = -1
        self.count = 0
        return accepted

    def __repr__(self) -> str:
        return f"PacketBatch(count={self.count}, capacity={self.capacity})"
