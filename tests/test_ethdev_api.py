"""The Port API value types and flags (ethdev/api.py): DPDK's bit values, names, the Port protocol."""

from __future__ import annotations

import dataclasses

import pytest

from netvsc.ethdev import api


def test_offload_bits_are_dpdks():
    """pmd#12, pmd#15: flags keep DPDK's bit positions, so masks printed by DPDK read the same here."""
    assert api.RX_OFFLOAD_VLAN_STRIP == 0x1
    assert api.RX_OFFLOAD_IPV4_CKSUM == 0x2
    assert api.RX_OFFLOAD_UDP_CKSUM == 0x4
    assert api.RX_OFFLOAD_TCP_CKSUM == 0x8
    assert api.RX_OFFLOAD_TCP_LRO == api.RX_OFFLOAD_LRO == 0x10
    assert api.RX_OFFLOAD_SCATTER == 0x2000
    assert api.RX_OFFLOAD_RSS_HASH == 0x80000
    assert api.TX_OFFLOAD_VLAN_INSERT == 0x1
    assert api.TX_OFFLOAD_IPV4_CKSUM == 0x2
    assert api.TX_OFFLOAD_UDP_CKSUM == 0x4
    assert api.TX_OFFLOAD_TCP_CKSUM == 0x8
    assert api.TX_OFFLOAD_TCP_TSO == 0x20
    assert api.TX_OFFLOAD_MULTI_SEGS == 0x8000


def test_rss_bits_are_dpdks():
    """pmd#13: RSS hash types keep DPDK's bits; the L3/L4 helpers group them per protocol."""
    assert (api.RSS_IPV4, api.RSS_NONFRAG_IPV4_TCP, api.RSS_NONFRAG_IPV4_UDP) == (0x4, 0x10, 0x20)
    assert (api.RSS_IPV6, api.RSS_NONFRAG_IPV6_TCP, api.RSS_NONFRAG_IPV6_UDP) == (0x100, 0x400, 0x800)
    assert (api.RSS_IPV6_EX, api.RSS_IPV6_TCP_EX, api.RSS_IPV6_UDP_EX) == (0x8000, 0x10000, 0x20000)
    assert api.RSS_L3_ONLY == api.RSS_IPV4 | api.RSS_IPV6 | api.RSS_IPV6_EX
    assert api.RSS_L4 == api.RSS_TCP | api.RSS_UDP
    assert api.RSS_L3_ONLY & api.RSS_L4 == 0


def test_flag_names():
    """pmd#12: capability masks turn into names, lowest bit first, unknown bits in hex, aliases once."""
    assert api.rx_offload_names(api.RX_OFFLOAD_RSS_HASH | api.RX_OFFLOAD_VLAN_STRIP) == [
        "VLAN_STRIP",
        "RSS_HASH",
    ]
    assert api.rx_offload_names(api.RX_OFFLOAD_LRO) == ["TCP_LRO"]
    assert api.tx_offload_names(api.TX_OFFLOAD_MULTI_SEGS | 1 << 40) == ["MULTI_SEGS", hex(1 << 40)]
    assert api.rss_type_names(api.RSS_IPV4 | api.RSS_NONFRAG_IPV6_TCP) == ["IPV4", "NONFRAG_IPV6_TCP"]
    assert api.rss_type_names(0) == []


def test_value_types_are_frozen_and_comparable():
    """pmd#11: DevInfo/LinkStatus/RssConf are immutable values."""
    limits = api.DescLimits(nb_min=1, nb_max=4096, nb_align=1)
    info = api.DevInfo(
        driver_name="net_netvsc", max_rx_queues=1, max_tx_queues=1, min_rx_bufsize=1024,
        max_rx_pktlen=16128, max_mac_addrs=1, rx_offload_capa=0, tx_offload_capa=0,
        flow_type_rss_offloads=0, hash_key_size=40, reta_size=128, rx_desc_lim=limits,
        tx_desc_lim=limits, min_mtu=46, max_mtu=16110, speed_capa_mbps=10000,
        nvs_version=0x60001, ndis_version=0x6001E,
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.reta_size = 64
    assert info.as_dict()["tx_desc_lim"] == {"nb_min": 1, "nb_max": 4096, "nb_align": 1,
                                             "nb_seg_max": 65535, "nb_mtu_seg_max": 65535}  # fmt: skip
    assert api.LinkStatus(up=True, speed_mbps=10000) == api.LinkStatus(True, 10000, True, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        api.RssConf(key=b"k" * 40, hash_types=0).hash_types = 1


def test_port_stats_sum_and_queue_views():
    """pmd#43, pmd#44: PortStats has 16 per-queue slots and adds element-wise."""
    a = api.PortStats(ipackets=1, obytes=5)
    b = api.PortStats(ipackets=2, oerrors=1)
    a.q_ipackets[3] = 4
    b.q_ipackets[3] = 1
    total = a + b
    assert (total.ipackets, total.obytes, total.oerrors) == (3, 5, 1)
    assert total.q_ipackets[3] == 5 and len(total.q_opackets) == api.STATS_QUEUE_COUNT == 16
    assert total.rx_queue(3) == api.QueueStats(packets=5, bytes=0, errors=0)
    assert a.q_ipackets is not api.PortStats().q_ipackets, "each instance owns its arrays"


class _NotAPort:
    def dev_info(self):
        return None


def test_port_protocol_is_checkable():
    """The Port protocol recognises an object with every operation, and refuses one without."""
    from test_info import StandInPort

    assert isinstance(StandInPort(), api.Port)
    assert not isinstance(_NotAPort(), api.Port)


def _dev_info(**changes) -> api.DevInfo:
    base = api.DevInfo(
        driver_name="net_netvsc", max_rx_queues=64, max_tx_queues=64, min_rx_bufsize=1024,
        max_rx_pktlen=16128, max_mac_addrs=1,
        rx_offload_capa=api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_RSS_HASH | api.RX_OFFLOAD_TCP_CKSUM,
        tx_offload_capa=api.TX_OFFLOAD_MULTI_SEGS | api.TX_OFFLOAD_TCP_TSO,
        flow_type_rss_offloads=api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP | api.RSS_IPV6,
        hash_key_size=40, reta_size=128, rx_desc_lim=api.DescLimits(0, 65535, 1),
        tx_desc_lim=api.DescLimits(1, 4096, 1, nb_seg_max=40, nb_mtu_seg_max=40), min_mtu=46,
        max_mtu=16110, speed_capa_mbps=10000, nvs_version=0x60001, ndis_version=0x6001E, device="synthetic",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_vf_merge_is_minimum_and_intersection():
    """pmd#14: with a VF, queue maxima are the minimum and capabilities the intersection of both devices."""
    synthetic = _dev_info()
    vf = _dev_info(
        driver_name="mlx5_pci", max_rx_queues=8, max_tx_queues=16, min_rx_bufsize=2048, max_rx_pktlen=9000,
        rx_offload_capa=api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_TCP_CKSUM | api.RX_OFFLOAD_SCATTER,
        tx_offload_capa=api.TX_OFFLOAD_MULTI_SEGS, flow_type_rss_offloads=api.RSS_IPV4 | api.RSS_IPV6,
        rx_desc_lim=api.DescLimits(32, 8192, 4), speed_capa_mbps=100000,
        tx_desc_lim=api.DescLimits(8, 2048, 2, nb_seg_max=60, nb_mtu_seg_max=8), nvs_version=0,
    )  # fmt: skip
    merged = api.merge_vf_dev_info(synthetic, vf)
    assert (merged.max_rx_queues, merged.max_tx_queues) == (8, 16)
    assert merged.rx_offload_capa == api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_TCP_CKSUM
    assert merged.tx_offload_capa == api.TX_OFFLOAD_MULTI_SEGS
    assert merged.flow_type_rss_offloads == api.RSS_IPV4 | api.RSS_IPV6
    assert (merged.min_rx_bufsize, merged.max_rx_pktlen) == (2048, 16128)
    assert merged.speed_capa_mbps == 100000
    assert merged.rx_desc_lim == api.DescLimits(32, 8192, 4)
    # DPDK pitfall: each segment maximum merges with its own counterpart (40 vs 60, 40 vs 8)
    assert merged.tx_desc_lim == api.DescLimits(8, 2048, 2, nb_seg_max=40, nb_mtu_seg_max=8)
    assert merged.driver_name == "net_netvsc" and merged.nvs_version == 0x60001 and merged.vf_attached
