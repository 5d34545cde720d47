"""The TAP backend against the real Linux kernel, in a network namespace each test creates.

Addresses: the namespace's side of the TAP is 198.18.0.1, the emulated guest 198.18.0.2 with a
locally administered MAC (a permanent neighbour entry, so the kernel never ARPs for it). The
kernel's sockets are opened inside the namespace by the backend's own ``open_in_netns``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import time
import uuid

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from netvsc.errors import ConfigError
from netvsc.fastpath.offload import receive_prepare_batch
from netvsc.host.backends import create_backend
from netvsc.host.backends.tap import open_in_netns
from netvsc.host.frames import TX_CSUM_IP, TX_CSUM_UDP, TX_IPV4, TX_IPV6, TX_LSO, FrameBatch
from netvsc.wire import rndis

pytestmark = pytest.mark.root

GUEST_MAC = "02:00:00:00:d0:02"
GUEST_IP = "198.18.0.2"
NS_IP = "198.18.0.1"
GUEST_IP6 = "2001:2::2"  # the IPv6 benchmarking range (RFC 5180)
NS_IP6 = "2001:2::1"
GOOD_IP_UDP = rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED
SOL_PACKET = 263
PACKET_AUXDATA = 8
ETH_P_ALL = 0x0003
TP_STATUS_VLAN_VALID = 0x10
GOOD_IP_TCP = rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_TCP_SUCCEEDED


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


class TapSetup:
    """A namespace, the backend's TAP in it, addresses, and the sockets a test opens there."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.netns = f"nvd-{os.getpid()}-{tag}"
        self.ifname = f"nvd{tag}"
        self.backend = None
        self.sockets: list[socket.socket] = []
        ip("netns", "add", self.netns)

    def open(self):
        self.backend = create_backend(f"tap:{self.ifname}@{self.netns}", nic_index=0)
        ip("-n", self.netns, "addr", "add", f"{NS_IP}/24", "dev", self.ifname)
        ip("-n", self.netns, "link", "set", "lo", "up")
        ip(
            "-n",
            self.netns,
            "neigh",
            "replace",
            GUEST_IP,
            "lladdr",
            GUEST_MAC,
            "dev",
            self.ifname,
            "nud",
            "permanent",
        )
        info = json.loads(ip("-n", self.netns, "-j", "link", "show", "dev", self.ifname))
        self.tap_mac = info[0]["address"]
        return self.backend

    def socket(self, family=socket.AF_INET, kind=socket.SOCK_DGRAM) -> socket.socket:
        sock = open_in_netns(self.netns, lambda: socket.socket(family, kind))
        self.sockets.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.backend is not None:
            self.backend.close()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


@pytest.fixture
def tap():
    setup = TapSetup()
    try:
        setup.open()
        yield setup
    finally:
        setup.close()


def transmit(backend, raw: bytes, **metadata) -> None:
    batch = FrameBatch(1)
    batch.append(raw, **metadata)
    assert backend.transmit(batch) == 1


def receive_until(backend, wanted, timeout: float = 5.0) -> tuple[bytes, int, int]:
    """Poll the backend until a frame satisfies ``wanted(Ether)``; returns (frame, rx_checksum, vlan_tci)."""
    deadline = time.monotonic() + timeout
    batch = FrameBatch(64, 4096)
    while time.monotonic() < deadline:
        select.select([backend.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        batch.clear()
        backend.poll(batch, 64)
        # What the host's receive path does with every polled frame: strip the tag, verify.
        receive_prepare_batch(
            batch.data, batch.frame_capacity, batch.length, batch.vlan_tci, batch.rx_checksum, batch.count
        )
        for index in range(batch.count):
            raw = batch.frame(index).tobytes()
            if wanted(Ether(raw)):
                return raw, int(batch.rx_checksum[index]), int(batch.vlan_tci[index])
    raise AssertionError("no matching frame from the TAP before the deadline")


def garbage_checksums(raw: bytes, l4_field: int) -> bytes:
    data = bytearray(raw)
    data[24:26] = b"\xde\xad"
    data[34 + l4_field : 36 + l4_field] = b"\xbe\xef"
    return bytes(data)


def test_udp_checksum_filled_by_the_kernel_from_the_vnet_header(tap):
    """host#32: a UDP checksum request becomes NEEDS_CSUM; the kernel delivers the datagram and fills it.

    The second datagram is routed back out of the TAP by the namespace, so the kernel must
    complete the checksum from our csum_start/offset and pseudo-header seed: we verify it.
    """
    backend = tap.backend
    receiver = tap.socket()
    receiver.bind((NS_IP, 9999))
    receiver.settimeout(5)
    packet = Ether(src=GUEST_MAC, dst=tap.tap_mac) / IP(src=GUEST_IP, dst=NS_IP) / UDP(sport=4321, dport=9999)
    raw = garbage_checksums(bytes(packet / b"to-the-socket"), 6)
    transmit(backend, raw, tx_flags=TX_IPV4 | TX_CSUM_IP | TX_CSUM_UDP)
    data, source = receiver.recvfrom(2048)
    assert (data, source) == (b"to-the-socket", (GUEST_IP, 4321))

    ip("netns", "exec", tap.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    ip("-n", tap.netns, "route", "add", "198.19.0.0/16", "via", GUEST_IP)
    packet = (
        Ether(src=GUEST_MAC, dst=tap.tap_mac) / IP(src=GUEST_IP, dst="198.19.5.5") / UDP(sport=4321, dport=7)
    )
    transmit(
        backend,
        garbage_checksums(bytes(packet / b"forwarded"), 6),
        tx_flags=TX_IPV4 | TX_CSUM_IP | TX_CSUM_UDP,
    )
    raw, rx_checksum, _ = receive_until(backend, lambda f: UDP in f and f[IP].dst == "198.19.5.5")
    forwarded = Ether(raw)
    assert forwarded[IP].ttl == 63 and bytes(forwarded[UDP].payload) == b"forwarded"
    expected = (
        Ether(src=forwarded.src, dst=forwarded.dst)
        / IP(src=GUEST_IP, dst="198.19.5.5", ttl=63)
        / UDP(sport=4321, dport=7)
        / b"forwarded"
    )
    assert forwarded[UDP].chksum == Ether(bytes(expected))[UDP].chksum, "checksum completed from our seed"
    assert rx_checksum == GOOD_IP_UDP


def test_kernel_frames_arrive_with_checksum_state(tap):
    """host#19: a datagram the namespace's kernel sends reaches the backend with good checksum bits."""
    sender = tap.socket()
    sender.bind((NS_IP, 5555))
    sender.sendto(b"from-the-kernel", (GUEST_IP, 6666))
    raw, rx_checksum, vlan_tci = receive_until(tap.backend, lambda f: UDP in f and f[UDP].dport == 6666)
    frame = Ether(raw)
    assert frame.dst == GUEST_MAC and bytes(frame[UDP].payload) == b"from-the-kernel"
    assert rx_checksum == GOOD_IP_UDP and vlan_tci == -1


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_lso_64000_bytes_reach_a_kernel_tcp_socket(tap, family):
    """host#33: one 64,000-byte LSO send becomes GSO TCPv4/TCPv6; a TCP socket of the kernel reads it all.

    The handshake is done with raw frames through the TAP; the data frame carries the NDIS
    LSOv2 conventions (IPv4 total length and checksum, or IPv6 payload length, zero; the TCP
    checksum not a valid seed).
    """
    backend = tap.backend
    if family == "ipv4":
        ns_ip, guest_ip, mss, l4_offset = NS_IP, GUEST_IP, 1460, 34
        network_header = IP(src=guest_ip, dst=ns_ip, flags="DF")
        good_tcp = GOOD_IP_TCP
        # Let the namespace open a large initial receive window for the guest's subnet.
        ip("-n", tap.netns, "route", "replace", "198.18.0.0/24", "dev", tap.ifname, "initrwnd", "64")
    else:
        ns_ip, guest_ip, mss, l4_offset = NS_IP6, GUEST_IP6, 1440, 54
        network_header = IPv6(src=guest_ip, dst=ns_ip)
        good_tcp = rndis.CHECKSUM_RX_TCP_SUCCEEDED
        ip("-n", tap.netns, "-6", "addr", "add", f"{ns_ip}/64", "dev", tap.ifname, "nodad")
        ip(
            "-n",
            tap.netns,
            "-6",
            "neigh",
            "replace",
            guest_ip,
            "lladdr",
            GUEST_MAC,
            "dev",
            tap.ifname,
            "nud",
            "permanent",
        )
        ip("-n", tap.netns, "-6", "route", "replace", "2001:2::/64", "dev", tap.ifname, "initrwnd", "64")
    listener = tap.socket(socket.AF_INET if family == "ipv4" else socket.AF_INET6, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listener.bind((ns_ip, 5001))
    listener.listen(1)
    listener.settimeout(5)
    guest_isn = 1_000_000
    headers = Ether(src=GUEST_MAC, dst=tap.tap_mac) / network_header
    syn = headers / TCP(
        sport=40000, dport=5001, flags="S", seq=guest_isn, window=65535, options=[("MSS", mss), ("WScale", 7)]
    )
    transmit(backend, bytes(syn))
    raw, rx_checksum, _ = receive_until(backend, lambda f: TCP in f and f[TCP].flags == "SA")
    assert rx_checksum == good_tcp, "the kernel's SYN-ACK arrives with good checksum bits (host#19)"
    server_isn = Ether(raw)[TCP].seq
    ack = headers / TCP(
        sport=40000, dport=5001, flags="A", seq=guest_isn + 1, ack=server_isn + 1, window=65535
    )
    transmit(backend, bytes(ack))
    connection, _ = listener.accept()
    tap.sockets.append(connection)

    payload = bytes((i * 7) & 0xFF for i in range(64_000))
    data = (
        headers
        / TCP(sport=40000, dport=5001, flags="PA", seq=guest_isn + 1, ack=server_isn + 1, window=65535)
        / payload
    )
    raw = bytearray(bytes(data))
    if family == "ipv4":
        raw[16:18] = b"\0\0"  # IPv4 total length and header checksum: left to the host
        raw[24:26] = b"\0\0"
    else:
        raw[18:20] = b"\0\0"  # IPv6 payload length: left to the host
    raw[l4_offset + 16 : l4_offset + 18] = b"\x12\x34"  # not a valid pseudo-header seed
    assert len(raw) == l4_offset + 20 + 64_000
    flags = (TX_IPV4 if family == "ipv4" else TX_IPV6) | TX_LSO
    transmit(backend, bytes(raw), tx_flags=flags, mss=mss, l4_offset=l4_offset)
    received = bytearray()
    connection.settimeout(5)
    deadline = time.monotonic() + 10
    while len(received) < len(payload) and time.monotonic() < deadline:
        chunk = connection.recv(len(payload) - len(received))
        if not chunk:
            break
        received += chunk
    assert len(received) == len(payload) and bytes(received) == payload
    assert backend.counters()["tx_errors"] == 0


def test_vlan_insert_puts_a_tag_on_the_wire_and_tags_are_stripped(tap):
    """host#34 host#18: vlan_tci becomes an 802.1Q tag on the wire; a tagged frame comes back untagged.

    This kernel has no 802.1Q devices, so a packet socket on the TAP inside the namespace
    plays the wire: it reports the tag (in the frame or, once the kernel took it out, in
    PACKET_AUXDATA) and sends a tagged frame back.
    """
    wire = tap.socket(socket.AF_PACKET, socket.SOCK_RAW)
    wire.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    wire.bind((tap.ifname, ETH_P_ALL))
    tci = (5 << 13) | 7
    packet = Ether(src=GUEST_MAC, dst=tap.tap_mac) / IP(src=GUEST_IP, dst=NS_IP) / UDP(sport=1234, dport=9998)
    transmit(tap.backend, bytes(packet / b"tagged"), vlan_tci=tci)
    deadline = time.monotonic() + 5
    seen_tci = None
    while seen_tci is None and time.monotonic() < deadline:
        if not select.select([wire], [], [], max(0.0, deadline - time.monotonic()))[0]:
            break
        data, ancillary, _flags, _address = wire.recvmsg(4096, 256)
        frame = Ether(data)
        if Dot1Q in frame and frame[Dot1Q].type == 0x0800 and UDP in frame and frame[UDP].dport == 9998:
            seen_tci = (frame[Dot1Q].prio << 13) | (frame[Dot1Q].id << 12) | frame[Dot1Q].vlan
        elif UDP in frame and frame[UDP].dport == 9998:
            for level, kind, value in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA:
                    status, _len, _snap, _mac, _net, vlan_tci, tpid = struct.unpack("IIIHHHH", value[:20])
                    if status & TP_STATUS_VLAN_VALID:
                        assert tpid in (0, 0x8100)
                        seen_tci = vlan_tci
    assert seen_tci == tci, f"tag on the wire: expected {tci:#x}, saw {seen_tci}"

    tagged = (
        Ether(src=tap.tap_mac, dst=GUEST_MAC)
        / Dot1Q(prio=3, vlan=7)
        / IP(src=NS_IP, dst=GUEST_IP)
        / UDP(sport=9998, dport=1234)
        / b"reply"
    )
    wire.send(bytes(tagged))
    raw, rx_checksum, vlan_tci = receive_until(tap.backend, lambda f: UDP in f and f[UDP].sport == 9998)
    assert vlan_tci == (3 << 13) | 7 and Ether(raw).type == 0x0800, "tag stripped into vlan_tci"
    assert bytes(Ether(raw)[UDP].payload) == b"reply" and rx_checksum == GOOD_IP_UDP


def test_link_down_is_seen_and_drops_are_counted(tap):
    """host#51: the TAP going down shows as link_up False, and writes are dropped and counted."""
    assert tap.backend.link_up
    ip("-n", tap.netns, "link", "set", tap.ifname, "down")
    deadline = time.monotonic() + 2
    while tap.backend.link_up and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not tap.backend.link_up
    packet = Ether(src=GUEST_MAC, dst=tap.tap_mac) / IP(src=GUEST_IP, dst=NS_IP) / UDP()
    transmit(tap.backend, bytes(packet))
    counters = tap.backend.counters()
    assert counters["tx_dropped_down"] == 1 and counters["tx_errors"] == 0
    ip("-n", tap.netns, "link", "set", tap.ifname, "up")
    deadline = time.monotonic() + 2
    while not tap.backend.link_up and time.monotonic() < deadline:
        time.sleep(0.02)
    assert tap.backend.link_up


def test_missing_namespace_is_a_config_error():
    """A namespace that does not exist is named in the error; nothing is left behind."""
    with pytest.raises(ConfigError) as caught:
        create_backend(f"tap:nvdx@nvd-missing-{uuid.uuid4().hex[:6]}", nic_index=0)
    assert "network namespace" in str(caught.value)


def test_frame_larger_than_the_slot_is_dropped_not_cut(tap):
    """A kernel frame that does not fit the batch slot is counted and never handed over half."""
    sender = tap.socket()
    small_batch = FrameBatch(4, 200)
    sender.sendto(b"c" * 400, (GUEST_IP, 6669))
    deadline = time.monotonic() + 5
    while tap.backend.counters()["rx_truncated"] == 0 and time.monotonic() < deadline:
        select.select([tap.backend.fileno()], [], [], 0.1)
        small_batch.clear()
        tap.backend.poll(small_batch, 4)
        assert all(Ether(f)[UDP].dport != 6669 for f in small_batch.frames() if UDP in Ether(f))
    assert tap.backend.counters()["rx_truncated"] == 1
