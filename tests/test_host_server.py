"""The host process loop in-process: signals from the monitor page, interrupt page and irq socket, open/close.

The server runs in a thread with a stand-in NetVSP (``host_standin_nic``) that counts what it is
asked to service, so each test sees exactly which guest actions reached the host.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from netvsc.host.control import ControlClient, request
from netvsc.host.server import HostOptions, HostServer, take_pending_words
from netvsc.host.tree import MapSizes
from netvsc.vmbus.device import VmbusDevice
from netvsc.vmbus.ring import RingView
from netvsc.wire import nvsp
from netvsc.wire.vmbus import RING_INTERRUPT_MASK

SMALL = MapSizes(rings=64 * 1024, recv_buffer=256 * 1024, send_buffer=128 * 1024, subchannel_ring=32 * 1024)


def wait_for(predicate, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


class RunningServer:
    def __init__(self, root, **options) -> None:
        self.server = HostServer(
            HostOptions(root=root, backend="null", sizes=SMALL, nic_module="host_standin_nic", **options)
        )
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.server.run_once(max_wait=0.005)
        except BaseException as exc:  # surfaced by close()
            self.error = exc

    def netvsp(self, nic: int = 0):
        return self.server.nics[nic].netvsp

    def counters(self, nic: int = 0) -> dict:
        return self.server.nics[nic].counters

    def loops_after(self, count: int) -> None:
        """Wait until the loop ran ``count`` more turns (each turn scans every signal source)."""
        start = self.server.loops
        wait_for(lambda: self.server.loops >= start + count, f"{count} host loop turns")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.server.close()
        if self.error is not None:
            raise self.error


@pytest.fixture
def host(tmp_path):
    running = RunningServer(tmp_path / "root", devices=2)
    yield running
    running.close()
    assert not (tmp_path / "root").exists()


@pytest.fixture
def host_no_monitor(tmp_path):
    running = RunningServer(tmp_path / "root", devices=1, monitor=False)
    yield running
    running.close()


def open_device(host, index: int = 0) -> VmbusDevice:
    return VmbusDevice.open(host.server.nics[index].device.guid, host.server.tree.root)


def wait_completion(channel, timeout: float = 5.0):
    return wait_for(lambda: channel.recv(), "a completion from the host", timeout)


def test_take_pending_words_clears_only_what_it_returns():
    """The atomic take returns each word's bits and leaves zero behind; out-of-range indices give 0."""
    words = np.array([0, 0b1010, 0, 0x80000000], dtype=np.uint32)
    out = np.zeros(3, dtype=np.uint32)
    seen = take_pending_words(words, np.array([1, 3, 9], dtype=np.int64), out)
    assert list(out) == [0b1010, 0x80000000, 0] and seen == 0b1010 | 0x80000000
    assert list(words) == [0, 0, 0, 0]


def test_monitor_signal_reaches_service_and_completion_returns(host):
    """host#63: a pending monitor bit is found and the channel serviced; the guest's INIT is completed."""
    with open_device(host) as device:
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        channel = device.primary_channel()
        channel.send_inband(nvsp.encode_init(nvsp.NVSP_VERSION_61), 1, completion_requested=True)
        packet_type, _flags, tid, _ext, payload = wait_completion(channel)
        assert (packet_type, tid) == (0xB, 1)
        assert nvsp.decode_nvsp(payload).status == nvsp.NVSP_STATUS_SUCCESS
        assert host.counters()["monitor_signals"] >= 1
        # The bit was consumed by the scan: the monitor page holds no pending bit any more.
        group_word = host.server.monitor_words[(8 + 8 * (device.monitor_id // 32)) // 4]
        assert not group_word & (1 << (device.monitor_id % 32))
        # The other NIC, never opened, was never serviced.
        assert host.counters(1)["service_calls"] == 0


def test_guest_that_never_signals_sees_no_tx_processed(host):
    """host#63: a message written without a signal is never read; the signal releases it."""
    with open_device(host) as device:
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        channel = device.primary_channel()
        channel.send_inband(
            nvsp.encode_init(nvsp.NVSP_VERSION_61), 5, completion_requested=True, defer_signal=True
        )
        host.loops_after(200)
        assert host.netvsp().stats["messages"] == 0
        assert channel.recv() is None
        assert channel.flush_signal()  # empty -> non-empty with the host unmasked: the guest must signal
        assert wait_completion(channel)[2] == 5


def test_monitorless_channel_signalled_by_irq_write(host_no_monitor):
    """Monitor-less channels: interrupt-page bit + irq write service the channel; the write sets RX masks."""
    host = host_no_monitor
    with open_device(host) as device:
        assert device.monitor_id == 255
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        channel = device.primary_channel()
        half = device.rings.shape[0] // 2
        rx_header = RingView(device.rings[half:]).header
        rx_header[RING_INTERRUPT_MASK] = 1
        channel.send_inband(nvsp.encode_init(nvsp.NVSP_VERSION_5), 9, completion_requested=True)
        assert wait_completion(channel)[2] == 9
        counters = host.counters()
        assert counters["irq_writes"] >= 1 and counters["monitor_signals"] == 0
        assert rx_header[RING_INTERRUPT_MASK] == 0  # irq write 1 enables host-to-guest interrupts
        device.uio.irq_write(0)
        wait_for(lambda: rx_header[RING_INTERRUPT_MASK] == 1, "irq write 0 to mask RX interrupts")


def test_host_interrupts_reach_the_guest_as_a_cumulative_count(host_no_monitor):
    """Host-to-guest interrupts increment the count the guest reads from its irq fd (spec/vmbus.md 2.4)."""
    host = host_no_monitor
    with open_device(host) as device:
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        channel = device.primary_channel()
        channel.send_inband(nvsp.encode_init(nvsp.NVSP_VERSION_5), 1, completion_requested=True)
        wait_completion(channel)
        sent = wait_for(lambda: host.counters()["interrupts_sent"], "an interrupt")
        device.uio.irq_write(1)  # a reader that has written once is known to the host
        count = wait_for(lambda: device.uio.irq_read(timeout=0.05), "an interrupt count")
        assert 1 <= sent <= count == host.counters()["interrupts_sent"]


def test_irq_socket_rejects_wrong_sizes(host_no_monitor):
    """A datagram that is not exactly 4 bytes is counted and has no effect (the kernel returns EINVAL)."""
    host = host_no_monitor
    with open_device(host) as device:
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        device.uio._socket.sendto(b"\x01\x00", device.uio._address("irq"))
        wait_for(lambda: host.counters()["irq_bad_writes"] == 1, "the bad write to be counted")
        assert host.counters()["irq_writes"] == 0


def test_last_close_closes_channel_and_rescinds_subchannels(host):
    """host#66: the last close rescinds subchannels and resets the NetVSP; a reopen starts afresh."""
    device = open_device(host)
    try:
        wait_for(lambda: host.server.nics[0].is_open, "channel open")
        second_open = open_device(host)  # a second open does not re-open the channel
        assert host.counters()["channel_opens"] == 1
        second_open.close()
        channel = device.primary_channel()
        channel.send_inband(nvsp.encode_subchannel_request(2), 3, completion_requested=True)
        wait_completion(channel)
        subchannels = device.open_subchannels(2, timeout=5)
        assert len(subchannels) == 2
        first_netvsp = host.netvsp()
    finally:
        device.close()
    wait_for(lambda: host.counters()["channel_closes"] == 1, "the channel close")
    assert first_netvsp.stats["closed"] == 1
    assert host.server.nics[0].device.subchannels == []
    with open_device(host) as device:
        wait_for(lambda: host.counters()["channel_opens"] == 2, "the reopen")
        assert host.netvsp() is first_netvsp  # back at VERSION (channel_closed), over fresh ring headers
        assert host.netvsp().channels[0].rx.cursor == 0
        assert device.poll_subchannels() == []
        channel = device.primary_channel()
        channel.send_inband(nvsp.encode_init(nvsp.NVSP_VERSION_61), 4, completion_requested=True)
        assert wait_completion(channel)[2] == 4


def test_crashed_guest_counts_as_close(host, tmp_path):
    """A guest process that dies holding the device closes the channel (the kernel closes its socket)."""
    import subprocess
    import sys

    script = (
        "import os, sys; from netvsc.vmbus.device import VmbusDevice; "
        "d = VmbusDevice.open(sys.argv[2], sys.argv[1]); os._exit(0)"
    )
    guid = host.server.nics[0].device.guid
    subprocess.run([sys.executable, "-c", script, str(host.server.tree.root), guid], check=True, timeout=60)
    wait_for(lambda: host.counters()["channel_closes"] == 1, "the close after the guest died")
    assert host.counters()["channel_opens"] == 1


def test_control_socket_commands(host):
    """ping, status and counters answer; an unknown command or NIC is an error, and the host carries on."""
    root = host.server.tree.root
    assert request(root, "ping")["devices"] == 2
    status = request(root, "status")["nics"]
    assert [n["mac"] for n in status] == ["02:15:5d:00:00:01", "02:15:5d:00:00:02"]
    with ControlClient(root) as client:
        assert client.call("link", up=False, nic=1)["results"] == [{"link": "down"}]
        with pytest.raises(Exception, match="command"):
            client.call("no-such-command")
        with pytest.raises(Exception, match="nic"):
            client.call("counters", nic=7)
        assert "host" in client.call("counters", nic=0)["nics"][0]
    assert host.netvsp(1).link_commands == ["down"]


def test_bad_options_are_refused(tmp_path):
    """Bad user input names the parameter, the value and what is accepted."""
    from netvsc.errors import ConfigError

    with pytest.raises(ConfigError, match="devices"):
        HostServer(HostOptions(root=tmp_path / "r", devices=0, nic_module="host_standin_nic"))
    with pytest.raises(ConfigError, match="mac"):
        HostServer(HostOptions(root=tmp_path / "r", macs=[b"\x01" * 6], nic_module="host_standin_nic"))
    assert not (tmp_path / "r").exists()


def test_scan_interval_follows_the_guest_latency(host):
    """host#63: the monitor page is scanned at the latency the guest stored (100 ns units), 100 us when 0."""
    server = host.server
    with open_device(host) as device:
        wait_for(lambda: server.nics[0].is_open, "channel open")
        now = server.clock()
        server._last_activity = now  # active: no idle slow-down
        assert server.scan_interval(now) == pytest.approx(100e-6)
        device.set_latency(30)  # microseconds -> 300 units
        assert server.monitor_latencies[device.monitor_id] == 300
        assert server.scan_interval(now) == pytest.approx(30e-6)
        # Idle for longer than idle_after_s: the host sleeps between scans.
        assert server.scan_interval(now + 10) == pytest.approx(server.options.idle_scan_s)
