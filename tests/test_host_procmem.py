"""Guest memory by process: GPAs outside every shared region are read in the guest's own memory.

Unit level (``host.procmem.ProcessMemory``, ``host.guestmem.GuestMemory``) with this test process
as the "guest", then end to end: a ``netvsc host`` process whose guest (the minimal guest, in this
process) sends frames and RNDIS control messages from its ordinary memory, as DPDK does with
``--iova-mode=va``. A GPA the guest has not mapped fails that packet, counted; the host goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import numpy as np
import pytest

from host_process import HostProcess
from miniguest import MiniGuest
from netvsc.errors import ProtocolError
from netvsc.host.guestmem import GuestMemory
from netvsc.host.procmem import ProcessMemory
from netvsc.vmbus.guestmem import GuestMemoryRegion, owner_pid_bits, region_owner_pid
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire.vmbus import encode_gpa_direct_packet

PAGE = 4096
UNMAPPED_PAGE = 1  # page 1 (address 4096) is never mapped in a Linux process
SMALL_SIZES = (
    "--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M",
    "--subchannel-ring-size", "64K",
)  # fmt: skip


class PageAlignedBuffer:
    """``pages`` page-aligned bytes of this process's ordinary memory, with their virtual addresses."""

    def __init__(self, pages: int) -> None:
        self._storage = np.zeros((pages + 1) * PAGE, dtype=np.uint8)
        start = (-self._storage.ctypes.data) % PAGE
        self.array = self._storage[start : start + pages * PAGE]
        self.address = self.array.ctypes.data
        assert self.address % PAGE == 0

    def place(self, offset: int, data: bytes) -> tuple[int, int, list[int]]:
        """Copy ``data`` to ``offset``; its GPA range when GPA = virtual address."""
        self.array[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        gpa = self.address + offset
        last = (gpa + len(data) - 1) // PAGE
        return len(data), gpa % PAGE, list(range(gpa // PAGE, last + 1))


def test_process_memory_reads_and_writes_the_guest_process():
    memory = ProcessMemory()
    buffer = ctypes.create_string_buffer(b"guest bytes at a virtual address", 64)
    address = ctypes.addressof(buffer)
    assert memory.read(address, 11) is None, "no guest process: nothing is readable"
    assert memory.faults == 1
    memory.set_pids([os.getpid()])
    assert bytes(memory.read(address, 11)) == b"guest bytes"
    assert memory.write(address, b"GUEST") is True
    assert buffer.value.startswith(b"GUEST bytes")
    assert memory.read(UNMAPPED_PAGE * PAGE, 16) is None
    assert memory.read(-1, 4) is None and memory.read(1 << 62, 4) is None
    assert (memory.reads, memory.writes, memory.faults) == (1, 1, 4)


def test_regions_come_first_and_other_gpas_come_from_the_process(tmp_path):
    host_view = GuestMemory(tmp_path / "guest-mem")
    host_view.processes.set_pids([os.getpid()])
    buffer = PageAlignedBuffer(2)
    try:
        with GuestMemoryRegion(2 * PAGE, tmp_path) as region:
            region.array[:5] = np.frombuffer(b"shared", dtype=np.uint8)[:5]
            assert bytes(host_view.read(region.gpa_of(0), 5)) == b"share"
            assert host_view.processes.reads == 0, "a region hit must not touch the process"
            _, offset, pages = buffer.place(PAGE - 3, b"straddles")
            assert bytes(host_view.read_pages(offset, 9, pages)) == b"straddles"
            assert bytes(host_view.read(buffer.address + PAGE - 3, 9)) == b"straddles"
            host_view.write(buffer.address, b"written")
            assert bytes(buffer.array[:7]) == b"written"
            refused = host_view.refused
            with pytest.raises(ProtocolError, match="neither inside one region"):
                host_view.read(UNMAPPED_PAGE * PAGE, 8)
            with pytest.raises(ProtocolError):
                host_view.write(UNMAPPED_PAGE * PAGE, b"x")
            assert host_view.refused == refused + 2
            # view() stays region-only: it hands out no copies.
            with pytest.raises(ProtocolError, match="not inside one region"):
                host_view.view(buffer.address, 4)
    finally:
        host_view.close()


def test_virtual_addresses_skip_the_region_rescan_and_new_regions_are_still_found(tmp_path):
    host_view = GuestMemory(tmp_path / "guest-mem")
    host_view.processes.set_pids([os.getpid()])
    buffer = PageAlignedBuffer(1)
    buffer.place(0, b"virtual")
    if region_owner_pid(buffer.address) == owner_pid_bits(os.getpid()):
        pytest.skip("this process's pid bits equal its buffer's address bits: no way to tell them apart")
    try:
        rescans = host_view.rescans
        for _ in range(10):
            assert bytes(host_view.read(buffer.address, 7)) == b"virtual"
        assert host_view.rescans == rescans, "a virtual address listed the region directory"
        # A region created after the host last looked: its GPA carries this pid, so it is rescanned.
        with GuestMemoryRegion(PAGE, tmp_path) as region:
            region.array[:3] = np.frombuffer(b"new", dtype=np.uint8)
            assert bytes(host_view.read(region.gpa_of(0), 3)) == b"new"
            assert host_view.rescans == rescans + 1
    finally:
        host_view.close()


@pytest.fixture
def host_and_guest(tmp_path):
    host = HostProcess(tmp_path / "root", *SMALL_SIZES)
    guest = None
    try:
        host.wait_ready()
        guest = MiniGuest(host.root)
        guest.setup(nvsp.NVSP_VERSION_61)
        yield host, guest
    finally:
        if guest is not None:
            with contextlib.suppress(Exception):
                guest.close()
        host.stop()


def send_gpa(guest: MiniGuest, ranges, channel_type: int) -> int:
    tid = guest.next_tid()
    packet = encode_gpa_direct_packet(ranges, nvsp.encode_send_rndis_packet(channel_type), tid)
    guest.channels[0].send_raw(np.frombuffer(packet, dtype=np.uint8).copy())
    return tid


def completion_status(guest: MiniGuest, tid: int) -> int:
    return nvsp.decode_nvsp(guest.wait_completion(tid)).status


def test_control_and_data_from_ordinary_guest_memory(host_and_guest):
    host, guest = host_and_guest
    buffer = PageAlignedBuffer(4)
    # RNDIS INITIALIZE from the guest's own memory, as DPDK sends every control request.
    request_id = 77
    tid = send_gpa(
        guest, [buffer.place(100, rndis.encode_initialize(request_id))], nvsp.RNDIS_CHANNEL_TYPE_CONTROL
    )
    assert completion_status(guest, tid) == nvsp.NVSP_STATUS_SUCCESS
    guest.wait(
        lambda: any(getattr(r.message, "request_id", None) == request_id for r in guest.received),
        "the INITIALIZE response",
    )
    guest.received.clear()
    guest.set_packet_filter(ndis.NDIS_PACKET_TYPE_PROMISCUOUS)
    # A data frame straddling two pages of ordinary memory comes back through the loopback.
    frame = bytes.fromhex("02155d000001 02155d0000fe 88b5") + bytes(range(256)) * 4
    message = rndis.encode_packet_msg(frame)
    tid = send_gpa(guest, [buffer.place(2 * PAGE - 200, message)], nvsp.RNDIS_CHANNEL_TYPE_DATA)
    assert completion_status(guest, tid) == nvsp.NVSP_STATUS_SUCCESS
    guest.wait(lambda: guest.data_frames(), "the looped-back frame")
    assert guest.data_frames()[0].message.frame == frame
    memory = host.counters()["guest_memory"]
    assert memory["process_reads"] >= 3 and memory["process_faults"] == 0 and memory["refused"] == 0


def test_unmapped_gpa_fails_the_packet_and_the_host_survives(host_and_guest):
    host, guest = host_and_guest
    before = host.counters()
    frame = bytes(64)
    message = rndis.encode_packet_msg(frame)
    tid = send_gpa(guest, [(len(message), 0, [UNMAPPED_PAGE])], nvsp.RNDIS_CHANNEL_TYPE_DATA)
    assert completion_status(guest, tid) == nvsp.NVSP_STATUS_FAILURE
    after = host.counters()
    assert after["netvsp"]["tx_malformed"] == before["netvsp"].get("tx_malformed", 0) + 1
    assert after["guest_memory"]["process_faults"] == before["guest_memory"]["process_faults"] + 1
    assert after["guest_memory"]["refused"] == before["guest_memory"]["refused"] + 1
    assert after["host"]["service_errors"] == 0
    # The channel still works: the same guest's next request is served.
    buffer = PageAlignedBuffer(1)
    tid = send_gpa(guest, [buffer.place(0, rndis.encode_initialize(5))], nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
    assert completion_status(guest, tid) == nvsp.NVSP_STATUS_SUCCESS
    assert host.ctl("ping")["devices"] == 1
