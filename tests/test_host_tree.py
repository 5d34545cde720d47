"""The emulated device tree and guest memory: what the guest's vmbus layer reads, and the root's lifetime."""

from __future__ import annotations

import os

import numpy as np
import pytest

from netvsc.errors import ConfigError, ProtocolError
from netvsc.host.guestmem import GuestMemory
from netvsc.host.tree import PID_FILE, DeviceTree, MapSizes
from netvsc.vmbus.device import VmbusDevice, list_devices
from netvsc.vmbus.guestmem import GuestMemoryRegion
from netvsc.vmbus.ring import RingView
from netvsc.vmbus.uio import discover_subchannels, read_map_infos
from netvsc.wire.vmbus import MONITOR_NONE, NETVSC_CLASS_GUID, RING_FEATURE_PENDING_SEND_SIZE

SMALL = MapSizes(rings=64 * 1024, recv_buffer=256 * 1024, send_buffer=128 * 1024, subchannel_ring=32 * 1024)


@pytest.fixture
def tree(tmp_path):
    device_tree = DeviceTree(tmp_path / "root", SMALL)
    device_tree.create()
    yield device_tree
    device_tree.remove()


def test_tree_is_what_the_guest_scan_reads(tree):
    """host#1: NetVSC class GUID, per-NIC instance GUID, primary at subchannel 0; uio_hv_generic maps."""
    first = tree.add_nic()
    second = tree.add_nic(monitor=False)
    devices = {d.guid: d for d in list_devices(tree.root)}
    assert set(devices) == {first.guid, second.guid}
    for nic in (first, second):
        info = devices[nic.guid]
        assert info.class_guid == NETVSC_CLASS_GUID
        assert info.driver == "uio_hv_generic"
        assert info.uio == nic.uio_name and info.relid == nic.relid
        assert (info.path / "channels" / str(nic.relid) / "subchannel_id").read_text() == "0\n"
        maps = read_map_infos(info.path / "uio" / nic.uio_name)
        assert [m.size for m in maps] == [SMALL.rings, 4096, 4096, SMALL.recv_buffer, SMALL.send_buffer]
        assert maps[3].name == f"recv:{nic.recv_gpadl}" and maps[4].name == f"send:{nic.send_gpadl}"
        assert (info.path / "class_id").read_text() == f"{{{NETVSC_CLASS_GUID}}}\n"
    assert devices[first.guid].monitor_id == first.monitor_id != MONITOR_NONE
    assert devices[second.guid].monitor_id == MONITOR_NONE  # no monitor_id file at all
    assert not (second.device_dir / "monitor_id").exists()
    # One interrupt page and one monitor page per VM, shared by every device.
    for map_index in (1, 2):
        inodes = {
            os.stat(tree.root / "dev" / nic.uio_name / f"map{map_index}").st_ino for nic in (first, second)
        }
        assert len(inodes) == 1


def test_ring_headers_initialised_with_feature_bit(tree):
    """host#59: the host-written ring has the pending-send-size feature bit; indices, TX mask start at 0."""
    nic = tree.add_nic()
    half = nic.rings.shape[0] // 2
    guest_tx, guest_rx = RingView(nic.rings[:half]), RingView(nic.rings[half:])
    assert guest_rx.feature_bits & RING_FEATURE_PENDING_SEND_SIZE
    assert guest_tx.interrupt_mask == 0  # an idle host waits for a signal
    assert (guest_tx.write_index, guest_tx.read_index, guest_rx.write_index) == (0, 0, 0)


def test_subchannel_ring_appears_last_and_initialised(tree, monkeypatch):
    """host#48: attribute files exist before the ring file, which appears under its name fully initialised."""
    nic = tree.add_nic()
    seen_at_rename = []
    real_rename = os.rename

    def watching_rename(src, dst):
        directory = os.path.dirname(dst)
        seen_at_rename.append(
            (
                sorted(os.listdir(directory)),
                RingView(np.fromfile(src, dtype=np.uint8)[: SMALL.subchannel_ring // 2]).feature_bits,
            )
        )
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", watching_rename)
    assert discover_subchannels(nic.device_dir, {nic.relid}) == []  # none before the offer
    channels = nic.offer_subchannels(2)
    monkeypatch.undo()
    assert len(channels) == 2 and all(c.role == "host" for c in channels)
    for names, features in seen_at_rename:
        assert "subchannel_id" in names and "monitor_id" in names and "ring" not in names
        assert features & RING_FEATURE_PENDING_SEND_SIZE
    found = discover_subchannels(nic.device_dir, {nic.relid})
    assert [ring.subchannel_id for ring in found] == [1, 2]
    assert len({ring.monitor_id for ring in found} | {nic.monitor_id}) == 3  # each its own monitor id
    nic.rescind_subchannels()
    assert discover_subchannels(nic.device_dir, {nic.relid}) == []
    assert sorted(os.listdir(nic.device_dir / "channels")) == [str(nic.relid)]


def test_removal_rescinds_subchannels_before_primary(tree, monkeypatch):
    """host#67: device removal removes every subchannel's directory before the primary's device directory."""
    nic = tree.add_nic()
    nic.offer_subchannels(2)
    sub_dirs = [str(s.directory) for s in nic.subchannels]
    removed = []
    import shutil

    real_rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        removed.append(str(path))
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", recording_rmtree)
    nic.remove()
    monkeypatch.undo()
    primary_position = removed.index(str(nic.device_dir))
    assert all(removed.index(d) < primary_position for d in sub_dirs), removed
    assert not nic.device_dir.exists() and not nic.dev_dir.exists()


def test_root_owned_by_live_host_is_refused(tmp_path):
    """A root whose pid file names a live process is refused with an error naming the root and the pid."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / PID_FILE).write_text(f"{os.getppid()}\n")
    with pytest.raises(ConfigError) as info:
        DeviceTree(root, SMALL).create()
    assert "root" in str(info.value) and str(os.getppid()) in str(info.value)


def test_stale_root_is_replaced_and_removed_at_exit(tmp_path):
    """A root left by a dead host is removed and rebuilt; at exit the host removes all it made."""
    root = tmp_path / "root"
    first = DeviceTree(root, SMALL)
    first.create()
    old_guid = first.add_nic().guid
    (root / PID_FILE).write_text("999999999\n")  # no such process
    second = DeviceTree(root, SMALL)
    second.create()
    try:
        new = second.add_nic()
        assert [d.guid for d in list_devices(root)] == [new.guid] != [old_guid]
        assert (root / PID_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        second.remove()
    assert not root.exists()


def test_foreign_directory_is_not_deleted(tmp_path):
    """A --root holding files the host did not make is refused, never wiped."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="precious"):
        DeviceTree(root, SMALL).create()
    assert (root / "precious.txt").read_text() == "keep me"


def test_guest_memory_round_trip_and_refusals(tmp_path):
    """GPA-direct memory: the host reads what the guest wrote, page by page, and refuses unbacked GPAs."""
    root = tmp_path / "root"
    host_memory = GuestMemory(root / "guest-mem")
    with GuestMemoryRegion(3 * 4096, root) as region, GuestMemoryRegion(4096, root) as other:
        assert region.base_gpa % 4096 == 0 and other.base_gpa != region.base_gpa
        payload = np.arange(6000, dtype=np.uint32).astype(np.uint8)
        region.array[3000 : 3000 + payload.size] = payload
        assert np.array_equal(host_memory.read(region.gpa_of(3000), payload.size), payload)
        byte_count, byte_offset, pages = region.page_range(3000, payload.size)
        assert len(pages) == 3 and byte_offset == 3000
        assert np.array_equal(host_memory.read_pages(byte_offset, byte_count, pages), payload)
        with pytest.raises(ProtocolError):
            host_memory.read(region.gpa_of(4096 * 3 - 10), 20)  # runs off the region's end
        with pytest.raises(ProtocolError):
            host_memory.read(0x1000, 8)  # never shared
        with pytest.raises(ProtocolError):
            host_memory.read_pages(0, 5000, pages[:1])  # page list too short for the range
        assert host_memory.refused == 3
    assert os.listdir(root / "guest-mem") == []  # regions remove their files on close
    host_memory.close()


def test_vmbus_device_opens_emulated_nic_without_host_socket(tree):
    """A device opened while no host listens on ``open`` still maps (counted as unconnected)."""
    nic = tree.add_nic()
    with VmbusDevice.open(nic.guid, tree.root) as device:
        assert device.uio.emulated and not device.uio.connected and device.uio.open_unconnected == 1
        assert device.recv_gpadl == nic.recv_gpadl
        assert device.rings.shape[0] == SMALL.rings
