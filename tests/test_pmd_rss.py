"""RSS of the NetVSC port: defaults, hash types per protocol, key/RETA update and query, and the
queue 1,000 flows land on through the emulated host (loopback backend) against Toeplitz."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netvsc.errors import ConfigError
from netvsc.ethdev import api
from netvsc.pmd import rss
from netvsc.wire import ndis
from pmd_support import GpaSender, module_host, netvsp, read_frames, wait_for
from rss_reference import reference_toeplitz

host = module_host("rss", "--queues", "8", "--backend", "loopback")




def test_defaults():
    """pmd#19 pmd#20: entry i = i mod nb_rxq; the default key is DPDK's (mlx5's) 40-byte key."""
    assert rss.default_reta(3) == [i % 3 for i in range(128)]
    assert rss.DEFAULT_KEY == ndis.TOEPLITZ_KEY_DPDK and len(rss.DEFAULT_KEY) == 40


def test_flow_types_from_host_capabilities():
    """pmd#13: the IPv4, IPv6 and IPv6-EX capability groups; nothing below NVSP 5."""
    v5, v4 = 0x50000, 0x40000
    ipv4 = rss.flow_types_from_capabilities(ndis.RSS_CAP_TCP_IPV4, v5, v5)
    assert ipv4 == api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP | api.RSS_NONFRAG_IPV4_UDP
    ipv6 = rss.flow_types_from_capabilities(ndis.RSS_CAP_TCP_IPV6, v5, v5)
    assert ipv6 == api.RSS_IPV6 | api.RSS_NONFRAG_IPV6_TCP
    ex = rss.flow_types_from_capabilities(ndis.RSS_CAP_TCP_IPV6_EX, v5, v5)
    assert ex == api.RSS_IPV6_EX | api.RSS_IPV6_TCP_EX
    assert rss.flow_types_from_capabilities(ndis.RSS_CAP_TCP_IPV4, v4, v5) == 0


def test_flow_hash_levels():
    """rx-flow-hash semantics: L4 by default, L3 per protocol on request (Azure: UDP at L3)."""
    default = rss.hash_types_for_flow_hash()
    assert default & api.RSS_NONFRAG_IPV4_TCP and default & api.RSS_NONFRAG_IPV4_UDP
    azure = rss.hash_types_for_flow_hash({"udp4": "l3", "udp6": "l3"})
    assert azure & api.RSS_NONFRAG_IPV4_TCP and not azure & api.RSS_NONFRAG_IPV4_UDP
    assert azure & api.RSS_IPV4
    with pytest.raises(ConfigError, match="flow_hash"):
        rss.hash_types_for_flow_hash({"udp4": "l5"})
    with pytest.raises(ConfigError, match="flow_hash protocol"):
        rss.hash_types_for_flow_hash({"sctp4": "l3"})
    # UDP at L4 maps to the NDIS UDP bit only when the host can hash UDP ports.
    bits = rss.ndis_hash_information(api.RSS_NONFRAG_IPV4_UDP, 0)
    assert bits & ndis.NDIS_HASH_IPV4 and not bits & ndis.NDIS_HASH_UDP_IPV4
    bits = rss.ndis_hash_information(api.RSS_NONFRAG_IPV4_UDP, ndis.RSS_CAP_UDP_IPV4)
    assert bits & ndis.NDIS_HASH_UDP_IPV4
    assert rss.hash_types_from_ndis(ndis.NDIS_HASH_IPV4 | ndis.NDIS_HASH_TCP_IPV4) == (
        api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP
    )


def test_rss_update_and_query(ports, host):
    """pmd#22 pmd#49 pmd#50: validation first; disable-then-enable on every change; the key and types
    in effect are returned; a key-less update keeps the key."""
    port = ports.open()
    with pytest.raises(ConfigError, match="rss"):
        port.rss_hash_update(api.RssConf(b"", api.RSS_IPV4))  # not configured for RSS
    port.configure(4, 4, rss=api.RssConf(b"", api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP))
    conf = port.rss_hash_conf_get()
    assert conf.key == rss.DEFAULT_KEY and conf.hash_types == api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP
    key = bytes(range(40))
    before = netvsp(host)["rndis_request_0x5"]
    port.rss_hash_update(api.RssConf(key, api.RSS_IPV4))
    assert netvsp(host)["rndis_request_0x5"] == before + 2, "RSS disabled, then enabled"
    port.rss_hash_update(api.RssConf(b"", api.RSS_IPV4 | api.RSS_IPV6))
    assert port.rss_hash_conf_get() == api.RssConf(key, api.RSS_IPV4 | api.RSS_IPV6)
    with pytest.raises(ConfigError, match="rss key length"):
        port.rss_hash_update(api.RssConf(b"short", api.RSS_IPV4))
    with pytest.raises(ConfigError, match="hash types"):
        port.rss_hash_update(api.RssConf(b"", 1 << 40))
    assert port.rss_hash_conf_get().key == key, "a refused update changes nothing"


def test_reta_update_and_query(ports):
    """pmd#51 pmd#52: only 128 entries, every masked entry < nb_rxq, checked before any change."""
    port = ports.open()
    port.configure(4, 6, rss=api.RssConf(b"", 0))
    assert port.reta_query() == [i % 4 for i in range(128)], "RSS points only at RX queues"
    with pytest.raises(ConfigError, match="reta size"):
        port.reta_update([0] * 64)
    bad = [1] * 128
    bad[100] = 4  # a TX-only channel
    with pytest.raises(ConfigError, match=r"reta\[100\]"):
        port.reta_update(bad)
    assert port.reta_query() == [i % 4 for i in range(128)], "no partial update (DPDK pitfall)"
    mask = [i < 64 for i in range(128)]
    port.reta_update([3] * 128, mask)
    table = port.reta_query()
    assert table[:64] == [3] * 64 and table[64:] == [i % 4 for i in range(64, 128)]
    assert port.reta_query(mask)[64:] == [-1] * 64
    with pytest.raises(ConfigError, match="reta mask size"):
        port.reta_query([True])


def test_thousand_flows_land_on_the_toeplitz_queue(ports, host):
    """pmd#17 pmd#19 pmd#20: with 4 queues and RSS on, each of 1,000 TCP flows (and UDP flows hashed
    at L3) arrives on channel RETA[toeplitz(key, tuple) & 127] of the port's key and table."""
    port = ports.open()
    port.configure(4, 4, rss=api.RssConf(b"", 0), flow_hash={"udp4": "l3"})
    port.start()
    port.worker.background_poll = False  # the test reads every channel itself (rx_burst is issue 5)
    table = port.reta_query()
    key = port.rss_hash_conf_get().key
    mac = port.mac_address.hex(":")
    rng = random.Random(7)
    sender = GpaSender(port, slots=1000)
    expected: dict[bytes, int] = {}
    landed: dict[bytes, int] = {}
    try:
        for index in range(1000):
            src = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            dst = f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            sport, dport = rng.randrange(1024, 65535), rng.randrange(1, 65535)
            udp = index % 4 == 3
            l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport)
            tag = index.to_bytes(2, "big")  # carried in the IPv4 identification field
            frame = bytes(Ether(src="02:00:00:00:00:01", dst=mac) / IP(src=src, dst=dst, id=index) / l4)
            addresses = bytes(int(x) for x in src.split(".")) + bytes(int(x) for x in dst.split("."))
            data = addresses if udp else addresses + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
            expected[tag] = table[reference_toeplitz(key, data) & 127]
            sender.send(frame, index)
            if index % 16 == 15:  # keep receive slots free: read as we go
                wait_for(lambda n=index + 1: _collect(port, landed) >= n, f"frame {index}", timeout=30)
        wait_for(lambda: _collect(port, landed) >= 1000, "1,000 looped-back frames", timeout=30)
    finally:
        sender.close()
    wrong = {
        tag.hex(): (landed.get(tag), queue) for tag, queue in expected.items() if landed.get(tag) != queue
    }
    assert not wrong, f"{len(wrong)} flows on the wrong queue (landed, expected): {list(wrong.items())[:5]}"
    assert len(set(landed.values())) == 4, "all four queues receive flows"


def _collect(port, landed: dict[bytes, int]) -> int:
    for channel_index in range(len(port.channels)):
        for frame in read_frames(port, channel_index):
            landed[frame[18:20]] = channel_index
    return len(landed)
