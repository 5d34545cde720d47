"""Signalling the host: monitor-page pending bits, latency encoding, interrupt page + irq write."""

from __future__ import annotations

import os
import socket
import struct

import numpy as np
import pytest

from fakesys import FakeSys
from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus.device import VmbusDevice
from netvsc.vmbus.signal import (
    LATENCY_US_MAX,
    InterruptPageSignaller,
    MonitorSignaller,
    latency_units,
    make_signaller,
    set_monitor_latency,
)
from netvsc.vmbus.uio import open_uio

NIC_GUID = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"


def blank_page() -> np.ndarray:
    return np.zeros(4096, dtype=np.uint8)


def u32_at(page: np.ndarray, offset: int) -> int:
    return int(page[offset : offset + 4].view(np.uint32)[0])


def u16_at(page: np.ndarray, offset: int) -> int:
    return int(page[offset : offset + 2].view(np.uint16)[0])


@pytest.mark.parametrize(
    ("monitor_id", "pending_offset", "bit"),
    [(0, 8, 0), (3, 8, 3), (31, 8, 31), (32, 16, 0), (77, 24, 13), (127, 32, 31)],
)
def test_monitor_signal_sets_the_pending_bit_of_its_group(monitor_id, pending_offset, bit):
    page = blank_page()
    signaller = MonitorSignaller(page, monitor_id)
    signaller.signal()
    assert u32_at(page, pending_offset) == 1 << bit
    assert np.count_nonzero(page) == 1, "exactly one byte of the page changes"
    assert signaller.signals_sent == 1


def test_monitor_signal_ors_into_bits_already_set():
    page = blank_page()
    page[8:12].view(np.uint32)[0] = 0x8000_0001  # other channels' bits, not yet consumed by the host
    signaller = MonitorSignaller(page, 4)
    signaller()
    signaller()
    assert u32_at(page, 8) == 0x8000_0011
    assert signaller.signals_sent == 2


@pytest.mark.parametrize("monitor_id", [128, 200, 255, -1])
def test_monitor_id_outside_the_page_is_refused(monitor_id):
    with pytest.raises(DeviceError, match=f"monitor id {monitor_id} outside 0..127"):
        MonitorSignaller(blank_page(), monitor_id)


@pytest.mark.parametrize(("micro", "units"), [(0, 0), (1, 10), (50, 500), (LATENCY_US_MAX, 65530)])
def test_latency_is_stored_in_100ns_units(micro, units):
    page = blank_page()
    assert latency_units(micro) == units
    assert set_monitor_latency(page, 9, micro) is True
    assert u16_at(page, 576 + 2 * 9) == units
    assert np.count_nonzero(page[:576]) == 0 and np.count_nonzero(page[600:]) == 0


@pytest.mark.parametrize("micro", [-1, LATENCY_US_MAX + 1, 100000, 1.5, "50", True])
def test_latency_out_of_range_names_parameter_value_and_range(micro):
    page = blank_page()
    set_monitor_latency(page, 9, 50)
    with pytest.raises(ConfigError) as excinfo:
        set_monitor_latency(page, 9, micro)
    assert excinfo.value.parameter == "latency" and excinfo.value.value == micro
    assert "0..6553" in str(excinfo.value)
    assert u16_at(page, 576 + 18) == 500, "a rejected value leaves the previous entry untouched"


def test_latency_is_ignored_for_a_channel_without_monitor():
    page = blank_page()
    assert set_monitor_latency(page, 255, 50) is False
    assert np.count_nonzero(page) == 0
    with pytest.raises(ConfigError):  # still checked, so a bad devarg is reported everywhere
        set_monitor_latency(page, 255, 7000)


@pytest.mark.parametrize(
    ("relid", "offset", "bit"), [(0, 2048, 0), (14, 2048, 14), (33, 2052, 1), (500, 2108, 20)]
)
def test_interrupt_page_signal_sets_relid_bit_then_writes_one(relid, offset, bit):
    page = blank_page()
    written = []
    signaller = InterruptPageSignaller(page, relid, written.append)
    signaller.signal()
    assert u32_at(page, offset) == 1 << bit
    assert np.count_nonzero(page[:2048]) == 0, "the receive half is never touched"
    assert written == [1]
    assert signaller.signals_sent == 1


def test_interrupt_page_relid_beyond_the_send_half_is_refused():
    with pytest.raises(DeviceError, match="relid 16384"):
        InterruptPageSignaller(blank_page(), 16384, lambda v: None)


def test_make_signaller_picks_by_monitor_id():
    monitor, interrupt = blank_page(), blank_page()
    chosen = [
        make_signaller(
            relid=20, monitor_id=m, monitor_page=monitor, int_page=interrupt, irq_write=lambda v: None
        )
        for m in (5, 255)
    ]
    assert isinstance(chosen[0], MonitorSignaller) and isinstance(chosen[1], InterruptPageSignaller)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    return FakeSys(tmp_path)


def test_monitorless_device_signals_through_interrupt_page_and_irq_socket(fake, tmp_path):
    dev = fake.add_device(NIC_GUID, relid=14, monitor_id=None, driver=None)
    fake.bind_uio(dev)
    dir_fd = os.open(tmp_path / "dev" / "uio0", os.O_RDONLY | os.O_DIRECTORY)
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.bind(f"/proc/self/fd/{dir_fd}/irq")
    host.settimeout(2.0)
    os.close(dir_fd)
    with host, VmbusDevice.open(NIC_GUID) as device:
        device.set_latency(50)  # ignored: no monitor
        device.signallers[14].signal()
        datagram = host.recv(16)
        assert datagram == struct.pack("<i", 1)
        assert u32_at(device.int_page, 2048) == 1 << 14
        assert np.count_nonzero(device.monitor_page) == 0
        # The host sees the bit through its own mapping of the same file.
        with open_uio(dev, "uio0") as host_view:
            int_page = host_view.map(1)
            assert int.from_bytes(int_page[2048:2052], "little") == 1 << 14
            int_page.close()
        assert device.uio.irq_writes == 1


def test_monitored_device_sets_bit_and_latency_in_shared_monitor_page(fake):
    dev = fake.add_device(NIC_GUID, relid=14, monitor_id=40, driver=None)
    fake.bind_uio(dev)
    with VmbusDevice.open(NIC_GUID) as device:
        device.set_latency(100)
        device.signallers[14].signal()
        assert u32_at(device.monitor_page, 16) == 1 << 8
        assert u16_at(device.monitor_page, 576 + 80) == 1000
        assert device.uio.irq_writes == device.uio.irq_writes_dropped == 0, (
            "no irq write for a monitored channel"
        )
