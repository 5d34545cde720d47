"""The ``null`` backend: drops every transmit, never receives (OpenVMM's null endpoint).

Layer 7 (host). It claims every transmit offload, so the host does no software work for it:
the cheapest sink for measuring the host's own cost.
"""

from __future__ import annotations

from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.frames import FrameBatch

__all__ = ["NullBackend"]


class NullBackend(Backend):
    name = "null"
    offloads = BackendOffloads(
        ipv4_checksum=True, tcp_checksum=True, udp_checksum=True, tso=True, vlan_insert=True
    )

    def __init__(self) -> None:
        super().__init__()
        self.tx_dropped = 0

    def transmit(self, batch: FrameBatch) -> int:
        self.tx_frames += batch.count
        self.tx_dropped += batch.count
        return batch.count

    def counters(self) -> dict[str, int]:
        return {**super().counters(), "tx_dropped": self.tx_dropped}
