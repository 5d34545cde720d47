"""uio maps: name and size checks, GPADL handles, emulated map access, irq socket, subchannel discovery."""

from __future__ import annotations

import mmap
import os
import socket
import struct
import threading

import numpy as np
import pytest

from fakesys import DEFAULT_RECV_GPADL, DEFAULT_SEND_GPADL, SMALL_MAP_SIZES, FakeSys
from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus.device import VmbusDevice
from netvsc.vmbus.uio import (
    MAP_SIZE_MAX,
    EmulatedUio,
    discover_subchannels,
    open_uio,
    parse_gpadl,
    read_map_infos,
    wait_for_subchannels,
)
from netvsc.wire.vmbus import MONITOR_NONE

NIC_GUID = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    return FakeSys(tmp_path)


@pytest.fixture
def uio_nic(fake):
    """A NIC bound to uio_hv_generic with emulated maps; returns its device directory."""
    dev = fake.add_device(NIC_GUID, relid=14, monitor_id=3, driver=None)
    fake.bind_uio(dev)
    return dev


def host_socket(dev_dir):
    """The emulated host's end: a datagram socket bound at dev/uioN/irq (path-length safe)."""
    dir_fd = os.open(dev_dir, os.O_RDONLY | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(f"/proc/self/fd/{dir_fd}/irq")
    sock.settimeout(2.0)
    os.close(dir_fd)
    return sock


@pytest.mark.parametrize("padded", [True, False])
def test_map_table_is_read_with_padded_or_short_hex(fake, uio_nic, padded):
    uio_dir = fake.add_uio(uio_nic, "uio3", padded=padded)
    infos = read_map_infos(uio_dir)
    assert [m.size for m in infos] == list(SMALL_MAP_SIZES)
    assert [m.name for m in infos][:3] == ["txrx_rings", "int_page", "monitor_page"]
    assert infos[3].addr == 0xFFFF9E0003000000 and infos[0].offset == 0


@pytest.mark.parametrize(
    ("index", "name", "expected"),
    [
        (0, "rings", "expected a name starting with 'txrx_rings', found 'rings'"),
        (2, "int_page", "starting with 'monitor_page'"),
        (3, "send:7", "starting with 'recv:'"),
    ],
)
def test_map_with_wrong_name_is_refused(fake, uio_nic, index, name, expected):
    names = ["txrx_rings", "int_page", "monitor_page", "recv:1", "send:2"]
    names[index] = name
    uio_dir = fake.add_uio(uio_nic, "uio5", names=tuple(names))
    with pytest.raises(DeviceError, match=expected):
        read_map_infos(uio_dir)


def test_missing_map_is_refused(fake, uio_nic):
    uio_dir = fake.add_uio(
        uio_nic, "uio5", sizes=SMALL_MAP_SIZES[:4], names=("txrx_rings", "int_page", "monitor_page", "recv:1")
    )
    with pytest.raises(DeviceError, match=r"map4: missing"):
        read_map_infos(uio_dir)


@pytest.mark.parametrize(
    ("size_text", "expected"),
    [
        ("0x0000000000000000", "size 0x0 is not"),
        ("0x0000000000001001", "size 0x1001 is not"),
        ("0xffffffffffffffff", "is not a non-zero multiple"),
        (hex(MAP_SIZE_MAX + 4096), "is not a non-zero multiple"),
        ("4096", "expected 0x-prefixed hexadecimal, found '4096'"),
        ("0xzz", "found '0xzz'"),
    ],
)
def test_bad_map_sizes_are_refused(fake, uio_nic, size_text, expected):
    uio_dir = fake.add_uio(uio_nic, "uio6", size_texts={1: size_text})
    with pytest.raises(DeviceError, match=expected) as excinfo:
        read_map_infos(uio_dir)
    assert "map1" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "prefix", "handle"),
    [("recv:925201", "recv:", 925201), ("send:4294967295", "send:", 0xFFFFFFFF), ("send:0x10", "send:", 16)],
)
def test_gpadl_handle_is_parsed_as_u32(name, prefix, handle):
    assert parse_gpadl(name, prefix) == handle


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("recv:", "recv:"),
        ("recv:abc", "recv:"),
        ("recv:-5", "recv:"),
        ("recv:4294967296", "recv:"),
        ("send:12", "recv:"),
    ],
)
def test_bad_gpadl_names_are_refused(name, prefix):
    with pytest.raises(DeviceError, match=repr(name)):
        parse_gpadl(name, prefix)


def test_emulated_maps_share_memory_end_to_end(fake, uio_nic, tmp_path):
    with open_uio(uio_nic, "uio0") as uio:
        assert isinstance(uio, EmulatedUio) and uio.emulated
        first, second = uio.map(3), uio.map(3)
        assert len(first) == SMALL_MAP_SIZES[3]
        first[100:108] = b"netvsc!!"
        assert second[100:108] == b"netvsc!!"
        # The host maps the same file: it sees the guest's writes and the guest sees its own.
        with open(tmp_path / "dev" / "uio0" / "map3", "r+b") as host_file:
            host_view = mmap.mmap(host_file.fileno(), 0)
            assert host_view[100:108] == b"netvsc!!"
            host_view[0:4] = b"host"
            assert first[0:4] == b"host"
            host_view.close()
        first.close()
        second.close()
        with pytest.raises(DeviceError, match="no map 5"):
            uio.map(5)


def test_emulated_map_file_shorter_than_sysfs_size_is_refused(fake, uio_nic, tmp_path):
    os.truncate(tmp_path / "dev" / "uio0" / "map0", 4096)
    with open_uio(uio_nic, "uio0") as uio, pytest.raises(DeviceError, match="map0: file holds 0x1000 bytes"):
        uio.map(0)


def test_dev_node_must_exist_and_be_a_device_or_directory(fake, uio_nic, tmp_path):
    fake.add_uio(uio_nic, "uio1", emulated=False)
    with pytest.raises(DeviceError, match="dev/uio1: missing"):
        open_uio(uio_nic, "uio1")
    (tmp_path / "dev" / "uio1").write_text("")
    with pytest.raises(DeviceError, match="neither a character device"):
        open_uio(uio_nic, "uio1")


def test_irq_write_without_host_socket_is_a_counted_no_op(fake, uio_nic):
    with open_uio(uio_nic, "uio0") as uio:
        uio.irq_write(1)
        uio.irq_write(1)
        assert (uio.irq_writes, uio.irq_writes_dropped) == (0, 2)


def test_irq_write_reaches_host_socket_and_count_comes_back(fake, uio_nic, tmp_path):
    host = host_socket(tmp_path / "dev" / "uio0")
    with host, open_uio(uio_nic, "uio0") as uio:
        uio.irq_write(1)
        uio.irq_write(0)
        first, sender = host.recvfrom(16)
        second = host.recv(16)
        assert (struct.unpack("<i", first)[0], struct.unpack("<i", second)[0]) == (1, 0)
        assert len(first) == 4 and uio.irq_writes == 2
        assert uio.irq_read(timeout=0) is None
        # The host answers with cumulative counts; the driver keeps only the newest.
        dir_fd = os.open(tmp_path / "dev" / "uio0", os.O_RDONLY | os.O_DIRECTORY)
        try:
            reply_to = f"/proc/self/fd/{dir_fd}/{os.path.basename(sender)}"
            host.sendto(struct.pack("<i", 7), reply_to)
            host.sendto(struct.pack("<i", 9), reply_to)
        finally:
            os.close(dir_fd)
        assert uio.irq_read(timeout=1.0) == 9
    # The guest's own socket file is removed on close.
    assert sorted(os.listdir(tmp_path / "dev" / "uio0")) == ["irq", "map0", "map1", "map2", "map3", "map4"]


def test_device_opens_maps_and_gpadls(fake, uio_nic):
    with VmbusDevice.open(NIC_GUID) as device:
        assert (device.recv_gpadl, device.send_gpadl) == (DEFAULT_RECV_GPADL, DEFAULT_SEND_GPADL)
        sizes = [
            a.size
            for a in (
                device.rings,
                device.int_page,
                device.monitor_page,
                device.recv_buffer,
                device.send_buffer,
            )
        ]
        assert sizes == list(SMALL_MAP_SIZES)
        device.send_buffer[:3] = [1, 2, 3]
        with open_uio(uio_nic, "uio0") as other:
            view = other.map(4)
            assert view[:3] == bytes([1, 2, 3])
            view.close()
    assert device.closed
    device.close()  # idempotent


def test_device_not_bound_to_uio_says_how_to_bind(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    with pytest.raises(DeviceError, match="devbind --bind uio_hv_generic"):
        VmbusDevice.open("eth1")


def test_unknown_device_is_a_config_error(fake, uio_nic):
    with pytest.raises(ConfigError, match=NIC_GUID):
        VmbusDevice.open("eth9")


def test_subchannel_discovery_rules(fake, uio_nic):
    fake.add_ring(uio_nic, 14)  # the primary's own ring: subchannel_id 0, skipped
    fake.add_channel(uio_nic, 15, 1, monitor_id=5)
    fake.add_channel(uio_nic, 16, 2)  # no monitor_id -> 255
    fake.add_channel(uio_nic, 17, 3, ring_size=None)  # ring not created yet: not ready
    fake.add_channel(uio_nic, 18, 4)  # already known
    fake.add_channel(uio_nic, 70000, 5)  # above 65535
    (uio_nic / "channels" / "abc").mkdir()
    found = discover_subchannels(uio_nic, {14, 18})
    assert [(r.relid, r.subchannel_id, r.monitor_id, r.size) for r in found] == [
        (15, 1, 5, 8 * 4096),
        (16, 2, MONITOR_NONE, 8 * 4096),
    ]
    for ring in found:
        ring.ring.close()


def test_subchannel_ring_of_bad_size_is_refused(fake, uio_nic):
    fake.add_channel(uio_nic, 15, 1, ring_size=4096 + 8)
    with pytest.raises(DeviceError, match=r"15/ring: size 0x1008"):
        discover_subchannels(uio_nic, {14})


def test_subchannel_ring_is_shared_with_the_file(fake, uio_nic):
    ring_path = fake.add_channel(uio_nic, 15, 1) / "ring"
    (ring,) = discover_subchannels(uio_nic, {14})
    ring.ring[8:12] = b"\x01\x02\x03\x04"
    assert ring_path.read_bytes()[8:12] == b"\x01\x02\x03\x04"
    ring.ring.close()


def test_waiting_for_subchannels_times_out_naming_the_count(fake, uio_nic):
    fake.add_channel(uio_nic, 15, 1)
    fake.add_channel(uio_nic, 16, 2, ring_size=None)
    with pytest.raises(DeviceError, match="1 of 3 subchannels appeared within 0.05 s"):
        wait_for_subchannels(uio_nic, {14}, expected=3, timeout=0.05)


def test_waiting_for_subchannels_sees_a_ring_that_appears_later(fake, uio_nic):
    fake.add_channel(uio_nic, 15, 1, ring_size=None)
    timer = threading.Timer(0.03, fake.add_ring, args=(uio_nic, 15))
    timer.start()
    try:
        (ring,) = wait_for_subchannels(uio_nic, {14}, expected=1, timeout=5.0)
    finally:
        timer.join()
    assert ring.relid == 15
    ring.ring.close()


def test_device_subchannels_become_channels(fake, uio_nic):
    pytest.importorskip("netvsc.vmbus.channel")
    fake.add_channel(uio_nic, 15, 1, monitor_id=6)
    fake.add_channel(uio_nic, 16, 2)
    with VmbusDevice.open(NIC_GUID) as device:
        primary = device.primary_channel()
        assert primary is device.primary_channel()
        channels = device.open_subchannels(2, timeout=1.0)
        assert len(channels) == 2
        assert sorted(device.signallers) == [14, 15, 16]
        assert device.signallers[16].monitor_id == MONITOR_NONE
        assert device.poll_subchannels() == []
        assert np.asarray(device.subchannel_rings[15].ring).size == 8 * 4096


def test_subchannels_are_ordered_by_index_not_relid(fake, uio_nic):
    """Queue i is served by subchannel i: relids say nothing about the index (spec/vmbus.md 2.6)."""
    fake.add_channel(uio_nic, 40, 2)
    fake.add_channel(uio_nic, 41, 1)
    fake.add_channel(uio_nic, 39, 3)
    with VmbusDevice.open(NIC_GUID) as device:
        channels = device.open_subchannels(3, timeout=1.0)
        assert [channel.relid for channel in channels] == [41, 40, 39]


@pytest.mark.parametrize("indices", [[1, 1], [1, 3], [0, 1]], ids=["duplicate", "gap", "primary-index"])
def test_subchannel_indices_must_be_one_per_queue(fake, uio_nic, indices):
    """A duplicate, missing or zero subchannel index is refused with the indices in the message."""
    for offset, index in enumerate(indices):
        fake.add_channel(uio_nic, 50 + offset, index)
    with VmbusDevice.open(NIC_GUID) as device:
        expected = sum(1 for index in indices if index != 0)
        if expected < 2:
            # subchannel_id 0 is skipped by discovery (it is the primary): only one appears.
            with pytest.raises(DeviceError, match="1 of 2 subchannels"):
                device.open_subchannels(2, timeout=0.1)
            return
        with pytest.raises(DeviceError, match=r"subchannel indices \[1, [13]\], expected 1\.\.2"):
            device.open_subchannels(2, timeout=1.0)
