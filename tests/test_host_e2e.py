"""End to end: ``netvsc host`` as a subprocess, driven by the minimal guest (``miniguest``).

Each test starts its own host under its tmp directory; ``HostProcess.stop`` (in a finalizer)
interrupts it, kills it if it hangs, and removes the root even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from host_process import HostProcess
from miniguest import MiniGuest
from netvsc.vmbus.ring import RingView
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire.vmbus import NETVSC_CLASS_GUID, PACKET_FLAG_COMPLETION_REQUESTED

SMALL_SIZES = (
    "--ring-size",
    "256K",
    "--recv-buffer-size",
    "1M",
    "--send-buffer-size",
    "1M",
    "--subchannel-ring-size",
    "64K",
)
VERSION_NAMES = {
    "2": nvsp.NVSP_VERSION_2,
    "4": nvsp.NVSP_VERSION_4,
    "5": nvsp.NVSP_VERSION_5,
    "6": nvsp.NVSP_VERSION_6,
    "6.1": nvsp.NVSP_VERSION_61,
}


@pytest.fixture
def start_host(tmp_path):
    started: list[HostProcess] = []
    guests: list[MiniGuest] = []

    def start(*args: str, root_name: str = "root", ready: bool = True) -> HostProcess:
        host = HostProcess(tmp_path / root_name, *SMALL_SIZES, *args)
        started.append(host)
        if ready:
            host.wait_ready()
        return host

    start.guests = guests
    start.tmp_path = tmp_path
    yield start
    for guest in guests:
        with contextlib.suppress(Exception):
            guest.close()
    for host in started:
        host.stop()


def guest_for(start_host, host: HostProcess, device: int | str = 0) -> MiniGuest:
    guest = MiniGuest(host.root, device)
    start_host.guests.append(guest)
    return guest


def wait_for(predicate, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_ready_quickly_and_sigint_leaves_nothing(start_host, tmp_path):
    """`netvsc host --devices 2` answers ctl within 2 s; SIGINT removes root and shared files."""
    host = start_host("--devices", "2", "--backend", "vswitch", ready=False)
    host.wait_ready(timeout=2.0)
    status = host.ctl("status")["nics"]
    assert len(status) == 2 and len({n["guid"] for n in status}) == 2
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()  # puts a region under guest-mem/ too
    assert list((host.root / "guest-mem").iterdir())
    host.proc.send_signal(signal.SIGINT)
    assert host.proc.wait(10) == 0
    assert not host.root.exists(), "the host left files behind"
    assert not [p for p in tmp_path.iterdir() if p.name != "root"], list(tmp_path.iterdir())


def test_stale_root_is_replaced_and_live_root_refused(start_host):
    """A root left by a killed host is replaced on the next start; a root served by a live host is refused."""
    first = start_host()
    old_guid = first.ctl("status")["nics"][0]["guid"]
    first.proc.kill()
    first.proc.wait(10)
    assert (first.root / "run" / "netvsc-host.pid").exists()  # SIGKILL: nothing was cleaned up
    second = start_host()
    assert second.ctl("status")["nics"][0]["guid"] != old_guid
    assert not (first.root / "sys" / "bus" / "vmbus" / "devices" / old_guid).exists()
    third = start_host(ready=False)
    assert third.proc.wait(20) == 1
    assert str(second.proc.pid) in third.proc.stderr.read()
    assert second.ctl("ping")["pid"] == second.proc.pid  # the live host is untouched
    second.proc.send_signal(signal.SIGTERM)  # SIGTERM cleans up as SIGINT does
    assert second.proc.wait(10) == 0
    assert not second.root.exists()


@pytest.mark.parametrize("version_name", ["2", "4", "5", "6", "6.1"])
def test_negotiation_of_each_nvsp_version(start_host, version_name):
    """host#1, host#2, host#3, host#4: probing finds exactly the host's one version; bring-up works."""
    host = start_host("--nvsp-versions", version_name)
    version = VERSION_NAMES[version_name]
    guest = guest_for(start_host, host)
    assert guest.dev.info.class_guid == NETVSC_CLASS_GUID
    # host#2: nothing written on the fresh channel before INIT, however long the host runs
    # (each control round trip is at least one turn of the host loop).
    for _ in range(20):
        host.ctl("status")
    rx = RingView(guest.dev.rings[guest.dev.rings.shape[0] // 2 :])
    assert rx.write_index == 0
    statuses = {}
    for candidate in nvsp.NVSP_VERSIONS_NEWEST_FIRST:
        statuses[candidate] = guest.nvsp_init(candidate)
        if statuses[candidate] == nvsp.NVSP_STATUS_SUCCESS:
            break
    assert [v for v, s in statuses.items() if s == nvsp.NVSP_STATUS_SUCCESS] == [version], statuses
    guest.version = 0
    # INIT again would be a second INIT (fail-stop); finish the bring-up on this session instead.
    if version >= nvsp.NVSP_VERSION_2:
        guest.send(nvsp.encode_send_ndis_config(1514, nvsp.NDIS_CONFIG_CAP_IEEE8021Q))
    guest.send(nvsp.encode_send_ndis_version(nvsp.ndis_version_for(version)))
    reply = nvsp.decode_nvsp(guest.request(nvsp.encode_send_receive_buffer(guest.dev.recv_gpadl, 0xCAFE)))
    assert reply.status == nvsp.NVSP_STATUS_SUCCESS
    reply = nvsp.decode_nvsp(guest.request(nvsp.encode_send_send_buffer(guest.dev.send_gpadl, 0xFACE)))
    assert reply.status == nvsp.NVSP_STATUS_SUCCESS
    init = guest.rndis_init()
    assert init.status == rndis.RNDIS_STATUS_SUCCESS


def test_subchannels_appear_only_after_the_request(start_host):
    """host#48: no subchannel ring exists before SUBCHANNEL; after its completion the granted rings appear."""
    host = start_host("--queues", "4")
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    assert guest.dev.poll_subchannels() == []
    granted = guest.request_subchannels(3)
    assert granted == 3
    guest.open_subchannels(granted)
    assert [ring.subchannel_id for ring in guest.dev.subchannel_rings.values()] == [1, 2, 3]
    assert host.ctl("status")["nics"][0]["subchannels"] == sorted(guest.dev.subchannel_rings)


def test_close_and_reopen_restarts_at_version(start_host):
    """host#66: the last close rescinds the subchannels; a reopen starts at VERSION and bring-up works."""
    host = start_host("--queues", "4")
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    guest.open_subchannels(guest.request_subchannels(2))
    channels_dir = guest.dev.path / "channels"
    assert len(list(channels_dir.iterdir())) == 3
    guest.close()
    wait_for(lambda: host.counters()["host"]["channel_closes"] == 1, "the channel close")
    assert len(list(channels_dir.iterdir())) == 1
    again = guest_for(start_host, host)
    again.setup(nvsp.NVSP_VERSION_5)  # INIT accepted again: the session is back at VERSION
    assert again.rndis_init().status == rndis.RNDIS_STATUS_SUCCESS
    assert again.request_subchannels(1) == 1


def test_guest_that_never_signals_sees_no_tx(start_host):
    """host#63: a TX written without the monitor-page signal is not processed; the signal releases it."""
    host = start_host()
    guest = guest_for(start_host, host)
    channel = guest.channels[0]
    channel.send_inband(
        nvsp.encode_init(nvsp.NVSP_VERSION_61), 77, completion_requested=True, defer_signal=True
    )
    # Let the host run many scans (each status round trip is at least one loop turn).
    for _ in range(50):
        host.ctl("status")
    assert host.counters()["host"]["service_calls"] == 0
    guest.poll()
    assert 77 not in guest.completions
    assert channel.flush_signal()
    guest.wait(lambda: 77 in guest.completions, "INIT completion after the signal")
    assert host.counters()["host"]["monitor_signals"] >= 1


def test_monitorless_nic_is_served_through_interrupt_page(start_host):
    """A NIC offered without monitor: the guest signals with interrupt page + irq write; bring-up works."""
    host = start_host("--no-monitor")
    guest = guest_for(start_host, host)
    assert guest.dev.monitor_id == 255
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    counters = host.counters()["host"]
    assert counters["monitor_signals"] == 0
    assert counters["irq_writes"] >= 1 and counters["service_calls"] >= 1


def test_link_down_up_through_ctl_reaches_guest(start_host):
    """`netvsc host ctl link down|up` arrives as MEDIA_DISCONNECT then MEDIA_CONNECT indications."""
    host = start_host("--link-change-delay", "0")
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    result = host.ctl_cli("link", "down")
    assert result.returncode == 0, result.stderr
    guest.wait(lambda: guest.indications(), "a link indication")
    assert guest.indications()[0].status == rndis.RNDIS_STATUS_MEDIA_DISCONNECT
    assert host.ctl_cli("link", "up", "--nic", "0").returncode == 0
    guest.wait(lambda: len(guest.indications()) >= 2, "the second link indication")
    assert [i.status for i in guest.indications()] == [
        rndis.RNDIS_STATUS_MEDIA_DISCONNECT,
        rndis.RNDIS_STATUS_MEDIA_CONNECT,
    ]
    counters = host.ctl_cli("counters", "--json")
    assert counters.returncode == 0 and '"netvsp"' in counters.stdout


def test_loopback_frames_cross_the_whole_host(start_host):
    """host#12, host#13, host#14, host#15: frames sent by section and GPA return in valid transfer pages.

    The frames are also captured with --pcap-out.
    """
    capture = start_host.tmp_path / "capture.pcapng"
    host = start_host("--backend", "loopback", "--pcap-out", str(capture))
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    guest.set_packet_filter(ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST)
    slot_count = guest.recv_reply.num_sub_allocations
    guest.auto_complete = False  # hold every receive: transaction ids must stay unique
    mac = bytes.fromhex("02155d000001")
    frames = []
    for i in range(6):
        frame = mac + bytes.fromhex("02155d0000ff") + b"\x88\xb5" + bytes([i]) * (60 + 100 * i)
        frames.append(frame)
        tid = (
            guest.send_frame_section(frame, section=i)
            if i % 2 == 0
            else guest.send_frame_gpa(frame, offset=8192 * (1 + i))
        )
        completion = nvsp.decode_nvsp(guest.wait_completion(tid))
        assert (completion.type, completion.status) == (nvsp.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE, 1)
    guest.wait(lambda: len(guest.data_frames()) >= len(frames), "all looped-back frames")
    received = guest.data_frames()
    assert sorted(r.message.frame for r in received) == sorted(frames)
    outstanding = {(r.channel, r.transaction_id) for r in received}
    assert len(outstanding) == len({(c, t) for c, t in guest.pending_receives})
    for item in received:
        assert item.packet_flags == PACKET_FLAG_COMPLETION_REQUESTED
        assert item.set_id == nvsp.RECEIVE_BUFFER_ID
        assert nvsp.decode_nvsp(item.nvsp_payload).send_buffer_section_index == 0xFFFFFFFF
        fields = nvsp.decode_nvsp(item.nvsp_payload)
        assert (fields.type, fields.channel_type, fields.send_buffer_section_size) == (107, 0, 0)
        assert 0 <= item.transaction_id < slot_count
        assert item.length > 0 and item.offset + item.length <= guest.dev.recv_buffer.shape[0]
        assert item.message.length <= item.length
    tids = [t for _c, t in guest.pending_receives]
    assert len(tids) == len(set(tids)), "a transaction id was reused while outstanding"
    for channel, tid in guest.pending_receives:
        guest.complete_receive(channel, tid)
    counters = host.counters()
    assert counters["backend"]["tx_frames"] == len(frames)
    # --pcap-out: every frame that crossed the host, readable by scapy once the host has exited.
    assert host.stop() == 0
    from scapy.utils import rdpcap

    captured = [bytes(packet) for packet in rdpcap(str(capture))]
    assert all(frame in captured for frame in frames)


def test_help_documents_options_backends_and_ctl():
    """`netvsc host --help` names every option, backend and control command."""
    out = subprocess.run(
        [sys.executable, "-m", "netvsc", "host", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    for word in (
        "--root",
        "--devices",
        "--queues",
        "--mac",
        "--mtu",
        "--backend",
        "--no-monitor",
        "--nvsp-versions",
        "--pcap-out",
        "--link-change-delay",
        "--vf-offer-delay",
        "loopback",
        "null",
        "tap:IFNAME",
        "vswitch",
        "pcap:IN",
        "gen",
        "link up|down",
        "mtu N",
        "vf offer",
        "vf revoke",
        "rescind",
        "fault",
        "counters",
    ):
        assert word in out, word


def test_link_speed_through_ctl_reaches_guest_and_query(start_host):
    """`netvsc host ctl link speed BPS` arrives as LINK_SPEED_CHANGE in 100 bit/s units and is
    what OID_GEN_LINK_SPEED answers afterwards (issue 3 item 3; host#41)."""
    host = start_host()
    guest = guest_for(start_host, host)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    result = host.ctl_cli("link", "speed", "25000000000")
    assert result.returncode == 0, result.stderr
    guest.wait(lambda: guest.indications(), "a link speed indication")
    indication = guest.indications()[0]
    assert indication.status == rndis.RNDIS_STATUS_LINK_SPEED_CHANGE
    assert int.from_bytes(indication.status_buffer, "little") == 250_000_000
    speed = guest.query(ndis.OID_GEN_LINK_SPEED)
    assert int.from_bytes(speed.info, "little") == 250_000_000
    bad = host.ctl_cli("link", "speed", "0")
    assert bad.returncode != 0 and "SPEED_BPS" in bad.stderr


def test_device_rescind_hangs_up_the_guest_and_removes_the_tree(start_host):
    """`ctl rescind --device`: subchannels go first, then the primary; the guest's uio sees the
    rescind and the device's sysfs entry disappears (host.md 10, host#67)."""
    host = start_host("--devices", "2")
    guest = guest_for(start_host, host, 0)
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    assert guest.request_subchannels(2) == 2
    guest.open_subchannels(2)
    guid = guest.dev.guid
    # Device order in sysfs is not NIC order: find the guest's NIC by its GUID.
    index = next(n["index"] for n in host.ctl("status")["nics"] if n["guid"] == guid)
    assert not guest.dev.rescinded()
    result = host.ctl_cli("rescind", "--device", "--nic", str(index))
    assert result.returncode == 0, result.stderr
    wait_for(guest.dev.rescinded, "the guest to see the rescind")
    assert not (host.root / "sys/bus/vmbus/devices" / guid).exists()
    status = {n["index"]: n for n in host.ctl("status")["nics"]}
    assert status[index]["rescinded"] and not status[1 - index]["rescinded"]
    # The other NIC is still served.
    other = guest_for(start_host, host, 0)  # the only device left in the tree
    assert other.dev.guid == status[1 - index]["guid"]
    other.setup(nvsp.NVSP_VERSION_61)
    other.rndis_init()
