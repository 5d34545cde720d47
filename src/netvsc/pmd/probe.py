"""Which NetVSC devices this driver can open (layer 5, pmd): ``netvsc.probe()``.

A device is usable when it is of the network class (pmd#1) and bound to uio_hv_generic with a
``uio`` node: on a real Hyper-V or Azure guest under ``/sys/bus/vmbus``, under an emulated
host's root when ``NETVSC_SYSFS_ROOT`` (or ``root``) names one. Both are read through
``vmbus.sysfs``, so the two look the same. The interface name of a device vanishes once
uio_hv_generic owns it; the one ``netvsc devbind`` recorded before the unbind is reported.
A device whose sysfs entries cannot be read is logged and left out, never a failed scan.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from netvsc.errors import DeviceError
from netvsc.vmbus.devbind import recorded_netdevs
from netvsc.vmbus.sysfs import read_device, read_guid_file, sysfs_root, vmbus_devices_dir
from netvsc.wire.vmbus import MONITOR_NONE, NETVSC_CLASS_GUID

__all__ = ["UIO_DRIVER", "ProbedDevice", "probe"]

log = logging.getLogger(__name__)

UIO_DRIVER = "uio_hv_generic"


@dataclass(frozen=True)
class ProbedDevice:
    """One usable NetVSC device."""

    guid: str  # instance GUID: what NetvscPort.open takes
    netdev: str | None  # interface name (current, or recorded before the unbind)
    netdev_recorded: bool  # True when ``netdev`` comes from devbind's record
    uio: str  # "uioN"
    channel_count: int  # channels the device offers now (primary + subchannels opened so far)
    monitor_id: int  # primary channel monitor id; 255 = none (signals through the interrupt page)
    relid: int  # primary channel relid
    emulated: bool  # under an emulated host's root rather than the real /sys
    path: Path  # the device directory

    @property
    def has_monitor(self) -> bool:
        return self.monitor_id != MONITOR_NONE

    def as_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["path"] = str(self.path)
        return record


def probe(root: str | os.PathLike[str] | None = None) -> list[ProbedDevice]:
    """Usable NetVSC devices under ``root`` (default ``$NETVSC_SYSFS_ROOT``, else ``/``), by GUID."""
    resolved = sysfs_root(root)
    emulated = resolved.resolve() != Path("/")
    devices_dir = vmbus_devices_dir(resolved)
    if not devices_dir.is_dir():
        log.debug("%s does not exist: no VMBus devices", devices_dir)
        return []
    recorded = {guid: name for name, guid in recorded_netdevs(resolved).items()}
    found = []
    for name in sorted(os.listdir(devices_dir)):
        device_dir = devices_dir / name
        if name.startswith(".") or not (device_dir / "class_id").exists():
            continue
        try:
            if read_guid_file(device_dir / "class_id") != NETVSC_CLASS_GUID:
                continue
            device = read_device(device_dir)
        except DeviceError as exc:
            log.warning("skipping VMBus device %s: %s", device_dir, exc)
            continue
        if device.driver != UIO_DRIVER or device.uio is None:
            log.debug("%s: bound to %s, not %s: not usable", device.guid, device.driver, UIO_DRIVER)
            continue
        netdev = device.netdev or recorded.get(device.guid)
        found.append(
            ProbedDevice(
                guid=device.guid,
                netdev=netdev,
                netdev_recorded=device.netdev is None and netdev is not None,
                uio=device.uio,
                channel_count=device.channel_count,
                monitor_id=device.monitor_id,
                relid=device.relid,
                emulated=emulated,
                path=device.path,
            )
        )
    return sorted(found, key=lambda d: d.guid)
