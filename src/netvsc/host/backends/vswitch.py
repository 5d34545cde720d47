"""The ``vswitch`` backend: a learning Ethernet switch joining the NICs of one host.

Layer 7 (host). The server creates one ``VSwitch`` and gives every NIC a port
(``VSwitch.attach(nic_index)``, a ``Backend``). A frame a guest transmits on a port:

- teaches the switch its source MAC (group addresses are never learned; a MAC seen on another
  port moves there);
- goes to the port its destination was learned on, or to every other port when the
  destination is unknown, broadcast or multicast;
- never goes back out of the port it came in on.

So two ports, of one guest or of two guests, talk. Each port holds received frames in a
bounded queue (a full queue drops and counts) and exposes an eventfd, readable while frames
wait, for the host's selector. As for the loopback, checksums and LSO are left to the host's
software transmit path and received frames are verified by its receive path; VLAN tags stay
out of band (a trunk: every port sees every VLAN).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from netvsc.errors import ConfigError
from netvsc.host.backends import framekernels as fk
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.backends.queue import DEFAULT_QUEUE_FRAMES, FrameQueue
from netvsc.host.frames import FrameBatch

__all__ = ["VSwitch", "VSwitchPort"]

MAC_TABLE_SIZE = 4096  # a power of two (open addressing)


class VSwitch:
    """The switch: ports by NIC index and one MAC table."""

    def __init__(
        self, queue_frames: int = DEFAULT_QUEUE_FRAMES, mac_table_size: int = MAC_TABLE_SIZE
    ) -> None:
        if mac_table_size < 2 or mac_table_size & (mac_table_size - 1):
            raise ConfigError("mac_table_size", mac_table_size, "a power of two >= 2")
        self.queue_frames = queue_frames
        self.mac_keys = np.zeros(mac_table_size, dtype=np.int64)
        self.mac_ports = np.zeros(mac_table_size, dtype=np.int32)
        self.ports: dict[int, VSwitchPort] = {}
        self.lock = threading.Lock()

    def attach(self, nic_index: int) -> VSwitchPort:
        """A new port for NIC ``nic_index`` (one port per NIC)."""
        with self.lock:
            if nic_index in self.ports:
                raise ConfigError(
                    "nic_index", nic_index, "a NIC without a vswitch port", "port already attached"
                )
            port = VSwitchPort(self, nic_index)
            self.ports[nic_index] = port
            return port

    def detach(self, port: VSwitchPort) -> None:
        """Remove a port and forget the MACs learned on it (the table is rebuilt without them)."""
        with self.lock:
            if self.ports.get(port.nic_index) is not port:
                return
            del self.ports[port.nic_index]
            keep = (self.mac_keys != 0) & (self.mac_ports != port.nic_index)
            keys = self.mac_keys[keep].copy()
            ports = self.mac_ports[keep].copy()
            self.mac_keys[:] = 0
            self.mac_ports[:] = 0
            if keys.shape[0]:
                # Re-insert through the kernel's own probing so lookups find them again.
                for key, owner in zip(keys, ports, strict=True):
                    slot = int(fk._table_find(self.mac_keys, np.int64(key)))
                    self.mac_keys[slot] = key
                    self.mac_ports[slot] = owner

    def learned(self) -> dict[str, int]:
        """The MAC table as {"aa:bb:..": port} (for ctl counters and tests)."""
        table = {}
        for key, owner in zip(self.mac_keys, self.mac_ports, strict=True):
            if key:
                mac = int(key) & ((1 << 48) - 1)
                table[":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))] = int(owner)
        return table

    def forward(
        self, ingress: VSwitchPort, batch: FrameBatch, rx_checksum: np.ndarray, egress: np.ndarray
    ) -> None:
        with self.lock:
            ingress.tx_dropped += fk.switch_forward(
                batch.data,
                batch.frame_capacity,
                batch.length,
                batch.count,
                ingress.nic_index,
                self.mac_keys,
                self.mac_ports,
                egress,
            )
            for port in self.ports.values():
                if port is ingress:
                    continue
                before = len(port.queue)
                port.queue.push(batch, egress, port.nic_index, rx_checksum)
                if before == 0 and len(port.queue) > 0:
                    port.wake()


class VSwitchPort(Backend):
    """One NIC's port on a ``VSwitch``."""

    name = "vswitch"
    offloads = BackendOffloads(vlan_insert=True)

    def __init__(self, switch: VSwitch, nic_index: int) -> None:
        super().__init__()
        self.switch = switch
        self.nic_index = nic_index
        self.queue = FrameQueue(switch.queue_frames)
        self.tx_dropped = 0
        self._egress = np.zeros(0, dtype=np.int32)
        # Frames arrive with checksum state 0: only the host's receive path sets it.
        self._no_checksum = np.zeros(0, dtype=np.uint32)
        self._eventfd: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def transmit(self, batch: FrameBatch) -> int:
        count = batch.count
        if count == 0:
            return 0
        if self._egress.shape[0] < count:
            self._egress = np.zeros(batch.capacity, dtype=np.int32)
            self._no_checksum = np.zeros(batch.capacity, dtype=np.uint32)
        self.switch.forward(self, batch, self._no_checksum, self._egress)
        self.tx_frames += count
        return count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        with self.switch.lock:
            moved = self.queue.pop(batch, limit)
            if len(self.queue) == 0:
                self._drain_wakeup()
        self.rx_frames += moved
        return moved

    def wake(self) -> None:
        if self._eventfd is not None:
            os.eventfd_write(self._eventfd, 1)

    def _drain_wakeup(self) -> None:
        if self._eventfd is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._eventfd)

    def fileno(self) -> int | None:
        return self._eventfd

    def close(self) -> None:
        self.switch.detach(self)
        if self._eventfd is not None:
            os.close(self._eventfd)
            self._eventfd = None

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "tx_dropped": self.tx_dropped,
            "rx_dropped_queue_full": self.queue.dropped_full,
            "rx_dropped_oversize": self.queue.dropped_oversize,
            "queued": len(self.queue),
        }
