"""The ``tap:IFNAME[@NETNS]`` backend: a Linux TAP device with the virtio-net header.

Layer 7 (host), modelled on OpenVMM's net_tap (spec/host.md 9):

- opened with ``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`` and a 12-byte virtio-net header
  (``TUNSETVNETHDRSZ``), created if it does not exist. With ``@NETNS`` the device is opened
  inside that network namespace: a short-lived thread enters it with ``setns`` only to open
  the device and bring the link up, so the host process stays where it is;
- ``TUNSETOFFLOAD 0``: the kernel hands us complete, checksummed, unsegmented frames;
- transmit turns the guest's requests into the virtio header (``framekernels.prepare_tap_tx``):
  LSO becomes GSO TCPv4/TCPv6 with gso_size = MSS, checksums become NEEDS_CSUM with
  csum_start/csum_offset and the pseudo-header sum in the checksum field (computed here: the
  guest's seed is not trusted), and the IPv4 header checksum is done in software since a TAP
  has no offload for it. A VLAN tag is inserted by writing it between the MAC addresses and
  the rest, without a copy;
- receive hands frames over as the kernel gave them, tag included (the host's receive path
  strips it, once, for every backend); a frame the kernel marks DATA_VALID gets good checksum
  bits here (``framekernels.tap_rx_checksums``), any other keeps state 0 and is verified in
  software by the host's receive path (DESIGN.md §7.10) rather than reported unknown;
- the fd is non-blocking for the host's selector; a full queue (EAGAIN) or a down link (EIO)
  drops the frame, which is counted and still consumed (the guest's packet completes).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
import time

import numpy as np

from netvsc.errors import ConfigError, DeviceError
from netvsc.fastpath import offload
from netvsc.host.backends import framekernels as fk
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.frames import FrameBatch

__all__ = ["TapBackend", "open_in_netns", "validate_ifname"]

log = logging.getLogger(__name__)

TUN_DEVICE = "/dev/net/tun"
NETNS_RUN_DIR = "/var/run/netns"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x0001
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16

# Never leave a tight loop on one backend for ever: the host has other channels to serve.
DEFAULT_READ_LIMIT = 256
LINK_CHECK_INTERVAL_S = 0.1


def validate_ifname(name: str, spec: str) -> str:
    """A Linux interface name: 1..15 bytes, no '/', ':' or whitespace, not '.' or '..'."""
    bad = (
        not name
        or len(name.encode()) >= IFNAMSIZ
        or name in (".", "..")
        or any(c in name for c in "/:@,")
        or any(c.isspace() for c in name)
    )
    if bad:
        raise ConfigError(
            "backend", spec, "tap:IFNAME[@NETNS] with IFNAME 1-15 characters, none of / : @ , or spaces"
        )
    return name


def open_in_netns(netns: str | None, opener):
    """Run ``opener()`` in network namespace ``netns`` (or here when None) and return its result.

    The namespace is entered by a short-lived thread (namespaces are per thread in Linux),
    so file descriptors and sockets opened there keep that namespace while this process's
    other threads never leave theirs.
    """
    if netns is None:
        return opener()
    path = os.path.join(NETNS_RUN_DIR, netns)
    if not os.path.exists(path):
        raise ConfigError("backend", f"@{netns}", f"an existing network namespace (no {path})")
    outcome: dict = {}

    def enter_and_open() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            ns_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(ns_fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise DeviceError(f"setns into network namespace {netns!r} failed: {os.strerror(err)}")
            finally:
                os.close(ns_fd)
            outcome["result"] = opener()
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=enter_and_open, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _interface_flags(control: socket.socket, ifname: str) -> int:
    request = struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), 0)
    reply = fcntl.ioctl(control.fileno(), SIOCGIFFLAGS, request + b"\0" * 22)
    return struct.unpack_from("H", reply, IFNAMSIZ)[0]


def _open_tap(ifname: str) -> tuple[int, str, socket.socket]:
    """Open (or create) TAP ``ifname`` with a vnet header and set it up; returns fd, name, ctl socket."""
    try:
        fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(
            f"cannot open {TUN_DEVICE}: {exc.strerror} (needs CAP_NET_ADMIN and the tun module)"
        ) from exc
    control = None
    try:
        request = struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        try:
            reply = fcntl.ioctl(fd, TUNSETIFF, request + b"\0" * 22)
        except OSError as exc:
            raise DeviceError(
                f"TUNSETIFF {ifname!r} failed: {exc.strerror} (an existing device of another type or in use?)"
            ) from exc
        name = reply[:IFNAMSIZ].rstrip(b"\0").decode()
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", fk.VNET_HDR_LEN))
        # 0: we accept neither partial checksums nor GSO, so the kernel completes both for us.
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        os.set_blocking(fd, False)
        control = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        flags = _interface_flags(control, name)
        if not flags & IFF_UP:
            fcntl.ioctl(
                control.fileno(),
                SIOCSIFFLAGS,
                struct.pack(f"{IFNAMSIZ}sH", name.encode(), flags | IFF_UP) + b"\0" * 22,
            )
        return fd, name, control
    except BaseException:
        os.close(fd)
        if control is not None:
            control.close()
        raise


class TapBackend(Backend):
    """One NIC bridged to TAP ``ifname`` (in namespace ``netns`` when given); single queue."""

    name = "tap"
    offloads = BackendOffloads(
        ipv4_checksum=True, tcp_checksum=True, udp_checksum=True, tso=True, vlan_insert=True
    )

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        super().__init__()
        validate_ifname(ifname, f"tap:{ifname}")
        self.netns = netns
        self._fd, self.ifname, self._control = open_in_netns(netns, lambda: _open_tap(ifname))
        self._admin_up = True
        self._interface_up = True
        self._link_checked_at = -LINK_CHECK_INTERVAL_S
        self._parsed = np.zeros(offload.PARSE_FIELDS, dtype=np.int64)
        self._vnet = np.zeros((0, fk.VNET_HDR_LEN), dtype=np.uint8)
        self._rx_vnet = np.zeros((DEFAULT_READ_LIMIT, fk.VNET_HDR_LEN), dtype=np.uint8)
        self._rx_flags = np.zeros(DEFAULT_READ_LIMIT, dtype=np.uint8)
        self.tx_dropped_full = 0
        self.tx_dropped_down = 0
        self.tx_errors = 0
        self.tx_offload_refused = 0
        self.rx_errors = 0
        self.rx_truncated = 0
        log.info("tap backend on %s%s", self.ifname, f" in netns {netns}" if netns else "")

    # The carrier the host reports: the TAP's administrative state, and the ctl override.
    # The host reads this on every poll: ask the kernel at most every LINK_CHECK_INTERVAL_S.
    @property
    def link_up(self) -> bool:
        if not self._admin_up or self._control is None:
            return False
        now = time.monotonic()
        if now - self._link_checked_at >= LINK_CHECK_INTERVAL_S:
            self._link_checked_at = now
            try:
                self._interface_up = bool(_interface_flags(self._control, self.ifname) & IFF_UP)
            except OSError:
                self._interface_up = False
        return self._interface_up

    @link_up.setter
    def link_up(self, value: bool) -> None:
        self._admin_up = bool(value)

    def fileno(self) -> int | None:
        return self._fd

    def transmit(self, batch: FrameBatch) -> int:
        count = batch.count
        if count == 0 or self._fd is None:
            return count
        if self._vnet.shape[0] < count:
            self._vnet = np.zeros((batch.capacity, fk.VNET_HDR_LEN), dtype=np.uint8)
        ok = fk.prepare_tap_tx(
            batch.data,
            batch.frame_capacity,
            batch.length,
            batch.tx_flags,
            batch.mss,
            batch.vlan_tci,
            count,
            self._vnet,
            self._parsed,
        )
        data = memoryview(batch.data)
        vnet = memoryview(self._vnet.reshape(-1))  # 1-D: memoryview cannot index rows
        # One write per frame: a TAP takes one frame per write(2) (no batching syscall for tun).
        for i in range(count):
            if ok[i] == 0:
                self.tx_errors += 1
                continue
            if ok[i] == 2:
                self.tx_offload_refused += 1
            start = i * batch.frame_capacity
            frame = data[start : start + int(batch.length[i])]
            tci = int(batch.vlan_tci[i])
            if tci >= 0:
                pieces = [
                    vnet[i * fk.VNET_HDR_LEN : (i + 1) * fk.VNET_HDR_LEN],
                    frame[:12],
                    struct.pack("!HH", offload.ETHERTYPE_VLAN, tci & 0xFFFF),
                    frame[12:],
                ]
            else:
                pieces = [vnet[i * fk.VNET_HDR_LEN : (i + 1) * fk.VNET_HDR_LEN], frame]
            try:
                os.writev(self._fd, pieces)
            except BlockingIOError:
                self.tx_dropped_full += 1
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self.tx_dropped_down += 1
                else:
                    self.tx_errors += 1
                    log.debug("tap %s write failed: %s", self.ifname, exc)
        self.tx_frames += count
        return count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        if self._fd is None:
            return 0
        room = min(limit, batch.capacity - batch.count, DEFAULT_READ_LIMIT)
        first = batch.count
        data = memoryview(batch.data)
        headers = memoryview(self._rx_vnet.reshape(-1))
        received = 0
        while received < room:
            index = first + received
            start = index * batch.frame_capacity
            try:
                header = headers[received * fk.VNET_HDR_LEN : (received + 1) * fk.VNET_HDR_LEN]
                got = os.readv(self._fd, [header, data[start : start + batch.frame_capacity]])
            except BlockingIOError:
                break
            except OSError as exc:
                self.rx_errors += 1
                log.debug("tap %s read failed: %s", self.ifname, exc)
                break
            if got < fk.VNET_HDR_LEN + offload.ETH_HEADER:
                self.rx_errors += 1
                continue
            if got - fk.VNET_HDR_LEN >= batch.frame_capacity:
                # A full slot may be a cut frame (readv cannot tell): never hand the guest half a frame.
                self.rx_truncated += 1
                continue
            batch.length[index] = got - fk.VNET_HDR_LEN
            batch.vlan_tci[index] = -1
            batch.tx_flags[index] = 0
            batch.l4_offset[index] = 0
            batch.mss[index] = 0
            batch.hash_value[index] = 0
            batch.hash_info[index] = 0
            batch.queue[index] = 0
            self._rx_flags[received] = self._rx_vnet[received, 0]
            received += 1
        if received:
            fk.tap_rx_checksums(
                batch.data,
                batch.frame_capacity,
                batch.length,
                batch.rx_checksum,
                self._rx_flags,
                first,
                received,
                self._parsed,
            )
            batch.count = first + received
            self.rx_frames += received
        return received

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._control is not None:
            self._control.close()
            self._control = None

    def counters(self) -> dict[str, int]:
        return {
            **super().counters(),
            "tx_dropped_full": self.tx_dropped_full,
            "tx_dropped_down": self.tx_dropped_down,
            "tx_errors": self.tx_errors,
            "tx_offload_refused": self.tx_offload_refused,
            "rx_errors": self.rx_errors,
            "rx_truncated": self.rx_truncated,
        }
