"""veth pairs for the AF_PACKET and VF tests: created in this process's network namespace (where
the emulated host process runs too, so it can reach the peer), IPv6 off on both ends so the
kernel sends nothing of its own on them, locally administered MACs (DESIGN.md decision 13), and
deleted whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import uuid
from dataclasses import dataclass

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def random_mac() -> bytes:
    """A locally administered unicast MAC (02:xx:...)."""
    return bytes([0x02]) + os.urandom(5)


@dataclass
class VethPair:
    """``end`` plays the device under test (a VF's netdev), ``peer`` the far side."""

    end: str
    peer: str
    end_mac: bytes
    peer_mac: bytes

    def raw_socket(self, ifname: str | None = None) -> socket.socket:
        """A non-blocking raw socket on ``ifname`` (default the peer) that sees only frames
        arriving there, not its own or another socket's transmits."""
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # the kernel moves VLAN tags out of band
        sock.bind((ifname or self.peer, ETH_P_ALL))
        sock.setblocking(False)
        return sock


@contextlib.contextmanager
def veth_pair(end_mac: bytes | None = None, mtu: int = 1500):
    tag = uuid.uuid4().hex[:8]
    pair = VethPair(f"nvf{tag}", f"nvp{tag}", end_mac or random_mac(), random_mac())
    ip("link", "add", pair.end, "type", "veth", "peer", "name", pair.peer)
    try:
        for ifname, mac in ((pair.end, pair.end_mac), (pair.peer, pair.peer_mac)):
            with open(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6", "w") as knob:
                knob.write("1")
            ip("link", "set", ifname, "address", mac.hex(":"), "mtu", str(mtu))
            ip("link", "set", ifname, "up")
        yield pair
    finally:
        subprocess.run(["ip", "link", "del", pair.end], capture_output=True, timeout=30)


def receive(sock: socket.socket) -> bytes | None:
    """One frame as it was on the wire (an out-of-band VLAN tag put back), None if none waits."""
    try:
        data, ancillary, _flags, _address = sock.recvmsg(65536, socket.CMSG_SPACE(20))
    except BlockingIOError:
        return None
    for level, kind, payload in ancillary:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= 20:
            status, _len, _snap, _mac, _net, tci, tpid = struct.unpack("3I4H", payload[:20])
            if status & TP_STATUS_VLAN_VALID:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID and tpid else 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
    return data


def drain(sock: socket.socket) -> list[bytes]:
    """Every frame waiting on a non-blocking socket (as on the wire)."""
    frames = []
    while (frame := receive(sock)) is not None:
        frames.append(frame)
    return frames
