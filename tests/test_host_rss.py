"""RSS steering of the emulated host against an independent, bit-by-bit Toeplitz written here,
itself checked against Microsoft's published verification vectors."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from netvsc.errors import ConfigError
from netvsc.host.frames import FrameBatch
from netvsc.host.rss import RssState
from netvsc.wire import ndis
from rss_reference import MS_KEY, MS_VECTORS, reference_toeplitz

ALL_TYPES = (
    ndis.NDIS_HASH_FUNCTION_TOEPLITZ
    | ndis.NDIS_HASH_IPV4
    | ndis.NDIS_HASH_TCP_IPV4
    | ndis.NDIS_HASH_IPV6
    | ndis.NDIS_HASH_TCP_IPV6
)
MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def rss_input(src, dst, sport=None, dport=None) -> bytes:
    data = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    if sport is not None:
        data += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return data


@pytest.mark.parametrize("vector", MS_VECTORS, ids=lambda v: v[2])
def test_reference_toeplitz_matches_microsoft_vectors(vector):
    """The independent hash used below reproduces Microsoft's RSS verification suite."""
    dst, dport, src, sport, l3, l4 = vector
    assert reference_toeplitz(MS_KEY, rss_input(src, dst)) == l3
    assert reference_toeplitz(MS_KEY, rss_input(src, dst, sport, dport)) == l4


@pytest.mark.parametrize("vector", MS_VECTORS, ids=lambda v: v[2])
def test_steer_reports_microsoft_hash_values(vector):
    """host#20: the hash value the host reports for a TCP frame is the published one."""
    dst, dport, src, sport, _l3, l4 = vector
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    batch = FrameBatch(1, 256)
    batch.append(bytes(Ether(**MAC) / ip / TCP(sport=sport, dport=dport)))
    RssState(MS_KEY, range(4), ALL_TYPES).steer(batch, 4)
    assert batch.hash_value[0] == l4
    tcp_type = ndis.NDIS_HASH_TCP_IPV4 if ":" not in src else ndis.NDIS_HASH_TCP_IPV6
    assert batch.hash_info[0] == ndis.NDIS_HASH_FUNCTION_TOEPLITZ | tcp_type


def test_ten_thousand_flows_over_four_channels_match_the_reference():
    """host#20: the channel of each of 10,000 flows is table[hash & 127] of the reference hash."""
    rng = random.Random(7)
    key = bytes(rng.randrange(256) for _ in range(40))
    table = [rng.randrange(4) for _ in range(128)]
    rss = RssState(key, table, ALL_TYPES)
    flows = 10_000
    batch = FrameBatch(flows, 128)
    expected = []
    for n in range(flows):
        if n % 2:
            src = f"198.18.{rng.randrange(256)}.{rng.randrange(256)}"
            dst = f"198.19.{rng.randrange(256)}.{rng.randrange(256)}"
            ip = IP(src=src, dst=dst)
        else:
            src = f"2001:2::{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}"
            dst = f"2001:2:0:1::{rng.randrange(1 << 16):x}"
            ip = IPv6(src=src, dst=dst)
        sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
        batch.append(bytes(Ether(**MAC) / ip / TCP(sport=sport, dport=dport)))
        expected.append(table[reference_toeplitz(key, rss_input(src, dst, sport, dport)) & 127])
    rss.steer(batch, 4)
    got = batch.queue[:flows].tolist()
    mismatches = [n for n in range(flows) if got[n] != expected[n]]
    assert not mismatches, f"{len(mismatches)} flows on the wrong channel, first {mismatches[:5]}"
    assert set(got) == {0, 1, 2, 3}


def test_udp_is_hashed_on_addresses_unless_a_udp_type_is_enabled():
    """DESIGN.md decision 9: UDP uses the 2-tuple, the 4-tuple only with a UDP hash type."""
    src, dst = "198.18.0.1", "198.18.0.2"
    frame = bytes(Ether(**MAC) / IP(src=src, dst=dst) / UDP(sport=1000, dport=2000))
    batch = FrameBatch(1, 128)
    batch.append(frame)
    RssState(MS_KEY, [0], ALL_TYPES).steer(batch, 1)
    assert batch.hash_value[0] == reference_toeplitz(MS_KEY, rss_input(src, dst))
    assert batch.hash_info[0] == ndis.NDIS_HASH_FUNCTION_TOEPLITZ | ndis.NDIS_HASH_IPV4
    RssState(MS_KEY, [0], ALL_TYPES | ndis.NDIS_HASH_UDP_IPV4).steer(batch, 1)
    assert batch.hash_value[0] == reference_toeplitz(MS_KEY, rss_input(src, dst, 1000, 2000))
    assert batch.hash_info[0] == ndis.NDIS_HASH_FUNCTION_TOEPLITZ | ndis.NDIS_HASH_UDP_IPV4


def test_fragments_and_disabled_l4_types_hash_addresses_and_non_ip_gets_queue_0():
    """Fragments use the 2-tuple; without any type for the protocol no hash; ARP -> queue 0."""
    src, dst = "198.18.0.9", "198.18.0.10"
    fragment = bytes(Ether(**MAC) / IP(src=src, dst=dst, flags="MF") / TCP(sport=1, dport=2) / Raw(b"x" * 8))
    arp = bytes(Ether(src=MAC["src"], dst="ff:ff:ff:ff:ff:ff") / ARP())
    tcp6 = bytes(Ether(**MAC) / IPv6(src="2001:2::1", dst="2001:2::2") / TCP(sport=1, dport=2))
    batch = FrameBatch(3, 128)
    for frame in (fragment, arp, tcp6):
        batch.append(frame, queue=5)
    rss = RssState(
        MS_KEY, [1, 2, 3], ndis.NDIS_HASH_FUNCTION_TOEPLITZ | ndis.NDIS_HASH_IPV4 | ndis.NDIS_HASH_TCP_IPV4
    )
    rss.steer(batch, 4)
    assert batch.hash_value[0] == reference_toeplitz(MS_KEY, rss_input(src, dst))
    assert batch.queue[0] == rss.table[batch.hash_value[0] & 127]
    assert (batch.queue[1], batch.hash_value[1], batch.hash_info[1]) == (0, 0, 0), "ARP: no hash, queue 0"
    assert (batch.queue[2], batch.hash_value[2], batch.hash_info[2]) == (0, 0, 0), "IPv6 types not enabled"


def test_vlan_tagged_frames_are_hashed_on_the_inner_packet():
    src, dst = "198.18.1.1", "198.18.1.2"
    frame = bytes(Ether(**MAC) / Dot1Q(vlan=5) / IP(src=src, dst=dst) / TCP(sport=3, dport=4))
    batch = FrameBatch(1, 128)
    batch.append(frame)
    RssState(MS_KEY, [0, 1], ALL_TYPES).steer(batch, 2)
    assert batch.hash_value[0] == reference_toeplitz(MS_KEY, rss_input(src, dst, 3, 4))


def test_short_table_is_replicated_and_disabled_rss_uses_channel_0():
    """host#46: a shorter table repeats cyclically; RSS disabled puts everything on channel 0."""
    rss = RssState(MS_KEY, [0, 1, 2], ALL_TYPES)
    assert rss.table.tolist() == [i % 3 for i in range(128)]
    assert rss.active_queues == [0, 1, 2]
    batch = FrameBatch(64, 128)
    for n in range(64):
        batch.append(
            bytes(Ether(**MAC) / IP(src="198.18.0.1", dst=f"198.18.2.{n}") / TCP(sport=n + 1, dport=80))
        )
    RssState(MS_KEY, [0, 1, 2], ALL_TYPES, enabled=False).steer(batch, 3)
    assert not batch.queue[:64].any() and not batch.hash_value[:64].any()


def test_entries_beyond_the_open_channels_fold_into_range():
    rss = RssState(MS_KEY, [7], ALL_TYPES)
    batch = FrameBatch(1, 128)
    batch.append(bytes(Ether(**MAC) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP()))
    rss.steer(batch, 4)
    assert batch.queue[0] == 7 % 4


@pytest.mark.parametrize(
    ("key", "table", "types"),
    [
        (b"k" * 39, [0], ALL_TYPES),
        (MS_KEY, [], ALL_TYPES),
        (MS_KEY, [-1], ALL_TYPES),
        (MS_KEY, [0] * 129, ALL_TYPES),
    ],
)
def test_bad_parameters_name_what_is_wrong(key, table, types):
    with pytest.raises(ConfigError):
        RssState(key, table, types)


def test_key_table_is_not_shared_between_states():
    first = RssState(MS_KEY, [0, 1], ALL_TYPES)
    second = RssState(bytes(40), [0, 1], ALL_TYPES)
    batch = FrameBatch(1, 128)
    batch.append(bytes(Ether(**MAC) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP()))
    second.steer(batch, 2)
    assert batch.hash_value[0] == 0, "an all-zero key hashes everything to 0"
    first.steer(batch, 2)
    assert batch.hash_value[0] != 0
    assert np.array_equal(first.table[:4], [0, 1, 0, 1])
