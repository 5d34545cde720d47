"""``VmbusDevice``: one NetVSC device bound to uio_hv_generic, with its maps and channels.

Layer 4 (vmbus). Ties together the sysfs scan (``sysfs``), the maps and irq fd (``uio``) and the
host signalling (``signal``) into what the PMD needs (spec/vmbus.md 8.1): the five maps as numpy
arrays, the receive/send buffer GPADL handles, the primary ``Channel`` and the subchannels
discovered after the NVSP subchannel request. Real and emulated devices go through the same code.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netvsc.errors import DeviceError
from netvsc.vmbus.signal import InterruptPageSignaller, MonitorSignaller, make_signaller
from netvsc.vmbus.sysfs import VmbusDeviceInfo, find_device, scan_devices
from netvsc.vmbus.uio import (
    MAP_INDEX_INT_PAGE,
    MAP_INDEX_MONITOR_PAGE,
    MAP_INDEX_RECV_BUFFER,
    MAP_INDEX_RINGS,
    MAP_INDEX_SEND_BUFFER,
    MAP_NAME_PREFIXES,
    SubchannelRing,
    UioDevice,
    discover_subchannels,
    open_uio,
    parse_gpadl,
    ring_file_accessible,
    wait_for_subchannels,
)

if TYPE_CHECKING:
    from netvsc.vmbus.channel import Channel

__all__ = ["SUBCHANNEL_TIMEOUT_S", "VmbusDevice", "list_devices"]

log = logging.getLogger(__name__)

# DPDK waits up to 1000 scans of 10 ms per expected subchannel (spec 2.6); one bound for the
# whole set is easier to reason about and as long.
SUBCHANNEL_TIMEOUT_S = 10.0


def list_devices(root: str | os.PathLike[str] | None = None) -> list[VmbusDeviceInfo]:
    """Every VMBus network device under the root, whichever driver owns it."""
    return scan_devices(root)


def _build_channel(area: np.ndarray, signal: Callable[[], None], relid: int, monitor_id: int) -> Channel:
    # Imported here: channel.py belongs to the ring layer and is built alongside this module.
    from netvsc.vmbus.channel import Channel

    return Channel(area, signal, relid, monitor_id)


class VmbusDevice:
    """An open uio_hv_generic NetVSC device.

    Attributes: ``info`` (the sysfs scan), ``uio``, ``rings`` / ``int_page`` / ``monitor_page`` /
    ``recv_buffer`` / ``send_buffer`` (uint8 arrays over maps 0-4), ``recv_gpadl`` /
    ``send_gpadl``, ``signallers`` (relid -> signaller, primary included).

    ``close`` unmaps and closes the fds; it is idempotent. A mapping that a caller still holds a
    view of (a Channel kept past close) stays mapped until that view is garbage-collected.
    """

    def __init__(self, info: VmbusDeviceInfo, root: str | os.PathLike[str] | None = None) -> None:
        if info.uio is None:
            raise DeviceError(
                f"device {info.guid} is not bound to uio_hv_generic (driver: {info.driver or 'none'}); "
                f"run `netvsc devbind --bind uio_hv_generic {info.guid}`"
            )
        self.info = info
        self.root = root
        self.uio: UioDevice = open_uio(info.path, info.uio, root)
        self._mmaps: list[mmap.mmap] = []
        self._channels: dict[int, Channel] = {}
        self.subchannel_rings: dict[int, SubchannelRing] = {}
        self.closed = False
        try:
            names = [m.name for m in self.uio.maps]
            self.recv_gpadl = parse_gpadl(
                names[MAP_INDEX_RECV_BUFFER], MAP_NAME_PREFIXES[MAP_INDEX_RECV_BUFFER]
            )
            self.send_gpadl = parse_gpadl(
                names[MAP_INDEX_SEND_BUFFER], MAP_NAME_PREFIXES[MAP_INDEX_SEND_BUFFER]
            )
            arrays = [self._array(self.uio.map(index)) for index in range(len(MAP_NAME_PREFIXES))]
            self.rings = arrays[MAP_INDEX_RINGS]
            self.int_page = arrays[MAP_INDEX_INT_PAGE]
            self.monitor_page = arrays[MAP_INDEX_MONITOR_PAGE]
            self.recv_buffer = arrays[MAP_INDEX_RECV_BUFFER]
            self.send_buffer = arrays[MAP_INDEX_SEND_BUFFER]
            self.signallers: dict[int, MonitorSignaller | InterruptPageSignaller] = {
                info.relid: self._signaller(info.relid, info.monitor_id)
            }
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, name: str, root: str | os.PathLike[str] | None = None) -> VmbusDevice:
        """Open a NIC by instance GUID or interface name; unknown -> ConfigError listing the known ones."""
        return cls(find_device(name, root), root)

    @property
    def guid(self) -> str:
        return self.info.guid

    @property
    def relid(self) -> int:
        return self.info.relid

    @property
    def monitor_id(self) -> int:
        return self.info.monitor_id

    @property
    def path(self) -> Path:
        return self.info.path

    def _array(self, mapping: mmap.mmap) -> np.ndarray:
        self._mmaps.append(mapping)
        return np.frombuffer(mapping, dtype=np.uint8)

    def _signaller(self, relid: int, monitor_id: int) -> MonitorSignaller | InterruptPageSignaller:
        return make_signaller(
            relid=relid,
            monitor_id=monitor_id,
            monitor_page=self.monitor_page,
            int_page=self.int_page,
            irq_write=self.uio.irq_write,
        )

    def _check_open(self) -> None:
        if self.closed:
            raise DeviceError(f"device {self.guid} is closed")

    @property
    def supports_subchannels(self) -> bool:
        """Whether the kernel gives channels a ``ring`` file (4.17+, spec 2.6)."""
        return ring_file_accessible(self.path, self.relid)

    def primary_channel(self) -> Channel:
        """The primary channel over map 0 (built once)."""
        self._check_open()
        if self.relid not in self._channels:
            self._channels[self.relid] = _build_channel(
                self.rings, self.signallers[self.relid].signal, self.relid, self.monitor_id
            )
        return self._channels[self.relid]

    def _adopt(self, rings: list[SubchannelRing]) -> list[Channel]:
        channels = []
        for ring in rings:
            area = self._array(ring.ring)
            self.subchannel_rings[ring.relid] = ring
            signaller = self._signaller(ring.relid, ring.monitor_id)
            self.signallers[ring.relid] = signaller
            channel = _build_channel(area, signaller.signal, ring.relid, ring.monitor_id)
            self._channels[ring.relid] = channel
            channels.append(channel)
        return channels

    def poll_subchannels(self) -> list[Channel]:
        """One scan: Channels for subchannels that became ready since the last call."""
        self._check_open()
        return self._adopt(discover_subchannels(self.path, set(self.signallers)))

    def open_subchannels(self, expected: int, timeout: float = SUBCHANNEL_TIMEOUT_S) -> list[Channel]:
        """Wait until ``expected`` new subchannels are ready; DeviceError naming how many came on timeout.

        The channels come back ordered by subchannel index, which must be exactly 1..expected:
        queue i is served by subchannel i (the host's RSS table names channels by that index,
        and relids say nothing about it), so a duplicate or out-of-range index is refused.
        """
        self._check_open()
        rings = wait_for_subchannels(self.path, set(self.signallers), expected, timeout)
        rings.sort(key=lambda ring: ring.subchannel_id)
        indices = [ring.subchannel_id for ring in rings]
        if indices != list(range(1, expected + 1)):
            for ring in rings:
                with contextlib.suppress(BufferError):
                    ring.ring.close()
            raise DeviceError(
                f"{self.guid}: subchannel indices {indices}, expected 1..{expected} (one per queue)"
            )
        return self._adopt(rings)

    def set_latency(self, latency_us: int) -> None:
        """Store the monitor latency for every channel that has a monitor (others ignore it, spec 5.2)."""
        self._check_open()
        for signaller in self.signallers.values():
            signaller.set_latency(latency_us)

    def rescinded(self) -> bool:
        """Whether the host removed this device (hot-unplug); the driver must then stop using it."""
        return not self.closed and self.uio.rescinded()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._channels.clear()
        self.signallers = {}
        self.subchannel_rings.clear()
        for attr in ("rings", "int_page", "monitor_page", "recv_buffer", "send_buffer"):
            with contextlib.suppress(AttributeError):
                delattr(self, attr)
        for mapping in self._mmaps:
            try:
                mapping.close()
            except BufferError:
                log.debug("%s: a map is still referenced; it is unmapped when released", self.info.guid)
        self._mmaps.clear()
        if hasattr(self, "uio"):
            self.uio.close()

    def __enter__(self) -> VmbusDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.info.uio
        return f"VmbusDevice({self.guid}, relid={self.relid}, monitor_id={self.monitor_id}, {state})"
