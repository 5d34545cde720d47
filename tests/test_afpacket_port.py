"""The AF_PACKET port (ethdev/afpacket.py) alone on a veth pair: frames the peer sends arrive
byte for byte in mbufs, frames the port sends arrive byte for byte at the peer, the filter, VLAN
and checksum handling of a NIC, several queues in a fanout group, and bad arguments refused.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from netvsc.errors import ConfigError, DeviceError, NotSupportedError
from netvsc.ethdev import api
from netvsc.ethdev import mempool as mp
from netvsc.ethdev.afpacket import AfPacketPort
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from pmd_support import wait_for
from veth_support import drain, veth_pair

pytestmark = pytest.mark.root

DEADLINE = 30.0  # bounds a failure only: the first start compiles the kernels


@pytest.fixture
def rig():
    with veth_pair() as pair, Mempool(1024, 2048) as pool:
        port = AfPacketPort(pair.end)
        peer = pair.raw_socket()
        try:
            yield pair, port, pool, peer
        finally:
            port.close()
            peer.close()


def _start(port: AfPacketPort, pool: Mempool, nb_rxq: int = 1, nb_txq: int = 1, **kw) -> None:
    port.configure(nb_rxq, nb_txq, **kw)
    for q in range(nb_rxq):
        port.rx_queue_setup(q, 256, mempool=pool)
    for q in range(nb_txq):
        port.tx_queue_setup(q, 256)
    port.start()


def _receive(port: AfPacketPort, count: int, queues=(0,)) -> list[tuple[bytes, int, int, int, int]]:
    """``count`` frames from the port's queues: (bytes, port, queue, ol_flags, vlan_tci), mbufs freed."""
    got: list = []
    batch = PacketBatch(64)

    def poll() -> bool:
        for q in queues:
            n = port.rx_burst(q, batch)
            for i in range(n):
                head = int(batch.indices[i])
                a = batch.mempool.arrays
                got.append(
                    (batch.bytes(i), int(a.port[head]), int(a.queue[head]), int(a.ol_flags[head]),
                     int(a.vlan_tci[head]))
                )  # fmt: skip
            batch.free_all()
        return len(got) >= count

    wait_for(poll, f"{count} frames on {port.ifname}", DEADLINE)
    return got


def _frames(pair, count: int, size: int = 100) -> list[bytes]:
    out = []
    for k in range(count):
        frame = bytes(
            Ether(src=pair.peer_mac.hex(":"), dst=pair.end_mac.hex(":"))
            / IP(src="198.18.0.1", dst="198.18.0.2")
            / UDP(sport=1000 + k, dport=9)
        )
        out.append(frame + bytes((k + i) & 0xFF for i in range(size - len(frame))))
    return out


def test_rx_and_tx_byte_identical(rig):
    """Frames of every size up to the MTU (one spans two mbufs) cross both ways unchanged, with
    the port's id and queue on each mbuf and the counters matching."""
    pair, port, pool, peer = rig
    _start(port, pool)
    assert isinstance(port, api.Port)
    assert port.mac_address == pair.end_mac and port.mtu == 1500
    sizes = [60, 64, 65, 128, 512, 1514, 1000]
    sent = [_frames(pair, 1, size)[0] for size in sizes]
    for frame in sent:
        peer.send(frame)
    got = _receive(port, len(sent))
    assert [g[0] for g in got] == sent
    assert {(g[1], g[2]) for g in got} == {(port.port_id, 0)}
    assert pool.available() == pool.n, "every mbuf back after free"

    batch = PacketBatch.from_frames(pool, sent)
    assert port.tx_burst(0, batch) == len(sent) and batch.count == 0
    received = []
    wait_for(
        lambda: received.extend(drain(peer)) or len(received) >= len(sent), "frames at the peer", DEADLINE
    )
    assert received == sent
    assert pool.available() == pool.n, "TX freed every mbuf"
    stats = port.stats()
    assert (stats.ipackets, stats.opackets) == (len(sent), len(sent))
    assert stats.ibytes == stats.obytes == sum(map(len, sent))
    names = dict(port.xstats())
    assert names["rx_q0_packets"] == names["tx_q0_packets"] == len(sent)


def test_chained_mbufs_both_ways():
    """A pool of small buffers: a received frame becomes a chain, and a chain is sent whole."""
    with veth_pair() as pair, Mempool(256, 256, headroom=0) as pool, AfPacketPort(pair.end) as port:
        peer = pair.raw_socket()
        try:
            _start(port, pool)
            frame = _frames(pair, 1, 1000)[0]
            peer.send(frame)
            batch = PacketBatch(8)
            wait_for(lambda: port.rx_burst(0, batch), "a chained frame", DEADLINE)
            assert pool.arrays.nb_segs[int(batch.indices[0])] == 4
            assert batch.bytes(0) == frame
            assert port.tx_burst(0, batch) == 1
            wait_for(lambda: drain(peer) == [frame], "the chain at the peer", DEADLINE)
            assert pool.available() == pool.n
        finally:
            peer.close()


def test_filter_like_a_nic(rig):
    """Frames for another MAC pass only when promiscuous, multicast with allmulticast (or when
    promiscuous); broadcast always."""
    pair, port, pool, peer = rig
    _start(port, pool)
    other = bytes(Ether(src=pair.peer_mac.hex(":"), dst="02:00:00:00:00:99") / IP() / UDP())
    multicast = bytes(Ether(src=pair.peer_mac.hex(":"), dst="01:00:5e:00:00:01") / IP() / UDP())
    broadcast = bytes(Ether(src=pair.peer_mac.hex(":"), dst="ff:ff:ff:ff:ff:ff") / IP() / UDP())
    for frame in (other, multicast, broadcast):
        peer.send(frame)
    assert [g[0] for g in _receive(port, 1)] == [broadcast]
    port.promiscuous_enable()
    port.allmulticast_disable()
    for frame in (other, multicast):
        peer.send(frame)
    assert [g[0] for g in _receive(port, 2)] == [other, multicast]
    port.promiscuous_disable()
    port.allmulticast_enable()
    for frame in (other, multicast):
        peer.send(frame)
    assert [g[0] for g in _receive(port, 1)] == [multicast]
    assert dict(port.xstats())["rx_q0_filtered"] == 3


def test_vlan_and_checksums(rig):
    """VLAN: kept in the frame by default, stripped into vlan_tci with VLAN_STRIP, inserted on TX;
    IPv4/UDP/TCP checksums verified on RX and filled on TX in software."""
    pair, port, pool, peer = rig
    _start(port, pool, rx_offloads=api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_IPV4_CKSUM
           | api.RX_OFFLOAD_UDP_CKSUM, tx_offloads=api.TX_OFFLOAD_VLAN_INSERT | api.TX_OFFLOAD_IPV4_CKSUM
           | api.TX_OFFLOAD_UDP_CKSUM | api.TX_OFFLOAD_TCP_CKSUM)  # fmt: skip
    eth = Ether(src=pair.peer_mac.hex(":"), dst=pair.end_mac.hex(":"))
    inner = IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=5, dport=6) / (b"v" * 40)
    tagged = bytes(eth / Dot1Q(vlan=42, prio=3) / inner)
    good = bytes(eth / inner)
    bad = bytearray(good)
    bad[-1] ^= 0xFF  # payload changed, UDP checksum now wrong
    for frame in (tagged, good, bytes(bad)):
        peer.send(frame)
    got = _receive(port, 3)
    assert got[0][0] == good and got[0][4] == (3 << 13) | 42
    assert got[0][3] & mp.RX_VLAN_STRIPPED and got[0][3] & mp.RX_VLAN
    assert got[1][3] & mp.RX_L4_CKSUM_MASK == mp.RX_L4_CKSUM_GOOD
    assert got[1][3] & mp.RX_IP_CKSUM_MASK == mp.RX_IP_CKSUM_GOOD
    assert got[2][3] & mp.RX_L4_CKSUM_MASK == mp.RX_L4_CKSUM_BAD

    # TX: zeroed checksums filled, a tag inserted.
    for l4 in (UDP(sport=7, dport=8), TCP(sport=7, dport=8)):
        reference = eth / IP(src="198.18.0.2", dst="198.18.0.1") / l4 / (b"t" * 33)
        raw = bytearray(bytes(reference))
        raw[24:26] = b"\0\0"
        field = 34 + (6 if isinstance(l4, UDP) else 16)
        raw[field : field + 2] = b"\0\0"
        batch = PacketBatch.from_frames(pool, [bytes(raw)])
        head = int(batch.indices[0])
        a = pool.arrays
        l4_request = mp.TX_UDP_CKSUM if isinstance(l4, UDP) else mp.TX_TCP_CKSUM
        a.ol_flags[head] = mp.TX_IPV4 | mp.TX_IP_CKSUM | l4_request | mp.TX_VLAN
        a.l2_len[head], a.l3_len[head], a.vlan_tci[head] = 14, 20, 7
        assert port.tx_burst(0, batch) == 1
        out: list[bytes] = []
        wait_for(lambda out=out: out.extend(drain(peer)) or out, "a tagged frame at the peer", DEADLINE)
        wire = Ether(out[0])
        assert wire[Dot1Q].vlan == 7
        untagged = bytes(Ether(src=wire.src, dst=wire.dst, type=wire[Dot1Q].type) / wire[Dot1Q].payload)
        assert untagged == bytes(reference), "checksums filled as scapy computes them"


def test_multi_queue_fanout(rig):
    """Four RX queues in one fanout group: many flows spread over more than one queue, every
    frame received once, each mbuf labelled with the queue it came from."""
    pair, port, pool, peer = rig
    _start(port, pool, nb_rxq=4, nb_txq=2)
    sent = _frames(pair, 64)
    for frame in sent:
        peer.send(frame)
    got = _receive(port, len(sent), queues=range(4))
    assert sorted(g[0] for g in got) == sorted(sent)
    assert len({g[2] for g in got}) > 1, "flows hashed over several queues"
    for q in range(2):
        batch = PacketBatch.from_frames(pool, sent[:4])
        assert port.tx_burst(q, batch) == 4
    received: list[bytes] = []
    wait_for(lambda: received.extend(drain(peer)) or len(received) >= 8, "frames of both TX queues", DEADLINE)
    assert sorted(received) == sorted(sent[:4] * 2)


def test_too_long_and_bad_mbufs_dropped(rig):
    """A frame longer than MTU + 14 cannot go (no TSO): taken, counted as an error, freed."""
    pair, port, pool, peer = rig
    _start(port, pool)
    batch = PacketBatch.from_frames(pool, [bytes(1600)])
    assert port.tx_burst(0, batch) == 1 and batch.count == 0
    assert port.stats().oerrors == 1 and pool.available() == pool.n
    assert drain(peer) == []


def test_bad_arguments_refused(rig):
    pair, port, pool, peer = rig
    with pytest.raises(ConfigError):
        AfPacketPort("nosuchif0")
    with pytest.raises(ConfigError):
        AfPacketPort("../etc")
    for nb_rxq, nb_txq in ((0, 1), (1, 17), (True, 1), ("1", 1)):
        with pytest.raises(ConfigError):
            port.configure(nb_rxq, nb_txq)
    with pytest.raises(ConfigError):
        port.configure(1, 1, rx_offloads=api.RX_OFFLOAD_RSS_HASH)
    with pytest.raises(ConfigError):
        port.configure(1, 1, tx_offloads=api.TX_OFFLOAD_TCP_TSO)
    with pytest.raises(ConfigError):
        port.configure(2, 1, rss=api.RssConf(b"k" * 40, api.RSS_IP))
    with pytest.raises(ConfigError, match="configure"):
        port.start()
    port.configure(2, 1)
    with pytest.raises(ConfigError):
        port.rx_queue_setup(2, 64, mempool=pool)
    with pytest.raises(ConfigError):
        port.rx_queue_setup(0, 64, mempool=object())
    with pytest.raises(ConfigError):
        port.rx_queue_setup(0, -1, mempool=pool)
    with pytest.raises(ConfigError):
        port.tx_queue_setup(1, 64)
    port.rx_queue_setup(0, 64, mempool=pool)
    with pytest.raises(ConfigError, match="rx_queue_setup"):
        port.start()  # queue 1 has no mempool
    with pytest.raises(ConfigError):
        port.set_mtu(20)
    with pytest.raises(NotSupportedError):
        port.reta_query()
    with pytest.raises(NotSupportedError):
        port.mac_addr_set(b"\x02" * 6)
    port.rx_queue_setup(1, 64, mempool=pool)
    port.start()
    with pytest.raises(ConfigError):
        port.configure(1, 1)
    with pytest.raises(ConfigError):
        port.set_mtu(1400)
    with pytest.raises(ConfigError):
        port.rx_burst(2, PacketBatch(4))
    with pytest.raises(ConfigError):
        port.tx_burst(1, PacketBatch.from_frames(pool, [bytes(60)]))
    port.stop()
    assert port.rx_burst(0, PacketBatch(4)) == 0
    port.set_mtu(1400)
    assert port.mtu == 1400
    port.close()
    with pytest.raises(DeviceError):
        port.configure(1, 1)
