"""Helpers for the NetVSC port tests (tests/test_pmd_*.py): an emulated host per module, ports
opened on it and closed whatever happens, a deadline wait, and a test-side reader of the
transfer-page packets of a channel (the RX burst is issue 5), plus GPA sends of frames."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest

from host_process import HostProcess
from netvsc.pmd.port import NetvscPort
from netvsc.vmbus.device import list_devices
from netvsc.vmbus.guestmem import GuestMemoryRegion
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import PACKET_TYPE_XFER_PAGES, encode_gpa_direct_packet

SMALL_SIZES = (
    "--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M",
    "--subchannel-ring-size", "64K",
)  # fmt: skip


def start_host(root: Path, *args: str) -> HostProcess:
    host = HostProcess(root, *SMALL_SIZES, *args)
    try:
        host.wait_ready()
    except BaseException:
        host.stop()
        raise
    return host


def device_guid(host: HostProcess, index: int = 0) -> str:
    return list_devices(host.root)[index].guid


class Ports:
    """Opens ports on a host and closes every one of them at the end."""

    def __init__(self, host: HostProcess) -> None:
        self.host = host
        self.opened: list[NetvscPort] = []

    def open(self, devargs=None, *, timeout: float = 5.0, index: int = 0) -> NetvscPort:
        port = NetvscPort.open(
            device_guid(self.host, index), devargs, root=self.host.root, control_timeout=timeout
        )
        self.opened.append(port)
        return port

    def close_all(self) -> None:
        for port in self.opened:
            with contextlib.suppress(Exception):
                port.close()
        self.opened.clear()


def wait_for(predicate, what: str, timeout: float = 5.0, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def netvsp(host: HostProcess) -> dict:
    return host.counters()["netvsp"]


def read_frames(port: NetvscPort, channel_index: int) -> list[bytes]:
    """Data frames waiting on one channel (transfer-page packets), each packet completed."""
    channel = port.channels[channel_index]
    recv_buffer = port.dev.recv_buffer
    frames = []
    with port.control.ring_lock:
        while (packet := channel.recv()) is not None:
            packet_type, _flags, tid, ext, payload = packet
            if packet_type != PACKET_TYPE_XFER_PAGES:
                continue
            count = int.from_bytes(ext[4:8], "little")
            for r in range(count):
                length = int.from_bytes(ext[8 + 8 * r : 12 + 8 * r], "little")
                offset = int.from_bytes(ext[12 + 8 * r : 16 + 8 * r], "little")
                message = rndis.decode_rndis(bytes(recv_buffer[offset : offset + length]), limit=length)
                if isinstance(message, rndis.PacketMessage):
                    frames.append(bytes(message.frame))
            channel.send_completion(nvsp.encode_send_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS), tid)
    return frames


class GpaSender:
    """Sends frames from guest memory as GPA-direct RNDIS data packets on the primary channel."""

    SLOT = 4096

    def __init__(self, port: NetvscPort, slots: int = 64) -> None:
        self.port = port
        self.memory = GuestMemoryRegion(self.SLOT * slots, port.root)
        self.slots = slots
        self.next_tid = 0x4000_0000

    def send(self, frame: bytes, slot: int) -> None:
        message = rndis.encode_packet_msg(frame)
        offset = (slot % self.slots) * self.SLOT
        self.memory.array[offset : offset + len(message)] = np.frombuffer(message, dtype=np.uint8)
        self.next_tid += 1
        packet = encode_gpa_direct_packet(
            [self.memory.page_range(offset, len(message))],
            nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA),
            self.next_tid,
        )
        with self.port.control.ring_lock:
            self.port.channels[0].send_raw(np.frombuffer(packet, dtype=np.uint8).copy())

    def close(self) -> None:
        self.memory.close()


def module_host(name: str, *args: str):
    """A module-scoped ``host`` fixture: one emulated host, started with ``args``, per test module."""

    @pytest.fixture(scope="module")
    def host(tmp_path_factory):
        started = start_host(tmp_path_factory.mktemp(name) / "root", *args)
        yield started
        started.stop()

    return host


@pytest.fixture
def ports(host):
    """Ports opened on the module's ``host``; every one closed after the test."""
    opened = Ports(host)
    yield opened
    opened.close_all()
