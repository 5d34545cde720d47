"""The emulated device tree: sysfs attributes, uio map files, subchannel rings, the root's lifetime.

Layer 7 (host). Builds under ``ROOT`` exactly what ``netvsc.vmbus.sysfs`` and ``netvsc.vmbus.uio``
read on a Hyper-V guest (spec/vmbus.md 1.2, 1.3, 2.1, 2.2, 2.6, 8.8):

- ``sys/devices/LNXSYSTM:00/VMBUS:00/<guid>/`` with ``class_id`` and ``device_id`` (braced GUIDs),
  ``id`` (primary relid), ``monitor_id`` (absent for a NIC created without monitor),
  ``driver`` -> ``sys/bus/vmbus/drivers/uio_hv_generic``, ``uio/uioN/maps/mapK/{name,size,addr,offset}``
  and ``channels/<relid>/{subchannel_id,monitor_id,ring}``; ``sys/bus/vmbus/devices/<guid>``
  links to it, as in the kernel;
- ``dev/uioN/map0..4``: regular files. Maps 1 and 2 (interrupt page, monitor page) are hard links
  to one pair of files in ``run/``: one VM has one of each, shared by every device;
- ``run/netvsc-host.pid``: the owning process. A root whose owner is dead is stale and is removed
  and rebuilt; a root owned by a live host is refused.

Ring headers are initialised as the kernel does at channel open (spec/vmbus.md 2.5, 8.8): indices
0, feature bit 0 ("pending send size supported") on both rings, the guest's TX ring interrupt
mask 0 (the host is idle and waits for a signal) and its RX ring mask 0 (the guest decides).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvsc.errors import ConfigError, DeviceError
from netvsc.host.guestmem import GuestMemory
from netvsc.vmbus.channel import Channel
from netvsc.vmbus.guestmem import GUEST_MEMORY_DIR
from netvsc.vmbus.ring import RingView
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    MONITOR_ID_COUNT,
    MONITOR_NONE,
    NETVSC_CLASS_GUID,
    RING_FEATURE_PENDING_SEND_SIZE,
)

__all__ = [
    "DEFAULT_SIZES",
    "PID_FILE",
    "DeviceTree",
    "MapSizes",
    "NicDevice",
    "SubchannelInfo",
    "init_channel_rings",
]

log = logging.getLogger(__name__)

MIB = 1 << 20
PID_FILE = "run/netvsc-host.pid"
UIO_DRIVER = "uio_hv_generic"
# Entries this host creates in a root; a stale root holding anything else is not ours to delete.
_ROOT_ENTRIES = frozenset({"sys", "dev", "run", GUEST_MEMORY_DIR})
FIRST_RELID = 14  # Hyper-V's first NIC usually sits around here; any u16 works
_MAP_ADDR_BASE = 0xFFFF9E0000000000


@dataclass(frozen=True)
class MapSizes:
    """Map sizes in bytes (spec/vmbus.md 2.2 defaults); each a non-zero multiple of 4096."""

    rings: int = 4 * MIB
    recv_buffer: int = 31 * MIB
    send_buffer: int = 16 * MIB
    subchannel_ring: int = 4 * MIB

    def __post_init__(self) -> None:
        for name in ("rings", "subchannel_ring"):
            value = getattr(self, name)
            if value % (2 * HV_PAGE_SIZE) or value < 4 * HV_PAGE_SIZE:
                raise ConfigError(name, value, "two rings of whole 4 KiB pages, at least 16 KiB in all")
        for name in ("recv_buffer", "send_buffer"):
            value = getattr(self, name)
            if value <= 0 or value % HV_PAGE_SIZE or value > 1 << 30:
                raise ConfigError(name, value, "a non-zero multiple of 4096 up to 1 GiB")


DEFAULT_SIZES = MapSizes()


def init_channel_rings(area: np.ndarray) -> None:
    """Fresh headers for both rings of a channel area, as at channel open (spec/vmbus.md 2.5)."""
    half = area.shape[0] // 2
    for ring in (area[:half], area[half:]):
        RingView(ring).initialize(interrupt_mask=0, feature_bits=RING_FEATURE_PENDING_SEND_SIZE)


def _write_attr(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _create_file(path: Path, size: int) -> mmap.mmap:
    """A zero-filled file of ``size`` bytes, mapped shared."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class SubchannelInfo:
    relid: int
    subchannel_id: int
    monitor_id: int
    directory: Path
    mapping: mmap.mmap
    area: np.ndarray


@dataclass
class NicDevice:
    """One emulated NetVSC device; implements the ``NicResources`` interface of ``host.nic``.

    ``signal_guest(relid)`` is called by every host-role Channel of the NIC when the ring rules
    say to interrupt the guest; the server replaces it (default: count only).
    """

    tree: DeviceTree
    index: int
    guid: str
    relid: int
    monitor_id: int
    uio_name: str
    device_dir: Path
    dev_dir: Path
    recv_gpadl: int
    send_gpadl: int
    rings: np.ndarray
    recv_buffer: np.ndarray
    send_buffer: np.ndarray
    guest_memory: GuestMemory
    subchannels: list[SubchannelInfo] = field(default_factory=list)
    signal_guest: Callable[[int], None] | None = None
    interrupts_sent: int = 0
    _mmaps: list[mmap.mmap] = field(default_factory=list)

    @property
    def has_monitor(self) -> bool:
        return self.monitor_id != MONITOR_NONE

    def _signal(self, relid: int) -> Callable[[], None]:
        def signal() -> None:
            self.interrupts_sent += 1
            if self.signal_guest is not None:
                self.signal_guest(relid)

        return signal

    def reset_rings(self) -> None:
        """Re-initialise the primary's ring headers (channel open)."""
        init_channel_rings(self.rings)

    def primary_channel(self) -> Channel:
        """A host-role Channel over the primary's rings (a new one each call: cursors from the header)."""
        return Channel(self.rings, self._signal(self.relid), self.relid, self.monitor_id, role="host")

    def channel_relids(self) -> list[int]:
        """Relids of the primary (index 0) and the offered subchannels, by channel index."""
        return [self.relid] + [s.relid for s in self.subchannels]

    def channel_monitor_ids(self) -> list[int]:
        return [self.monitor_id] + [s.monitor_id for s in self.subchannels]

    def offer_subchannels(self, count: int) -> list[Channel]:
        """Offer ``count`` more subchannels: attributes first, the ring renamed into place last (host#48)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError("subchannel count", count, "a non-negative integer")
        channels = []
        size = self.tree.sizes.subchannel_ring
        for _ in range(count):
            relid = self.tree.allocate_relid()
            monitor_id = self.tree.allocate_monitor_id() if self.has_monitor else MONITOR_NONE
            subchannel_id = len(self.subchannels) + 1
            directory = self.device_dir / "channels" / str(relid)
            directory.mkdir(parents=True)
            _write_attr(directory / "subchannel_id", str(subchannel_id))
            if monitor_id != MONITOR_NONE:
                _write_attr(directory / "monitor_id", str(monitor_id))
            temporary = directory / ".ring.tmp"
            mapping = _create_file(temporary, size)
            area = np.frombuffer(mapping, dtype=np.uint8)
            init_channel_rings(area)
            os.rename(temporary, directory / "ring")  # readiness signal for the guest (spec 2.6)
            info = SubchannelInfo(relid, subchannel_id, monitor_id, directory, mapping, area)
            self.subchannels.append(info)
            channels.append(Channel(area, self._signal(relid), relid, monitor_id, role="host"))
        return channels

    def rescind_subchannels(self) -> None:
        """Remove every subchannel's directory (ring first, so the guest sees it not ready), newest first."""
        while self.subchannels:
            info = self.subchannels.pop()
            with contextlib.suppress(FileNotFoundError):
                (info.directory / "ring").unlink()
            shutil.rmtree(info.directory, ignore_errors=True)
            self.tree.release_monitor_id(info.monitor_id)
            with contextlib.suppress(BufferError):
                info.mapping.close()

    def remove(self) -> None:
        """Device removal: subchannels rescinded before the primary (host#67)."""
        self.rescind_subchannels()
        bus_link = self.tree.devices_dir / self.guid
        with contextlib.suppress(FileNotFoundError):
            bus_link.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.tree.drivers_dir / UIO_DRIVER / self.guid).unlink()
        shutil.rmtree(self.device_dir, ignore_errors=True)
        shutil.rmtree(self.dev_dir, ignore_errors=True)
        self.tree.release_monitor_id(self.monitor_id)
        self.guest_memory.close()
        for mapping in self._mmaps:
            with contextlib.suppress(BufferError):
                mapping.close()
        self._mmaps.clear()


class DeviceTree:
    """The emulated root: ``create()`` claims it, ``add_nic`` adds devices, ``remove()`` cleans up."""

    def __init__(self, root: str | os.PathLike[str], sizes: MapSizes = DEFAULT_SIZES) -> None:
        self.root = Path(root).absolute()
        self.sizes = sizes
        self.devices_dir = self.root / "sys" / "bus" / "vmbus" / "devices"
        self.drivers_dir = self.root / "sys" / "bus" / "vmbus" / "drivers"
        self.real_devices_dir = self.root / "sys" / "devices" / "LNXSYSTM:00" / "VMBUS:00"
        self.run_dir = self.root / "run"
        self.guest_memory_dir = self.root / GUEST_MEMORY_DIR
        self.nics: list[NicDevice] = []
        self._next_relid = FIRST_RELID
        self._free_monitor_ids = list(range(MONITOR_ID_COUNT))
        self._next_gpadl = 925201
        self._created_root = False
        self._claimed = False
        self._shared: list[mmap.mmap] = []

    # -- the root -------------------------------------------------------------------------

    def create(self) -> None:
        """Claim the root: refuse one served by a live host, replace a stale one, build the skeleton."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError("root", str(self.root), "a directory (or a path that does not exist yet)")
        if self.root.is_dir():
            self._clear_stale_root()
        else:
            self.root.mkdir(parents=True)
            self._created_root = True
        for directory in (
            self.devices_dir,
            self.drivers_dir / UIO_DRIVER,
            self.real_devices_dir,
            self.run_dir,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        (self.root / "dev").mkdir(exist_ok=True)
        self.guest_memory_dir.mkdir(exist_ok=True)
        self.guest_memory_dir.chmod(0o1777)  # guests of any user may publish regions
        # The pid file goes in with O_EXCL: two hosts started at once cannot both claim the root.
        try:
            fd = os.open(self.root / PID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise ConfigError(
                "root", str(self.root), "a root no other host is serving", "another host claimed it just now"
            ) from None
        with os.fdopen(fd, "w") as pid_file:
            pid_file.write(f"{os.getpid()}\n")
        self._claimed = True
        for name in ("int_page", "monitor_page"):
            self._shared.append(_create_file(self.run_dir / name, HV_PAGE_SIZE))
        self.int_page = np.frombuffer(self._shared[0], dtype=np.uint8)
        self.monitor_page = np.frombuffer(self._shared[1], dtype=np.uint8)

    def _clear_stale_root(self) -> None:
        pid_path = self.root / PID_FILE
        entries = set(os.listdir(self.root))
        if pid_path.exists():
            try:
                pid = int(pid_path.read_text().strip())
            except ValueError:
                pid = 0
            if pid > 0 and pid != os.getpid() and _pid_alive(pid):
                raise ConfigError(
                    "root",
                    str(self.root),
                    "a root no running host serves",
                    f"host pid {pid} is serving it; stop it first (netvsc host ctl --root ... or kill {pid})",
                )
            # The previous host created this root; this one takes over removing it at exit.
            self._created_root = True
        foreign = entries - _ROOT_ENTRIES
        if foreign:
            raise ConfigError(
                "root",
                str(self.root),
                f"an empty directory or one left by a previous host (only {sorted(_ROOT_ENTRIES)})",
                f"it holds {sorted(foreign)[:5]}",
            )
        if entries:
            log.warning("%s: removing a stale root left by a host that is gone", self.root)
        for name in entries:
            shutil.rmtree(self.root / name, ignore_errors=True)

    def allocate_relid(self) -> int:
        relid = self._next_relid
        if relid > 2047 * 8:  # the interrupt page's send half has a bit per relid below 16384
            raise DeviceError("no relid left with a bit in the interrupt page")
        self._next_relid += 1
        return relid

    def allocate_monitor_id(self) -> int:
        """The lowest free monitor id, or 255 (no monitor) when all 128 are taken, as Hyper-V does."""
        return self._free_monitor_ids.pop(0) if self._free_monitor_ids else MONITOR_NONE

    def release_monitor_id(self, monitor_id: int) -> None:
        if monitor_id != MONITOR_NONE and monitor_id not in self._free_monitor_ids:
            self._free_monitor_ids.append(monitor_id)
            self._free_monitor_ids.sort()

    def _allocate_gpadl(self) -> int:
        handle = self._next_gpadl
        self._next_gpadl += 1
        return handle

    # -- devices --------------------------------------------------------------------------

    def add_nic(self, *, monitor: bool = True, guid: str | None = None) -> NicDevice:
        """Create one NetVSC device bound to uio_hv_generic, with its five maps and primary channel."""
        if not self._claimed:
            raise DeviceError("DeviceTree.create() must run before add_nic()")
        index = len(self.nics)
        guid = str(uuid.UUID(guid)) if guid else str(uuid.uuid4())
        relid = self.allocate_relid()
        monitor_id = self.allocate_monitor_id() if monitor else MONITOR_NONE
        uio_name = f"uio{index}"
        device_dir = self.real_devices_dir / guid
        device_dir.mkdir()
        _write_attr(device_dir / "class_id", f"{{{NETVSC_CLASS_GUID}}}")
        _write_attr(device_dir / "device_id", f"{{{guid}}}")
        _write_attr(device_dir / "id", str(relid))
        if monitor_id != MONITOR_NONE:
            _write_attr(device_dir / "monitor_id", str(monitor_id))
        _write_attr(device_dir / "driver_override", UIO_DRIVER)
        os.symlink(os.path.relpath(device_dir, self.devices_dir), self.devices_dir / guid)
        os.symlink(os.path.relpath(self.drivers_dir / UIO_DRIVER, device_dir), device_dir / "driver")
        os.symlink(
            os.path.relpath(device_dir, self.drivers_dir / UIO_DRIVER), self.drivers_dir / UIO_DRIVER / guid
        )

        recv_gpadl, send_gpadl = self._allocate_gpadl(), self._allocate_gpadl()
        names = ("txrx_rings", "int_page", "monitor_page", f"recv:{recv_gpadl}", f"send:{send_gpadl}")
        sizes = (self.sizes.rings, HV_PAGE_SIZE, HV_PAGE_SIZE, self.sizes.recv_buffer, self.sizes.send_buffer)
        dev_dir = self.root / "dev" / uio_name
        dev_dir.mkdir()
        mmaps = []
        for map_index, size in enumerate(sizes):
            if map_index in (1, 2):
                shared = self.run_dir / ("int_page" if map_index == 1 else "monitor_page")
                os.link(shared, dev_dir / f"map{map_index}")
            else:
                mmaps.append(_create_file(dev_dir / f"map{map_index}", size))
        # sysfs attributes last: a guest scanning meanwhile finds either no uio dir or a complete one.
        uio_dir = device_dir / "uio" / uio_name
        for map_index, (name, size) in enumerate(zip(names, sizes, strict=True)):
            map_dir = uio_dir / "maps" / f"map{map_index}"
            map_dir.mkdir(parents=True)
            _write_attr(map_dir / "name", name)
            _write_attr(map_dir / "size", f"0x{size:016x}")
            _write_attr(
                map_dir / "addr", f"0x{_MAP_ADDR_BASE + map_index * 0x1000000 + index * 0x10000000:016x}"
            )
            _write_attr(map_dir / "offset", f"0x{0:016x}")
        _write_attr(uio_dir / "name", UIO_DRIVER)
        _write_attr(uio_dir / "version", "0.02.1")
        primary_dir = device_dir / "channels" / str(relid)
        primary_dir.mkdir(parents=True)
        _write_attr(primary_dir / "subchannel_id", "0")
        if monitor_id != MONITOR_NONE:
            _write_attr(primary_dir / "monitor_id", str(monitor_id))
        # The primary's ring file exists from probe (4.17+): DPDK's "subchannels supported" test.
        os.link(dev_dir / "map0", primary_dir / "ring")
        rings, recv_buffer, send_buffer = (np.frombuffer(m, dtype=np.uint8) for m in mmaps)
        init_channel_rings(rings)
        nic = NicDevice(
            tree=self,
            index=index,
            guid=guid,
            relid=relid,
            monitor_id=monitor_id,
            uio_name=uio_name,
            device_dir=device_dir,
            dev_dir=dev_dir,
            recv_gpadl=recv_gpadl,
            send_gpadl=send_gpadl,
            rings=rings,
            recv_buffer=recv_buffer,
            send_buffer=send_buffer,
            guest_memory=GuestMemory(self.guest_memory_dir),
            _mmaps=mmaps,
        )
        self.nics.append(nic)
        return nic

    def remove(self) -> None:
        """Remove every device (each one's subchannels first), the shared pages, and the root's contents."""
        for nic in reversed(self.nics):
            nic.remove()
        self.nics.clear()
        for mapping in self._shared:
            with contextlib.suppress(BufferError):
                mapping.close()
        self._shared.clear()
        if not self._claimed:
            return
        for name in _ROOT_ENTRIES:
            shutil.rmtree(self.root / name, ignore_errors=True)
        self._claimed = False
        if self._created_root:
            with contextlib.suppress(OSError):
                self.root.rmdir()
        elif not os.listdir(self.root):
            log.debug("%s: left empty (it existed before the host started)", self.root)

    def __enter__(self) -> DeviceTree:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()
