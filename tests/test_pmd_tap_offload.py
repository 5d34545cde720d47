"""The port's transmit offloads judged by the Linux kernel: the emulated host's backend is a TAP
in a network namespace the module creates, and the kernel's own UDP and TCP sockets there
must accept what the port sends with its checksums left to the offloads (or computed by the
driver, for large non-DF UDP), and a 64 KiB LSO send.

Addresses (DESIGN.md decision 13): the namespace's side 198.18.0.1, the port 198.18.0.2 with
its locally administered MAC as a permanent neighbour (the kernel never ARPs for it).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from netvsc.ethdev import api
from netvsc.ethdev import mempool as mp
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.host.backends.tap import open_in_netns
from pmd_support import Ports, start_host
from pmd_support import wait_for as _wait_for

pytestmark = pytest.mark.root

NS_IP, GUEST_IP = "198.18.0.1", "198.18.0.2"


# Deadlines only bound how long a failure takes: generous, because the host compiles a kernel the
# first time a path is used (tens of seconds with a cold cache under NUMBA_BOUNDSCHECK=1).
DEADLINE = 30.0


def wait_for(predicate, what: str, timeout: float = DEADLINE):
    return _wait_for(predicate, what, timeout)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def tap_host(tmp_path_factory):
    """(host, netns, ifname): the namespace exists before the host makes its TAP in it; both
    go whatever happens."""
    tag = uuid.uuid4().hex[:8]
    netns, ifname = f"nvp-{os.getpid()}-{tag}", f"nvp{tag}"
    ip("netns", "add", netns)
    host = None
    try:
        host = start_host(tmp_path_factory.mktemp("tap") / "root", "--backend", f"tap:{ifname}@{netns}")
        ip("-n", netns, "addr", "add", f"{NS_IP}/24", "dev", ifname)
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "link", "set", ifname, "up")
        ip("-n", netns, "route", "replace", "198.18.0.0/24", "dev", ifname, "initrwnd", "64")
        yield host, netns, ifname
    finally:
        if host is not None:
            host.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)


class Guest:
    """The port, its pool and the namespace's sockets."""

    def __init__(self, tap_host) -> None:
        self.host, self.netns, self.ifname = tap_host
        self.ports = Ports(self.host)
        self.sockets: list[socket.socket] = []
        self.port = port = self.ports.open(timeout=30)
        port.configure(
            1,
            1,
            tx_offloads=api.TX_OFFLOAD_IPV4_CKSUM
            | api.TX_OFFLOAD_UDP_CKSUM
            | api.TX_OFFLOAD_TCP_CKSUM
            | api.TX_OFFLOAD_TCP_TSO,
        )
        self.pool = Mempool(2048, 2048, root=self.host.root)
        port.rx_queue_setup(0, 256, mempool=self.pool)
        port.tx_queue_setup(0, 256)
        port.start()
        self.mac = port.mac_address.hex(":")
        ip(
            "-n",
            self.netns,
            "neigh",
            "replace",
            GUEST_IP,
            "lladdr",
            self.mac,
            "dev",
            self.ifname,
            "nud",
            "permanent",
        )
        info = json.loads(ip("-n", self.netns, "-j", "link", "show", "dev", self.ifname))
        self.tap_mac = info[0]["address"]
        self.rx = PacketBatch(32)

    def socket(self, kind=socket.SOCK_DGRAM) -> socket.socket:
        sock = open_in_netns(self.netns, lambda: socket.socket(socket.AF_INET, kind))
        self.sockets.append(sock)
        return sock

    def headers(self, **ip_fields):
        return Ether(src=self.mac, dst=self.tap_mac) / IP(src=GUEST_IP, dst=NS_IP, **ip_fields)

    def send(self, raw: bytes, **meta) -> None:
        batch = PacketBatch.from_frames(self.pool, [raw])
        for name, value in meta.items():
            getattr(self.pool.arrays, name)[int(batch.indices[0])] = value
        wait_for(lambda: self.port.tx_burst(0, batch) >= 0 and batch.count == 0, "sent")

    def receive(self, wanted, timeout: float = DEADLINE) -> Ether:
        found = []

        def poll() -> bool:
            n = self.port.rx_burst(0, self.rx)
            for k in range(n):
                frame = Ether(self.pool.packet_bytes(int(self.rx.indices[k])))
                if not found and wanted(frame):
                    found.append(frame)
            self.pool.free_bulk(self.rx.indices, n)
            return bool(found)

        wait_for(poll, "a frame from the kernel", timeout)
        return found[0]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.ports.close_all()


@pytest.fixture
def guest(tap_host):
    g = Guest(tap_host)
    yield g
    g.close()


def zero_checksums(raw: bytes, l4_checksum_at: int) -> bytes:
    data = bytearray(raw)
    data[24:26] = b"\0\0"  # IPv4 header checksum
    data[l4_checksum_at : l4_checksum_at + 2] = b"\0\0"
    return bytes(data)


def test_udp_checksum_offload_and_soft_checksum_are_accepted_by_a_kernel_socket(guest):
    """Checksum offload (pmd#76): UDP/IPv4 datagrams sent with zeroed IP and UDP checksums and
    the offload requests reach a UDP socket of the kernel, which drops any datagram with a bad
    checksum; so does a 1,472-byte datagram without DF, whose checksum the driver computes
    itself (issue 5 lesson: tx_soft_checksum)."""
    receiver = guest.socket()
    receiver.bind((NS_IP, 9999))
    receiver.settimeout(5)
    meta = dict(ol_flags=mp.TX_IPV4 | mp.TX_IP_CKSUM | mp.TX_UDP_CKSUM, l2_len=14, l3_len=20)
    for payload, df in ((b"offloaded", True), (bytes(range(256)) * 5 + b"x" * 192, False)):
        frame = bytes(guest.headers(flags="DF" if df else 0) / UDP(sport=4321, dport=9999) / payload)
        guest.send(zero_checksums(frame, 40), **meta)
        data, source = receiver.recvfrom(4096)
        assert (data, source) == (payload, (GUEST_IP, 4321))
    assert guest.port.datapath_counters()["tx_soft_checksum"] == 1
    assert guest.port.stats().oerrors == 0


def _handshake(guest, listener_port: int, mss: int = 1460):
    """A TCP connection from the port to a kernel listener, the handshake sent with checksum
    offload (zeroed checksums). Returns (accepted socket, our next seq, the kernel's next seq)."""
    listener = guest.socket(socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listener.bind((NS_IP, listener_port))
    listener.listen(1)
    listener.settimeout(5)
    isn = 1_000_000
    tcp_meta = dict(ol_flags=mp.TX_IPV4 | mp.TX_IP_CKSUM | mp.TX_TCP_CKSUM, l2_len=14, l3_len=20)
    syn = guest.headers(flags="DF") / TCP(
        sport=40000,
        dport=listener_port,
        flags="S",
        seq=isn,
        window=65535,
        options=[("MSS", mss), ("WScale", 7)],
    )
    guest.send(zero_checksums(bytes(syn), 50), **tcp_meta)
    synack = guest.receive(lambda f: TCP in f and f[TCP].flags == "SA")
    server = synack[TCP].seq + 1
    ack = guest.headers(flags="DF") / TCP(
        sport=40000, dport=listener_port, flags="A", seq=isn + 1, ack=server, window=65535
    )
    guest.send(zero_checksums(bytes(ack), 50), **tcp_meta)
    connection, _ = listener.accept()
    guest.sockets.append(connection)
    return connection, isn + 1, server


def _read(connection, length: int) -> bytes:
    received = bytearray()
    connection.settimeout(5)
    deadline = time.monotonic() + 10
    while len(received) < length and time.monotonic() < deadline:
        chunk = connection.recv(length - len(received))
        if not chunk:
            break
        received += chunk
    return bytes(received)


def test_tcp_checksum_offload_is_accepted_by_a_kernel_socket(guest):
    """Checksum offload (pmd#76): a TCP connection whose every segment left the port with zeroed
    checksums and the offload requests is accepted by the kernel, and the data reaches the
    socket."""
    connection, seq, ack = _handshake(guest, 5001)
    payload = b"through the kernel's TCP" * 20
    data = (
        guest.headers(flags="DF")
        / TCP(sport=40000, dport=5001, flags="PA", seq=seq, ack=ack, window=65535)
        / payload
    )
    guest.send(
        zero_checksums(bytes(data), 50),
        ol_flags=mp.TX_IPV4 | mp.TX_IP_CKSUM | mp.TX_TCP_CKSUM,
        l2_len=14,
        l3_len=20,
    )
    assert _read(connection, len(payload)) == payload


def test_a_64k_lso_send_reaches_a_kernel_tcp_socket(guest):
    """LSO (pmd#76, issue 5): one 64 KiB TCP send with TSO (MSS 1460) is cut into valid segments
    on the way (the host hands it to the TAP as GSO): the kernel's socket reads every byte."""
    connection, seq, ack = _handshake(guest, 5002)
    payload = bytes((i * 7) & 0xFF for i in range(65536 - 14 - 20 - 20))
    data = (
        guest.headers(flags="DF")
        / TCP(sport=40000, dport=5002, flags="PA", seq=seq, ack=ack, window=65535)
        / payload
    )
    raw = bytes(data)
    assert len(raw) == 65536
    guest.send(
        raw,
        ol_flags=mp.TX_IPV4 | mp.TX_IP_CKSUM | mp.TX_TCP_SEG,
        l2_len=14,
        l3_len=20,
        l4_len=20,
        tso_segsz=1460,
    )
    assert _read(connection, len(payload)) == payload
    assert guest.port.stats().oerrors == 0
    assert np.isfinite(guest.port.stats().opackets)
