"""VMBus devices as sysfs shows them: the root, GUID parsing, the device scan (spec/vmbus.md 1, 2.1).

Layer 4 (vmbus). Everything here reads files; nothing maps memory or writes.

The root: ``NETVSC_SYSFS_ROOT`` names a directory holding ``sys/`` and ``dev/`` laid out like
``/`` on a Hyper-V guest (DESIGN.md section 7, decision 2); unset, the real ``/`` is used. The
emulated host builds such a tree, and the tests build one with ``tests/fakesys.py``.

Devices are identified by their ``class_id`` file, never by the directory name (older kernels
named the directories differently), and every value read is validated: a file whose content
does not parse raises ``DeviceError`` naming the file and what it held.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from netvsc.errors import ConfigError, DeviceError
from netvsc.wire.vmbus import MONITOR_NONE, NETVSC_CLASS_GUID

__all__ = [
    "ROOT_ENV",
    "VmbusDeviceInfo",
    "device_dir_of",
    "find_device",
    "netdev_to_guid",
    "parse_guid",
    "read_guid_file",
    "read_int_file",
    "read_text_file",
    "scan_devices",
    "sysfs_root",
    "vmbus_devices_dir",
    "vmbus_drivers_dir",
]

ROOT_ENV = "NETVSC_SYSFS_ROOT"

# A relid is a u32 on the wire, but the kernel's channel directories and DPDK's scan accept
# only values up to 65535 (spec/vmbus.md 2.6); the primary's `id` obeys the same bound.
RELID_MAX = 65535

_UIO_NAME = re.compile(r"uio(\d+)")
_DECIMAL = re.compile(r"[0-9]+")


def sysfs_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory that stands for ``/``: ``root`` if given, else ``$NETVSC_SYSFS_ROOT``, else ``/``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ROOT_ENV, "")
    return Path(env) if env else Path("/")


def vmbus_devices_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return sysfs_root(root) / "sys" / "bus" / "vmbus" / "devices"


def vmbus_drivers_dir(root: str | os.PathLike[str] | None = None) -> Path:
    return sysfs_root(root) / "sys" / "bus" / "vmbus" / "drivers"


def parse_guid(text: str) -> str:
    """Canonical form (lower case, no braces) of a GUID written with or without braces.

    Raises ``ValueError`` when the text is not a GUID; callers that read files turn it into a
    ``DeviceError`` naming the file.
    """
    stripped = text.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        stripped = stripped[1:-1]
    # uuid.UUID also accepts 32 bare hex digits and "urn:uuid:"; sysfs never writes those, and
    # accepting them would let a mistyped device name match by accident.
    if len(stripped) != 36 or stripped.count("-") != 4:
        raise ValueError(f"not a GUID: {text!r}")
    return str(uuid.UUID(stripped))


def read_text_file(path: Path) -> str:
    """Content of a sysfs attribute, without the trailing newline."""
    try:
        return path.read_text(encoding="ascii").rstrip("\n")
    except FileNotFoundError:
        raise DeviceError(f"{path}: missing") from None
    except UnicodeDecodeError:
        raise DeviceError(f"{path}: not text: {path.read_bytes()[:64]!r}") from None
    except OSError as exc:
        raise DeviceError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_guid_file(path: Path) -> str:
    text = read_text_file(path)
    try:
        return parse_guid(text)
    except ValueError:
        raise DeviceError(
            f"{path}: expected a GUID such as {{{NETVSC_CLASS_GUID}}}, found {text!r}"
        ) from None


def read_int_file(path: Path, *, maximum: int, minimum: int = 0) -> int:
    """A decimal integer file, checked against ``minimum..maximum``."""
    text = read_text_file(path)
    value_text = text.strip()
    if not _DECIMAL.fullmatch(value_text):
        raise DeviceError(f"{path}: expected a decimal number, found {text!r}")
    value = int(value_text)
    if not minimum <= value <= maximum:
        raise DeviceError(f"{path}: value {value} outside {minimum}..{maximum}")
    return value


def read_monitor_id(path: Path) -> int:
    """A channel's monitor id; an absent file means "no monitor" (255, spec/vmbus.md 1.2)."""
    if not path.exists():
        return MONITOR_NONE
    # 0..127 are real monitor ids; DPDK stores 255 for "none" and some tools write it back, so
    # accept exactly that value too rather than refusing the device.
    value = read_int_file(path, maximum=MONITOR_NONE)
    if 128 <= value < MONITOR_NONE:
        raise DeviceError(f"{path}: monitor id {value} outside 0..127 (or 255 for none)")
    return value


@dataclass(frozen=True)
class VmbusDeviceInfo:
    """What sysfs says about one VMBus device at the moment of the scan."""

    path: Path  # the device directory under sys/bus/vmbus/devices
    guid: str  # instance GUID from device_id, canonical form
    class_guid: str  # class GUID from class_id, canonical form
    relid: int  # primary channel relid (`id`)
    monitor_id: int  # primary channel monitor id, 255 = none
    driver: str | None  # name of the bound driver, None when unbound
    uio: str | None  # "uioN" while bound to uio_hv_generic
    netdev: str | None  # interface name while bound to hv_netvsc
    channel_count: int  # numeric entries of channels/

    @property
    def is_network(self) -> bool:
        return self.class_guid == NETVSC_CLASS_GUID


def _driver_name(device_dir: Path) -> str | None:
    link = device_dir / "driver"
    if not link.is_symlink() and not link.exists():
        return None
    try:
        return Path(os.readlink(link)).name
    except OSError as exc:
        raise DeviceError(f"{link}: cannot read driver link: {exc.strerror or exc}") from None


def _uio_name(device_dir: Path) -> str | None:
    uio_dir = device_dir / "uio"
    if not uio_dir.is_dir():
        return None
    numbered = [(int(m.group(1)), m.group(0)) for m in map(_UIO_NAME.fullmatch, os.listdir(uio_dir)) if m]
    return min(numbered)[1] if numbered else None


def _netdev_name(device_dir: Path) -> str | None:
    net_dir = device_dir / "net"
    if not net_dir.is_dir():
        return None
    names = sorted(name for name in os.listdir(net_dir) if not name.startswith("."))
    return names[0] if names else None


def _channel_count(device_dir: Path) -> int:
    channels_dir = device_dir / "channels"
    if not channels_dir.is_dir():
        return 0
    return sum(1 for name in os.listdir(channels_dir) if _DECIMAL.fullmatch(name))


def read_device(device_dir: Path) -> VmbusDeviceInfo:
    """Read every attribute this package uses from one device directory."""
    return VmbusDeviceInfo(
        path=device_dir,
        guid=read_guid_file(device_dir / "device_id"),
        class_guid=read_guid_file(device_dir / "class_id"),
        relid=read_int_file(device_dir / "id", maximum=RELID_MAX),
        monitor_id=read_monitor_id(device_dir / "monitor_id"),
        driver=_driver_name(device_dir),
        uio=_uio_name(device_dir),
        netdev=_netdev_name(device_dir),
        channel_count=_channel_count(device_dir),
    )


def _device_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    devices_dir = vmbus_devices_dir(root)
    if not devices_dir.is_dir():
        return []
    return [devices_dir / name for name in sorted(os.listdir(devices_dir)) if not name.startswith(".")]


def scan_devices(
    root: str | os.PathLike[str] | None = None, class_guid: str | None = NETVSC_CLASS_GUID
) -> list[VmbusDeviceInfo]:
    """All VMBus devices of ``class_guid`` (NICs by default; ``None`` = every class).

    Only ``class_id`` is read from devices of other classes, so an odd device of another kind
    cannot stop the scan of NICs.
    """
    wanted = parse_guid(class_guid) if class_guid is not None else None
    found = []
    for device_dir in _device_dirs(root):
        if wanted is not None and read_guid_file(device_dir / "class_id") != wanted:
            continue
        found.append(read_device(device_dir))
    return found


def netdev_to_guid(ifname: str, root: str | os.PathLike[str] | None = None) -> str | None:
    """Instance GUID of the VMBus device behind network interface ``ifname``, or None.

    Follows ``sys/class/net/<ifname>/device`` (spec/vmbus.md 1.4): the device directory it
    leads to holds ``device_id``; when that cannot be read, the link's last component is the GUID.
    """
    if "/" in ifname or ifname in ("", ".", ".."):
        return None
    link = sysfs_root(root) / "sys" / "class" / "net" / ifname / "device"
    if not link.is_symlink():
        return None
    target = link.resolve()
    if (target / "device_id").is_file():
        return read_guid_file(target / "device_id")
    try:
        return parse_guid(Path(os.readlink(link)).name)
    except ValueError:
        return None


def device_dir_of(guid: str, root: str | os.PathLike[str] | None = None) -> Path | None:
    """The directory of the device whose ``device_id`` is ``guid`` (any class), or None."""
    wanted = parse_guid(guid)
    for device_dir in _device_dirs(root):
        # The bare-GUID directory name is only a fast path; device_id decides.
        if (device_dir / "device_id").is_file() and read_guid_file(device_dir / "device_id") == wanted:
            return device_dir
    return None


def find_device(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    any_class: bool = False,
    recorded: dict[str, str] | None = None,
) -> VmbusDeviceInfo:
    """Resolve a device given as an instance GUID (braces optional) or a network interface name.

    ``recorded`` maps interface names to GUIDs remembered from before an unbind (the netdev
    vanishes once uio_hv_generic owns the device). Unknown → ``ConfigError`` listing the known
    NICs. With ``any_class`` devices of other classes are returned too (the caller refuses them
    with its own message); otherwise only NICs are found.
    """
    try:
        guid: str | None = parse_guid(name)
    except ValueError:
        guid = netdev_to_guid(name, root)
        if guid is None:
            for device in scan_devices(root):
                if device.netdev == name:
                    guid = device.guid
                    break
        if guid is None and recorded:
            guid = recorded.get(name)
    device_dir = device_dir_of(guid, root) if guid is not None else None
    if device_dir is not None:
        device = read_device(device_dir)
        if any_class or device.is_network:
            return device
    known = [f"{d.guid} ({d.netdev})" if d.netdev else d.guid for d in scan_devices(root)]
    devices_dir = vmbus_devices_dir(root)
    if devices_dir.is_dir():
        detail = f"no such network device under {devices_dir}"
    else:
        detail = f"{devices_dir} does not exist: not a Hyper-V guest? For an emulated host set {ROOT_ENV}"
    raise ConfigError(
        "device",
        name,
        "a VMBus network device GUID or interface name: " + (", ".join(known) if known else "none found"),
        detail,
    )
