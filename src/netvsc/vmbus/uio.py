"""uio_hv_generic resources behind one interface: the five maps, the irq fd, subchannel rings.

Layer 4 (vmbus). This module is the only place that knows whether the device is real or
emulated (DESIGN.md section 3); everything above it sees ``UioDevice.map(k)``,
``UioDevice.irq_write(v)`` and ``UioDevice.irq_read()``.

Both kinds describe their maps in the same sysfs files,
``ROOT/sys/bus/vmbus/devices/<guid>/uio/uioN/maps/mapK/{name,size,addr,offset}`` (spec/vmbus.md
2.1, 2.2). They differ in ``ROOT/dev/uioN``:

- real (a character device): opened read/write once and kept open for the device's lifetime,
  since the last close disconnects the channel (spec 2.5). Map K is
  ``mmap(fd, size, MAP_SHARED, PROT_READ|PROT_WRITE, offset=K*PAGESIZE)``; the offset only
  selects the map (spec 2.3). The irq fd is that same fd: a 4-byte write of an s32 (1 enables
  host-to-guest interrupts and makes the kernel signal the host for monitor-less channels), a
  4-byte read returns the cumulative interrupt count (spec 2.4).
- emulated (a directory, created by the emulated host): map K is the regular file
  ``ROOT/dev/uioN/mapK``, mapped from offset 0 (one file per map; spec 8.8).

The emulated irq contract, which the emulated host implements:

- The host binds a Unix datagram socket at ``ROOT/dev/uioN/irq``.
- The driver binds its own datagram socket at ``ROOT/dev/uioN/irq-guest-<pid>-<n>`` and sends
  each irq write as one datagram of exactly 4 bytes, a little-endian s32, exactly what it would
  write to ``/dev/uioN``. The host applies the same effects as the kernel's irqcontrol.
- The host answers interrupts by sending 4-byte little-endian s32 datagrams holding its
  cumulative interrupt count to the address the driver's datagrams came from; ``irq_read`` returns
  the latest one. The driver treats it as a counter, never as one event per datagram.
- Until the host's socket exists (host not started yet, or gone), a write is dropped and
  counted in ``irq_writes_dropped``; it is not an error, because the only write the driver
  makes is "enable interrupts / kick the host", and the host re-checks every ring when it starts.

The emulated open contract (spec 2.5: the first open of ``/dev/uioN`` opens the channel, the last
close closes it), which the emulated host implements:

- The host listens on a Unix ``SOCK_SEQPACKET`` socket at ``ROOT/dev/uioN/open``.
- ``EmulatedUio`` connects to it when it is created and holds the connection until ``close``
  (or until the process dies: the kernel closes the socket, as it closes a crashed process's fd).
  The driver sends nothing on it. Like ``open(2)`` on a real uio device, the open is
  synchronous: the host answers each connection with one 1-byte message once the channel is
  open (ring headers initialised), and the driver waits for it (``OPEN_ACK_TIMEOUT_S``) before
  it touches the rings; a host that accepts but never answers is a ``DeviceError``.
- The host counts connections per device: the first one opens the channel (ring headers
  re-initialised, the NetVSP back at VERSION); the last disconnect closes it (NVSP and RNDIS
  state forgotten, subchannels rescinded). A connection that is refused (no host yet, or a stale
  socket) is not an error: the device is opened without one, counted in ``open_unconnected``.

Subchannels (spec 2.6): ``channels/<relid>/ring`` is the readiness signal; the kernel (or the
emulated host, by renaming a finished file) creates it last.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import logging
import mmap
import os
import re
import select
import socket
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from netvsc.errors import DeviceError
from netvsc.vmbus.sysfs import RELID_MAX, read_int_file, read_monitor_id, read_text_file, sysfs_root
from netvsc.wire.vmbus import HV_PAGE_SIZE

__all__ = [
    "MAP_INDEX_INT_PAGE",
    "MAP_INDEX_MONITOR_PAGE",
    "MAP_INDEX_RECV_BUFFER",
    "MAP_INDEX_RINGS",
    "MAP_INDEX_SEND_BUFFER",
    "MAP_NAME_PREFIXES",
    "EmulatedUio",
    "KernelUio",
    "SubchannelRing",
    "UioDevice",
    "UioMapInfo",
    "discover_subchannels",
    "open_uio",
    "parse_gpadl",
    "read_map_infos",
    "wait_for_subchannels",
]

log = logging.getLogger(__name__)

# The five maps of uio_hv_generic, by index, and the name prefix each must carry (spec 2.2).
MAP_INDEX_RINGS = 0
MAP_INDEX_INT_PAGE = 1
MAP_INDEX_MONITOR_PAGE = 2
MAP_INDEX_RECV_BUFFER = 3
MAP_INDEX_SEND_BUFFER = 4
MAP_NAME_PREFIXES = ("txrx_rings", "int_page", "monitor_page", "recv:", "send:")

# Sanity bound on any map or ring size read from sysfs or fstat (spec 8.5): the largest real
# map is the 31 MiB receive buffer; 1 GiB leaves room for configurable emulated sizes while
# still catching garbage such as 0xffffffffffffffff.
MAP_SIZE_MAX = 1 << 30

IRQ_SOCKET_NAME = "irq"
OPEN_SOCKET_NAME = "open"
OPEN_ACK_TIMEOUT_S = 10.0
SUBCHANNEL_POLL_INTERVAL_S = 0.010  # DPDK's retry step (spec 2.6)

_IRQ_VALUE = struct.Struct("<i")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_MAP_DIR = re.compile(r"map(\d+)")
_DECIMAL = re.compile(r"[0-9]+")
_guest_socket_serial = itertools.count()


@dataclass(frozen=True)
class UioMapInfo:
    """One ``maps/mapK`` directory of a uio device."""

    index: int
    name: str
    size: int
    addr: int
    offset: int


def _read_hex_file(path: Path) -> int:
    text = read_text_file(path)
    if not _HEX.fullmatch(text.strip()):
        raise DeviceError(f"{path}: expected 0x-prefixed hexadecimal, found {text!r}")
    return int(text.strip(), 16)


def check_map_size(size: int, what: str) -> int:
    """Refuse sizes that cannot be a uio map or ring: zero, not page-multiple, or absurd (spec 8.5)."""
    if size <= 0 or size % HV_PAGE_SIZE or size > MAP_SIZE_MAX:
        raise DeviceError(
            f"{what}: size {size:#x} is not a non-zero multiple of {HV_PAGE_SIZE} up to {MAP_SIZE_MAX:#x}"
        )
    return size


def read_map_infos(uio_sysfs_dir: Path) -> list[UioMapInfo]:
    """The five maps of a uio_hv_generic device, validated by index, name prefix and size."""
    maps_dir = uio_sysfs_dir / "maps"
    infos = []
    for index, prefix in enumerate(MAP_NAME_PREFIXES):
        map_dir = maps_dir / f"map{index}"
        if not map_dir.is_dir():
            raise DeviceError(f"{map_dir}: missing (uio_hv_generic exposes maps 0-4; is the kernel 4.16+?)")
        name = read_text_file(map_dir / "name").strip()
        if not name.startswith(prefix):
            raise DeviceError(f"{map_dir / 'name'}: expected a name starting with {prefix!r}, found {name!r}")
        size = check_map_size(_read_hex_file(map_dir / "size"), str(map_dir / "size"))
        addr = _read_hex_file(map_dir / "addr") if (map_dir / "addr").exists() else 0
        offset = _read_hex_file(map_dir / "offset") if (map_dir / "offset").exists() else 0
        infos.append(UioMapInfo(index, name, size, addr, offset))
    return infos


def parse_gpadl(map_name: str, prefix: str) -> int:
    """The GPADL handle in a map name such as ``recv:925201`` (decimal u32, spec 2.2)."""
    if not map_name.startswith(prefix):
        raise DeviceError(f"map name {map_name!r} does not start with {prefix!r}")
    digits = map_name[len(prefix) :].strip()
    if _DECIMAL.fullmatch(digits):
        handle = int(digits)
    elif _HEX.fullmatch(digits):  # DPDK parses with base auto-detection; accept what it accepts
        handle = int(digits, 16)
    else:
        raise DeviceError(f"map name {map_name!r}: GPADL handle after {prefix!r} is not a number")
    if handle > 0xFFFFFFFF:
        raise DeviceError(f"map name {map_name!r}: GPADL handle {handle} does not fit in 32 bits")
    return handle


def _map_file(path: Path, size: int) -> mmap.mmap:
    """Map a whole regular (or sysfs binary) file of ``size`` bytes shared, read/write, at offset 0."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"{path}: cannot open read/write: {exc.strerror or exc}") from None
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    except (OSError, ValueError) as exc:
        raise DeviceError(f"{path}: cannot map {size:#x} bytes: {exc}") from None
    finally:
        os.close(fd)  # the mapping keeps its own reference to the file


class UioDevice(abc.ABC):
    """A uio_hv_generic device: its map table, ``map(k)``, and the irq fd.

    Use ``open_uio`` to get the right subclass. ``close`` is idempotent.
    """

    def __init__(self, name: str, sysfs_dir: Path, dev_path: Path) -> None:
        self.name = name
        self.sysfs_dir = sysfs_dir
        self.dev_path = dev_path
        self.maps = read_map_infos(sysfs_dir)
        self.irq_writes = 0  # 4-byte writes delivered to the kernel or the emulated host
        self.irq_writes_dropped = 0  # emulated only: no host socket yet
        self.closed = False

    @property
    @abc.abstractmethod
    def emulated(self) -> bool:
        """True for the emulated host's files, False for the kernel's /dev/uioN."""

    @abc.abstractmethod
    def map(self, index: int) -> mmap.mmap:
        """Map K, read/write and shared."""

    @abc.abstractmethod
    def irq_write(self, value: int) -> None:
        """The 4-byte s32 write of uio_hv_generic's irqcontrol (spec/vmbus.md 2.4)."""

    @abc.abstractmethod
    def irq_read(self, timeout: float | None = None) -> int | None:
        """Cumulative interrupt count, or None if none arrived within ``timeout`` seconds."""

    @abc.abstractmethod
    def rescinded(self) -> bool:
        """Whether the host removed the device (spec/vmbus.md 2.5: the uio fd then fails)."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """The descriptor to poll for interrupts."""

    def close(self) -> None:
        self.closed = True

    def _check_index(self, index: int) -> UioMapInfo:
        if self.closed:
            raise DeviceError(f"{self.name}: device closed")
        if not 0 <= index < len(self.maps):
            raise DeviceError(f"{self.name}: no map {index} (maps 0..{len(self.maps) - 1})")
        return self.maps[index]

    def __enter__(self) -> UioDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class KernelUio(UioDevice):
    """A real ``/dev/uioN`` character device."""

    def __init__(self, name: str, sysfs_dir: Path, dev_path: Path) -> None:
        super().__init__(name, sysfs_dir, dev_path)
        try:
            # The first open connects the primary channel and the last close disconnects it
            # (spec 2.5), so this fd stays open until close().
            self._fd = os.open(dev_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"{dev_path}: cannot open read/write: {exc.strerror or exc}") from None

    @property
    def emulated(self) -> bool:
        return False

    def map(self, index: int) -> mmap.mmap:
        info = self._check_index(index)
        try:
            return mmap.mmap(
                self._fd,
                info.size,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
                offset=index * mmap.PAGESIZE,
            )
        except OSError as exc:
            raise DeviceError(
                f"{self.dev_path}: cannot map {index} ({info.name}): {exc.strerror or exc}"
            ) from None

    def rescinded(self) -> bool:
        if self.closed:
            return False
        # After a rescind the uio core reports POLLERR on the fd and read/write fail with EIO.
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        failed = select.POLLERR | select.POLLHUP | select.POLLNVAL
        return any(events & failed for _, events in poller.poll(0))

    def irq_write(self, value: int) -> None:
        if self.closed:
            raise DeviceError(f"{self.name}: device closed")
        try:
            os.write(self._fd, _IRQ_VALUE.pack(value))
        except OSError as exc:
            # EIO after the host rescinded the device (spec 2.4).
            raise DeviceError(f"{self.dev_path}: irq write failed: {exc.strerror or exc}") from None
        self.irq_writes += 1

    def irq_read(self, timeout: float | None = None) -> int | None:
        if self.closed:
            raise DeviceError(f"{self.name}: device closed")
        if timeout is not None and not select.select([self._fd], [], [], timeout)[0]:
            return None
        try:
            data = os.read(self._fd, 4)
        except OSError as exc:
            raise DeviceError(f"{self.dev_path}: irq read failed: {exc.strerror or exc}") from None
        if len(data) != 4:  # EOF or short read: the device went away
            raise DeviceError(f"{self.dev_path}: irq read returned {len(data)} bytes (device rescinded?)")
        return _IRQ_VALUE.unpack(data)[0]

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


class EmulatedUio(UioDevice):
    """An emulated device: ``ROOT/dev/uioN/`` holds ``mapK`` files and the host's ``irq`` socket."""

    def __init__(self, name: str, sysfs_dir: Path, dev_path: Path) -> None:
        super().__init__(name, sysfs_dir, dev_path)
        # sun_path holds at most 107 bytes and test or user roots can be deeper than that, so
        # socket addresses go through /proc/self/fd/<dir fd>/, whose length is fixed.
        self._dir_fd = os.open(dev_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._guest_socket_name = f"irq-guest-{os.getpid()}-{next(_guest_socket_serial)}"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._socket.bind(self._address(self._guest_socket_name))
        except OSError as exc:
            self._socket.close()
            os.close(self._dir_fd)
            raise DeviceError(
                f"{dev_path}: cannot bind {self._guest_socket_name}: {exc.strerror or exc}"
            ) from None
        self._socket.setblocking(False)
        self.open_unconnected = 0
        self._open_socket: socket.socket | None = socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC
        )
        try:
            self._open_socket.connect(self._address(OPEN_SOCKET_NAME))
        except OSError as exc:
            # No host listening (not started yet, or a stale socket file): open without it.
            log.debug("%s: no host open socket (%s)", dev_path, exc.strerror or exc)
            self._open_socket.close()
            self._open_socket = None
            self.open_unconnected = 1
        else:
            self._wait_open_ack()

    @property
    def emulated(self) -> bool:
        return True

    def _wait_open_ack(self) -> None:
        sock = self._open_socket
        assert sock is not None
        sock.settimeout(OPEN_ACK_TIMEOUT_S)
        try:
            ack = sock.recv(16)
        except OSError as exc:
            ack = b""
            detail = exc.strerror or str(exc) or "timed out"
        else:
            detail = "connection closed"
        if len(ack) != 1:
            sock.close()
            self._open_socket = None
            self._socket.close()
            with contextlib.suppress(OSError):
                os.unlink(self._guest_socket_name, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            raise DeviceError(f"{self.dev_path}: the host did not acknowledge the open ({detail})")
        sock.setblocking(False)

    @property
    def connected(self) -> bool:
        """Whether this open is known to the emulated host (holds an ``open`` connection)."""
        return self._open_socket is not None

    def _address(self, name: str) -> str:
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def map(self, index: int) -> mmap.mmap:
        info = self._check_index(index)
        path = self.dev_path / f"map{index}"
        try:
            file_size = path.stat().st_size
        except OSError as exc:
            raise DeviceError(f"{path}: cannot stat: {exc.strerror or exc}") from None
        if file_size < info.size:
            raise DeviceError(
                f"{path}: file holds {file_size:#x} bytes, sysfs says map {index} has {info.size:#x}"
            )
        return _map_file(path, info.size)

    def rescinded(self) -> bool:
        # The host hangs up the open connection when it removes the device (ctl rescind --device).
        sock = self._open_socket
        if self.closed or sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)
        if not poller.poll(0):
            return False
        try:
            return sock.recv(16, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def irq_write(self, value: int) -> None:
        if self.closed:
            raise DeviceError(f"{self.name}: device closed")
        try:
            self._socket.sendto(_IRQ_VALUE.pack(value), self._address(IRQ_SOCKET_NAME))
        except (FileNotFoundError, ConnectionRefusedError):
            self.irq_writes_dropped += 1
            return
        except BlockingIOError:
            # The host's queue is full: it has many unread kicks already, so one more adds nothing.
            self.irq_writes_dropped += 1
            return
        except OSError as exc:
            raise DeviceError(
                f"{self.dev_path / IRQ_SOCKET_NAME}: irq write failed: {exc.strerror or exc}"
            ) from None
        self.irq_writes += 1

    def irq_read(self, timeout: float | None = None) -> int | None:
        if self.closed:
            raise DeviceError(f"{self.name}: device closed")
        if not select.select([self._socket], [], [], timeout)[0]:
            return None
        latest = None
        # Drain everything queued: the value is cumulative, only the newest one matters.
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self._socket.recv(16)
                if len(data) == 4:
                    latest = _IRQ_VALUE.unpack(data)[0]
                else:
                    log.warning("%s: ignoring irq datagram of %d bytes", self.dev_path, len(data))
        return latest

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        if not self.closed:
            self._socket.close()
            if self._open_socket is not None:
                self._open_socket.close()  # the last close closes the channel (host side counts)
                self._open_socket = None
            with contextlib.suppress(OSError):
                os.unlink(self._guest_socket_name, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
        super().close()


def open_uio(device_dir: Path, uio_name: str, root: str | os.PathLike[str] | None = None) -> UioDevice:
    """Open uio device ``uio_name`` of the VMBus device at ``device_dir``, real or emulated."""
    sysfs_dir = device_dir / "uio" / uio_name
    if not sysfs_dir.is_dir():
        raise DeviceError(f"{sysfs_dir}: missing (is the device bound to uio_hv_generic?)")
    dev_path = sysfs_root(root) / "dev" / uio_name
    try:
        mode = dev_path.stat().st_mode
    except FileNotFoundError:
        raise DeviceError(f"{dev_path}: missing (no device node for {uio_name})") from None
    if stat.S_ISCHR(mode):
        return KernelUio(uio_name, sysfs_dir, dev_path)
    if stat.S_ISDIR(mode):
        return EmulatedUio(uio_name, sysfs_dir, dev_path)
    raise DeviceError(f"{dev_path}: neither a character device nor an emulated device directory")


@dataclass
class SubchannelRing:
    """A subchannel found under ``channels/<relid>/`` with its ring file mapped."""

    relid: int
    subchannel_id: int
    monitor_id: int
    ring: mmap.mmap  # TX ring (first half) then RX ring (second half)

    @property
    def size(self) -> int:
        return len(self.ring)


def discover_subchannels(device_dir: Path, known_relids: set[int] | frozenset[int]) -> list[SubchannelRing]:
    """One scan of ``channels/`` for subchannels that are ready and not yet known (spec 2.6).

    Returned in relid order; the caller adds their relids to its known set.
    """
    channels_dir = device_dir / "channels"
    try:
        names = os.listdir(channels_dir)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DeviceError(f"{channels_dir}: cannot list: {exc.strerror or exc}") from None
    relids = sorted(int(name) for name in names if _DECIMAL.fullmatch(name) and int(name) <= RELID_MAX)
    found = []
    for relid in relids:
        if relid in known_relids:
            continue
        channel_dir = channels_dir / str(relid)
        ring_path = channel_dir / "ring"
        # The ring file appears last, after the kernel opened the channel; before that the
        # other attributes may fail to read (spec 1.3).
        if not (ring_path.is_file() and os.access(ring_path, os.R_OK | os.W_OK)):
            continue
        subchannel_id = read_int_file(channel_dir / "subchannel_id", maximum=0xFFFF)
        if subchannel_id == 0:
            continue  # the primary's own entry
        monitor_id = read_monitor_id(channel_dir / "monitor_id")
        try:
            ring_size = ring_path.stat().st_size
        except OSError as exc:
            raise DeviceError(f"{ring_path}: cannot stat: {exc.strerror or exc}") from None
        check_map_size(ring_size, str(ring_path))
        # Each ring's sizes come from its own file (spec 2.6: may differ from map 0 on 6.16+).
        found.append(SubchannelRing(relid, subchannel_id, monitor_id, _map_file(ring_path, ring_size)))
    return found


def wait_for_subchannels(
    device_dir: Path,
    known_relids: set[int] | frozenset[int],
    expected: int,
    timeout: float,
    poll_interval: float = SUBCHANNEL_POLL_INTERVAL_S,
) -> list[SubchannelRing]:
    """Scan until ``expected`` new subchannels are ready, polling every ``poll_interval`` seconds.

    Raises ``DeviceError`` naming how many appeared if ``timeout`` seconds pass first; the rings
    already mapped are released in that case.
    """
    deadline = time.monotonic() + timeout
    known = set(known_relids)
    found: list[SubchannelRing] = []
    while True:
        for ring in discover_subchannels(device_dir, known):
            known.add(ring.relid)
            found.append(ring)
        if len(found) >= expected:
            return found
        if time.monotonic() >= deadline:
            for ring in found:
                ring.ring.close()
            raise DeviceError(
                f"{device_dir / 'channels'}: {len(found)} of {expected} subchannels appeared "
                f"within {timeout:g} s"
            )
        time.sleep(poll_interval)


def ring_file_accessible(device_dir: Path, relid: int) -> bool:
    """Whether the channel's ``ring`` file exists and is read/write (DPDK's "subchannels supported" test)."""
    ring_path = device_dir / "channels" / str(relid) / "ring"
    return ring_path.is_file() and os.access(ring_path, os.R_OK | os.W_OK)
