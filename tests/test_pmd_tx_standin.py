"""What the transmit path writes, read the way a host reads it: the test plays the host on the
port's subchannels (tests/pmd_standin.py), decodes each send (chimney section or GPA page list)
into its RNDIS messages and PPIs, and completes sends when the scenario wants them completed.
Items: pmd#54, #55, #71-#81 of the closing checklist of spec/pmd.md, and issue 5's lessons:
chimney sections shared by the port's queues with the GPA fallback, 802.1Q tags moved to the
VLAN PPI, checksum requests from masked L4 flags, the software checksum of large non-DF
UDP/IPv4, ring full and channel full counted apart from errors, one signal per burst."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from netvsc.ethdev import api
from netvsc.ethdev import mempool as mp
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd import qlayout
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import HV_PAGE_SIZE
from pmd_standin import ChannelStandIn
from pmd_support import module_host, wait_for
from pmd_traffic import SLOW

host = module_host("txs", "--backend", "null", "--queues", "4")

SRC, DST = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
WORST_CASE = rndis.RNDIS_PACKET_WORST_CASE_HEADER  # 108


def udp_frame(size: int, *, df: bool = True, src_port: int = 7) -> bytes:
    """A valid Ethernet/IPv4/UDP frame of ``size`` bytes (lengths and checksums filled in)."""
    headers = Ether(src=SRC, dst=DST) / IP(src="198.18.0.1", dst="198.18.0.2", flags="DF" if df else 0)
    headers = headers / UDP(sport=src_port, dport=9)
    payload = (bytes(range(256)) * (size // 256 + 1))[: max(0, size - len(headers))]
    return bytes(headers / payload)


class Rig:
    """A started port with ``queues`` queues; the stand-in host of each subchannel in ``standins``."""

    def __init__(
        self,
        host,
        ports,
        devargs: str = "",
        *,
        queues: int = 3,
        tx_desc: int = 512,
        data_room: int = 2048,
        mbufs: int = 2048,
        standin_queues=(1, 2),
    ) -> None:
        self.port = port = ports.open(devargs, timeout=30)
        port.configure(queues, queues, rss=api.RssConf(b"", 0))
        self.pool = Mempool(mbufs, data_room, root=host.root)
        for q in range(queues):
            port.rx_queue_setup(q, 128, mempool=self.pool)
            port.tx_queue_setup(q, tx_desc)
        port.start()
        self.standins = {q: ChannelStandIn(host, port, q) for q in standin_queues}
        self.limits = port.rndis_limits

    def batch(self, frames, **meta) -> PacketBatch:
        """A batch of ``frames``; ``meta``: ol_flags, vlan_tci, l2_len, l3_len, l4_len, tso_segsz."""
        batch = PacketBatch.from_frames(self.pool, frames, capacity=max(len(frames), 1))
        for head in batch:
            for name, value in meta.items():
                getattr(self.pool.arrays, name)[head] = value
        return batch

    def send(self, queue: int, frames, **meta) -> int:
        batch = self.batch(frames, **meta)
        sent = self.port.tx_burst(queue, batch)
        batch.free_all()  # the ones not taken
        return sent

    def signals(self, queue: int) -> int:
        return int(self.port._datapath.engines[queue].q[qlayout.Q_SIGNALS])

    def tx(self, queue: int) -> dict[str, int]:
        prefix = f"tx_q{queue}_"
        return {name[len(prefix) :]: value for name, value in self.port.xstats() if name.startswith(prefix)}

    def close(self) -> None:
        self.port.close()
        for standin in self.standins.values():
            standin.close()


@pytest.fixture
def rig(host, ports):
    made: list[Rig] = []

    def make(devargs: str = "", **kw) -> Rig:
        made.append(Rig(host, ports, devargs, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def ppis_of(message) -> dict[int, int]:
    return {element.type: element.value for element in message.message.ppis}


# -- chimney, aggregation and page lists ---------------------------------------------------------


def test_copy_or_page_list_by_tx_copybreak_and_aggregation_limit(rig):
    """pmd#71: frames up to tx_copybreak whose size + 108 fits the aggregation limit are copied
    into a chimney section; longer ones, and ones that would not fit a section, go by page list."""
    r = rig("tx_copybreak=512")
    standin = r.standins[1]
    sizes = [64, 511, 512, 513, 1500]
    for size in sizes:
        assert r.send(1, [udp_frame(size)]) == 1
    standin.read()
    assert [m.how for m in standin.sends] == ["chimney", "chimney", "chimney", "gpa", "gpa"]
    assert [len(m.frame) for m in standin.sends] == sizes
    r.close()

    r = rig("tx_copybreak=8000")  # copy-eligible by length, but larger than a section can take
    standin = r.standins[1]
    limit = min(r.limits.max_bytes, r.port.nvs.chimney_section_size)
    fits, too_big = limit - WORST_CASE, limit - WORST_CASE + 1
    assert r.send(1, [udp_frame(fits), udp_frame(too_big)]) == 2
    standin.read()
    assert [(m.how, len(m.frame)) for m in standin.sends] == [("chimney", fits), ("gpa", too_big)]


def test_small_frames_share_a_section_padded_and_bounded(rig):
    """pmd#72: the small frames of one burst are aggregated into chimney sections: each RNDIS
    message but the last of a section is padded to the host's alignment (its length field
    includes the padding), a section holds at most the host's max packet count and byte
    count, and every frame arrives intact and in order."""
    r = rig()
    standin = r.standins[1]
    frames = [udp_frame(64 + 11 * i, src_port=i) for i in range(40)]
    assert r.send(1, frames) == len(frames)
    standin.read()
    assert [m.frame for m in standin.sends] == frames
    assert all(m.how == "chimney" for m in standin.sends)
    by_packet: dict[int, list] = {}
    for m in standin.sends:
        by_packet.setdefault(m.transaction_id, []).append(m)
    alignment = r.limits.alignment
    section_limit = min(r.limits.max_bytes, r.port.nvs.chimney_section_size)
    assert len(by_packet) < len(frames), "frames shared sections"
    for packet, messages in zip(standin.packets, by_packet.values(), strict=True):
        assert len(messages) <= r.limits.max_packets
        size = int.from_bytes(packet.payload[12:16], "little")
        assert size == sum(len(m.raw) for m in messages) <= section_limit
        for m in messages[:-1]:
            assert len(m.raw) % alignment == 0, "padded to the alignment"
            unpadded = m.message.header.data_offset + 8 + m.message.header.data_length
            assert len(m.raw) - unpadded < alignment
            assert m.raw[unpadded:] == bytes(len(m.raw) - unpadded), "padding is zeros"


def test_aggregation_flushed_when_full_before_a_page_list_send_and_at_burst_end(rig):
    """pmd#73: a pending section goes out before a page-list send (ordering), when it is full,
    and at the end of each burst: after tx_burst returns nothing waits in the driver."""
    r = rig()
    standin = r.standins[1]
    small = [udp_frame(100, src_port=i) for i in range(3)]
    big = udp_frame(3000, src_port=99)
    frames = [small[0], small[1], big, small[2]]
    assert r.send(1, frames) == 4
    standin.read()
    assert [m.frame for m in standin.sends] == frames, "order kept across the two paths"
    assert [m.how for m in standin.sends] == ["chimney", "chimney", "gpa", "chimney"]
    assert len(standin.packets) == 3, "two sections and one page list"
    assert int(r.port._datapath.engines[1].q[qlayout.Q_AGG_DESC]) == -1, "nothing pending after the burst"
    # Full: max packets per section.
    count = r.limits.max_packets + 1
    before = len(standin.packets)
    assert r.send(1, [udp_frame(64, src_port=i) for i in range(count)]) == count
    standin.read()
    assert len(standin.packets) - before == 2


def test_page_list_is_the_header_then_each_segment_split_at_4k(rig):
    """pmd#74: a page-list send is one range for the RNDIS header, then each segment of the
    chain split at 4096-byte boundaries (Hyper-V pages, whatever the system page size)."""
    r = rig(data_room=3008)  # buffers that straddle pages
    standin = r.standins[1]
    frame = udp_frame(7000)
    batch = r.batch([frame])
    head = int(batch.indices[0])
    segments = r.pool.segments(head)
    assert len(segments) == 3
    expected = 1
    for segment in segments:
        start = r.pool.gpa_of(segment, int(r.pool.arrays.data_off[segment]))
        end = start + int(r.pool.arrays.data_len[segment])
        expected += (end - 1) // HV_PAGE_SIZE - start // HV_PAGE_SIZE + 1
    assert r.port.tx_burst(1, batch) == 1
    standin.read()
    (message,) = standin.sends
    assert message.how == "gpa" and message.frame == frame
    ranges = message.ranges
    assert ranges[0][0] == len(message.raw) - len(frame), "the first range is the RNDIS header"
    assert len(ranges) == expected
    assert all(offset + count <= HV_PAGE_SIZE for count, offset in ranges), "no range crosses a page"
    assert sum(count for count, _ in ranges[1:]) == len(frame)


def test_every_message_carries_the_queue_id_as_hash_value(rig):
    """pmd#75: every RNDIS message, copied or by page list, carries a hash-value PPI equal to
    its TX queue id (so the host completes it on the same channel)."""
    r = rig()
    for queue in (1, 2):
        assert r.send(queue, [udp_frame(80), udp_frame(2000)]) == 2
    for queue in (1, 2):
        standin = r.standins[queue]
        standin.read()
        assert [m.how for m in standin.sends] == ["chimney", "gpa"]
        assert [m.ppi(rndis.PPI_TYPE_HASH_VALUE) for m in standin.sends] == [queue, queue]


# -- PPIs from the mbuf --------------------------------------------------------------------------


def test_vlan_insertion_request_becomes_a_vlan_ppi(rig):
    """pmd#55: TX_VLAN with vlan_tci -> a VLAN PPI with id, priority and DEI; the frame as given."""
    r = rig()
    standin = r.standins[1]
    frame = udp_frame(200)
    tci = (6 << 13) | (1 << 12) | 321
    assert r.send(1, [frame], ol_flags=mp.TX_VLAN, vlan_tci=tci) == 1
    standin.read()
    (m,) = standin.sends
    assert m.frame == frame
    assert rndis.vlan_ppi_to_tci(m.ppi(rndis.PPI_TYPE_IEEE_8021Q)) == tci


def test_an_inband_8021q_tag_moves_to_the_vlan_ppi(rig):
    """pmd#54 (issue 5 lesson): a frame carrying an 802.1Q tag leaves untagged with the tag as a
    VLAN PPI, in both paths, and is counted (tx_vlan_moved); a TX_VLAN request wins over a
    tag in the frame (the frame is then left alone)."""
    r = rig()
    standin = r.standins[1]
    inner = udp_frame(300)
    for size in (300, 3000):
        inner = udp_frame(size)
        tagged = bytes(Ether(inner)[Ether].copy())  # placeholder, replaced below
        tagged = inner[:12] + b"\x81\x00" + ((3 << 13) | 42).to_bytes(2, "big") + inner[12:]
        assert Ether(tagged)[Dot1Q].vlan == 42
        assert r.send(1, [tagged]) == 1
    standin.read()
    assert [m.how for m in standin.sends] == ["chimney", "gpa"]
    for m, size in zip(standin.sends, (300, 3000), strict=True):
        assert m.frame == udp_frame(size), "the frame leaves untagged"
        assert rndis.vlan_ppi_to_tci(m.ppi(rndis.PPI_TYPE_IEEE_8021Q)) == (3 << 13) | 42
    assert r.port.datapath_counters()["tx_vlan_moved"] == 2


def test_lso_and_checksum_ppis(rig):
    """pmd#76: TSO -> an LSOv2 PPI (TCP header offset l2+l3, MSS, IPv6 flag) and no checksum
    PPI; checksum requests -> a checksum PPI with the IPv4/IPv6, IP header and TCP/UDP bits and
    the transport offset; none requested -> no checksum PPI."""
    r = rig()
    standin = r.standins[1]
    tcp4 = bytes(Ether(src=SRC, dst=DST) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP() / (b"t" * 3000))
    tcp6 = bytes(Ether(src=SRC, dst=DST) / IPv6(src="2001:2::1", dst="2001:2::2") / TCP() / (b"t" * 3000))
    udp4 = udp_frame(400)
    cases = [
        (
            tcp4,
            dict(
                ol_flags=mp.TX_TCP_SEG | mp.TX_IPV4 | mp.TX_IP_CKSUM,
                l2_len=14,
                l3_len=20,
                l4_len=20,
                tso_segsz=1400,
            ),
        ),
        (tcp6, dict(ol_flags=mp.TX_TCP_SEG | mp.TX_IPV6, l2_len=14, l3_len=40, l4_len=20, tso_segsz=1200)),
        (tcp4, dict(ol_flags=mp.TX_TCP_CKSUM | mp.TX_IPV4 | mp.TX_IP_CKSUM, l2_len=14, l3_len=20)),
        (tcp6, dict(ol_flags=mp.TX_TCP_CKSUM | mp.TX_IPV6, l2_len=14, l3_len=40)),
        (udp4, dict(ol_flags=mp.TX_UDP_CKSUM | mp.TX_IPV4, l2_len=14, l3_len=20)),
        (udp4, dict(ol_flags=mp.TX_IP_CKSUM | mp.TX_IPV4, l2_len=14, l3_len=20)),
        (udp4, dict(ol_flags=mp.TX_IPV4, l2_len=14, l3_len=20)),
    ]
    for frame, meta in cases:
        assert r.send(1, [frame], **meta) == 1
    standin.read()
    got = [ppis_of(m) for m in standin.sends]
    lso, csum = rndis.PPI_TYPE_LSO, rndis.PPI_TYPE_CHECKSUM_INFO
    assert got[0][lso] == rndis.encode_lso_v2(1400, 34, ipv6=False) and csum not in got[0]
    assert got[1][lso] == rndis.encode_lso_v2(1200, 54, ipv6=True) and csum not in got[1]
    expected = [
        rndis.encode_checksum_tx_request(ipv4=True, ip_header=True, tcp=True, transport_offset=34),
        rndis.encode_checksum_tx_request(ipv6=True, tcp=True, transport_offset=54),
        rndis.encode_checksum_tx_request(ipv4=True, udp=True, transport_offset=34),
        rndis.encode_checksum_tx_request(ipv4=True, ip_header=True),
    ]
    assert [g.get(csum) for g in got[2:6]] == expected
    assert all(lso not in g for g in got[2:])
    assert csum not in got[6], "no request, no checksum PPI"


def test_checksum_requests_come_from_masked_l4_flags(rig):
    """Issue 5 lesson (DPDK's bug): the L4 request is a two-bit field, compared as a value:
    TX_SCTP_CKSUM (binary 10) is neither TCP nor UDP, and TX_UDP_CKSUM (binary 11, which has the
    TCP bit set) is a UDP request only."""
    r = rig()
    standin = r.standins[1]
    frame = udp_frame(400)
    assert r.send(1, [frame], ol_flags=mp.TX_SCTP_CKSUM | mp.TX_IPV4, l2_len=14, l3_len=20) == 1
    assert (
        r.send(1, [frame], ol_flags=mp.TX_SCTP_CKSUM | mp.TX_IPV4 | mp.TX_IP_CKSUM, l2_len=14, l3_len=20) == 1
    )
    assert r.send(1, [frame], ol_flags=mp.TX_UDP_CKSUM | mp.TX_IPV4, l2_len=14, l3_len=20) == 1
    standin.read()
    sctp_only, sctp_ip, udp = (ppis_of(m).get(rndis.PPI_TYPE_CHECKSUM_INFO) for m in standin.sends)
    assert sctp_only is None, "an SCTP request alone asks the host for nothing"
    request = rndis.decode_checksum_tx_request(sctp_ip)
    assert request.ip_header and not request.tcp and not request.udp
    request = rndis.decode_checksum_tx_request(udp)
    assert request.udp and not request.tcp


def test_large_udp_without_df_gets_its_checksum_in_software(rig):
    """Issue 5 lesson (Azure drops them): UDP over IPv4 longer than 1420 bytes without DF and with
    a UDP checksum request is checksummed by the driver: no UDP request in the PPI, a correct
    checksum in the frame, counted in tx_soft_checksum. With DF, or at 1420 bytes or less, the
    host is asked."""
    r = rig()
    standin = r.standins[1]
    meta = dict(ol_flags=mp.TX_UDP_CKSUM | mp.TX_IPV4, l2_len=14, l3_len=20)
    frames = [
        udp_frame(1500, df=False),
        udp_frame(1500, df=True),
        udp_frame(1420, df=False),
        udp_frame(9000, df=False),
    ]
    for frame in frames:
        zeroed = bytearray(frame)
        zeroed[40:42] = b"\0\0"  # the application leaves the checksum for the offload
        assert r.send(1, [bytes(zeroed)], **meta) == 1
    standin.read()
    soft, df, small, jumbo = standin.sends
    for m in (soft, jumbo):
        request = ppis_of(m).get(rndis.PPI_TYPE_CHECKSUM_INFO)
        assert request is None or not rndis.decode_checksum_tx_request(request).udp
        pkt = Ether(m.frame)
        sent_checksum = pkt[UDP].chksum
        del pkt[UDP].chksum
        assert sent_checksum == Ether(bytes(pkt))[UDP].chksum != 0, "a correct UDP checksum in the frame"
    for m in (df, small):
        assert rndis.decode_checksum_tx_request(ppis_of(m)[rndis.PPI_TYPE_CHECKSUM_INFO]).udp
    assert r.port.datapath_counters()["tx_soft_checksum"] == 2


def test_impossible_offload_lengths_are_refused_and_counted(rig):
    """pmd#76 constraints: TSO without l2/l3 lengths or MSS, or a header offset beyond what the
    PPI holds, is refused (an error, tx_bad_offload), freed, and the burst goes on."""
    r = rig()
    standin = r.standins[1]
    frame = udp_frame(3000)
    bad = [
        dict(ol_flags=mp.TX_TCP_SEG | mp.TX_IPV4, l2_len=0, l3_len=20, tso_segsz=1000),
        dict(ol_flags=mp.TX_TCP_SEG | mp.TX_IPV4, l2_len=14, l3_len=20, tso_segsz=0),
        dict(ol_flags=mp.TX_TCP_SEG | mp.TX_IPV4, l2_len=1000, l3_len=100, tso_segsz=1000),
    ]
    in_use = r.pool.in_use()
    for meta in bad:
        assert r.send(1, [frame], **meta) == 1, "taken (and dropped)"
    assert r.send(1, [frame]) == 1
    standin.read()
    assert len(standin.sends) == 1
    assert r.port.datapath_counters()["tx_bad_offload"] == len(bad)
    assert r.tx(1)["errors"] == len(bad)
    standin.drain()
    r.port.tx_done_cleanup(1)
    assert r.pool.in_use() == in_use


# -- signalling ----------------------------------------------------------------------------------


def test_the_host_is_signalled_at_most_once_per_burst(rig):
    """pmd#77: a burst that writes many VMBus packets signals once, and only when it turned the
    ring from empty to non-empty while the host had interrupts unmasked; a burst onto a
    non-empty ring, or with the host's mask set, does not signal."""
    r = rig()
    standin = r.standins[1]
    frames = [udp_frame(64 + i) for i in range(20)] + [udp_frame(3000 + i) for i in range(5)]
    signals = r.signals(1)
    writer = r.port._datapath.engines[1].channel.tx
    assert r.send(1, frames) == len(frames)
    assert r.signals(1) - signals == 1, "one signal for a burst of many packets"
    # The burst staged its 8 packets and published them when it ended: none is left unseen.
    assert writer.view.write_index == writer.cursor and writer.packets >= 8
    assert r.send(1, frames) == len(frames)
    assert r.signals(1) - signals == 1, "ring not empty before the burst: no signal"
    standin.drain()
    standin.from_guest.mask_interrupts()  # the host says it is polling
    assert r.send(1, frames) == len(frames)
    assert r.signals(1) - signals == 1, "host masked: no signal"
    standin.drain()
    assert not standin.from_guest.unmask_interrupts()
    assert r.send(1, frames) == len(frames)
    assert r.signals(1) - signals == 2
    standin.read()
    assert len(standin.packets) == 4 * (3 + 5), "20 small frames in 3 sections, 5 page lists, per burst"


# -- completions and exhaustion ------------------------------------------------------------------


def test_completions_free_sections_mbufs_and_descriptors_and_count(rig):
    """pmd#78: a successful completion adds the send's packets and bytes to the good counters
    (all the frames of an aggregated section), frees its chimney section, frees the mbuf of a
    page-list send and returns the descriptor; a failed completion counts one error and frees
    the same."""
    r = rig()
    standin = r.standins[1]
    path = r.port._datapath
    engine = path.engines[1]
    free_sections = int(path.sync[1])
    in_use = r.pool.in_use()
    small = [udp_frame(100, src_port=i) for i in range(5)]
    big = [udp_frame(1500, src_port=i) for i in range(2)]
    assert r.send(1, small + big) == 7
    assert engine.outstanding_sends() == 3  # one section, two page lists
    assert int(path.sync[1]) == free_sections - 1
    assert r.pool.in_use() == in_use + 2, "page-list mbufs held until completion; copied ones freed"
    standin.read()
    section_tid, first_gpa, second_gpa = (p.transaction_id for p in standin.packets)
    standin.complete_send(section_tid)
    standin.complete_send(first_gpa)
    standin.complete_send(second_gpa, nvsp.NVSP_STATUS_FAILURE)
    assert r.port.tx_done_cleanup(1) == 3
    tx = r.tx(1)
    assert tx["good_packets"] == 6 and tx["good_bytes"] == 5 * 100 + 1500
    assert tx["errors"] == 1
    assert engine.outstanding_sends() == 0
    assert int(path.sync[1]) == free_sections
    assert r.pool.in_use() == in_use


def test_descriptor_exhaustion_is_ring_full_and_nothing_leaks(rig):
    """pmd#79: with every descriptor in flight the burst stops, counts "ring full" (not an
    error), and leaves the rest in the caller's batch; once completions come back the rest is
    sent; no descriptor, section or mbuf leaks."""
    r = rig(tx_desc=32)
    standin = r.standins[1]
    in_use = r.pool.in_use()
    frames = [udp_frame(2000, src_port=i) for i in range(40)]
    batch = r.batch(frames)
    assert r.port.tx_burst(1, batch) == 32
    assert batch.count == 8 and [r.pool.packet_bytes(h) for h in batch] == frames[32:]
    tx = r.tx(1)
    assert tx["ring_full"] >= 1 and tx["errors"] == 0 and tx["channel_full"] == 0
    assert r.port.tx_burst(1, batch) == 0
    standin.drain()
    wait_for(lambda: r.port.tx_burst(1, batch) and batch.count == 0, "the rest sent")
    standin.drain()
    wait_for(
        lambda: r.port.tx_done_cleanup(1) >= 0 and r.port._datapath.engines[1].outstanding_sends() == 0,
        "every completion back",
    )
    standin.read()
    assert [m.frame for m in standin.sends] == frames
    assert r.pool.in_use() == in_use
    assert r.tx(1)["good_packets"] == 40 and r.tx(1)["errors"] == 0


def test_a_full_vmbus_ring_is_channel_full_and_nothing_leaks(rig):
    """pmd#79: when the channel's ring has no room the burst stops with "channel full" (not an
    error, not ring full), the packet stays the caller's; a small frame's section is kept and
    sent by a later burst. Everything arrives once the host reads, and nothing leaks."""
    r = rig(tx_desc=4096, mbufs=8192)
    standin = r.standins[1]
    path = r.port._datapath
    free_sections = int(path.sync[1])
    in_use = r.pool.in_use()
    frames = [udp_frame(1000 + (i % 7), src_port=i % 50) for i in range(3000)]
    batch = r.batch(frames)
    sent = r.port.tx_burst(1, batch)
    assert 0 < sent < len(frames)
    tx = r.tx(1)
    assert tx["channel_full"] >= 1 and tx["ring_full"] == 0 and tx["errors"] == 0
    small = r.batch([udp_frame(64, src_port=77)])
    r.port.tx_burst(1, small)  # copied into a section; its flush finds the ring full
    got = []
    while batch.count or small.count or r.port._datapath.engines[1].outstanding_sends():
        standin.drain()
        r.port.tx_done_cleanup(1)
        r.port.tx_burst(1, small)
        r.port.tx_burst(1, batch)
        got.extend(m.frame for m in standin.sends)
        standin.sends.clear()
    got.extend(m.frame for m in standin.sends)
    assert sorted(got) == sorted(frames + [udp_frame(64, src_port=77)])
    assert r.tx(1)["errors"] == 0
    assert int(path.sync[1]) == free_sections
    assert r.pool.in_use() == in_use


def test_tx_done_cleanup_returns_the_completions_processed(rig):
    """pmd#80: tx_done_cleanup handles up to the requested number of completions (0: all that
    are pending) and returns how many it handled."""
    r = rig()
    standin = r.standins[1]
    assert r.send(1, [udp_frame(2000, src_port=i) for i in range(10)]) == 10
    assert r.port.tx_done_cleanup(1) == 0, "nothing completed yet"
    standin.drain()
    assert r.port.tx_done_cleanup(1, 3) == 3
    assert r.port.tx_done_cleanup(1, 100) == 7
    assert r.port.tx_done_cleanup(1) == 0


def test_descriptor_status_reports_full_and_done(rig):
    """pmd#81: TX descriptor status is FULL for descriptors in flight and DONE for the others;
    RX descriptor status is DONE where a received frame waits in the staging ring, AVAIL
    beyond."""
    r = rig()
    standin = r.standins[1]
    assert r.send(1, [udp_frame(2000, src_port=i) for i in range(5)]) == 5
    assert [r.port.tx_descriptor_status(1, k) for k in (0, 4, 5, 100)] == ["FULL", "FULL", "DONE", "DONE"]
    standin.drain()
    r.port.tx_done_cleanup(1)
    assert r.port.tx_descriptor_status(1, 0) == "DONE"
    frame = bytes(Ether(src=SRC, dst=r.port.mac_address.hex(":")) / IP() / UDP())
    standin.deliver([rndis.encode_packet_msg(frame)] * 3, 5000)
    wait_for(lambda: r.port.rx_queue_count(1) == 3, "3 frames staged")
    assert [r.port.rx_descriptor_status(1, k) for k in (0, 2, 3)] == ["DONE", "DONE", "AVAIL"]
    batch = PacketBatch(8)
    assert r.port.rx_burst(1, batch) == 3
    batch.mempool.free_bulk(batch.indices, 3)


# -- chimney sections: a pool of the port ----------------------------------------------------------


def test_chimney_sections_are_shared_by_the_queues_and_gpa_is_the_fallback(rig):
    """Issue 5 lesson: the chimney sections are one pool for the whole port, not tied to a
    queue's descriptors. Queue 1 takes every section (its host never completes); a small frame
    on queue 2 then goes by page list (counted tx_chimney_fallback, never dropped, never
    stalled); once queue 1's sends complete, queue 2 copies again."""
    r = rig(tx_desc=1024)
    one, two = r.standins[1], r.standins[2]
    sections = int(r.port.nvs.chimney_section_count)
    assert int(r.port._datapath.sync[1]) == sections
    for i in range(sections):
        assert r.send(1, [udp_frame(64, src_port=i % 60)]) == 1  # one section per burst
    assert int(r.port._datapath.sync[1]) == 0, "queue 1 holds every section"
    one.read()
    assert len(one.packets) == sections and all(m.how == "chimney" for m in one.sends)
    assert r.send(2, [udp_frame(64, src_port=1)]) == 1
    two.read()
    assert two.sends[-1].how == "gpa"
    assert r.port.datapath_counters()["tx_chimney_fallback"] == 1
    one.drain()
    r.port.tx_done_cleanup(1)
    assert int(r.port._datapath.sync[1]) == sections
    assert r.send(2, [udp_frame(64, src_port=2)]) == 1
    two.read()
    assert two.sends[-1].how == "chimney"


def test_page_list_sends_are_completed_on_every_queue(rig):
    """pmd#78 against the emulated host itself (no stand-in), the case seen failing once: with
    tx_copybreak=0 every frame goes by page list, and on all four queues (busy primary
    included) each send's completion comes back: good packets equal what was sent, nothing
    stays outstanding, the mempool is whole again."""
    r = rig("tx_copybreak=0", queues=4, standin_queues=())
    per_queue = 400 if not SLOW else 40
    sent = [0] * 4
    frames = [udp_frame(1000, src_port=i) for i in range(32)]
    while min(sent) < per_queue:
        for queue in range(4):
            if sent[queue] < per_queue:
                sent[queue] += r.send(queue, frames[: per_queue - sent[queue]])
    wait_for(
        lambda: (
            all(r.port.tx_done_cleanup(q) >= 0 for q in range(4))
            and r.port._datapath.outstanding_sends() == 0
        ),
        "every completion",
        timeout=20,
    )
    assert [r.tx(q)["good_packets"] for q in range(4)] == [per_queue] * 4
    assert r.port.stats().oerrors == 0 and r.port.datapath_counters()["unknown_completions"] == 0
    assert r.pool.in_use() == 0
