"""How the VF manager finds its VF's netdev (pmd.md 7.2, DESIGN.md decision 12), on a sysfs tree
built in a temporary directory: by MAC, skipping the synthetic NIC's own netdev and anything
that is not Ethernet, and checking the serial against the PCI slot where there is one."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

from netvsc.pmd.vf import VfManager
from netvsc.wire.vmbus import NETVSC_CLASS_GUID

MAC = bytes.fromhex("02aabbccdd01")


def _netdev(net: Path, name: str, mac: bytes, *, kind: str = "1", device: Path | None = None) -> None:
    base = net / name
    base.mkdir(parents=True)
    (base / "address").write_text(mac.hex(":") + "\n")
    (base / "type").write_text(kind + "\n")
    if device is not None:
        os.symlink(device, base / "device")


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    net, devices, slots = tmp_path / "class" / "net", tmp_path / "devices", tmp_path / "slots"
    for d in (net, devices, slots):
        d.mkdir(parents=True)
    synthetic = devices / "vmbus-nic"
    synthetic.mkdir()
    (synthetic / "class_id").write_text("{" + NETVSC_CLASS_GUID + "}\n")
    _netdev(net, "eth0", MAC, device=synthetic)  # the synthetic NIC itself, bound to hv_netvsc
    _netdev(net, "ib0", MAC, kind="32")  # same address, not Ethernet
    _netdev(net, "eth9", bytes.fromhex("02aabbccdd02"))  # another address
    return net, devices, slots


def _manager(net: Path, slots: Path, serial: int | None) -> VfManager:
    port = SimpleNamespace(mac_address=MAC, device_name="test")
    manager = VfManager(port, net_dir=net, pci_slots=slots)
    manager.serial = serial
    return manager


def test_vf_found_by_mac_not_the_synthetic_nic(tmp_path):
    net, _devices, slots = _tree(tmp_path)
    manager = _manager(net, slots, None)
    assert manager.find_netdev() is None, "only the synthetic NIC and a non-Ethernet netdev carry it"
    _netdev(net, "veth1", MAC)
    assert manager.find_netdev() == "veth1"


def test_serial_checked_against_the_pci_slot(tmp_path):
    """Hyper-V names the VF's vPCI slot with the serial of the association: another slot's VF
    with the same MAC is not ours."""
    net, devices, slots = _tree(tmp_path)
    function = devices / "pci7870:00" / "7870:00:00.0"
    function.mkdir(parents=True)
    (function / "vendor").write_text("0x15b3\n")
    (slots / "3").mkdir()
    (slots / "3" / "address").write_text("7870:00:00\n")
    _netdev(net, "enP30832s3", MAC, device=function)
    assert _manager(net, slots, 3).find_netdev() == "enP30832s3"
    assert _manager(net, slots, None).find_netdev() == "enP30832s3", "no serial: not checked"
    wrong = _manager(net, slots, 4)
    assert wrong.find_netdev() is None and wrong.counters["serial_mismatches"] == 1
