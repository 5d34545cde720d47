"""The VF data path of the NetVSC port (spec/pmd.md 2.1, 7; pmd/vf.py) against the emulated host.

The VF is one end of a veth pair carrying NIC 0's MAC; the host (two NICs on its vswitch) plays
the VF's far side through the veth peer (host.md 7). Port A (NIC 0) gets the VF, port B (NIC 1)
is the other machine on the switch. Addresses: 198.18.0.0/15 and locally administered MACs
(DESIGN.md decision 13).
"""

from __future__ import annotations

import contextlib
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd.port import NetvscPort
from netvsc.wire import nvsp
from pmd_support import Ports, start_host, wait_for
from veth_support import drain, random_mac, veth_pair

pytestmark = pytest.mark.root

DEADLINE = 30.0  # bounds a failure only: the host and the guest compile kernels on first use
SERIAL = 7


class Rig:
    """Host, veth pair, ports A (with the VF) and B, their pools; everything released in close."""

    def __init__(self, tmp_path, vf_mtu: int = 1500, queues: int = 1) -> None:
        self.stack = contextlib.ExitStack()
        try:
            self.mac_a, self.mac_b = random_mac(), random_mac()
            self.pair = self.stack.enter_context(veth_pair(self.mac_a, mtu=vf_mtu))
            self.host = start_host(
                tmp_path / "root", "--devices", "2", "--backend", "vswitch", "--vf-offer-delay", "0",
                "--mac", self.mac_a.hex(":"), "--mac", self.mac_b.hex(":"),
            )  # fmt: skip
            self.stack.callback(self.host.stop)
            self.ports = Ports(self.host)
            self.stack.callback(self.ports.close_all)
            self.pool_a = self.stack.enter_context(Mempool(4096, 2048, root=self.host.root, name="a"))
            self.pool_b = self.stack.enter_context(Mempool(1024, 2048, root=self.host.root, name="b"))
            self.a = self._port(0, self.pool_a, queues)
            self.b = self._port(1, self.pool_b, 1)
            self.peer = self.pair.raw_socket()
            self.stack.callback(self.peer.close)
        except BaseException:
            self.stack.close()
            raise

    def _port(self, nic: int, pool: Mempool, queues: int):
        # By the host's NIC index: the device list is in GUID order, not NIC order.
        guid = next(n["guid"] for n in self.host.ctl("status")["nics"] if n["index"] == nic)
        port = NetvscPort.open(guid, root=self.host.root, control_timeout=DEADLINE)
        self.ports.opened.append(port)
        port.configure(queues, queues)
        for q in range(queues):
            port.rx_queue_setup(q, 256, mempool=pool)
            port.tx_queue_setup(q, 256)
        port.start()
        return port

    def netvsp(self, nic: int = 0) -> dict:
        return self.host.counters(nic)["netvsp"]

    def offer(self) -> None:
        self.host.ctl("vf_offer", serial=SERIAL, netdev=self.pair.end, nic=0)
        wait_for(lambda: self.a.vf.switched, "port A switched to its VF", DEADLINE)
        wait_for(
            lambda: self.netvsp()["data_path"] == nvsp.DATA_PATH_VF, "host data path on the VF", DEADLINE
        )

    def frame(self, src: bytes, dst: bytes, sport: int, size: int = 100) -> bytes:
        head = bytes(
            Ether(src=src.hex(":"), dst=dst.hex(":"))
            / IP(src="198.18.0.1", dst="198.18.0.2")
            / UDP(sport=sport, dport=9)
        )
        return head + bytes(size - len(head))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.host.ctl("vf_revoke", nic=0)
        self.stack.close()


@pytest.fixture
def rig(tmp_path):
    made = Rig(tmp_path)
    yield made
    made.close()


def _received(port, queue: int, want: int) -> list[tuple[bytes, int]]:
    """``want`` frames of ``port``'s queue as (bytes, port id of the mbuf), mbufs freed."""
    got: list[tuple[bytes, int]] = []
    batch = PacketBatch(64)

    def poll() -> bool:
        n = port.rx_burst(queue, batch)
        for i in range(n):
            got.append((batch.bytes(i), int(batch.mempool.arrays.port[int(batch.indices[i])])))
        batch.free_all()
        return len(got) >= want

    wait_for(poll, f"{want} frames on queue {queue}", DEADLINE)
    return got


def test_vf_offer_attaches_and_switches(tmp_path):
    """pmd#85, pmd#87: after the host's VF association the port takes the netdev that carries its
    MAC, configures it with its own queue counts, sets up its queues with the port's mempools,
    aligns its MTU (1400 -> 1500), starts it and only then switches the data path (the host's
    data_path counter shows VF). Stop switches back to synthetic before the VF stops (pmd#29);
    start switches to the VF again; dev_info is merged (pmd#14)."""
    rig = Rig(tmp_path, vf_mtu=1400, queues=2)
    try:
        port = rig.a
        assert not port.vf.attached and port.dev_info().vf_attached is False
        rig.offer()
        vf = port.vf.vf
        assert port.vf.netdev == rig.pair.end and vf.mac_address == port.mac_address == rig.mac_a
        assert port.vf.serial == SERIAL and port.vf.reported
        assert (vf.nb_rx_queues, vf.nb_tx_queues) == (2, 2) and vf.started
        assert vf.mtu == port.mtu == 1500
        assert vf._queues[0].mempool is rig.pool_a and vf._queues[1].mempool is rig.pool_a
        info = port.dev_info()
        assert info.vf_attached and info.max_rx_queues == min(port.max_queues, 16)
        assert rig.netvsp()["data_path_switches"] >= 1

        port.stop()
        assert not port.vf.switched and not vf.started and port.vf.attached
        assert rig.netvsp()["data_path"] == nvsp.DATA_PATH_SYNTHETIC, "synthetic before the VF stopped"
        port.start()
        wait_for(lambda: port.vf.switched and vf.started, "VF started and switched again", DEADLINE)
        assert rig.netvsp()["data_path"] == nvsp.DATA_PATH_VF
    finally:
        rig.close()


def test_rx_burst_synthetic_first_then_vf(rig):
    """pmd#69: with frames waiting on both paths, one RX burst returns the synthetic frames first
    and fills the rest from the VF; VF frames carry the NetVSC port id, not the VF port's."""
    rig.offer()
    port, vf = rig.a, rig.a.vf.vf
    assert vf.port_id != port.port_id
    broadcast = [rig.frame(rig.mac_b, b"\xff" * 6, 2000 + k) for k in range(5)]
    batch = PacketBatch.from_frames(rig.pool_b, broadcast)
    assert rig.b.tx_burst(0, batch) == len(broadcast)  # B -> vswitch -> A's synthetic path
    wait_for(
        lambda: port.rx_queue_count(0) >= len(broadcast), "broadcasts staged on the synthetic path", DEADLINE
    )
    unicast = [rig.frame(rig.pair.peer_mac, rig.mac_a, 3000 + k) for k in range(7)]
    for frame in unicast:
        rig.peer.send(frame)  # straight into the VF's netdev
    wait_for(lambda: vf.rx_queue_count(0) >= len(unicast), "frames waiting on the VF", DEADLINE)

    batch = PacketBatch(64)
    count = port.rx_burst(0, batch)
    frames = [batch.bytes(i) for i in range(count)]
    ids = {int(rig.pool_a.arrays.port[int(batch.indices[i])]) for i in range(count)}
    batch.free_all()
    assert frames == broadcast + unicast, "synthetic frames first, then the VF's"
    assert ids == {port.port_id}

    # A budget smaller than both: the synthetic frames first, the VF only gets what is left.
    for frame in unicast[:3]:
        rig.peer.send(frame)
    assert rig.b.tx_burst(0, PacketBatch.from_frames(rig.pool_b, broadcast[:2])) == 2
    wait_for(lambda: port.rx_queue_count(0) >= 2 and vf.rx_queue_count(0) >= 3, "both paths", DEADLINE)
    small = PacketBatch(64)
    assert port.rx_burst(0, small, 3) == 3
    assert [small.bytes(i) for i in range(3)] == broadcast[:2] + unicast[:1]
    small.free_all()
    rest = _received(port, 0, 2)
    assert [frame for frame, _ in rest] == unicast[1:3]
    assert port.stats().ipackets >= len(broadcast) + len(unicast) + 5, "VF counters added in (pmd#43)"
    assert any(name.startswith("vf_rx_q0_") for name, _ in port.xstats()), "pmd#46"


def test_tx_on_vf_while_switched_synthetic_after_revoke(rig):
    """pmd#91: TX goes out the VF while the data path is switched and the VF started (the host
    reads it at the veth peer and gives it to its vswitch: B receives it); pmd#88: after the
    host's "not allocated" (a revoke) the data path is synthetic again, the VF stays attached,
    and TX takes the synthetic path."""
    rig.offer()
    port = rig.a
    before = rig.netvsp().get("tx_packets", 0)
    frames = [rig.frame(rig.mac_a, rig.mac_b, 4000 + k) for k in range(4)]
    batch = PacketBatch.from_frames(rig.pool_a, frames)
    assert port.tx_burst(0, batch) == len(frames)
    seen: list[bytes] = []
    wait_for(lambda: seen.extend(drain(rig.peer)) or len(seen) >= len(frames), "frames out the VF", DEADLINE)
    assert seen == frames
    assert [f for f, _ in _received(rig.b, 0, len(frames))] == frames, "host.md 7: VF -> vswitch -> B"
    counters = rig.netvsp()
    assert counters.get("tx_packets", 0) == before, "nothing on the synthetic path"
    assert counters["vf_tx_frames"] == len(frames)
    assert port.vf.vf.stats().opackets == len(frames)

    rig.host.ctl("vf_revoke", nic=0)
    wait_for(lambda: not port.vf.switched, "switched back to synthetic", DEADLINE)
    assert port.vf.attached and not port.vf.reported, "pmd#88: the VF stays attached"
    assert rig.netvsp()["data_path"] == nvsp.DATA_PATH_SYNTHETIC
    batch = PacketBatch.from_frames(rig.pool_a, frames)
    assert port.tx_burst(0, batch) == len(frames)
    assert [f for f, _ in _received(rig.b, 0, len(frames))] == frames, "B gets them over the vswitch"
    assert rig.netvsp()["tx_packets"] > before
    assert drain(rig.peer) == [], "nothing more out the VF"


def test_host_steers_unicast_to_the_vf(rig):
    """host.md 7.2: while the data path is on the VF the host sends the unicast frames for the
    guest out the veth peer (the port receives them from its VF), while broadcast stays on the
    synthetic path; back on synthetic, unicast arrives there again. Counted by the host."""
    rig.offer()
    port, vf = rig.a, rig.a.vf.vf
    unicast = [rig.frame(rig.mac_b, rig.mac_a, 5000 + k) for k in range(6)]
    broadcast = [rig.frame(rig.mac_b, b"\xff" * 6, 6000 + k) for k in range(3)]
    delivered = rig.netvsp().get("rx_frames_delivered", 0)
    assert rig.b.tx_burst(0, PacketBatch.from_frames(rig.pool_b, unicast + broadcast)) == 9
    got = _received(port, 0, 9)
    assert sorted(f for f, _ in got) == sorted(unicast + broadcast)
    assert {pid for _, pid in got} == {port.port_id}
    assert vf.stats().ipackets == len(unicast), "the unicast frames came by the VF"
    counters = rig.netvsp()
    assert counters["vf_steered_frames"] == len(unicast)
    assert counters["rx_frames_delivered"] - delivered == len(broadcast), "broadcast stayed synthetic"

    port.stop()  # synthetic first: the host stops steering
    port.start()
    wait_for(lambda: port.vf.switched, "on the VF again", DEADLINE)
    rig.host.ctl("vf_revoke", nic=0)
    wait_for(lambda: not port.vf.switched, "synthetic after the revoke", DEADLINE)
    assert rig.b.tx_burst(0, PacketBatch.from_frames(rig.pool_b, unicast)) == len(unicast)
    assert sorted(f for f, _ in _received(port, 0, len(unicast))) == sorted(unicast)
    assert vf.stats().ipackets == len(unicast), "nothing more by the VF"
    assert rig.netvsp()["vf_steered_frames"] == len(unicast)


def test_vf_netdev_appearing_after_the_association(tmp_path):
    """pmd.md 7.2: the association comes before the VF's netdev (host.md 7.1); the port looks
    again once a second until it appears, then attaches and switches."""
    mac = random_mac()
    host = start_host(tmp_path / "root", "--vf-offer-delay", "0", "--mac", mac.hex(":"))
    try:
        ports = Ports(host)
        try:
            with Mempool(1024, 2048, root=host.root) as pool:
                port = ports.open(timeout=DEADLINE)
                port.configure(1, 1)
                port.rx_queue_setup(0, 256, mempool=pool)
                port.tx_queue_setup(0, 256)
                port.start()
                host.ctl("vf_offer", serial=SERIAL, netdev="nvfnotyet", nic=0)
                wait_for(lambda: port.vf.counters["not_found"], "the association, no netdev yet", DEADLINE)
                assert port.vf.reported and not port.vf.attached
                with veth_pair(mac):
                    wait_for(
                        lambda: port.vf.switched, "attached and switched once the netdev exists", DEADLINE
                    )
                    assert port.vf.counters["not_found"] >= 1 and port.vf.counters["attaches"] == 1
                    port.stop()
                    port.close()
        finally:
            ports.close_all()
    finally:
        host.stop()


def test_vf_netdev_removed(rig):
    """pmd#89: the VF's netdev disappears (hot-unplug): the data path goes back to synthetic
    before the VF port is stopped and closed; TX then takes the synthetic path."""
    rig.offer()
    port = rig.a
    subprocess.run(["ip", "link", "del", rig.pair.end], check=True, capture_output=True, timeout=30)
    wait_for(lambda: not port.vf.attached, "the VF removed", DEADLINE)
    assert not port.vf.switched and port.vf.state == "removed" and port.vf.counters["removals"] == 1
    assert rig.netvsp()["data_path"] == nvsp.DATA_PATH_SYNTHETIC
    frames = [rig.frame(rig.mac_a, rig.mac_b, 7000 + k) for k in range(3)]
    assert port.tx_burst(0, PacketBatch.from_frames(rig.pool_a, frames)) == len(frames)
    assert [f for f, _ in _received(rig.b, 0, len(frames))] == frames
