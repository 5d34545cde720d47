"""The backend interface of the emulated host.

Layer 7 (host). A backend is a queue pair polled by the NetVSP, batch in and batch out, with
buffers owned by the caller (OpenVMM's ``net_backend::Queue``; spec/host.md 9):

- ``transmit(batch)``: frames the guest sent (already parsed from RNDIS, offload requests in
  the metadata). The backend performs what it can (a TAP passes checksum and GSO requests
  to the kernel through the virtio-net header) and the rest is done in software before the
  call if ``offloads`` says the backend cannot. Returns the number of frames consumed; the
  host completes the guest's packets once their frames are consumed.
- ``poll(batch, limit)``: appends up to ``limit`` received frames to ``batch``, as they came
  off the wire (an 802.1Q tag still inline; ``vlan_tci`` set only where the tag was carried
  out of band), and returns how many. ``rx_checksum`` stays 0 unless the backend's source
  verified the frame itself (a TAP's DATA_VALID): the host's receive path strips tags and
  verifies every other frame (``fastpath.offload.receive_prepare_batch``).
- ``fileno()``: a file descriptor that becomes readable when ``poll`` has frames, or None
  for backends that are always ready or never have any (the host loop then polls them).
- ``link_up``: the backend's carrier; the host turns changes into RNDIS status indications.
- ``close()``: release everything; idempotent.

One backend instance serves one NIC (all of its queues); the NetVSP steers received frames
to channels by RSS.
"""

from __future__ import annotations

from netvsc.host.frames import FrameBatch

__all__ = ["Backend", "BackendOffloads"]


class BackendOffloads:
    """Which transmit offloads a backend performs itself (the rest are done in software)."""

    def __init__(
        self,
        *,
        ipv4_checksum: bool = False,
        tcp_checksum: bool = False,
        udp_checksum: bool = False,
        tso: bool = False,
        vlan_insert: bool = False,
    ) -> None:
        self.ipv4_checksum = ipv4_checksum
        self.tcp_checksum = tcp_checksum
        self.udp_checksum = udp_checksum
        self.tso = tso
        self.vlan_insert = vlan_insert


class Backend:
    """Base class: a backend that accepts and drops everything and never receives."""

    name = "base"
    offloads = BackendOffloads()

    def __init__(self) -> None:
        self.link_up = True
        self.tx_frames = 0
        self.rx_frames = 0

    def transmit(self, batch: FrameBatch) -> int:
        self.tx_frames += batch.count
        return batch.count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        return 0

    def fileno(self) -> int | None:
        return None

    def close(self) -> None:
        """Release resources; safe to call more than once."""

    def counters(self) -> dict[str, int]:
        return {"tx_frames": self.tx_frames, "rx_frames": self.rx_frames}
