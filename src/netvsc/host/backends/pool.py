"""A read-only pool of prebuilt frames copied into batches by one kernel call (gen, pcap replay).

Layer 7 (host). Frames are built or loaded once into one byte arena with per-frame offset,
length, VLAN and receive-checksum arrays; ``copy_into`` hands out frames ``cursor,
cursor+1, ...`` (wrapping) with no Python per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netvsc.host.backends import framekernels as fk
from netvsc.host.frames import FrameBatch

__all__ = ["FramePool"]


class FramePool:
    def __init__(self, frames: Sequence[bytes] | FrameBatch) -> None:
        if isinstance(frames, FrameBatch):
            count = frames.count
            self.data = frames.data
            self.offset = np.arange(count, dtype=np.int64) * frames.frame_capacity
            self.length = frames.length[:count].copy()
            self.vlan_tci = frames.vlan_tci[:count].copy()
            self.rx_checksum = frames.rx_checksum[:count].copy()
            return
        lengths = np.array([len(f) for f in frames], dtype=np.int32)
        self.offset = np.zeros(len(frames), dtype=np.int64)
        if len(frames):
            self.offset[1:] = np.cumsum(lengths[:-1], dtype=np.int64)
        self.data = np.frombuffer(b"".join(frames), dtype=np.uint8).copy()
        self.length = lengths
        self.vlan_tci = np.full(len(frames), -1, dtype=np.int32)
        self.rx_checksum = np.zeros(len(frames), dtype=np.uint32)

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def copy_into(self, batch: FrameBatch, cursor: int, count: int) -> tuple[int, int]:
        """Append pool frames ``cursor..`` (wrapping) to ``batch``.

        Returns (appended, consumed): consumed also counts frames too long for the batch's
        slots, which are skipped.
        """
        count = min(count, batch.capacity - batch.count)
        if count <= 0 or len(self) == 0:
            return 0, 0
        copied, consumed = fk.pool_copy(
            self.data,
            self.offset,
            self.length,
            self.vlan_tci,
            self.rx_checksum,
            cursor % len(self),
            batch.data,
            batch.frame_capacity,
            batch.length,
            batch.vlan_tci,
            batch.rx_checksum,
            batch.tx_flags,
            batch.l4_offset,
            batch.mss,
            batch.hash_value,
            batch.hash_info,
            batch.queue,
            batch.count,
            count,
        )
        batch.count += int(copied)
        return int(copied), int(consumed)
