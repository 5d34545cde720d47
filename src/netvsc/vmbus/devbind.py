"""Binding NetVSC devices to uio_hv_generic or hv_netvsc, and their status (spec/vmbus.md 1.5).

Layer 4 (vmbus); the ``netvsc devbind`` command (``apps/devbind.py``) is a thin shell over it.

Two kernel mechanisms, chosen by what the kernel has:

- ``driver_override`` (4.18+, the file exists): write the driver name to the device's
  ``driver_override``, unbind from the current driver, bind to the new one. Going back to
  hv_netvsc clears the override (a newline) so normal matching applies again.
- otherwise a dynamic id: write the NIC class GUID to ``drivers/uio_hv_generic/new_id`` (EEXIST
  when it is already there is fine), then the instance GUID to the old driver's ``unbind`` and the
  new driver's ``bind``.

Refusals come before any write, each with a message that says what to do: not root, unknown
device, not a network device, driver module not loaded, and a device whose interface carries the
default route (``force=True`` overrides that one). The interface name of a device is recorded
(``ROOT/run/netvsc/devbind.json``) before it is unbound, because the netdev, and with it the only
link from ``eth1`` to the GUID, disappears once uio_hv_generic owns the device.

Two functions are module attributes so tests and other callers can replace them:
``has_privileges(root)`` and ``default_route_interfaces(root)``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus.sysfs import (
    VmbusDeviceInfo,
    find_device,
    read_device,
    scan_devices,
    sysfs_root,
    vmbus_drivers_dir,
)
from netvsc.wire.vmbus import NETVSC_CLASS_GUID

__all__ = [
    "DRIVER_HV_NETVSC",
    "DRIVER_UIO",
    "DRIVERS",
    "BindResult",
    "bind",
    "default_route_interfaces",
    "device_status",
    "has_privileges",
    "recorded_netdevs",
    "resolve",
    "unbind",
]

log = logging.getLogger(__name__)

DRIVER_UIO = "uio_hv_generic"
DRIVER_HV_NETVSC = "hv_netvsc"
DRIVERS = (DRIVER_UIO, DRIVER_HV_NETVSC)

_RECORD_PATH = Path("run") / "netvsc" / "devbind.json"


def has_privileges(root: Path) -> bool:
    """Whether this process may rebind drivers under ``root``.

    The real sysfs needs root. An emulated tree belongs to whoever created it, so file
    permissions alone decide there (a write that is refused becomes a DeviceError).
    """
    if root.resolve() != Path("/"):
        return True
    return os.geteuid() == 0


def default_route_interfaces(root: Path) -> set[str]:
    """Names of the interfaces that IPv4 or IPv6 default routes leave through (via netlink).

    Only on the real system: the interfaces of an emulated tree are not this machine's.
    """
    if root.resolve() != Path("/"):
        return set()
    from pyroute2 import IPRoute  # imported here: netlink is needed only on the real system

    names: set[str] = set()
    with IPRoute() as ipr:
        index_to_name = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif is not None:
                    names.add(index_to_name.get(oif, str(oif)))
                # A multipath default route lists its next hops, each with its own interface.
                for hop in route.get_attr("RTA_MULTIPATH") or []:
                    hop_oif = hop.get("oif")
                    if hop_oif is not None:
                        names.add(index_to_name.get(hop_oif, str(hop_oif)))
    return names


@dataclass
class BindResult:
    """What a bind or unbind did: the device, the driver before and after, and every sysfs write."""

    guid: str
    netdev: str | None
    driver_before: str | None
    driver_after: str | None
    requested: str | None  # driver asked for, None for unbind
    writes: list[tuple[str, str]] = field(default_factory=list)  # (path, content) in order
    changed: bool = True

    @property
    def verified(self) -> bool:
        """Whether the driver link now shows what was asked for (spec 1.5 "Verify")."""
        return self.driver_after == self.requested


def _record_file(root: Path) -> Path:
    return root / _RECORD_PATH


def recorded_netdevs(root: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Interface name -> GUID for devices whose netdev was recorded before an unbind."""
    path = _record_file(sysfs_root(root))
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: ignoring unreadable record: %s", path, exc)
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_netdev(root: Path, netdev: str, guid: str) -> None:
    path = _record_file(root)
    records = recorded_netdevs(root)
    records[netdev] = guid
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        # Not worth refusing the bind for: the GUID is in the log line below and in --status.
        log.warning("%s: cannot record %s -> %s: %s", path, netdev, guid, exc)
    log.info("recorded %s -> %s before unbinding", netdev, guid)


def _write_sysfs(
    path: Path, content: str, writes: list[tuple[str, str]], tolerate: tuple[int, ...] = ()
) -> bool:
    """One write(2) of ``content`` to an existing attribute (never created: a missing file is an error).

    Returns False when the kernel refused the write with an errno listed in ``tolerate``.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"{path}: missing") from None
    except OSError as exc:
        raise DeviceError(f"{path}: cannot open for writing: {exc.strerror or exc}") from None
    try:
        os.write(fd, content.encode("ascii"))
    except OSError as exc:
        if exc.errno in tolerate:
            return False
        raise DeviceError(f"{path}: writing {content.strip()!r} failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    writes.append((str(path), content))
    return True


def _check_privileges(root: Path) -> None:
    if not has_privileges(root):
        raise DeviceError(
            "binding VMBus devices needs root (sysfs driver files are root-only): run with sudo"
        )


def resolve(dev: str, root: str | os.PathLike[str] | None = None) -> VmbusDeviceInfo:
    """A NIC by GUID or interface name (also a recorded one); refuses other device classes."""
    device = find_device(dev, root, any_class=True, recorded=recorded_netdevs(root))
    if not device.is_network:
        raise ConfigError(
            "device",
            dev,
            f"a network device (class {NETVSC_CLASS_GUID})",
            f"{device.guid} has class {device.class_guid}; only synthetic NICs can be rebound here",
        )
    return device


def _check_driver_loaded(root: Path, driver: str) -> Path:
    driver_dir = vmbus_drivers_dir(root) / driver
    if not driver_dir.is_dir():
        raise DeviceError(
            f"kernel module {driver} is not loaded ({driver_dir} missing): run `modprobe {driver}`"
        )
    return driver_dir


def _check_default_route(device: VmbusDeviceInfo, root: Path, force: bool) -> None:
    if device.netdev is None or force:
        return
    try:
        carrying = default_route_interfaces(root)
    except Exception as exc:  # netlink unavailable: refuse rather than risk cutting the machine off
        raise DeviceError(
            f"cannot read the routing table to check {device.netdev} ({exc}); use --force if it is safe"
        ) from None
    if device.netdev in carrying:
        raise DeviceError(
            f"{device.netdev} ({device.guid}) carries the default route; unbinding it would cut this "
            f"machine off the network. Use another interface, or --force"
        )


def _reread(device: VmbusDeviceInfo) -> VmbusDeviceInfo:
    try:
        return read_device(device.path)
    except DeviceError:  # the directory can vanish briefly during a rebind
        return device


def bind(
    dev: str, driver: str, *, force: bool = False, root: str | os.PathLike[str] | None = None
) -> BindResult:
    """Bind NIC ``dev`` (GUID or interface name) to ``driver`` (uio_hv_generic or hv_netvsc)."""
    if driver not in DRIVERS:
        raise ConfigError("driver", driver, " or ".join(DRIVERS))
    root_path = sysfs_root(root)
    _check_privileges(root_path)
    device = resolve(dev, root_path)
    target_dir = _check_driver_loaded(root_path, driver)
    result = BindResult(device.guid, device.netdev, device.driver, device.driver, driver)
    if device.driver == driver:
        result.changed = False
        return result
    _check_default_route(device, root_path, force)
    if device.netdev is not None:
        _record_netdev(root_path, device.netdev, device.guid)

    override = device.path / "driver_override"
    if override.exists():
        # An empty override (newline) restores normal matching, which is what hv_netvsc needs.
        _write_sysfs(override, driver + "\n" if driver == DRIVER_UIO else "\n", result.writes)
    elif driver == DRIVER_UIO:
        # EEXIST: the id is already there from an earlier bind, which is what we want.
        _write_sysfs(target_dir / "new_id", NETVSC_CLASS_GUID + "\n", result.writes, tolerate=(errno.EEXIST,))
    if device.driver is not None:
        _write_sysfs(vmbus_drivers_dir(root_path) / device.driver / "unbind", device.guid, result.writes)
    current = _reread(device)
    # new_id makes the kernel probe unbound NICs at once, so the device may already be ours.
    if current.driver != driver:
        try:
            _write_sysfs(target_dir / "bind", device.guid, result.writes)
        except DeviceError:
            if _reread(device).driver != driver:
                raise
    result.driver_after = _reread(device).driver
    return result


def unbind(dev: str, *, force: bool = False, root: str | os.PathLike[str] | None = None) -> BindResult:
    """Unbind NIC ``dev`` from whatever driver owns it (no-op when unbound)."""
    root_path = sysfs_root(root)
    _check_privileges(root_path)
    device = resolve(dev, root_path)
    result = BindResult(device.guid, device.netdev, device.driver, device.driver, None)
    if device.driver is None:
        result.changed = False
        return result
    _check_default_route(device, root_path, force)
    if device.netdev is not None:
        _record_netdev(root_path, device.netdev, device.guid)
    _write_sysfs(vmbus_drivers_dir(root_path) / device.driver / "unbind", device.guid, result.writes)
    result.driver_after = _reread(device).driver
    return result


def device_status(root: str | os.PathLike[str] | None = None) -> list[dict[str, object]]:
    """One record per NIC: guid, netdev (or the recorded one), driver, uio, channels, relid, monitor_id."""
    recorded_by_guid = {guid: name for name, guid in recorded_netdevs(root).items()}
    rows = []
    for device in scan_devices(root):
        row = asdict(device)
        row.pop("path")
        row.pop("class_guid")
        row["netdev_recorded"] = None if device.netdev else recorded_by_guid.get(device.guid)
        row["path"] = str(device.path)
        rows.append(row)
    return rows
