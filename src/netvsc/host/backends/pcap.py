"""The ``pcap:IN[,OUT][,loop[=N]]`` backend: replays a capture file as receives, records transmits.

Layer 7 (host). IN (pcap or pcapng, Ethernet link type; frames of other link types are
skipped and counted) is loaded once into a frame pool and handed to the guest as fast as
the host polls, once, N times (``loop=N``) or for ever (``loop`` or ``loop=0``). Replayed
frames are handed over as recorded: the host's receive path strips an 802.1Q tag into
``vlan_tci`` and verifies checksums, as for every backend. Transmits are written to OUT
(pcapng, or classic pcap for a ``.pcap`` name) as they would be on the wire: no checksum or
LSO offload is claimed, so the host's transmit path fills requested checksums and segments
before they get here, and the capture writer inserts the out-of-band VLAN tag. Without OUT
they are dropped.
"""

from __future__ import annotations

import logging
import os

from netvsc.errors import ConfigError
from netvsc.fastpath.offload import ETH_HEADER
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.backends.pool import FramePool
from netvsc.host.capture import LINKTYPE_ETHERNET, PcapngWriter, PcapWriter, open_capture
from netvsc.host.frames import FrameBatch

__all__ = ["PcapBackend", "read_capture"]

log = logging.getLogger(__name__)


def read_capture(path: str) -> tuple[list[bytes], int]:
    """Ethernet frames of pcap/pcapng file ``path``, and how many of another link type were skipped."""
    from scapy.utils import RawPcapReader  # scapy is slow to import; only the pcap backend needs it

    if not os.path.isfile(path):
        raise ConfigError("pcap input", path, "an existing pcap or pcapng file")
    frames: list[bytes] = []
    skipped = 0
    try:
        with RawPcapReader(path) as reader:
            file_linktype = getattr(reader, "linktype", None)
            for data, metadata in reader:
                linktype = getattr(metadata, "linktype", file_linktype)
                if linktype != LINKTYPE_ETHERNET or len(data) < ETH_HEADER:
                    skipped += 1
                    continue
                frames.append(bytes(data))
    except ConfigError:
        raise
    except Exception as exc:  # scapy raises Scapy_Exception, struct.error, EOFError...
        raise ConfigError("pcap input", path, "a readable pcap or pcapng file", str(exc)) from exc
    return frames, skipped


class PcapBackend(Backend):
    name = "pcap"
    # The tag stays out of band up to the capture writer, which inserts it.
    offloads = BackendOffloads(vlan_insert=True)

    def __init__(
        self, in_path: str | None, out_path: str | None = None, *, loop: int = 1, nic_index: int = 0
    ) -> None:
        super().__init__()
        if loop < 0:
            raise ConfigError("loop", loop, "0 (for ever) or a positive repeat count")
        self.nic_index = nic_index
        self.loop = loop
        self.skipped = 0
        frames: list[bytes] = []
        if in_path:
            frames, self.skipped = read_capture(in_path)
            if self.skipped:
                log.warning("pcap %s: %d frames of another link type skipped", in_path, self.skipped)
        self._pool = FramePool(frames)
        self._total = len(self._pool) * loop if loop else None
        self._cursor = 0
        self._writer: PcapngWriter | PcapWriter | None = open_capture(out_path) if out_path else None
        self.tx_dropped = 0
        self.rx_dropped_oversize = 0  # replayed frames longer than the host's batch slots

    @property
    def replay_done(self) -> bool:
        return len(self._pool) == 0 or (self._total is not None and self._cursor >= self._total)

    def poll(self, batch: FrameBatch, limit: int) -> int:
        if self.replay_done:
            return 0
        want = limit if self._total is None else min(limit, self._total - self._cursor)
        copied, consumed = self._pool.copy_into(batch, self._cursor, want)
        self._cursor += consumed
        self.rx_dropped_oversize += consumed - copied
        self.rx_frames += copied
        return copied

    def transmit(self, batch: FrameBatch) -> int:
        count = batch.count
        if self._writer is None:
            self.tx_dropped += count
        else:
            self._writer.write_batch(self.nic_index, "tx", batch, 0, count)
        self.tx_frames += count
        return count

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "tx_dropped": self.tx_dropped,
            "rx_skipped_linktype": self.skipped,
            "replay_frames": len(self._pool),
            "rx_dropped_oversize": self.rx_dropped_oversize,
        }
