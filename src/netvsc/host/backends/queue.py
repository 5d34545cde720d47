"""A bounded FIFO of frames with their receive metadata, for backends that hold frames.

Layer 7 (host). The loopback keeps the guest's transmits here until they are polled back,
and every vswitch port keeps the frames switched to it. Frames are copied in and out by
numba kernels (``framekernels.queue_push`` / ``queue_pop``), one call per batch; a full
queue drops and counts, it never blocks the sender (the host must keep processing).
"""

from __future__ import annotations

import numpy as np

from netvsc.errors import ConfigError
from netvsc.host.backends import framekernels as fk
from netvsc.host.frames import FrameBatch

__all__ = ["FrameQueue", "DEFAULT_QUEUE_FRAMES", "DEFAULT_QUEUE_FRAME_BYTES"]

DEFAULT_QUEUE_FRAMES = 1024
# The largest non-LSO frame: a 9216-byte MTU (the NDIS_CONFIG maximum) plus L2 header and tag.
DEFAULT_QUEUE_FRAME_BYTES = 9216 + 14 + 4


class FrameQueue:
    """Up to ``frames`` frames of at most ``frame_bytes`` each, oldest first."""

    def __init__(
        self, frames: int = DEFAULT_QUEUE_FRAMES, frame_bytes: int = DEFAULT_QUEUE_FRAME_BYTES
    ) -> None:
        if frames < 1:
            raise ConfigError("queue frames", frames, "at least 1")
        if frame_bytes < 60:
            raise ConfigError("queue frame bytes", frame_bytes, "at least 60")
        self.frame_bytes = frame_bytes
        self.data = np.zeros(frames * frame_bytes, dtype=np.uint8)
        self.length = np.zeros(frames, dtype=np.int32)
        self.vlan_tci = np.full(frames, -1, dtype=np.int32)
        self.rx_checksum = np.zeros(frames, dtype=np.uint32)
        self.state = np.zeros(4, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.state[fk.Q_COUNT])

    @property
    def dropped_full(self) -> int:
        return int(self.state[fk.Q_DROPPED_FULL])

    @property
    def dropped_oversize(self) -> int:
        return int(self.state[fk.Q_DROPPED_OVERSIZE])

    def push(
        self, batch: FrameBatch, egress: np.ndarray, port: int, rx_checksum: np.ndarray | None = None
    ) -> int:
        """Queue the batch's frames whose ``egress`` is ``port`` or flood (-1); returns how many."""
        checksum = batch.rx_checksum if rx_checksum is None else rx_checksum
        return int(
            fk.queue_push(
                batch.data,
                batch.frame_capacity,
                batch.length,
                batch.vlan_tci,
                checksum,
                batch.count,
                egress,
                port,
                self.data,
                self.frame_bytes,
                self.length,
                self.vlan_tci,
                self.rx_checksum,
                self.state,
            )
        )

    def pop(self, batch: FrameBatch, limit: int) -> int:
        """Move up to ``limit`` frames (bounded by the batch's free room) to the end of ``batch``."""
        room = min(limit, batch.capacity - batch.count)
        if room <= 0 or len(self) == 0:
            return 0
        moved = int(
            fk.queue_pop(
                self.data,
                self.frame_bytes,
                self.length,
                self.vlan_tci,
                self.rx_checksum,
                self.state,
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
                room,
            )
        )
        batch.count += moved
        return moved
