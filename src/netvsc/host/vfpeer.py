"""The VF's far side, played by the emulated host through the peer of a veth pair (host.md 7).

Layer 7 (host). In the emulated world a VF is a kernel netdev carrying the synthetic NIC's MAC:
one end of a veth pair, named in ``netvsc host ctl vf offer SERIAL NETDEV``. A real VF is a
NIC on the same physical network as the host's vSwitch; here the host is that network, through
the other end of the pair (found by the netdev's ``iflink``):

- ``steer``: while the guest has switched the data path to the VF, unicast frames for the
  guest's MAC that the backend delivers leave through the peer (so the guest's AF_PACKET socket
  on the VF netdev receives them); multicast and broadcast stay on the synthetic path, which is
  always live (host.md 7.2);
- ``receive``: frames the guest sends on the VF netdev arrive at the peer and are read here, to
  be handed to the backend as if sent on the synthetic path.

The peer socket is non-blocking, does not see its own transmits (PACKET_IGNORE_OUTGOING), and
gets VLAN tags the kernel took out of band back through PACKET_AUXDATA. The server waits on its
descriptor, so a VF costs the synthetic path nothing while no frame comes from it, and ``steer``
is called only while the data path is on the VF.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections import Counter
from pathlib import Path

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, DeviceError
from netvsc.fastpath.atomics import copy_bytes
from netvsc.host.frames import FrameBatch

__all__ = ["NET_CLASS_DIR", "VfPeer", "veth_peer"]

NET_CLASS_DIR = Path("/sys/class/net")
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
TP_STATUS_VLAN_VALID = 1 << 4
_AUXDATA = struct.Struct("3I4H")  # struct tpacket_auxdata
_ANCILLARY_SPACE = socket.CMSG_SPACE(_AUXDATA.size)


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def veth_peer(netdev: str, net_dir: Path = NET_CLASS_DIR) -> str:
    """The other end of ``netdev``'s veth pair, which must be in this network namespace."""
    if not netdev or "/" in netdev or netdev in (".", ".."):
        raise ConfigError("vf netdev", netdev, "a network interface name")
    try:
        ifindex = _read_int(net_dir / netdev / "ifindex")
        iflink = _read_int(net_dir / netdev / "iflink")
    except (OSError, ValueError):
        raise ConfigError("vf netdev", netdev, "an interface of the host's network namespace") from None
    peer = None
    if iflink != ifindex:
        with contextlib.suppress(OSError):
            peer = socket.if_indextoname(iflink)
    # An index names an interface of this namespace only: the peer must point back at us.
    with contextlib.suppress(OSError, ValueError, TypeError):
        if peer is not None and _read_int(net_dir / peer / "iflink") == ifindex:
            return peer
    raise ConfigError(
        "vf netdev", netdev, "one end of a veth pair whose peer is in the host's network namespace"
    )


@njit(nogil=True, cache=True)
def _mark_unicast_kernel(data, cap, length, count, mac, mark):
    """``mark[i] = 1`` for the frames whose destination is ``mac``; returns how many."""
    marked = 0
    count = min(count, length.shape[0], mark.shape[0])
    if cap * count > data.shape[0] or mac.shape[0] < 6:
        return 0
    for i in range(count):
        mark[i] = 0
        base = i * cap
        n = np.int64(length[i])
        if n < 14 or n > cap:
            continue
        same = True
        for b in range(6):
            if data[base + b] != mac[b]:
                same = False
                break
        if same:
            mark[i] = 1
            marked += 1
    return marked


@njit(nogil=True, cache=True)
def _compact_kernel(
    data, cap, length, vlan_tci, tx_flags, l4_offset, mss, rx_checksum, hash_value, hash_info, queue,
    count, mark,
):  # fmt: skip
    """Drop the marked frames from the batch, keeping the order of the others; the new count."""
    kept = 0
    count = min(count, length.shape[0], mark.shape[0])
    if cap * count > data.shape[0]:
        return 0
    for i in range(count):
        if mark[i]:
            continue
        if kept != i:
            n = min(max(np.int64(length[i]), 0), cap)
            copy_bytes(data, kept * cap, data, i * cap, n)
            length[kept] = length[i]
            vlan_tci[kept] = vlan_tci[i]
            tx_flags[kept] = tx_flags[i]
            l4_offset[kept] = l4_offset[i]
            mss[kept] = mss[i]
            rx_checksum[kept] = rx_checksum[i]
            hash_value[kept] = hash_value[i]
            hash_info[kept] = hash_info[i]
            queue[kept] = queue[i]
        kept += 1
    return kept


class VfPeer:
    """A raw socket on the peer of the VF's veth end; ``counters`` holds its drops and errors
    (the frames it carried are counted by the NetVSP)."""

    def __init__(self, netdev: str, net_dir: Path = NET_CLASS_DIR) -> None:
        self.netdev = netdev
        self.peer = veth_peer(netdev, Path(net_dir))
        self.counters: Counter[str] = Counter()
        self._mark = np.zeros(0, dtype=np.uint8)
        self._mac_key = b""
        self._mac = np.zeros(6, dtype=np.uint8)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            with contextlib.suppress(OSError):  # Linux 4.20+; without it our own sends come back
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.bind((self.peer, ETH_P_ALL))
            sock.setblocking(False)
        except OSError as error:
            sock.close()
            raise DeviceError(f"VF peer {self.peer}: raw socket refused: {error}") from None
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- backend -> guest, through the VF ----------------------------------------------------------

    def steer(self, batch: FrameBatch, mac: bytes) -> int:
        """Send the batch's unicast frames for ``mac`` out the peer and remove them from the batch
        (what stays goes the synthetic way); returns how many left through the peer."""
        count = batch.count
        if count == 0:
            return 0
        if mac != self._mac_key:
            self._mac = np.frombuffer(bytes(mac), dtype=np.uint8).copy()
            self._mac_key = mac
        if self._mark.shape[0] < batch.capacity:
            self._mark = np.zeros(batch.capacity, dtype=np.uint8)
        cap = batch.frame_capacity
        marked = int(_mark_unicast_kernel(batch.data, cap, batch.length, count, self._mac, self._mark))
        if not marked:
            return 0
        sent = 0
        view = memoryview(batch.data)
        for i in np.flatnonzero(self._mark[:count]).tolist():
            frame = view[i * cap : i * cap + int(batch.length[i])]
            tci = int(batch.vlan_tci[i])
            if tci >= 0:  # carried out of band by the backend: on a wire it is in the frame
                frame = bytes(frame[:12]) + struct.pack("!HH", 0x8100, tci & 0xFFFF) + bytes(frame[12:])
            try:
                self.sock.send(frame)
                sent += 1
            except (BlockingIOError, InterruptedError):
                self.counters["vf_steer_drops"] += 1  # the peer's queue is full: dropped, as a wire would
            except OSError:
                self.counters["vf_steer_errors"] += 1
        view.release()
        batch.count = int(
            _compact_kernel(
                batch.data, cap, batch.length, batch.vlan_tci, batch.tx_flags, batch.l4_offset, batch.mss,
                batch.rx_checksum, batch.hash_value, batch.hash_info, batch.queue, count, self._mark,
            )
        )  # fmt: skip
        return sent

    # -- guest -> backend, from the VF -----------------------------------------------------------

    def receive(self, batch: FrameBatch, limit: int) -> int:
        """Append up to ``limit`` frames the guest sent on the VF netdev to ``batch``."""
        got = 0
        cap = batch.frame_capacity
        while got < limit and not batch.full:
            index = batch.count
            slot = memoryview(batch.data)[index * cap : (index + 1) * cap]
            try:
                nbytes, ancillary, flags, _address = self.sock.recvmsg_into([slot], _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["vf_receive_errors"] += 1
                break
            finally:
                slot.release()
            if flags & socket.MSG_TRUNC or nbytes < 14:
                self.counters["vf_receive_dropped"] += 1
                continue
            tci = -1
            for level, kind, payload in ancillary:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
                    fields = _AUXDATA.unpack(payload[: _AUXDATA.size])
                    if fields[0] & TP_STATUS_VLAN_VALID:
                        tci = fields[5]  # the kernel took the tag out of the frame
            batch.length[index] = nbytes
            batch.vlan_tci[index] = tci
            batch.tx_flags[index] = 0
            batch.l4_offset[index] = 0
            batch.mss[index] = 0
            batch.rx_checksum[index] = 0
            batch.hash_value[index] = 0
            batch.hash_info[index] = 0
            batch.queue[index] = 0
            batch.count = index + 1
            got += 1
        return got

    def close(self) -> None:
        self.sock.close()
