"""NetvscPort attach, dev_info, tear-down and open/close cycles against the emulated host."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from netvsc.errors import ConfigError, DeviceError
from netvsc.ethdev import api
from netvsc.pmd import nvs
from netvsc.pmd.devargs import NetvscDevargs
from netvsc.pmd.port import NetvscPort
from netvsc.wire import ndis
from netvsc.wire import nvsp as wire_nvsp
from netvsc.wire.vmbus import MONITOR_LATENCY_OFFSET
from pmd_support import Ports, device_guid, netvsp, start_host

VERSIONS = {
    "2": wire_nvsp.NVSP_VERSION_2,
    "4": wire_nvsp.NVSP_VERSION_4,
    "5": wire_nvsp.NVSP_VERSION_5,
    "6": wire_nvsp.NVSP_VERSION_6,
    "6.1": wire_nvsp.NVSP_VERSION_61,
}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    host = start_host(
        tmp_path_factory.mktemp("attach") / "root", "--queues", "8", "--mac", "02:15:5d:aa:bb:cc"
    )
    yield host
    host.stop()


@pytest.fixture
def ports(host):
    ports = Ports(host)
    yield ports
    ports.close_all()


@pytest.mark.parametrize("name", list(VERSIONS))
def test_attach_negotiates_each_host_version(tmp_path, name):
    """pmd#2 pmd#3 pmd#4 pmd#10 pmd#13: the newest version the host accepts wins; NDIS 6.30 from
    NVSP 5 else 6.1; NDIS config carries MTU + 14, VLAN and SR-IOV from 5; one queue and no RSS
    flow types below NVSP 5."""
    host = start_host(tmp_path / "root", "--nvsp-versions", name)
    ports = Ports(host)
    try:
        port = ports.open()
        version = VERSIONS[name]
        assert port.nvs_version == version, f"negotiated {port.nvs_version:#x}, host allows {name}"
        v5 = version >= wire_nvsp.NVSP_VERSION_5
        assert port.ndis_version == (wire_nvsp.NDIS_VERSION_6_30 if v5 else wire_nvsp.NDIS_VERSION_6_1)
        negotiated = port.control.nvsp.negotiated
        assert negotiated.mtu == 1500 + 14
        expected_caps = wire_nvsp.NDIS_CONFIG_CAP_IEEE8021Q | (wire_nvsp.NDIS_CONFIG_CAP_SRIOV if v5 else 0)
        assert negotiated.capabilities == expected_caps
        info = port.dev_info()
        assert info.nvs_version == version and info.ndis_version == port.ndis_version
        if v5:
            assert info.max_rx_queues == min(port.host_rss_rings, 64) and info.flow_type_rss_offloads != 0
        else:
            assert info.max_rx_queues == 1 and info.flow_type_rss_offloads == 0
        # INIT was tried newest first: one rejection per newer version.
        newer = [v for v in wire_nvsp.NVSP_VERSIONS_NEWEST_FIRST if v > version]
        assert netvsp(host).get("init_rejected", 0) == len(newer)
    finally:
        ports.close_all()
        host.stop()


def test_no_version_accepted_fails_cleanly(tmp_path):
    """pmd#2: a host that accepts none of the guest's versions fails attach with a clear error."""
    host = start_host(tmp_path / "root", "--nvsp-versions", "1")
    try:
        from netvsc.pmd.control import ControlChannel
        from netvsc.vmbus.device import VmbusDevice

        dev = VmbusDevice.open(device_guid(host), host.root)
        try:
            control = ControlChannel(
                dev.primary_channel(), dev.recv_buffer, timeout=5, nvsp_versions=[wire_nvsp.NVSP_VERSION_2]
            )
            with pytest.raises(DeviceError, match="accepted none"):
                nvs.negotiate(control)
        finally:
            dev.close()
    finally:
        host.stop()


def test_attach_queries_and_buffers(ports, host):
    """pmd#5 pmd#6 pmd#7 pmd#8 pmd#9: receive sections from the one section group, chimney count =
    buffer length / section size, RNDIS limits with alignment >= 4, filter NONE after init, MAC and
    MTU from the host's answers."""
    port = ports.open()
    assert port.mac_address == bytes.fromhex("02155daabbcc")
    assert port.mtu == 1500
    assert port.nvs.recv_section_count > 0 and port.nvs.recv_section_size > 0
    size = port.nvs.chimney_section_size
    assert size > 0 and size % 4 == 0
    assert port.nvs.chimney_section_count == port.dev.send_buffer.shape[0] // size
    limits = port.rndis_limits
    assert limits.alignment >= 4 and limits.max_bytes > 0 and limits.max_packets > 0
    assert netvsp(host)["packet_filter"] == ndis.NDIS_PACKET_TYPE_NONE
    assert port.link.up and port.link.speed_mbps > 0


def test_dev_info_as_discovered(ports):
    """pmd#10 pmd#11 pmd#12 pmd#13: limits and capabilities from the host."""
    port = ports.open()
    info = port.dev_info()
    assert info.driver_name == "net_netvsc"
    assert info.speed_capa_mbps == 10_000 and info.min_rx_bufsize == 1024 and info.max_rx_pktlen == 16128
    assert info.max_mac_addrs == 1 and info.hash_key_size == 40 and info.reta_size == 128
    assert (info.tx_desc_lim.nb_min, info.tx_desc_lim.nb_max) == (1, 4096)
    assert info.max_rx_queues == info.max_tx_queues == min(port.host_rss_rings, 64)
    always_tx = api.TX_OFFLOAD_MULTI_SEGS | api.TX_OFFLOAD_VLAN_INSERT
    always_rx = api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_RSS_HASH | api.RX_OFFLOAD_SCATTER
    assert info.tx_offload_capa & always_tx == always_tx
    assert info.rx_offload_capa & always_rx == always_rx
    # The emulated host offers every checksum and LSOv2 (OpenVMM): all bits appear.
    for bit in (
        api.TX_OFFLOAD_IPV4_CKSUM,
        api.TX_OFFLOAD_TCP_CKSUM,
        api.TX_OFFLOAD_UDP_CKSUM,
        api.TX_OFFLOAD_TCP_TSO,
    ):
        assert info.tx_offload_capa & bit, api.tx_offload_names(bit)
    for bit in (api.RX_OFFLOAD_IPV4_CKSUM, api.RX_OFFLOAD_TCP_CKSUM, api.RX_OFFLOAD_UDP_CKSUM):
        assert info.rx_offload_capa & bit, api.rx_offload_names(bit)
    flow = info.flow_type_rss_offloads
    assert flow & api.RSS_IPV4 and flow & api.RSS_NONFRAG_IPV4_TCP and flow & api.RSS_NONFRAG_IPV6_TCP
    assert (info.min_mtu, info.max_mtu) == (46, 16110)
    assert port.vlan_strip is True


def test_offload_capability_mapping_follows_host_bits(ports):
    """pmd#12: a host without TCP/UDP checksum or LSO capabilities leads to no such bits."""
    port = ports.open()
    port._offload_caps = ndis.decode_offload_capabilities(
        ndis.encode_offload_capabilities(
            ipv4_tx_flags=ndis.CHECKSUM_CAP_IPV4_HEADER | ndis.CHECKSUM_CAP_IPV4_OPTIONS
        )
    )
    rx, tx = port._offload_capa()
    assert tx == api.TX_OFFLOAD_MULTI_SEGS | api.TX_OFFLOAD_VLAN_INSERT | api.TX_OFFLOAD_IPV4_CKSUM
    assert rx == api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_RSS_HASH | api.RX_OFFLOAD_SCATTER


def test_latency_devarg_reaches_monitor_page(ports):
    """pmd#83: latency (us) is written to the monitor page in 100 ns units."""
    port = ports.open("latency=120")
    latencies = port.dev.monitor_page[:4096].view(np.uint16)
    assert int(latencies[MONITOR_LATENCY_OFFSET // 2 + port.dev.monitor_id]) == 1200


def test_latency_too_large_is_ignored(ports):
    """pmd#83: a latency beyond what the page holds (~6.55 ms) is ignored, the port still attaches
    (the devargs parser refuses it as text; a NetvscDevargs built in code reaches the port)."""
    port = ports.open(NetvscDevargs(latency_us=7000))
    latencies = port.dev.monitor_page[:4096].view(np.uint16)
    assert int(latencies[MONITOR_LATENCY_OFFSET // 2 + port.dev.monitor_id]) != 7000 * 10 % 65536
    assert port.link.up


def test_bad_devargs_and_device_are_refused(host):
    """pmd#84: unknown keys and non-numeric values fail the open with a ConfigError naming them."""
    with pytest.raises(ConfigError, match="bogus"):
        NetvscPort.open(device_guid(host), "bogus=1", root=host.root)
    with pytest.raises(ConfigError, match="latency"):
        NetvscPort.open(device_guid(host), "latency=abc", root=host.root)
    with pytest.raises(ConfigError):
        NetvscPort.open("no-such-device", root=host.root)
    with pytest.raises(ConfigError, match="control_timeout"):
        NetvscPort.open(device_guid(host), root=host.root, control_timeout=0)


def test_close_is_idempotent_and_tears_down_in_order(ports, host):
    """pmd#31: close releases everything and may be called twice; HALT comes before the revokes
    and the channel closes last (DESIGN.md §7 decision 7)."""
    before = netvsp(host)
    port = ports.open()
    port.close()
    port.close()
    after = netvsp(host)
    assert after.get("rndis_halt", 0) == before.get("rndis_halt", 0) + 1
    assert after.get("buffer_revokes", 0) == before.get("buffer_revokes", 0) + 1
    assert after.get("channel_closes", 0) == before.get("channel_closes", 0) + 1
    with pytest.raises(DeviceError, match="closed"):
        port.dev_info()


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_hundred_open_close_cycles_leak_nothing(host):
    """pmd#31 (issue item 8): 100 open/close cycles leak neither fds, memory, nor host buffers."""
    guid = device_guid(host)
    for _ in range(3):  # warm-up: imports, numba caches, logging handlers
        NetvscPort.open(guid, root=host.root, control_timeout=5).close()
    gc.collect()
    fds, rss_kib = _fd_count(), _rss_kib()
    host_before = host.counters()
    for _ in range(100):
        port = NetvscPort.open(guid, root=host.root, control_timeout=5)
        port.close()
    gc.collect()
    assert _fd_count() == fds, "file descriptors leaked"
    assert _rss_kib() - rss_kib < 20_000, "resident memory grew by more than 20 MB"
    host_after = host.counters()
    opens = host_after["host"]["channel_opens"] - host_before["host"]["channel_opens"]
    closes = host_after["host"]["channel_closes"] - host_before["host"]["channel_closes"]
    assert opens == closes == 100
    assert host_after["netvsp"]["channels"] <= 1
    guest_memory = list((host.root / "guest-mem").glob("*")) if (host.root / "guest-mem").exists() else []
    assert guest_memory == [], f"guest memory regions left: {guest_memory}"


def test_no_monitor_host_signals_through_interrupt_page(tmp_path):
    """Issue item 8: channels without a monitor id signal through the interrupt page; attach works."""
    host = start_host(tmp_path / "root", "--no-monitor")
    ports = Ports(host)
    try:
        port = ports.open()
        assert port.dev.monitor_id >= 128
        assert port.nvs_version == wire_nvsp.NVSP_VERSION_61
        counters = host.counters()["host"]
        assert counters["interrupt_page_signals"] > 0 and counters["monitor_signals"] == 0
    finally:
        ports.close_all()
        host.stop()
