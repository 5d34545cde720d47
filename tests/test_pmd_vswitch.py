"""Two ports on the emulated host's vswitch: what one port sends, the other receives, after the
host did in software what the switch cannot (checksums, LSO segmentation). A 64 KiB LSO send
arrives as valid MSS-sized segments; frames of every size up to the MTU arrive intact on every
RSS queue."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from netvsc.ethdev import api
from netvsc.ethdev import mempool as mp
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd import qlayout
from pmd_support import module_host
from pmd_support import wait_for as _wait_for
from pmd_traffic import SLOW, Traffic, pump

host = module_host("vsw", "--devices", "2", "--backend", "vswitch", "--queues", "4")


# Deadlines only bound how long a failure takes: generous, because the host compiles a kernel the
# first time a path is used (tens of seconds with a cold cache under NUMBA_BOUNDSCHECK=1).
DEADLINE = 30.0


def wait_for(predicate, what: str, timeout: float = DEADLINE):
    return _wait_for(predicate, what, timeout)


class Pair:
    def __init__(self, host, ports, devargs: str = "", *, queues: int = 1, data_room: int = 2048) -> None:
        self.a = ports.open(devargs, index=0, timeout=30)
        self.b = ports.open(devargs, index=1, timeout=30)
        self.pools = []
        for port in (self.a, self.b):
            pool = Mempool(4096, data_room, root=host.root)
            self.pools.append(pool)
            rss = api.RssConf(b"", port.dev_info().flow_type_rss_offloads) if queues > 1 else None
            port.configure(queues, queues, rss=rss)
            for q in range(queues):
                port.rx_queue_setup(q, 512, mempool=pool)
                port.tx_queue_setup(q, 512)
            port.start()
        self.rx = PacketBatch(64)

    def close(self) -> None:
        self.a.close()
        self.b.close()


@pytest.fixture
def pair(host, ports):
    made = []

    def make(*args, **kw) -> Pair:
        made.append(Pair(host, ports, *args, **kw))
        return made[-1]

    yield make


@pytest.mark.parametrize("data_room", [2048, 16384])
def test_a_64k_lso_send_arrives_as_valid_mss_sized_segments(pair, data_room):
    """LSO (pmd#76, issue 5): one 65,536-byte TCP frame sent with TSO (MSS 1460) reaches the
    other port as segments of at most 1460 payload bytes, each a valid IPv4/TCP packet (length
    and checksums right, consecutive sequence numbers), together the whole payload. With 2 KiB
    mbufs the frame is a 35-segment chain, more ranges than one send may carry: the driver
    copies it into a contiguous bounce buffer (tx_bounced) instead of refusing it."""
    p = pair(data_room=data_room)
    payload = bytes((i * 7 + 3) & 0xFF for i in range(65536 - 54))
    frame = (
        Ether(src=p.a.mac_address.hex(":"), dst=p.b.mac_address.hex(":"))
        / IP(src="198.18.0.1", dst="198.18.0.2", flags="DF")
        / TCP(sport=40000, dport=5001, flags="PA", seq=1000, ack=1)
        / payload
    )
    raw = bytes(frame)
    assert len(raw) == 65536
    pool = p.pools[0]
    batch = PacketBatch.from_frames(pool, [raw])
    head = int(batch.indices[0])
    for name, value in dict(
        ol_flags=mp.TX_IPV4 | mp.TX_IP_CKSUM | mp.TX_TCP_SEG, l2_len=14, l3_len=20, l4_len=20, tso_segsz=1460
    ).items():
        getattr(pool.arrays, name)[head] = value
    assert p.a.tx_burst(0, batch) == 1
    segments: list[Ether] = []

    def poll() -> bool:
        n = p.b.rx_burst(0, p.rx)
        for k in range(n):
            segments.append(Ether(p.pools[1].packet_bytes(int(p.rx.indices[k]))))
        p.pools[1].free_bulk(p.rx.indices, n)
        return sum(len(s[TCP].payload) for s in segments) >= len(payload)

    wait_for(poll, "every segment of the LSO send")
    assert len(segments) == -(-len(payload) // 1460)
    seq = 1000
    for segment in segments:
        data = bytes(segment[TCP].payload)
        assert 0 < len(data) <= 1460
        assert segment[TCP].seq == seq
        seq += len(data)
        assert segment[IP].len == 20 + 20 + len(data)
        rebuilt = segment.copy()
        del rebuilt[IP].chksum, rebuilt[TCP].chksum
        rebuilt = Ether(bytes(rebuilt))
        assert (segment[IP].chksum, segment[TCP].chksum) == (rebuilt[IP].chksum, rebuilt[TCP].chksum)
    assert b"".join(bytes(s[TCP].payload) for s in segments) == payload
    counters = p.a.datapath_counters()
    assert counters["tx_bad_offload"] == 0
    assert counters["tx_bounced"] == (1 if data_room == 2048 else 0)
    wait_for(lambda: p.a.tx_done_cleanup(0) >= 0 and p.a._datapath.outstanding_sends() == 0, "the completion")
    engine = p.a._datapath.engines[0]
    assert int(engine.q[qlayout.Q_BOUNCE_FREE]) == (1 << qlayout.BOUNCE_SLOTS) - 1, "the bounce buffer back"
    assert pool.in_use() == 0


def test_every_size_up_to_the_mtu_arrives_intact_on_every_queue(pair):
    """Frames of every length from 64 to 1514 bytes over 4 RSS queues, in copy mode: each arrives
    once and byte-identical (the queues' counters add up)."""
    p = pair(queues=4)
    total = 1514 - 64 + 1 if not SLOW else 64
    traffic = Traffic(p.a.mac_address, p.b.mac_address, total, flows=64, min_size=64, max_size=1514)
    result = pump(traffic, p.a, p.pools[0], p.b, p.pools[1], tx_queues=4, rx_queues=4, window=64)
    summary = traffic.summary()
    assert summary["good"] == total and summary["missing"] == 0, summary
    assert all(count > 0 for count in result["per_queue"]), f"RSS used every queue: {result['per_queue']}"


def test_sizes_to_the_host_are_kept_exact(pair):
    """The ports' packet size bins and byte counters agree with what was sent (pmd#47 on both
    sides of the switch)."""
    p = pair()
    frames = [
        bytes(Ether(src=p.a.mac_address.hex(":"), dst=p.b.mac_address.hex(":")) / IP() / (b"x" * n))
        for n in (30, 100, 1000, 1400)
    ]
    batch = PacketBatch.from_frames(p.pools[0], frames)
    assert p.a.tx_burst(0, batch) == 4
    got = []

    def poll():
        n = p.b.rx_burst(0, p.rx)
        got.extend(p.pools[1].packet_bytes(int(h)) for h in p.rx.indices[:n])
        p.pools[1].free_bulk(p.rx.indices, n)
        return len(got) == 4

    wait_for(poll, "4 frames")
    assert sorted(got) == sorted(frames)
    assert p.b.stats().ibytes == sum(map(len, frames))
    wait_for(lambda: p.a.tx_done_cleanup(0) >= 0 and p.a.stats().obytes == sum(map(len, frames)), "tx bytes")
    assert np.all(np.array([len(f) for f in frames]) >= 64)
