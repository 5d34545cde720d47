"""Offload kernels of the emulated host: transmit checksums, LSO and VLAN insertion checked with
scapy, and the receive-side checksum verification and VLAN stripping."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from netvsc.fastpath import offload
from netvsc.host.backends.base import BackendOffloads
from netvsc.host.frames import (
    TX_CSUM_IP,
    TX_CSUM_TCP,
    TX_CSUM_UDP,
    TX_IPV4,
    TX_IPV6,
    TX_LSO,
    FrameBatch,
)
from netvsc.host.txpath import apply_software_offloads
from netvsc.wire import rndis

SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
V4 = ("198.18.0.1", "198.18.0.2")
V6 = ("2001:2::1", "2001:2::2")  # benchmarking range (RFC 5180)


def ether():
    return Ether(src=SRC_MAC, dst=DST_MAC)


def ip_layer(version):
    return IP(src=V4[0], dst=V4[1], id=0x1234) if version == 4 else IPv6(src=V6[0], dst=V6[1])


def seeded(frame: bytes, *offsets: int) -> bytes:
    """Put garbage in checksum fields: the host must compute from scratch (decision 10)."""
    raw = bytearray(frame)
    for offset in offsets:
        raw[offset : offset + 2] = b"\xde\xad"
    return bytes(raw)


def checksums_ok(frame: bytes) -> bool:
    """Recompute every checksum with scapy and compare with the frame's."""
    packet = Ether(frame)
    fresh = Ether(frame)
    for layer in (IP, TCP, UDP):
        if layer in fresh:
            del fresh[layer].chksum
    if IPv6 in fresh:
        del fresh[IPv6].plen
    if IP in fresh:
        del fresh[IP].len
    rebuilt = Ether(bytes(fresh))
    for layer in (IP, TCP, UDP):
        if layer in packet and packet[layer].chksum != rebuilt[layer].chksum:
            return False
    return True


def run(
    batch: FrameBatch, offloads: BackendOffloads | None = None, capacity: int = 128
) -> tuple[FrameBatch, int]:
    out = FrameBatch(capacity, 9216)
    dropped = apply_software_offloads(batch, offloads or BackendOffloads(), out)
    return out, dropped


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_transmit_checksums_are_computed_from_scratch(version, proto):
    """host#32: checksum requests give correct IPv4 header, TCP and UDP checksums on the wire."""
    l4 = TCP(sport=40000, dport=80, flags="PA") if proto == "tcp" else UDP(sport=40000, dport=53)
    packet = ether() / ip_layer(version) / l4 / Raw(b"payload-" * 37)
    frame = bytes(packet)
    l4_offset = 14 + (20 if version == 4 else 40)
    fields = [l4_offset + (16 if proto == "tcp" else 6)]
    if version == 4:
        fields.append(14 + 10)
    flags = (TX_IPV4 | TX_CSUM_IP if version == 4 else TX_IPV6) | (
        TX_CSUM_TCP if proto == "tcp" else TX_CSUM_UDP
    )
    batch = FrameBatch(4)
    batch.append(seeded(frame, *fields), tx_flags=flags, l4_offset=l4_offset)
    out, dropped = run(batch)
    assert dropped == 0 and out.count == 1
    assert out.frame(0).tobytes() == frame, "checksums differ from scapy's"
    assert out.tx_flags[0] & (TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP) == 0, "done in software: flags cleared"


def test_offloads_the_backend_claims_are_left_to_it():
    """A backend with checksum offload gets the frame unchanged and the request still flagged."""
    frame = seeded(bytes(ether() / ip_layer(4) / TCP() / Raw(b"x" * 100)), 14 + 20 + 16)
    batch = FrameBatch(2)
    batch.append(frame, tx_flags=TX_IPV4 | TX_CSUM_TCP, l4_offset=34)
    out, _ = run(batch, BackendOffloads(tcp_checksum=True, ipv4_checksum=True, udp_checksum=True))
    assert out.frame(0).tobytes() == frame
    assert out.tx_flags[0] & TX_CSUM_TCP


@pytest.mark.parametrize("version", [4, 6])
def test_lso_of_64000_bytes_gives_valid_mss_sized_segments(version):
    """host#33: segments of at most MSS payload, each with correct lengths, IPv4 id and header
    checksum (or IPv6 payload length), sequence numbers and TCP checksum; FIN/PSH on the last."""
    mss = 1448
    payload = bytes(range(256)) * 250  # 64,000 bytes
    packet = (
        ether() / ip_layer(version) / TCP(sport=5001, dport=5201, seq=0xFFFFF000, flags="FPA") / Raw(payload)
    )
    raw = bytearray(bytes(packet))
    l4 = 14 + (20 if version == 4 else 40)
    # NDIS LSOv2 conventions: IPv4 total length and checksum zeroed, IPv6 payload length zeroed.
    if version == 4:
        raw[16:18] = b"\0\0"
        raw[24:26] = b"\0\0"
    else:
        raw[18:20] = b"\0\0"
    raw[l4 + 16 : l4 + 18] = b"\x12\x34"
    flags = TX_LSO | TX_CSUM_TCP | (TX_IPV4 | TX_CSUM_IP if version == 4 else TX_IPV6)
    batch = FrameBatch(1)
    batch.append(bytes(raw), tx_flags=flags, l4_offset=l4, mss=mss)
    out, dropped = run(batch)
    assert dropped == 0
    expected_segments = -(-len(payload) // mss)
    assert out.count == expected_segments, f"{out.count} segments, expected {expected_segments}"
    joined = b""
    for k, frame in enumerate(out.frames()):
        segment = Ether(frame)
        tcp = segment[TCP]
        assert len(bytes(tcp.payload)) <= mss
        assert checksums_ok(frame), f"segment {k}: bad checksum"
        if version == 4:
            assert segment[IP].len == len(frame) - 14
            assert segment[IP].id == (0x1234 + k) & 0xFFFF
        else:
            assert segment[IPv6].plen == len(frame) - 54
        assert tcp.seq == (0xFFFFF000 + k * mss) & 0xFFFFFFFF
        last = k == out.count - 1
        assert bool(tcp.flags & 0x01) == last and bool(tcp.flags & 0x08) == last, (
            f"segment {k} flags {tcp.flags}"
        )
        assert out.tx_flags[k] & (TX_LSO | TX_CSUM_TCP) == 0
        joined += bytes(tcp.payload)
    assert joined == payload


def test_lso_left_to_a_tso_backend_keeps_the_request():
    """A TSO backend gets the large frame with its LSO request and MSS intact."""
    frame = bytes(ether() / ip_layer(4) / TCP() / Raw(b"y" * 9000))
    batch = FrameBatch(1)
    batch.append(frame, tx_flags=TX_LSO | TX_CSUM_TCP | TX_IPV4 | TX_CSUM_IP, l4_offset=34, mss=1460)
    out, _ = run(batch, BackendOffloads(tso=True, ipv4_checksum=True, tcp_checksum=True), capacity=4)
    assert out.count == 1 and out.mss[0] == 1460 and out.tx_flags[0] & TX_LSO
    assert out.frame(0).tobytes() == frame


@pytest.mark.parametrize("tci", [0x0064, 0xA00A, 0xFFFF & ((5 << 13) | (1 << 12) | 4094)])
def test_vlan_insertion_tags_the_frame(tci):
    """host#34: a VLAN request gives an 802.1Q-tagged frame with the given priority, DEI and id."""
    frame = bytes(ether() / ip_layer(4) / UDP(sport=1, dport=2) / Raw(b"z" * 30))
    batch = FrameBatch(1)
    batch.append(frame, vlan_tci=tci)
    out, _ = run(batch)
    tagged = Ether(out.frame(0).tobytes())
    assert Dot1Q in tagged, "no 802.1Q tag"
    assert (tagged[Dot1Q].prio, tagged[Dot1Q].dei, tagged[Dot1Q].vlan) == (
        tci >> 13,
        (tci >> 12) & 1,
        tci & 0xFFF,
    )
    assert bytes(tagged[Dot1Q].payload) == frame[14:]
    assert out.vlan_tci[0] == -1, "the tag is in the frame now, not in the metadata"


def test_lso_with_vlan_tags_every_segment():
    """host#33, host#34: each LSO segment carries the tag and valid checksums."""
    frame = bytes(ether() / ip_layer(4) / TCP(flags="A") / Raw(b"q" * 5000))
    batch = FrameBatch(1)
    batch.append(
        frame, tx_flags=TX_LSO | TX_CSUM_TCP | TX_IPV4 | TX_CSUM_IP, l4_offset=34, mss=1000, vlan_tci=7
    )
    out, _ = run(batch)
    assert out.count == 5
    for frame_out in out.frames():
        tagged = Ether(frame_out)
        assert tagged[Dot1Q].vlan == 7
        untagged = frame_out[:12] + frame_out[16:]
        assert checksums_ok(untagged)


def test_frames_that_do_not_fit_the_output_are_dropped_and_counted():
    """An LSO send with a tiny MSS that would need more segments than ``out`` holds is dropped."""
    frame = bytes(ether() / ip_layer(4) / TCP() / Raw(b"a" * 2000))
    batch = FrameBatch(2)
    batch.append(frame, tx_flags=TX_LSO | TX_CSUM_TCP | TX_IPV4, l4_offset=34, mss=1)
    batch.append(frame[:60])
    out, dropped = run(batch, capacity=8)
    assert dropped == 1 and out.count == 1 and out.length[0] == 60


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=0, max_size=300),
    flags=st.integers(0, 0x3F),
    l4=st.integers(0, 400),
    mss=st.integers(0, 2000),
    tci=st.integers(-1, 0xFFFF),
)
def test_hostile_frames_never_crash_the_kernel(data, flags, l4, mss, tci):
    """Any bytes and metadata: the kernel drops or processes, never indexes out of range."""
    batch = FrameBatch(1, 512)
    batch.append(data.ljust(1, b"\0"), tx_flags=flags, l4_offset=l4, mss=mss, vlan_tci=tci)
    out = FrameBatch(4, 512)
    dropped = apply_software_offloads(batch, BackendOffloads(), out)
    assert dropped + out.count >= 1
    assert all(0 < length <= 512 for length in out.length[: out.count])


# -- receive side ---------------------------------------------------------------------------


def prepare(*frames_in: bytes) -> FrameBatch:
    batch = FrameBatch(len(frames_in), 2048)
    for frame in frames_in:
        batch.append(frame)
    offload.receive_prepare_batch(
        batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, batch.count
    )
    return batch


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_receive_checksums_are_verified_before_reported_good(version, proto):
    """host#19: the RX checksum state matches the frame: succeeded when right, failed when not."""
    l4 = TCP(sport=1, dport=2) if proto == "tcp" else UDP(sport=1, dport=2)
    good = bytes(ether() / ip_layer(version) / l4 / Raw(b"r" * 50))
    l4_offset = 14 + (20 if version == 4 else 40)
    field = l4_offset + (16 if proto == "tcp" else 6)
    bad = seeded(good, field)
    batch = prepare(good, bad)
    succeeded = rndis.CHECKSUM_RX_TCP_SUCCEEDED if proto == "tcp" else rndis.CHECKSUM_RX_UDP_SUCCEEDED
    failed = rndis.CHECKSUM_RX_TCP_FAILED if proto == "tcp" else rndis.CHECKSUM_RX_UDP_FAILED
    ip_good = rndis.CHECKSUM_RX_IP_SUCCEEDED if version == 4 else 0
    assert batch.rx_checksum[0] == succeeded | ip_good
    assert batch.rx_checksum[1] == failed | ip_good


def test_receive_ipv4_header_checksum_failure_and_non_ip():
    """host#19: a corrupt IPv4 header is reported failed; an ARP frame has no checksum info."""
    frame = bytearray(bytes(ether() / ip_layer(4) / TCP() / Raw(b"s")))
    frame[24] ^= 0xFF
    arp = bytes(Ether(src=SRC_MAC, dst="ff:ff:ff:ff:ff:ff", type=0x0806) / Raw(bytes(28)))
    batch = prepare(bytes(frame), arp)
    assert batch.rx_checksum[0] & rndis.CHECKSUM_RX_IP_FAILED
    assert batch.rx_checksum[1] == 0


def test_receive_vlan_tag_is_stripped_into_the_metadata():
    """host#18: a tagged frame is delivered untagged with the TCI beside it."""
    inner = ip_layer(4) / UDP(sport=7, dport=9) / Raw(b"t" * 20)
    tagged = bytes(ether() / Dot1Q(prio=3, dei=1, vlan=42) / inner)
    batch = prepare(tagged)
    assert batch.vlan_tci[0] == (3 << 13) | (1 << 12) | 42
    assert batch.frame(0).tobytes() == bytes(ether() / inner)
    assert batch.rx_checksum[0] == rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED
