"""Batches of Ethernet frames crossing the emulated host, with their offload metadata.

Layer 7 (host). Frames move between the NetVSP and its backends as one ``FrameBatch``: a byte
arena with fixed-size frame slots plus one numpy array per metadata field, so a batch is
handed around, and processed by numba kernels, without a Python object per frame. The caller
owns the batch and passes it in (OpenVMM's net_backend shape); backends fill or drain it.

Metadata (one entry per frame, index < ``count``):

- ``length``: bytes of the frame in its slot (slot ``i`` starts at ``i * frame_capacity``).
- ``vlan_tci``: 802.1Q TCI carried out of band, or -1. On transmit (guest -> wire) it asks for
  the tag to be inserted; on receive (wire -> guest) the tag has been stripped into it.
- ``tx_flags``: offloads the guest asked for (``TX_*`` bits); the backend or the host's
  software fallback performs them.
- ``l4_offset``: transport header offset from the frame start (0 = unknown).
- ``mss``: LSO segment size when ``TX_LSO`` is set.
- ``rx_checksum``: the RNDIS receive checksum PPI value (spec/nvsp-rndis.md 4.7) the host
  reports for the frame, 0 = no information.
- ``hash_value`` / ``hash_info``: RSS hash and its NDIS hash-info bits, 0 = none.
- ``queue``: the queue (channel index) the frame is for or came from.
"""

from __future__ import annotations

import numpy as np

from netvsc.errors import ConfigError
from netvsc.fastpath.offload import TX_CSUM_IP, TX_CSUM_TCP, TX_CSUM_UDP, TX_IPV4, TX_IPV6, TX_LSO

__all__ = [
    "DEFAULT_FRAME_CAPACITY",
    "FrameBatch",
    "TX_CSUM_IP",
    "TX_CSUM_TCP",
    "TX_CSUM_UDP",
    "TX_IPV4",
    "TX_IPV6",
    "TX_LSO",
]

# Room for the largest frame the host carries: a 64 KiB LSO send plus its headers.
DEFAULT_FRAME_CAPACITY = 65536 + 256


class FrameBatch:
    """Up to ``capacity`` frames of at most ``frame_capacity`` bytes each, plus metadata."""

    def __init__(self, capacity: int, frame_capacity: int = DEFAULT_FRAME_CAPACITY) -> None:
        if capacity < 1:
            raise ConfigError("capacity", capacity, "at least 1 frame")
        if frame_capacity < 60:
            raise ConfigError("frame_capacity", frame_capacity, "at least 60 bytes")
        self.capacity = capacity
        self.frame_capacity = frame_capacity
        self.data = np.zeros(capacity * frame_capacity, dtype=np.uint8)
        self.length = np.zeros(capacity, dtype=np.int32)
        self.vlan_tci = np.full(capacity, -1, dtype=np.int32)
        self.tx_flags = np.zeros(capacity, dtype=np.uint32)
        self.l4_offset = np.zeros(capacity, dtype=np.int32)
        self.mss = np.zeros(capacity, dtype=np.int32)
        self.rx_checksum = np.zeros(capacity, dtype=np.uint32)
        self.hash_value = np.zeros(capacity, dtype=np.uint32)
        self.hash_info = np.zeros(capacity, dtype=np.uint32)
        self.queue = np.zeros(capacity, dtype=np.int32)
        self.count = 0

    def clear(self) -> None:
        """Empty the batch; metadata of the next frames is reset as they are appended."""
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    def frame(self, index: int) -> np.ndarray:
        """A view of frame ``index``'s bytes."""
        if not 0 <= index < self.count:
            raise IndexError(f"frame {index} not in batch of {self.count}")
        start = index * self.frame_capacity
        return self.data[start : start + int(self.length[index])]

    def slot(self, index: int) -> np.ndarray:
        """The whole writable slot of frame ``index`` (for producers filling in place)."""
        start = index * self.frame_capacity
        return self.data[start : start + self.frame_capacity]

    def append(
        self,
        frame: bytes | bytearray | memoryview | np.ndarray,
        *,
        vlan_tci: int = -1,
        tx_flags: int = 0,
        l4_offset: int = 0,
        mss: int = 0,
        rx_checksum: int = 0,
        hash_value: int = 0,
        hash_info: int = 0,
        queue: int = 0,
    ) -> int:
        """Copy one frame in; returns its index. Raises ``ConfigError`` if it does not fit."""
        if self.full:
            raise ConfigError("frame batch", self.count, f"at most {self.capacity} frames")
        raw = np.frombuffer(frame, dtype=np.uint8) if not isinstance(frame, np.ndarray) else frame
        if raw.shape[0] > self.frame_capacity:
            raise ConfigError("frame length", raw.shape[0], f"at most {self.frame_capacity} bytes")
        index = self.count
        start = index * self.frame_capacity
        self.data[start : start + raw.shape[0]] = raw
        self.length[index] = raw.shape[0]
        self.vlan_tci[index] = vlan_tci
        self.tx_flags[index] = tx_flags
        self.l4_offset[index] = l4_offset
        self.mss[index] = mss
        self.rx_checksum[index] = rx_checksum
        self.hash_value[index] = hash_value
        self.hash_info[index] = hash_info
        self.queue[index] = queue
        self.count = index + 1
        return index

    def frames(self) -> list[bytes]:
        """Copies of every frame (for tests and slow paths, never the data path)."""
        return [self.frame(i).tobytes() for i in range(self.count)]
