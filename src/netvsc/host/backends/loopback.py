"""The ``loopback`` backend: every transmitted frame comes back as a receive (OpenVMM's loopback).

Layer 7 (host). Useful for tests: what the guest sends is what it gets back. The backend
claims no checksum or LSO offload, so the host's transmit path fills requested checksums and
segments LSO sends in software before the frames get here (they come back as a real NIC would
have sent them, and fit the guest's receive slots), and the host's receive path verifies every
frame coming back (DESIGN.md §7.10). Only VLAN insertion is claimed: the tag stays out of band
in ``vlan_tci``, as if inserted on the wire and stripped on receive.
"""

from __future__ import annotations

import numpy as np

from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.backends.queue import DEFAULT_QUEUE_FRAMES, FrameQueue
from netvsc.host.frames import FrameBatch

__all__ = ["LoopbackBackend"]


class LoopbackBackend(Backend):
    name = "loopback"
    offloads = BackendOffloads(vlan_insert=True)

    def __init__(self, queue_frames: int = DEFAULT_QUEUE_FRAMES) -> None:
        super().__init__()
        self._queue = FrameQueue(queue_frames)
        self._egress = np.zeros(0, dtype=np.int32)
        # Frames come back with checksum state 0: only the host's receive path sets it.
        self._no_checksum = np.zeros(0, dtype=np.uint32)

    def transmit(self, batch: FrameBatch) -> int:
        """Queue the frames for ``poll`` (offloads were done by the host's transmit path)."""
        count = batch.count
        if count == 0:
            return 0
        if self._egress.shape[0] < count:
            self._egress = np.zeros(batch.capacity, dtype=np.int32)
            self._no_checksum = np.zeros(batch.capacity, dtype=np.uint32)
        self._queue.push(batch, self._egress, 0, self._no_checksum)
        self.tx_frames += count
        return count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        moved = self._queue.pop(batch, limit)
        self.rx_frames += moved
        return moved

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "rx_dropped_queue_full": self._queue.dropped_full,
            "rx_dropped_oversize": self._queue.dropped_oversize,
            "queued": len(self._queue),
        }
