"""Builds fake ``sys/`` and ``dev/`` trees laid out as on a Hyper-V guest, for the vmbus tests.

The layout follows the kernel's: device directories live under ``sys/devices/.../<guid>`` and
``sys/bus/vmbus/devices/<name>`` links to them; ``driver`` links into
``sys/bus/vmbus/drivers/<name>``; ``sys/class/net/<ifname>`` links to the device's
``net/<ifname>`` whose ``device`` links back to the device. Attribute text matches the kernel's
(braced GUIDs plus newline, decimal ids, 0x-padded hex map sizes). The emulated layout adds
``dev/uioN/mapK`` files, as the emulated host creates them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from netvsc.wire.vmbus import NETVSC_CLASS_GUID

# A class that is not a NIC: the synthetic SCSI controller.
SCSI_CLASS_GUID = "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"

# Small sizes keep tests fast; they are still page multiples, as the driver requires.
SMALL_MAP_SIZES = (2 * 8 * 4096, 4096, 4096, 16 * 4096, 8 * 4096)
DEFAULT_RECV_GPADL = 925201
DEFAULT_SEND_GPADL = 925202


def _relink(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class FakeSys:
    """A fake root directory; point ``NETVSC_SYSFS_ROOT`` at ``self.root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.devices_dir = root / "sys" / "bus" / "vmbus" / "devices"
        self.drivers_dir = root / "sys" / "bus" / "vmbus" / "drivers"
        self.real_devices_dir = root / "sys" / "devices" / "LNXSYSTM:00" / "VMBUS:00"
        for d in (
            self.devices_dir,
            self.drivers_dir,
            self.real_devices_dir,
            root / "sys" / "class" / "net",
            root / "dev",
        ):
            d.mkdir(parents=True, exist_ok=True)

    def add_driver(self, name: str, *, new_id: bool = True) -> Path:
        driver_dir = self.drivers_dir / name
        driver_dir.mkdir(exist_ok=True)
        for attr in ("bind", "unbind") + (("new_id", "remove_id") if new_id else ()):
            _write(driver_dir / attr, "")
        return driver_dir

    def add_device(
        self,
        guid: str | None = None,
        *,
        class_guid: str = NETVSC_CLASS_GUID,
        relid: int = 14,
        monitor_id: int | None = 3,
        driver: str | None = "hv_netvsc",
        netdev: str | None = None,
        driver_override: bool = True,
        dirname: str | None = None,
        class_id_text: str | None = None,
        device_id_text: str | None = None,
    ) -> Path:
        """A device directory with the kernel's attributes; returns its ``sys/bus/vmbus/devices`` path."""
        guid = guid or str(uuid.uuid4())
        dirname = dirname or guid
        real_dir = self.real_devices_dir / dirname
        real_dir.mkdir(parents=True)
        _write(real_dir / "class_id", class_id_text if class_id_text is not None else f"{{{class_guid}}}\n")
        _write(real_dir / "device_id", device_id_text if device_id_text is not None else f"{{{guid}}}\n")
        _write(real_dir / "id", f"{relid}\n")
        if monitor_id is not None:
            _write(real_dir / "monitor_id", f"{monitor_id}\n")
        if driver_override:
            _write(real_dir / "driver_override", "\n")
        _write(real_dir / "channels" / str(relid) / "subchannel_id", "0\n")
        if monitor_id is not None:
            _write(real_dir / "channels" / str(relid) / "monitor_id", f"{monitor_id}\n")
        bus_link = self.devices_dir / dirname
        _relink(bus_link, real_dir)
        if driver is not None:
            self.set_driver(bus_link, driver)
        if netdev is not None:
            self.add_netdev(bus_link, netdev)
        return bus_link

    def set_driver(self, device_dir: Path, driver: str | None) -> None:
        link = device_dir / "driver"
        if link.is_symlink():
            link.unlink()
        if driver is not None:
            if not (self.drivers_dir / driver).is_dir():
                self.add_driver(driver)
            _relink(link, self.drivers_dir / driver)

    def add_netdev(self, device_dir: Path, ifname: str) -> None:
        net_dir = device_dir.resolve() / "net" / ifname
        net_dir.mkdir(parents=True)
        _relink(net_dir / "device", device_dir.resolve())
        _relink(self.root / "sys" / "class" / "net" / ifname, net_dir)

    def add_uio(
        self,
        device_dir: Path,
        uio_name: str = "uio0",
        *,
        emulated: bool = True,
        sizes: tuple[int, ...] = SMALL_MAP_SIZES,
        names: tuple[str, ...] | None = None,
        size_texts: dict[int, str] | None = None,
        padded: bool = True,
    ) -> Path:
        """``uio/uioN/maps/mapK`` attributes and, for the emulated layout, ``dev/uioN/mapK`` files."""
        names = names or (
            "txrx_rings",
            "int_page",
            "monitor_page",
            f"recv:{DEFAULT_RECV_GPADL}",
            f"send:{DEFAULT_SEND_GPADL}",
        )
        uio_dir = device_dir.resolve() / "uio" / uio_name
        for index, (name, size) in enumerate(zip(names, sizes, strict=True)):
            map_dir = uio_dir / "maps" / f"map{index}"
            _write(map_dir / "name", name + "\n")
            size_text = f"0x{size:016x}" if padded else f"{size:#x}"
            _write(map_dir / "size", (size_texts or {}).get(index, size_text) + "\n")
            _write(map_dir / "addr", f"0x{0xFFFF9E0000000000 + index * 0x1000000:016x}\n")
            _write(map_dir / "offset", "0x0000000000000000\n" if padded else "0x0\n")
        _write(uio_dir / "name", "uio_hv_generic\n")
        _write(uio_dir / "version", "0.02.1\n")
        if emulated:
            dev_dir = self.root / "dev" / uio_name
            dev_dir.mkdir(parents=True, exist_ok=True)
            for index, size in enumerate(sizes):
                with open(dev_dir / f"map{index}", "wb") as f:
                    f.truncate(size)
        return uio_dir

    def bind_uio(self, device_dir: Path, uio_name: str = "uio0", **kwargs: object) -> Path:
        """The device as uio_hv_generic leaves it: driver link, uio maps, no netdev."""
        self.set_driver(device_dir, "uio_hv_generic")
        return self.add_uio(device_dir, uio_name, **kwargs)

    def add_channel(
        self,
        device_dir: Path,
        relid: int,
        subchannel_id: int,
        *,
        monitor_id: int | None = None,
        ring_size: int | None = 8 * 4096,
    ) -> Path:
        """``channels/<relid>/`` with its attributes; ``ring_size=None`` leaves out the ring (not ready)."""
        channel_dir = device_dir.resolve() / "channels" / str(relid)
        _write(channel_dir / "subchannel_id", f"{subchannel_id}\n")
        if monitor_id is not None:
            _write(channel_dir / "monitor_id", f"{monitor_id}\n")
        if ring_size is not None:
            self.add_ring(device_dir, relid, ring_size)
        return channel_dir

    def add_ring(self, device_dir: Path, relid: int, ring_size: int = 8 * 4096) -> Path:
        ring = device_dir.resolve() / "channels" / str(relid) / "ring"
        with open(ring, "wb") as f:
            f.truncate(ring_size)
        ring.chmod(0o600)
        return ring
