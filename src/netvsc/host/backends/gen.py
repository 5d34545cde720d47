"""The ``gen`` backend: generates UDP/IPv4 frames at a set rate and size mix, for benchmarks.

Layer 7 (host). Spec ``gen[:rate=PPS,size=N|MIN-MAX|imix,count=N,dst=MAC]``:

- ``rate``: frames per second, 0 (the default) = as fast as the host polls;
- ``size``: Ethernet frame length without FCS, 60..9230: one size, a uniform MIN-MAX range,
  or ``imix`` (60, 590 and 1514 bytes, 7:4:1, the simple IMIX without FCS);
- ``count``: frames in total, 0 (the default) = no end;
- ``dst``: destination MAC (default broadcast, which every packet filter but 0 passes).

A pool of frames is built once (source 198.18.x.y from a locally administered MAC, to
198.19.<nic>.1, source and destination ports varying so RSS spreads the flows; checksums
correct, and reported good by the host's receive path, which verifies them like any other
backend's frames) and copied into batches by one kernel call per poll. Transmits
are counted and dropped (claiming every offload, like ``null``).
"""

from __future__ import annotations

import struct
import time

import numpy as np

from netvsc.errors import ConfigError
from netvsc.fastpath import offload
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.backends.pool import FramePool
from netvsc.host.frames import TX_CSUM_IP, TX_CSUM_UDP, FrameBatch

__all__ = ["GenBackend", "MIN_FRAME", "MAX_FRAME", "IMIX", "parse_mac"]

MIN_FRAME = 60
MAX_FRAME = 9230
IMIX = ((60, 7), (590, 4), (1514, 1))
DEFAULT_POOL_FRAMES = 1024
HEADERS = 14 + 20 + 8


def parse_mac(text: str, parameter: str = "dst") -> bytes:
    parts = text.split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError(text)
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError(parameter, text, "a MAC address like 02:00:00:00:00:01") from None


def frame_sizes(size: str | int, pool_frames: int, seed: int = 1) -> np.ndarray:
    """The frame length of each pool frame for a ``size`` spec."""
    accepted = f"N, MIN-MAX or imix, with sizes {MIN_FRAME}..{MAX_FRAME}"
    text = str(size).strip().lower()
    if text == "imix":
        pattern = [length for length, weight in IMIX for _ in range(weight)]
        return np.array([pattern[i % len(pattern)] for i in range(pool_frames)], dtype=np.int32)
    try:
        low_text, _, high_text = text.partition("-")
        low = int(low_text)
        high = int(high_text) if high_text else low
    except ValueError:
        raise ConfigError("size", size, accepted) from None
    if not MIN_FRAME <= low <= high <= MAX_FRAME:
        raise ConfigError("size", size, accepted)
    if low == high:
        return np.full(pool_frames, low, dtype=np.int32)
    return np.random.default_rng(seed).integers(low, high + 1, pool_frames).astype(np.int32)


class GenBackend(Backend):
    name = "gen"
    offloads = BackendOffloads(
        ipv4_checksum=True, tcp_checksum=True, udp_checksum=True, tso=True, vlan_insert=True
    )

    def __init__(
        self,
        *,
        rate: float = 0,
        size: str | int = 60,
        count: int = 0,
        dst: bytes = b"\xff" * 6,
        nic_index: int = 0,
        pool_frames: int = DEFAULT_POOL_FRAMES,
        clock=time.monotonic,
    ) -> None:
        super().__init__()
        if rate < 0:
            raise ConfigError("rate", rate, "0 (unlimited) or a positive number of frames per second")
        if count < 0:
            raise ConfigError("count", count, "0 (no end) or a positive number of frames")
        if len(dst) != 6:
            raise ConfigError("dst", dst, "6 bytes")
        self.rate = float(rate)
        self.count = count
        self._clock = clock
        self._last = clock()
        self._tokens = 0.0
        self._cursor = 0
        sizes = frame_sizes(size, pool_frames)
        self._pool = FramePool(self._build(sizes, dst, nic_index))
        self.tx_dropped = 0
        self.rx_dropped_oversize = 0  # pool frames longer than the host's batch slots

    @staticmethod
    def _build(sizes: np.ndarray, dst: bytes, nic_index: int) -> FrameBatch:
        frames = FrameBatch(len(sizes), int(sizes.max()))
        source_mac = bytes([0x02, 0x00, 0x5E, 0x10, nic_index & 0xFF, 0x01])
        destination_ip = bytes([198, 19, nic_index & 0xFF, 1])
        for i, length in enumerate(sizes.tolist()):
            flow = i
            source_ip = bytes([198, 18, (flow >> 8) & 0xFF, flow & 0xFF])
            source_port = 1024 + (flow * 7919) % 60000
            destination_port = 5000 + (flow % 61)
            payload = bytes((j & 0xFF) for j in range(length - HEADERS))
            ip = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                length - 14,
                flow & 0xFFFF,
                0x4000,
                64,
                17,
                0,
                source_ip,
                destination_ip,
            )
            udp = struct.pack("!HHHH", source_port, destination_port, length - 34, 0)
            frames.append(
                dst + source_mac + b"\x08\x00" + ip + udp + payload, tx_flags=TX_CSUM_IP | TX_CSUM_UDP
            )
        offload.fill_checksums_in_place(
            frames.data, frames.frame_capacity, frames.length, frames.tx_flags, frames.l4_offset, frames.count
        )
        return frames

    @property
    def done(self) -> bool:
        return self.count > 0 and self.rx_frames >= self.count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        want = limit
        if self.count:
            want = min(want, self.count - self.rx_frames)
        if self.rate > 0:
            now = self._clock()
            # At most 10 ms of frames at once, so a late poll does not turn into a huge burst.
            self._tokens = min(self._tokens + (now - self._last) * self.rate, max(1.0, self.rate / 100))
            self._last = now
            want = min(want, int(self._tokens))
        if want <= 0:
            return 0
        copied, consumed = self._pool.copy_into(batch, self._cursor, want)
        self._cursor = (self._cursor + consumed) % len(self._pool)
        self.rx_dropped_oversize += consumed - copied
        if self.rate > 0:
            self._tokens -= copied
        self.rx_frames += copied
        return copied

    def transmit(self, batch: FrameBatch) -> int:
        self.tx_frames += batch.count
        self.tx_dropped += batch.count
        return batch.count

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "tx_dropped": self.tx_dropped,
            "rx_dropped_oversize": self.rx_dropped_oversize,
        }
