"""NetvscPort configure, queue setup, start/stop, packet filters, MTU change and reset."""

from __future__ import annotations

import time

import pytest

from netvsc.errors import ConfigError, DeviceError, NotSupportedError
from netvsc.ethdev import api
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd.port import PortBusyError
from netvsc.wire import ndis
from pmd_support import module_host, netvsp, wait_for

FILTER_DEFAULT = (
    ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST | ndis.NDIS_PACKET_TYPE_ALL_MULTICAST
)


host = module_host("configure", "--queues", "8")




def host_filter(host) -> int:
    return netvsp(host)["packet_filter"]


def sets(host) -> int:
    return netvsp(host).get("rndis_request_0x5", 0)


def test_offload_validation(ports):
    """pmd#15 pmd#16 pmd#23 pmd#64: SCATTER is accepted (scattered RX chains mbufs); LRO and
    unknown offloads are refused with a ConfigError naming them; RSS adds RSS_HASH; RSS_HASH
    without RSS is refused."""
    port = ports.open()
    assert port.dev_info().rx_offload_capa & api.RX_OFFLOAD_SCATTER
    port.configure(1, 1, rx_offloads=api.RX_OFFLOAD_SCATTER)
    with pytest.raises(ConfigError, match="LRO"):
        port.configure(1, 1, rx_offloads=api.RX_OFFLOAD_LRO)
    with pytest.raises(ConfigError, match="rx_offloads"):
        port.configure(1, 1, rx_offloads=api.RX_OFFLOAD_TIMESTAMP)
    with pytest.raises(ConfigError, match="tx_offloads"):
        port.configure(1, 1, tx_offloads=api.TX_OFFLOAD_UDP_TSO)
    with pytest.raises(ConfigError, match="RSS_HASH"):
        port.configure(1, 1, rx_offloads=api.RX_OFFLOAD_RSS_HASH)
    with pytest.raises(ConfigError, match="nb_rx_queues"):
        port.configure(0, 1)
    with pytest.raises(ConfigError, match="nb_tx_queues"):
        port.configure(1, port.max_queues + 1)
    port.configure(1, 1, rss=api.RssConf(b"", 0))
    assert port._config.rx_offloads & api.RX_OFFLOAD_RSS_HASH


def test_offload_host_capability_is_required(ports):
    """pmd#23: an offload the host cannot do makes configure fail."""
    port = ports.open()
    port._offload_caps = ndis.decode_offload_capabilities(ndis.encode_offload_capabilities())
    with pytest.raises(ConfigError, match="capabilities"):
        port.configure(1, 1, tx_offloads=api.TX_OFFLOAD_TCP_CKSUM)


def test_offload_parameters_are_an_enumeration(ports):
    """pmd#23 (DPDK pitfall): TX+RX checksum is sent as TX_RX_ENABLED (4), never 2|3 = RX only."""
    port = ports.open()
    offloads = api.RX_OFFLOAD_TCP_CKSUM
    port.configure(
        1, 1, rx_offloads=offloads, tx_offloads=api.TX_OFFLOAD_TCP_CKSUM | api.TX_OFFLOAD_IPV4_CKSUM
    )
    sent = port.offload_parameters_sent
    assert sent["tcp4_checksum"] == sent["tcp6_checksum"] == ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED
    assert sent["ipv4_checksum"] == ndis.OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED
    assert "udp4_checksum" not in sent  # not requested: left at "no change"


def test_multi_queue_maps_queue_i_to_channel_i(ports, host):
    """pmd#17 pmd#21: N > 1 queues request N-1 subchannels, queue i uses channel i; a new queue count
    re-attaches the NVS session and gets fresh subchannels."""
    port = ports.open()
    port.configure(4, 2)
    assert len(port.channels) == 4 and netvsp(host)["channels"] == 4
    for queue in range(4):
        assert port.rx_queue_setup(queue, 256).channel is port.channels[queue]
    opens = host.counters()["host"]["channel_opens"]
    port.configure(2, 3)
    assert len(port.channels) == 3
    assert host.counters()["host"]["channel_opens"] == opens + 1, "queue-count change re-attaches"
    assert netvsp(host)["channels"] == 3
    assert port.tx_queue_setup(2, 64).channel is port.channels[2]


def test_one_rx_queue_sends_no_rss(ports, host):
    """pmd#18: with one RX queue no RSS parameters are sent, even in RSS mode."""
    port = ports.open()
    before = sets(host)
    port.configure(1, 2, rss=api.RssConf(b"", 0))
    assert sets(host) == before, "no RNDIS set (RSS parameters or offloads) expected"


def test_rx_queue_setup(ports):
    """pmd#26 pmd#27: nb_desc 0 is 512, clamped to the pool's share; ring size next power of two;
    a mempool that is not a Mempool is refused."""
    port = ports.open()
    port.configure(2, 2)
    rxq = port.rx_queue_setup(0, 0)
    assert rxq.nb_desc == 512 and rxq.ring_size == 512
    with pytest.raises(ConfigError, match="mempool"):
        port.rx_queue_setup(1, 128, mempool=object())
    pool = Mempool(600, 256, root=ports.host.root)
    rxq = port.rx_queue_setup(1, 1000, mempool=pool)
    assert rxq.nb_desc == 300 and rxq.ring_size == 512
    assert port.rx_queue_info(1)["nb_desc"] == 512
    with pytest.raises(ConfigError, match="rx queue"):
        port.rx_queue_setup(2, 128)
    with pytest.raises(ConfigError, match="nb_desc"):
        port.rx_queue_setup(0, -1)


def test_tx_queue_setup(ports):
    """pmd#24 pmd#25 pmd#27: threshold default min(n/4, 32), thresh + 3 < nb_desc; a TX queue past
    the RX queues gets a completion reader that RSS never targets."""
    port = ports.open()
    port.configure(1, 2)
    txq = port.tx_queue_setup(0, 512)
    assert txq.tx_free_thresh == 32
    assert port.tx_queue_setup(0, 8).tx_free_thresh == 2
    with pytest.raises(ConfigError, match="tx_free_thresh"):
        port.tx_queue_setup(0, 4)
    with pytest.raises(ConfigError, match="tx_free_thresh"):
        port.tx_queue_setup(0, 64, tx_free_thresh=61)
    with pytest.raises(ConfigError, match="nb_desc"):
        port.tx_queue_setup(0, 4097)
    port.tx_queue_setup(1, 64)
    assert port._extra_rx[1].completions_only and port._extra_rx[1].channel is port.channels[1]
    assert port.tx_queue_info(1)["nb_desc"] == 64
    assert all(entry == 0 for entry in port.reta_query())


def test_start_stop_filters(ports, host):
    """pmd#28 pmd#29: start sets DIRECTED|BROADCAST|ALL_MULTICAST, stop sets NONE; setup needs a
    stopped port."""
    port = ports.open()
    port.configure(1, 1)
    port.start()
    assert host_filter(host) == FILTER_DEFAULT and port.started
    with pytest.raises(PortBusyError):
        port.configure(1, 1)
    with pytest.raises(PortBusyError):
        port.tx_queue_setup(0, 64)
    port.stop()
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_NONE and not port.started


def test_promiscuous_and_allmulticast(ports, host):
    """pmd#33 pmd#34: promiscuous on sends PROMISCUOUS; allmulticast changes never drop it; off
    restores DIRECTED|BROADCAST plus ALL_MULTICAST only while allmulticast is on."""
    port = ports.open()
    port.configure(1, 1)
    port.promiscuous_enable()
    port.start()  # DPDK pitfall: promiscuous was lost after start
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    port.allmulticast_disable()
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    port.allmulticast_enable()
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    port.promiscuous_disable()
    assert host_filter(host) == FILTER_DEFAULT
    port.allmulticast_disable()
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST
    port.set_mc_addr_list([bytes.fromhex("01005e000001")])
    assert host_filter(host) == FILTER_DEFAULT, "a multicast list needs ALL_MULTICAST"
    with pytest.raises(ConfigError, match="mc_addr_list"):
        port.set_mc_addr_list([bytes.fromhex("02005e000001")])


def test_mtu_change(ports, host):
    """pmd#36 pmd#37 pmd#39: EBUSY while started; re-attach with MTU + 14 in NDIS config and the
    queues and RSS restored; out-of-range values refused."""
    port = ports.open()
    port.configure(2, 2, rss=api.RssConf(b"", 0))
    port.start()
    with pytest.raises(PortBusyError, match="EBUSY"):
        port.set_mtu(9000)
    port.stop()
    for bad in (45, 16111, "1500"):
        with pytest.raises(ConfigError, match="mtu"):
            port.set_mtu(bad)
    port.set_mtu(4000)
    assert port.mtu == 4000
    assert port.control.nvsp.negotiated.mtu == 4000 + 14
    assert len(port.channels) == 2 and port._rss_state.enabled
    port.start()
    assert host_filter(host) == FILTER_DEFAULT


def test_failed_mtu_change_keeps_old_mtu(ports, host):
    """pmd#38: a failure during the re-attach is raised and the previous MTU stays in effect."""
    port = ports.open(timeout=0.5)
    port.configure(1, 1)
    host.ctl("fault", name="delay_control", value="never", nic=0)
    try:
        with pytest.raises(DeviceError):
            port.set_mtu(3000)
    finally:
        host.ctl("fault", name="clear", nic=0)
    assert port.mtu == 1500
    # The rollback attach may itself have met the fault; reset brings the port back.
    if port.control is None:
        port.reset()
    assert port.link_update().up


def test_reset_reattaches(ports, host):
    """Port API reset: a stopped, re-attached port in its just-opened state."""
    port = ports.open()
    port.configure(2, 2)
    port.start()
    opens = host.counters()["host"]["channel_opens"]
    port.reset()
    assert not port.started and len(port.channels) == 1
    assert host.counters()["host"]["channel_opens"] == opens + 1
    wait_for(lambda: host_filter(host) == ndis.NDIS_PACKET_TYPE_NONE, "filter NONE after reset")
    port.configure(1, 1)
    port.start()
    assert host_filter(host) == FILTER_DEFAULT


def test_stats_and_xstats_follow_queue_counts(ports):
    """pmd#44 pmd#45 pmd#48: per-queue stats and the 15 driver xstats per TX then RX queue, reset."""
    port = ports.open()
    port.configure(2, 3)
    names = [name for name, _ in port.xstats()]
    assert "tx_q2_good_packets" in names and "rx_q1_size_1519_max_packets" in names
    assert "rx_q2_good_packets" not in names
    port.rx_counters.good_packets[1] = 5
    assert port.stats().q_ipackets[1] == 5
    port.stats_reset()
    assert port.stats().ipackets == 0


def test_stop_waits_for_send_completions_with_a_deadline(ports, host):
    """pmd#29: stop sets filter NONE and waits (at most about 1 s) for outstanding sends."""
    port = ports.open()
    port.configure(1, 1)
    port.start()
    port.control.pending_sends.add(0x7777_0000)  # a send whose completion never comes
    started = time.monotonic()
    port.stop()
    assert 0.9 < time.monotonic() - started < 3.0
    assert host_filter(host) == ndis.NDIS_PACKET_TYPE_NONE


def test_operations_the_synthetic_nic_cannot_do(ports, host):
    """pmd#32: MAC set, VLAN filter, flow control and per-queue start/stop raise NotSupportedError
    (a NotImplementedError, the Port API's word) naming the operation and why, and change nothing
    on the host. reset is the one deliberate exception (see NetvscPort.reset): it re-attaches and
    leaves a working port."""
    port = ports.open()
    port.configure(2, 2)
    port.start()
    sets_before = sets(host)
    calls = {
        "mac_addr_set": lambda: port.mac_addr_set(bytes.fromhex("020000000099")),
        "vlan_filter_set": lambda: port.vlan_filter_set(100, True),
        "flow_ctrl_set": lambda: port.flow_ctrl_set({"mode": "full"}),
        "rx_queue_start": lambda: port.rx_queue_start(1),
        "rx_queue_stop": lambda: port.rx_queue_stop(1),
        "tx_queue_start": lambda: port.tx_queue_start(1),
        "tx_queue_stop": lambda: port.tx_queue_stop(1),
    }
    for operation, call in calls.items():
        with pytest.raises(NotSupportedError) as caught:
            call()
        assert isinstance(caught.value, NotImplementedError)
        assert caught.value.operation == operation
        assert str(caught.value).startswith(f"{operation} is not supported: "), str(caught.value)
        assert caught.value.reason, f"{operation}: the message says why"
    assert "host" in str(pytest.raises(NotSupportedError, port.mac_addr_set, b"\x02" * 6).value)
    assert sets(host) == sets_before, "nothing was sent to the host"
    assert port.started and host_filter(host) == FILTER_DEFAULT

    port.reset()
    port.configure(2, 2)
    port.start()
    assert port.started and len(port.channels) == 2
    assert host_filter(host) == FILTER_DEFAULT
    assert port.link_update().up


def test_multicast_list_is_kept_for_the_vf_only(ports, host):
    """pmd#35: the list is validated and kept; no multicast-list OID reaches the host (it has no
    multicast filter); the synthetic filter gains ALL_MULTICAST while the list is non-empty."""
    port = ports.open()
    port.configure(1, 1)
    port.start()
    port.allmulticast_disable()
    directed_broadcast = ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST
    assert host_filter(host) == directed_broadcast
    multicast_list_oid = f"rndis_set_oid_{ndis.OID_802_3_MULTICAST_LIST:#x}"
    filter_oid = f"rndis_set_oid_{ndis.OID_GEN_CURRENT_PACKET_FILTER:#x}"
    filter_sets = netvsp(host).get(filter_oid, 0)
    assert filter_sets > 0, "the host counts sets per OID"

    groups = [bytes.fromhex("01005e000001"), bytearray.fromhex("333300000001")]
    port.set_mc_addr_list(groups)
    assert port.mc_addr_list == [bytes(g) for g in groups]
    assert host_filter(host) == directed_broadcast | ndis.NDIS_PACKET_TYPE_ALL_MULTICAST
    assert netvsp(host).get(filter_oid, 0) == filter_sets + 1
    port.stop()
    port.start()
    assert host_filter(host) & ndis.NDIS_PACKET_TYPE_ALL_MULTICAST, "the list survives stop/start"
    port.set_mc_addr_list([])
    assert port.mc_addr_list == []
    assert host_filter(host) == directed_broadcast, "an empty list drops ALL_MULTICAST again"
    assert netvsp(host).get(multicast_list_oid, 0) == 0, "no multicast-list OID was sent"

    bad = {
        "unicast": [bytes.fromhex("02005e000001")],
        "short": [bytes.fromhex("01005e0000")],
        "not bytes": ["01:00:5e:00:00:01"],
        "one address, not a list": bytes.fromhex("01005e000001"),
    }
    for case, value in bad.items():
        with pytest.raises(ConfigError, match=r"mc_addr_list.*accepted .*6-byte multicast") as caught:
            port.set_mc_addr_list(value)
        assert caught.value.parameter.startswith("mc_addr_list"), case
    assert port.mc_addr_list == [], "a refused list changes nothing"
    assert host_filter(host) == directed_broadcast
