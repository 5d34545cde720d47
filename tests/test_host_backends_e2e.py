"""The backends inside a running ``netvsc host``: two NICs joined by the vswitch, with capture.

Uses the end-to-end helpers (``host_process``, ``miniguest``): a host subprocess with two
devices on ``--backend vswitch`` and ``--pcap-out``, and one minimal guest per device.
"""

from __future__ import annotations

import time

import pytest
from scapy.utils import rdpcap

from host_process import HostProcess
from miniguest import MiniGuest
from netvsc.wire import ndis, nvsp

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
MAC_0 = bytes.fromhex("02155d000001")
MAC_1 = bytes.fromhex("02155d000002")
ETHERTYPE_LOCAL = b"\x88\xb5"  # IEEE local experimental


@pytest.fixture
def two_nic_host(tmp_path):
    capture = tmp_path / "host.pcapng"
    host = HostProcess(
        tmp_path / "root", *SMALL_SIZES, "--devices", "2", "--backend", "vswitch", "--pcap-out", str(capture)
    )
    guests: list[MiniGuest] = []
    try:
        host.wait_ready()
        for device in (0, 1):
            guest = MiniGuest(host.root, device)
            guests.append(guest)
            guest.setup(nvsp.NVSP_VERSION_61)
            guest.rndis_init()
            guest.set_packet_filter(ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST)
        yield host, guests, capture
    finally:
        for guest in guests:
            guest.close()
        host.stop()


def guest_mac(guest: MiniGuest) -> bytes:
    """The NIC's MAC as the guest learns it (device order in sysfs need not follow NIC order)."""
    return bytes(guest.query(ndis.OID_802_3_PERMANENT_ADDRESS).info)


def test_two_guests_talk_through_the_vswitch_and_every_frame_is_captured(two_nic_host):
    """host#26 host#28: broadcast floods to the other NIC, learned unicast reaches it; the capture
    holds each frame on the interface of its NIC and direction."""
    host, (guest0, guest1), capture = two_nic_host
    mac0, mac1 = guest_mac(guest0), guest_mac(guest1)
    assert mac0 != mac1
    broadcast = b"\xff" * 6 + mac0 + ETHERTYPE_LOCAL + b"hello-all".ljust(50, b".")
    tid = guest0.send_frame_section(broadcast)
    assert nvsp.decode_nvsp(guest0.wait_completion(tid)).status == nvsp.NVSP_STATUS_SUCCESS
    guest1.wait(lambda: guest1.data_frames(), "the broadcast on the other NIC")
    assert [r.message.frame for r in guest1.data_frames()] == [broadcast]

    reply = mac0 + mac1 + ETHERTYPE_LOCAL + b"hello-0".ljust(50, b".")  # mac0 was learned on its port
    tid = guest1.send_frame_section(reply)
    assert nvsp.decode_nvsp(guest1.wait_completion(tid)).status == nvsp.NVSP_STATUS_SUCCESS
    guest0.wait(lambda: guest0.data_frames(), "the unicast reply")
    assert [r.message.frame for r in guest0.data_frames()] == [reply], "never back to the sender's port"
    assert len(guest1.data_frames()) == 1

    nic_of = {MAC_0: 0, MAC_1: 1}
    sender, replier = nic_of[mac0], nic_of[mac1]
    # Unknown unicast floods to the other port, where the NIC's DIRECTED filter refuses it.
    stranger = bytes.fromhex("020000000099") + mac1 + ETHERTYPE_LOCAL + b"not-for-you".ljust(50, b".")
    tid = guest1.send_frame_section(stranger)
    assert nvsp.decode_nvsp(guest1.wait_completion(tid)).status == nvsp.NVSP_STATUS_SUCCESS
    deadline = time.monotonic() + 5
    while host.counters(sender)["netvsp"]["rx_dropped_filter"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert host.counters(sender)["netvsp"]["rx_dropped_filter"] == 1
    guest0.poll()
    assert len(guest0.data_frames()) == 1
    counters = host.counters(sender)["backend"]
    assert counters["tx_frames"] == 1 and counters["rx_frames"] == 2
    host.stop()
    recorded = [(p.sniffed_on, bytes(p)) for p in rdpcap(str(capture))]
    assert (f"nic{sender}-tx", broadcast) in recorded and (f"nic{replier}-rx", broadcast) in recorded
    assert (f"nic{replier}-tx", reply) in recorded and (f"nic{sender}-rx", reply) in recorded
    assert (f"nic{sender}-rx", stranger) in recorded, (
        "the capture sees what the backend gave, filtered or not"
    )
    assert len(recorded) == 6
