"""Host backends without root: spec parsing, null, loopback, gen, pcap, vswitch, and their kernels.

Frames are built with scapy (always with explicit MACs) and checked against scapy's own
checksum computation, so the kernels are held to an independent reference.
"""

from __future__ import annotations

import select

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import PcapNgWriter as ScapyPcapNgWriter
from scapy.utils import rdpcap, wrpcap

from netvsc.errors import ConfigError
from netvsc.fastpath import offload
from netvsc.host.backends import create_backend, framekernels, per_nic_name
from netvsc.host.backends.gen import GenBackend
from netvsc.host.backends.loopback import LoopbackBackend
from netvsc.host.backends.null import NullBackend
from netvsc.host.backends.vswitch import VSwitch
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

MAC_A = "02:00:00:00:0a:01"
MAC_B = "02:00:00:00:0b:01"
MAC_C = "02:00:00:00:0c:01"
BROADCAST = "ff:ff:ff:ff:ff:ff"
GOOD_IP_UDP = rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED
GOOD_IP_TCP = rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_TCP_SUCCEEDED


def udp4(src=MAC_A, dst=MAC_B, payload=b"x" * 40, sport=1111, dport=2222) -> Ether:
    return (
        Ether(src=src, dst=dst)
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / UDP(sport=sport, dport=dport)
        / payload
    )


def tcp6(payload=b"y" * 100) -> Ether:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src="2001:2::1", dst="2001:2::2")
        / TCP(sport=3333, dport=4444, flags="PA", seq=7)
        / payload
    )


def with_garbage_checksums(packet: Ether) -> bytes:
    """The frame with every checksum field overwritten (the guest's seed is not trusted)."""
    raw = bytearray(bytes(packet))
    if packet.haslayer(IP):
        raw[24:26] = b"\xde\xad"
    l4 = 14 + (20 if packet.haslayer(IP) else 40)
    field = 16 if packet.haslayer(TCP) else 6
    raw[l4 + field : l4 + field + 2] = b"\xbe\xef"
    return bytes(raw)


def host_transmit(backend, batch: FrameBatch) -> int:
    """Transmit as the host does: software offloads for what the backend does not claim, then the backend."""
    out = FrameBatch(max(batch.capacity, 64), batch.frame_capacity)
    assert apply_software_offloads(batch, backend.offloads, out) == 0
    assert backend.transmit(out) == out.count
    return batch.count


def host_poll(backend, batch: FrameBatch, limit: int) -> int:
    """Poll as the host's receive path does: the new frames get their tag stripped and checksums verified."""
    first = batch.count
    got = backend.poll(batch, limit)
    cap = batch.frame_capacity
    offload.receive_prepare_batch(
        batch.data[first * cap :],
        cap,
        batch.length[first:],
        batch.vlan_tci[first:],
        batch.rx_checksum[first:],
        got,
    )
    return got


def checksums_correct(frame: bytes) -> bool:
    """Scapy recomputes every checksum of ``frame``; True if they equal the stored ones."""
    parsed = Ether(frame)
    rebuilt = parsed.copy()
    for layer in (IP, UDP, TCP):
        if rebuilt.haslayer(layer):
            del rebuilt[layer].chksum
    return bytes(Ether(bytes(rebuilt))) == bytes(parsed)


# -- spec parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "bogus",
        "loopback:extra",
        "null:1",
        "tap:",
        "tap:x@",
        "tap:name-much-too-long",
        "tap:bad/name",
        "pcap:",
        "pcap:/nonexistent/in.pcap",
        "pcap:in.pcap,out.pcapng,colour=red",
        "gen:rate=fast",
        "gen:rate=-5",
        "gen:size=10",
        "gen:size=100-50",
        "gen:size=imax",
        "gen:count=1.5",
        "gen:dst=zz:00:00:00:00:00",
        "gen:colour=red",
        "gen:rate=1,rate=2",
        "vswitch",  # without the host's switch
    ],
)
def test_bad_spec_is_a_config_error_naming_backend(spec):
    """A spec that does not parse names the parameter ``backend``, the value and the accepted forms."""
    with pytest.raises(ConfigError) as caught:
        create_backend(spec, nic_index=0)
    assert caught.value.parameter == "backend", caught.value
    assert caught.value.value == spec and caught.value.accepted, caught.value


def test_specs_build_their_backends(tmp_path):
    """Each accepted form builds the backend it names."""
    switch = VSwitch()
    assert isinstance(create_backend("loopback", nic_index=0), LoopbackBackend)
    assert isinstance(create_backend("null", nic_index=0), NullBackend)
    assert create_backend("vswitch", nic_index=3, vswitch=switch).nic_index == 3
    gen = create_backend("gen:rate=1000,size=64-128,count=10,dst=02:00:00:00:00:09", nic_index=0)
    assert isinstance(gen, GenBackend) and gen.rate == 1000 and gen.count == 10
    out = tmp_path / "out.pcapng"
    recorder = create_backend(f"pcap:,{out}", nic_index=1)
    recorder.close()
    assert (tmp_path / "out-nic1.pcapng").exists(), "the second NIC records to a file of its own"


def test_per_nic_names():
    """One spec serves every NIC: {nic} is replaced, else later NICs get their index appended."""
    assert per_nic_name("nv{nic}x", 2) == "nv2x"
    assert per_nic_name("nv", 0) == "nv"
    assert per_nic_name("nv", 1) == "nv1"
    assert per_nic_name("/tmp/out.pcapng", 2, path=True) == "/tmp/out-nic2.pcapng"


# -- null ------------------------------------------------------------------------------------------


def test_null_claims_everything_and_drops():
    """null: every offload claimed (no software work), transmits counted and dropped, no receives."""
    backend = NullBackend()
    offloads = backend.offloads
    assert all(
        (
            offloads.ipv4_checksum,
            offloads.tcp_checksum,
            offloads.udp_checksum,
            offloads.tso,
            offloads.vlan_insert,
        )
    )
    batch = FrameBatch(4)
    batch.append(bytes(udp4()))
    assert backend.transmit(batch) == 1
    assert backend.poll(FrameBatch(4), 4) == 0
    assert backend.counters()["tx_dropped"] == 1
    assert backend.fileno() is None


# -- loopback --------------------------------------------------------------------------------------


def test_loopback_fills_requested_checksums_and_reports_them_good():
    """host#19 host#32: checksums the guest asked for come back filled, with good receive bits."""
    backend = LoopbackBackend()
    batch = FrameBatch(8)
    batch.append(with_garbage_checksums(udp4()), tx_flags=TX_IPV4 | TX_CSUM_IP | TX_CSUM_UDP)
    batch.append(with_garbage_checksums(tcp6()), tx_flags=TX_IPV6 | TX_CSUM_TCP)
    assert host_transmit(backend, batch) == 2
    back = FrameBatch(8)
    assert host_poll(backend, back, 8) == 2
    frames = back.frames()
    assert checksums_correct(frames[0]) and checksums_correct(frames[1])
    assert back.rx_checksum[0] == GOOD_IP_UDP, hex(back.rx_checksum[0])
    assert back.rx_checksum[1] == rndis.CHECKSUM_RX_TCP_SUCCEEDED, hex(back.rx_checksum[1])
    assert host_poll(backend, back, 8) == 0, "each frame comes back once"


def test_loopback_reports_bad_checksums_it_was_not_asked_to_fill():
    """host#19: a frame sent with a wrong checksum and no request comes back marked failed."""
    backend = LoopbackBackend()
    batch = FrameBatch(4)
    raw = bytearray(bytes(udp4()))
    raw[40] ^= 0xFF  # corrupt the UDP checksum only
    batch.append(bytes(raw))
    host_transmit(backend, batch)
    back = FrameBatch(4)
    host_poll(backend, back, 4)
    assert back.rx_checksum[0] == rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_FAILED
    assert back.frame(0).tobytes() == bytes(raw), "a frame without a request is not touched"


def test_loopback_keeps_vlan_out_of_band_and_claims_no_tso():
    """host#18: the VLAN tag stays in vlan_tci; LSO is left to the host's software path."""
    backend = LoopbackBackend()
    assert backend.offloads.vlan_insert and not backend.offloads.tso
    batch = FrameBatch(2)
    batch.append(bytes(udp4()), vlan_tci=(5 << 13) | 42)
    host_transmit(backend, batch)
    back = FrameBatch(2)
    host_poll(backend, back, 2)
    assert back.vlan_tci[0] == (5 << 13) | 42
    assert back.frame(0).tobytes() == bytes(udp4())


def test_loopback_full_queue_drops_and_counts():
    """A full backend queue drops (never blocks the host) and counts the drop."""
    backend = LoopbackBackend(queue_frames=3)
    batch = FrameBatch(5)
    for port in range(5):
        batch.append(bytes(udp4(sport=port + 1)))
    backend.transmit(batch)
    assert backend.counters()["rx_dropped_queue_full"] == 2
    back = FrameBatch(2)
    assert backend.poll(back, 10) == 2, "poll respects the batch's room"
    assert [UDP in Ether(f) and Ether(f)[UDP].sport for f in back.frames()] == [1, 2]
    back.clear()
    assert backend.poll(back, 10) == 1


# -- kernels: offload requests, TAP headers, receive finishing, hostile frames -------------------


def test_lso_frame_gets_lengths_and_checksums_from_scratch():
    """host#33: an LSO frame with zeroed IPv4 length and checksum (NDIS LSOv2) gets them filled.

    The host's software LSO is where a backend without TSO gets this done: every segment has
    its lengths and checksums computed from scratch, and together they carry the frame.
    """
    packet = (
        Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(flags="A") / (b"z" * 3000)
    )
    raw = bytearray(bytes(packet))
    raw[16:18] = b"\0\0"
    raw[24:26] = b"\0\0"
    batch = FrameBatch(1)
    batch.append(bytes(raw), tx_flags=TX_IPV4 | TX_LSO, mss=1460, l4_offset=34)
    out = FrameBatch(8)
    refused = apply_software_offloads(batch, LoopbackBackend.offloads, out)
    assert refused == 0
    segments = [Ether(frame) for frame in out.frames()]
    assert [len(s[TCP].payload) for s in segments] == [1460, 1460, 80]
    assert all(checksums_correct(bytes(s)) and s[IP].len == len(s) - 14 for s in segments)
    assert b"".join(bytes(s[TCP].payload) for s in segments) == bytes(packet[TCP].payload)


def test_tap_header_for_checksum_lso_and_vlan():
    """host#32 host#33 host#34: the virtio-net header a TAP gets, and the pseudo-header seed."""
    udp = udp4()
    tcp = (
        Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP(flags="A") / (b"z" * 5000)
    )
    batch = FrameBatch(3)
    batch.append(with_garbage_checksums(udp), tx_flags=TX_IPV4 | TX_CSUM_IP | TX_CSUM_UDP)
    batch.append(with_garbage_checksums(tcp), tx_flags=TX_IPV4 | TX_LSO, mss=1400)
    batch.append(bytes(udp), tx_flags=TX_IPV4 | TX_CSUM_UDP, vlan_tci=7)
    vnet = np.zeros((3, framekernels.VNET_HDR_LEN), dtype=np.uint8)
    parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
    ok = framekernels.prepare_tap_tx(
        batch.data,
        batch.frame_capacity,
        batch.length,
        batch.tx_flags,
        batch.mss,
        batch.vlan_tci,
        3,
        vnet,
        parsed,
    )
    assert list(ok) == [1, 1, 1]
    header = [np.frombuffer(vnet[i].tobytes(), dtype="<u2") for i in range(3)]
    # flags, gso_type | hdr_len, gso_size, csum_start, csum_offset, num_buffers
    assert vnet[0, 0] == framekernels.VNET_F_NEEDS_CSUM and vnet[0, 1] == framekernels.VNET_GSO_NONE
    assert (header[0][3], header[0][4]) == (34, 6)
    assert vnet[1, 1] == framekernels.VNET_GSO_TCPV4
    assert (header[1][1], header[1][2], header[1][3], header[1][4]) == (54, 1400, 34, 16)
    assert (header[2][3], header[2][4]) == (38, 6), "a VLAN tag to insert shifts csum_start by 4"
    # The IPv4 header is done in software; the UDP field holds the pseudo-header sum.
    frame = batch.frame(0).tobytes()
    assert Ether(frame)[IP].chksum == Ether(bytes(udp))[IP].chksum
    pseudo = sum(int.from_bytes(frame[i : i + 2], "big") for i in range(26, 34, 2)) + 17 + len(udp[UDP])
    while pseudo > 0xFFFF:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert int.from_bytes(frame[40:42], "big") == pseudo


def test_tap_rx_trusts_data_valid_and_receive_path_strips_or_verifies():
    """host#18 host#19: a tagged frame is untagged into vlan_tci; DATA_VALID is trusted, else verified."""
    tagged = (
        Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=99, prio=3) / IP(src="198.18.0.1", dst="198.18.0.2") / UDP()
    )
    bad = bytearray(bytes(udp4()))
    bad[40] ^= 1
    batch = FrameBatch(3)
    batch.append(bytes(tagged))
    batch.append(bytes(bad))
    batch.append(bytes(bad))
    flags = np.array([0, framekernels.VNET_F_DATA_VALID, 0], dtype=np.uint8)
    parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
    framekernels.tap_rx_checksums(
        batch.data, batch.frame_capacity, batch.length, batch.rx_checksum, flags, 0, 3, parsed
    )
    offload.receive_prepare_batch(
        batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, 3
    )
    assert batch.vlan_tci[0] == (3 << 13) | 99
    untagged = Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.1", dst="198.18.0.2") / UDP()
    assert batch.frame(0).tobytes() == bytes(untagged)
    assert batch.rx_checksum[0] == GOOD_IP_UDP
    assert batch.rx_checksum[1] == GOOD_IP_UDP, "DATA_VALID: the source vouched"
    assert batch.rx_checksum[2] == rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_FAILED


def test_hostile_frames_never_crash_the_kernels():
    """Random and truncated headers are refused or reported without information, never a crash."""
    rng = np.random.default_rng(7)
    batch = FrameBatch(64, 256)
    templates = [bytes(udp4()), bytes(tcp6()), bytes(udp4())[:30], bytes(tcp6())[:60]]
    for i in range(64):
        frame = bytearray(templates[i % 4])
        for _ in range(4):
            frame[int(rng.integers(12, len(frame)))] = int(rng.integers(0, 256))
        if i % 5 == 0:
            frame[14] = 0x4F  # IHL 60 bytes, beyond the frame
        batch.append(
            bytes(frame), tx_flags=TX_CSUM_IP | TX_CSUM_TCP | TX_CSUM_UDP | (TX_LSO if i % 3 else 0), mss=1
        )
    parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
    vnet = np.zeros((64, framekernels.VNET_HDR_LEN), dtype=np.uint8)
    offload.fill_checksums_in_place(
        batch.data, batch.frame_capacity, batch.length, batch.tx_flags, batch.l4_offset, 64
    )
    framekernels.prepare_tap_tx(
        batch.data,
        batch.frame_capacity,
        batch.length,
        batch.tx_flags,
        batch.mss,
        batch.vlan_tci,
        64,
        vnet,
        parsed,
    )
    offload.receive_prepare_batch(
        batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, 64
    )
    out = batch.rx_checksum
    assert not np.any(out[2::4] & (rndis.CHECKSUM_RX_UDP_SUCCEEDED | rndis.CHECKSUM_RX_TCP_SUCCEEDED))
    # Lengths that lie about the slot are refused before any byte is read.
    batch.length[0] = batch.frame_capacity + 1
    batch.length[1] = -5
    assert (
        offload.fill_checksums_in_place(
            batch.data, batch.frame_capacity, batch.length, batch.tx_flags, batch.l4_offset, 2
        )
        == 2
    )


# -- gen -------------------------------------------------------------------------------------------


def test_gen_frames_are_valid_varied_and_counted():
    """gen: valid UDP/IPv4 in 198.18.0.0/15 from a locally administered MAC, flows varying, count honoured."""
    backend = create_backend("gen:size=imix,count=300,dst=02:00:00:00:00:09", nic_index=1)
    batch = FrameBatch(512, 2048)
    assert host_poll(backend, batch, 512) == 300
    assert host_poll(backend, batch, 512) == 0, "count reached"
    frames = [Ether(f) for f in batch.frames()]
    assert {len(f) for f in frames} == {60, 590, 1514}
    sizes = [len(f) for f in frames[:12]]
    assert sizes.count(60) == 7 and sizes.count(590) == 4 and sizes.count(1514) == 1
    assert all(f.dst == "02:00:00:00:00:09" and int(f.src.split(":")[0], 16) & 2 for f in frames)
    assert all(f[IP].src.startswith("198.18.") and f[IP].dst.startswith("198.19.") for f in frames)
    assert len({(f[IP].src, f[UDP].sport, f[UDP].dport) for f in frames}) == 300
    assert all(checksums_correct(bytes(f)) for f in frames[:50])
    assert np.all(batch.rx_checksum[:300] == GOOD_IP_UDP)


def test_gen_rate_is_paced_by_the_clock():
    """gen rate=PPS hands out frames as time passes, with at most 10 ms of burst."""
    now = [100.0]
    backend = GenBackend(rate=1024, size="64-128", clock=lambda: now[0])
    batch = FrameBatch(64, 256)
    assert backend.poll(batch, 64) == 0
    now[0] += 1 / 128  # exactly 8 frames' worth
    assert backend.poll(batch, 64) == 8
    now[0] += 10.0
    assert backend.poll(batch, 64) == 10, "burst capped at 10 ms of frames"
    assert all(64 <= n <= 128 for n in batch.length[: batch.count])


# -- pcap ------------------------------------------------------------------------------------------


def test_pcap_replays_pcap_and_pcapng_with_vlan_stripped(tmp_path):
    """host#18: replayed frames arrive untagged with vlan_tci; pcap and pcapng both read; loop repeats."""
    plain = udp4()
    tagged = Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=12) / IP(src="198.18.0.1", dst="198.18.0.2") / UDP()
    classic = tmp_path / "in.pcap"
    wrpcap(str(classic), [plain, tagged])
    modern = tmp_path / "in.pcapng"
    with ScapyPcapNgWriter(str(modern)) as writer:
        writer.write(plain)
        writer.write(tagged)
    for path in (classic, modern):
        backend = create_backend(f"pcap:{path}", nic_index=0)
        batch = FrameBatch(8)
        assert host_poll(backend, batch, 8) == 2
        assert host_poll(backend, batch, 8) == 0, "played once by default"
        assert batch.frame(0).tobytes() == bytes(plain)
        assert batch.vlan_tci[1] == 12 and Dot1Q not in Ether(batch.frame(1).tobytes())
        assert batch.rx_checksum[0] == GOOD_IP_UDP
        backend.close()
    looping = create_backend(f"pcap:{classic},loop=3", nic_index=0)
    batch = FrameBatch(16)
    assert looping.poll(batch, 16) == 6
    forever = create_backend(f"pcap:{classic},loop", nic_index=0)
    total = 0
    for _ in range(10):
        batch.clear()
        total += forever.poll(batch, 16)
    assert total == 160


def test_pcap_records_transmits_as_on_the_wire(tmp_path):
    """host#32 host#34: OUT holds transmits with requested checksums filled and VLAN tags inserted."""
    out = tmp_path / "out.pcap"
    backend = create_backend(f"pcap:,{out}", nic_index=0)
    batch = FrameBatch(4)
    batch.append(with_garbage_checksums(udp4()), tx_flags=TX_CSUM_IP | TX_CSUM_UDP, vlan_tci=(1 << 13) | 30)
    assert host_transmit(backend, batch) == 1
    backend.close()
    recorded = rdpcap(str(out))
    assert len(recorded) == 1
    frame = recorded[0]
    assert frame[Dot1Q].vlan == 30 and frame[Dot1Q].prio == 1
    untagged = Ether(src=frame.src, dst=frame.dst) / frame[IP]
    assert checksums_correct(bytes(untagged))


def test_pcap_rejects_non_ethernet_frames(tmp_path):
    """Frames of another link type are skipped and counted, not handed to the guest."""
    path = tmp_path / "raw.pcap"
    wrpcap(str(path), [IP(src="198.18.0.1", dst="198.18.0.2") / UDP()], linktype=101)
    backend = create_backend(f"pcap:{path}", nic_index=0)
    assert backend.poll(FrameBatch(4), 4) == 0
    assert backend.counters()["rx_skipped_linktype"] == 1


# -- vswitch ---------------------------------------------------------------------------------------


def _send(port, *packets, vlan_tci=-1):
    batch = FrameBatch(8)
    for packet in packets:
        batch.append(bytes(packet), vlan_tci=vlan_tci)
    host_transmit(port, batch)


def _received(port) -> list[bytes]:
    batch = FrameBatch(64)
    host_poll(port, batch, 64)
    return batch.frames()


def test_vswitch_learns_floods_and_never_hairpins():
    """host#27: unknown unicast, broadcast and multicast flood; learned unicast goes to one port only."""
    switch = VSwitch()
    a, b, c = (create_backend("vswitch", nic_index=i, vswitch=switch) for i in range(3))
    try:
        _send(a, udp4(src=MAC_A, dst=MAC_B))  # B not learned yet: flood
        assert len(_received(b)) == 1 and len(_received(c)) == 1 and _received(a) == []
        _send(b, udp4(src=MAC_B, dst=MAC_A))  # A learned on port 0: only A
        assert len(_received(a)) == 1 and _received(c) == []
        _send(a, udp4(src=MAC_A, dst=MAC_B))  # B learned now
        assert len(_received(b)) == 1 and _received(c) == []
        _send(c, udp4(src=MAC_C, dst=BROADCAST), udp4(src=MAC_C, dst="01:00:5e:00:00:01"))
        assert len(_received(a)) == 2 and len(_received(b)) == 2 and _received(c) == []
        _send(a, udp4(src=MAC_A, dst=MAC_A))  # destination learned on the ingress port: dropped
        assert _received(b) == [] and _received(c) == [] and _received(a) == []
        assert a.counters()["tx_dropped"] == 1
        assert switch.learned() == {MAC_A: 0, MAC_B: 1, MAC_C: 2}
        # A station that moves is re-learned on its new port.
        _send(c, udp4(src=MAC_A, dst=MAC_B))
        assert switch.learned()[MAC_A] == 2
    finally:
        for port in (a, b, c):
            port.close()


def test_vswitch_group_source_is_not_learned_and_vlan_travels():
    """A multicast source MAC is never learned; VLAN metadata and checksum requests cross the switch."""
    switch = VSwitch()
    a, b = switch.attach(0), switch.attach(1)
    try:
        _send(a, udp4(src="03:00:00:00:00:01", dst=MAC_B), vlan_tci=100)
        assert switch.learned() == {}
        batch = FrameBatch(4)
        assert host_poll(b, batch, 4) == 1 and batch.vlan_tci[0] == 100
        request = FrameBatch(2)
        request.append(with_garbage_checksums(udp4()), tx_flags=TX_CSUM_IP | TX_CSUM_UDP)
        host_transmit(a, request)
        batch.clear()
        host_poll(b, batch, 4)
        assert checksums_correct(batch.frame(0).tobytes()) and batch.rx_checksum[0] == GOOD_IP_UDP
    finally:
        a.close()
        b.close()


def test_vswitch_port_eventfd_and_detach():
    """A port's fd is readable exactly while frames wait; a closed port's MACs are forgotten."""
    switch = VSwitch()
    a, b = switch.attach(0), switch.attach(1)
    try:
        assert select.select([b.fileno()], [], [], 0)[0] == []
        _send(a, udp4(src=MAC_A, dst=BROADCAST))
        assert select.select([b.fileno()], [], [], 1.0)[0] == [b.fileno()]
        assert len(_received(b)) == 1
        assert select.select([b.fileno()], [], [], 0)[0] == []
        with pytest.raises(ConfigError):
            switch.attach(0)
    finally:
        a.close()
    assert switch.learned() == {}
    _send(b, udp4(src=MAC_B, dst=MAC_A))
    assert switch.learned() == {MAC_B: 1}
    b.close()
    b.close()  # idempotent


def test_tap_rx_completes_a_partial_checksum():
    """A source frame marked NEEDS_CSUM gets its transport checksum computed here and reported good."""
    raw = bytearray(bytes(udp4()))
    raw[40:42] = b"\x12\x34"  # whatever partial value the source left
    batch = FrameBatch(1)
    batch.append(bytes(raw))
    flags = np.array([framekernels.VNET_F_NEEDS_CSUM], dtype=np.uint8)
    parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
    framekernels.tap_rx_checksums(
        batch.data, batch.frame_capacity, batch.length, batch.rx_checksum, flags, 0, 1, parsed
    )
    offload.receive_prepare_batch(
        batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, 1
    )
    assert batch.frame(0).tobytes() == bytes(udp4())
    assert batch.rx_checksum[0] == GOOD_IP_UDP


def test_tap_header_refuses_offloads_the_headers_do_not_allow():
    """A request the frame cannot honour (not IP, LSO without a valid MSS) is sent untouched, plain header."""
    arp = bytes(Ether(src=MAC_A, dst=BROADCAST, type=0x0806) / (b"\x00" * 28))
    tcp = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP() / (b"q" * 3000))
    batch = FrameBatch(3)
    batch.append(arp, tx_flags=TX_CSUM_UDP)
    batch.append(tcp, tx_flags=TX_IPV4 | TX_LSO, mss=0)
    batch.append(b"\x01" * 10)  # shorter than an Ethernet header: dropped
    vnet = np.ones((3, framekernels.VNET_HDR_LEN), dtype=np.uint8)
    parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
    verdict = framekernels.prepare_tap_tx(
        batch.data,
        batch.frame_capacity,
        batch.length,
        batch.tx_flags,
        batch.mss,
        batch.vlan_tci,
        3,
        vnet,
        parsed,
    )
    assert list(verdict) == [2, 2, 0]
    assert not vnet[:2].any(), "refused frames get a plain virtio header"
    assert batch.frame(0).tobytes() == arp
    assert Ether(batch.frame(1).tobytes())[TCP].chksum == Ether(tcp)[TCP].chksum, "no seed written"


def test_replay_skips_frames_too_long_for_the_slots_and_goes_on(tmp_path):
    """A replayed frame longer than the host's batch slots is skipped and counted, never a stall."""
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), [udp4(sport=1), udp4(sport=2, payload=b"L" * 3000), udp4(sport=3)])
    backend = create_backend(f"pcap:{path}", nic_index=0)
    batch = FrameBatch(8, 1514)
    assert backend.poll(batch, 8) == 2
    assert [Ether(f)[UDP].sport for f in batch.frames()] == [1, 3]
    assert backend.poll(batch, 8) == 0 and backend.counters()["rx_dropped_oversize"] == 1
    gen = GenBackend(size="60-9000")
    small = FrameBatch(64, 1514)
    copied = gen.poll(small, 64)
    skipped = gen.counters()["rx_dropped_oversize"]
    assert skipped > 0 and copied + skipped == 64, (copied, skipped)
    assert all(60 <= n <= 1514 for n in small.length[:copied])
