"""DPDK's own netvsc PMD (Debian's DPDK 22.11, unmodified) through the emulated host: the port.

``dpdk-testpmd --no-huge --iova-mode=va`` runs under the uio preload library; the host sees a
guest that maps its device through ``/dev/uioN`` and sends every RNDIS request as a GPA range in
its own memory. These tests check the port's life: bring-up, promiscuous mode, MTU, stop and close.
"""

from __future__ import annotations

import pytest

from dpdk_support import host_errors, netvsp, wait_until
from netvsc.wire import ndis

pytestmark = pytest.mark.dpdk

OTHER_MAC = "02:00:00:00:00:99"  # a unicast address no port has


def test_port_comes_up_with_the_host_mac_link_up_and_nvsp_61(rig):
    host = rig.host()
    testpmd = rig.testpmd(host)
    info = testpmd.port_info(0)
    assert info["Driver name"] == "net_netvsc"
    assert info["Device name"] == rig.guid(host)
    assert info["MAC address"].lower() == rig.mac(host)
    assert info["Link status"] == "up"
    counters = host.counters()
    assert counters["nvsp"]["version"] == 0x60001, "DPDK 22.11 asks for NVSP 6.1 first"
    assert counters["netvsp"]["link_up"] == 1
    # Every RNDIS request came from testpmd's own memory (GPA = its virtual address).
    assert counters["guest_memory"]["process_reads"] > 0
    assert host_errors(counters) == {}


def test_promiscuous_on_and_off(rig):
    host = rig.host(backend=f"gen:rate=20000,dst={OTHER_MAC}")
    testpmd = rig.testpmd(host)
    testpmd.command("set fwd rxonly")
    testpmd.command("start")
    # testpmd turns promiscuous mode on by default: frames for another MAC arrive.
    wait_until(lambda: testpmd.port_stats(0)["RX-packets"] >= 200, "frames for another MAC, promiscuous")
    testpmd.command("set promisc 0 off")
    assert testpmd.port_info(0)["Promiscuous mode"] == "disabled"
    # DPDK waits for the RNDIS set to complete, so the host's filter is in force from here on.
    counters = netvsp(host)
    assert not counters["packet_filter"] & ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    delivered = counters["rx_frames_delivered"]
    generated = counters["rx_frames_from_backend"]
    wait_until(
        lambda: netvsp(host)["rx_frames_from_backend"] >= generated + 1000, "1000 more generated frames"
    )
    assert netvsp(host)["rx_frames_delivered"] == delivered, "frames for another MAC passed the filter"
    testpmd.command("set promisc 0 on")
    assert netvsp(host)["packet_filter"] & ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    wait_until(lambda: netvsp(host)["rx_frames_delivered"] >= delivered + 200, "frames again, promiscuous")
    testpmd.command("stop")
    assert host_errors(host.counters()) == {}


def test_mtu_change_is_refused_by_the_22_11_pmd_and_the_port_keeps_working(rig):
    host = rig.host(backend="gen:rate=20000")
    testpmd = rig.testpmd(host)
    # DPDK 22.11's netvsc PMD has no mtu_set: ethdev answers -ENOTSUP without a host exchange.
    assert "Set MTU failed. diag=-95" in testpmd.command("port config mtu 0 1400")
    assert testpmd.port_info(0)["MTU"] == "1500"
    testpmd.command("set fwd rxonly")
    testpmd.command("start")
    wait_until(lambda: testpmd.port_stats(0)["RX-packets"] >= 200, "traffic after the refused MTU change")
    testpmd.command("stop")
    # The host's MTU can change under a running guest; the port stays up and keeps receiving.
    assert host.ctl("mtu", mtu=1400)["results"][0]["mtu"] == 1400
    received = testpmd.port_stats(0)["RX-packets"]
    testpmd.command("start")
    wait_until(
        lambda: testpmd.port_stats(0)["RX-packets"] >= received + 200, "traffic after the host MTU change"
    )
    testpmd.command("stop")
    assert testpmd.port_info(0)["Link status"] == "up"
    assert host_errors(host.counters()) == {}


def test_stop_and_close_leave_no_host_errors(rig):
    host = rig.host()
    testpmd = rig.testpmd(host)
    testpmd.command("set fwd io")
    testpmd.command("start tx_first")
    wait_until(lambda: netvsp(host).get("tx_frames", 0) >= 1000, "frames looping through the host")
    testpmd.command("stop")
    testpmd.command("port stop all")
    assert netvsp(host)["packet_filter"] == 0, "DPDK's stop clears the packet filter"
    assert "Port 0 is closed" in testpmd.command("port close all")
    counters = host.counters()
    # DPDK 22.11's close frees its queues only: HALT and the buffer revokes belong to device
    # removal, which its vmbus bus never does, so the channel close must clean up on its own.
    assert counters["netvsp"].get("rndis_halt", 0) == 0
    assert counters["netvsp"].get("buffer_revokes", 0) == 0
    assert host_errors(counters) == {}
    assert testpmd.close() == 0
    wait_until(lambda: not host.ctl("status")["nics"][0]["open"], "the host to see the device closed")
    counters = host.counters()
    assert counters["host"]["channel_closes"] == counters["host"]["channel_opens"]
    assert counters["nvsp"]["version"] == 0, "the close sent the NVSP session back to VERSION"
    assert host_errors(counters) == {}
    # A new guest can bring the same device up again after such an exit.
    again = rig.testpmd(host)
    assert again.port_info(0)["Link status"] == "up"
    assert host_errors(host.counters()) == {}
