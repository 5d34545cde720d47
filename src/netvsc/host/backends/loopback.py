"""The ``loopback`` backend: every transmitted frame comes back as a receive (OpenVMM's loopback).

Layer 7 (host). Useful for tests: what the guest sends is what it gets back. The backend
claims the checksum and VLAN-insert offloads and does them itself: requested checksums are
filled before the frame comes back (the host did them, as a real NIC would), every frame is
verified and its ``rx_checksum`` set from the result (DESIGN.md §7.10), and the VLAN tag stays
out of band in ``vlan_tci`` (it would be inserted on the wire and stripped on receive). LSO
is not claimed: the host segments in software, so frames fit the guest's receive slots.
"""

from __future__ import annotations

import numpy as np

from netvsc.host.backends import framekernels as fk
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.backends.queue import DEFAULT_QUEUE_FRAMES, FrameQueue
from netvsc.host.frames import FrameBatch

__all__ = ["LoopbackBackend"]


class LoopbackBackend(Backend):
    name = "loopback"
    offloads = BackendOffloads(
        ipv4_checksum=True, tcp_checksum=True, udp_checksum=True, tso=False, vlan_insert=True
    )

    def __init__(self, queue_frames: int = DEFAULT_QUEUE_FRAMES) -> None:
        super().__init__()
        self._queue = FrameQueue(queue_frames)
        self._parsed = np.zeros(fk.PARSE_FIELDS, dtype=np.int64)
        self._egress = np.zeros(0, dtype=np.int32)
        self._checksum = np.zeros(0, dtype=np.uint32)
        self.tx_checksum_refused = 0

    def transmit(self, batch: FrameBatch) -> int:
        """Fill requested checksums in place, verify every frame, and queue them for ``poll``."""
        count = batch.count
        if count == 0:
            return 0
        if self._egress.shape[0] < count:
            self._egress = np.zeros(batch.capacity, dtype=np.int32)
            self._checksum = np.zeros(batch.capacity, dtype=np.uint32)
        self.tx_checksum_refused += int(
            fk.fill_tx_checksums(
                batch.data, batch.frame_capacity, batch.length, batch.tx_flags, count, self._parsed
            )
        )
        fk.checksum_states(
            batch.data, batch.frame_capacity, batch.length, 0, count, self._checksum, self._parsed
        )
        self._queue.push(batch, self._egress, 0, self._checksum)
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
            "tx_checksum_refused": self.tx_checksum_refused,
            "queued": len(self._queue),
        }
