"""The emulated host's process loop: devices, channel open/close, signals, timers, shutdown.

Layer 7 (host). One ``HostServer`` serves every NIC of a root (``netvsc.host.tree``). It learns
of guest transmits the way Hyper-V does (spec/host.md 8, spec/vmbus.md 5, 8.8), and in no other
way (host#63: a guest that never signals sees no TX processed):

- monitored channels: the pending bit of the channel's monitor id in the trigger group's word
  of the shared monitor page, taken and cleared with one atomic exchange (no signal lost),
  scanned at the smallest latency the guests stored in ``latency[m]`` (100 ns units; 0 means the
  100 us Hyper-V default). After ``idle_after_s`` without any activity the scan slows to
  ``idle_scan_s`` (default 1 ms) so an idle host sleeps; the first signal found restores it;
- monitor-less channels: the relid's bit in the interrupt page's send half, plus the irq socket
  (``ROOT/dev/uioN/irq``): a 4-byte s32 ``v`` sets every channel's RX ``interrupt_mask`` to
  ``!v`` and, for ``v != 0``, counts as a signal for every monitor-less channel of the device, as
  the kernel's irqcontrol does (spec/vmbus.md 2.4). Host-to-guest interrupts add one to the
  device's cumulative count, sent back to each guest socket that wrote to the irq socket;
- channel open and close follow the ``open`` socket contract of ``netvsc.vmbus.uio``: the first
  connection opens the channel (ring headers re-initialised, the NetVSP's primary ``Channel``
  rebuilt over them), the last disconnect closes it (``NetVsp.channel_closed()``: back to
  VERSION; subchannels rescinded; host#66). The peer process of each connection (SO_PEERCRED)
  is the guest whose own memory backs GPAs outside the shared regions (``host.procmem``).

While frames flow the loop does not sleep: for ``busy_poll_s`` after a service read something
or a backend delivered frames, it scans again at once. A service handles at most
``service_budget`` frames; a channel it leaves with data keeps its mask set (so the guest does
not signal) and is serviced again on the next turn without a signal, and each backend is polled
for up to ``BACKEND_BATCHES_PER_TURN`` batches, so one busy ring cannot starve the others or
overflow a vswitch port. Sub-millisecond waits are slept, not given to epoll (which counts in
milliseconds).

Backends with a descriptor are waited on with ``selectors``; the others are polled once per
loop. ``tick(now)`` runs every loop. SIGINT and SIGTERM stop the loop; ``close`` removes the
tree and every shared file (host#67: subchannels before primaries).

The NetVSP comes from the module named by ``HostOptions.nic_module`` (default
``netvsc.host.nic``), which provides ``NicConfig`` and ``NetVsp``; tests may name a stand-in.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, ProtocolError
from netvsc.fastpath.atomics import atomic_load_u32, atomic_xchg_u32
from netvsc.host.backends import create_backend
from netvsc.host.backends.base import Backend
from netvsc.host.backends.vswitch import VSwitch
from netvsc.host.capture import wrap_backend
from netvsc.host.control import ControlServer
from netvsc.host.tree import DEFAULT_SIZES, DeviceTree, MapSizes, NicDevice
from netvsc.vmbus.uio import IRQ_SOCKET_NAME, OPEN_SOCKET_NAME
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    INTERRUPT_PAGE_SEND_OFFSET,
    MONITOR_GROUP_COUNT,
    MONITOR_GROUP_STRIDE,
    MONITOR_IDS_PER_GROUP,
    MONITOR_LATENCY_OFFSET,
    MONITOR_NONE,
    MONITOR_PENDING_OFFSET,
    RING_INTERRUPT_MASK,
)

__all__ = ["DEFAULT_LATENCY_S", "HostOptions", "HostServer", "default_mac", "take_pending_words"]

log = logging.getLogger(__name__)

DEFAULT_LATENCY_S = 100e-6  # Hyper-V's monitor latency when the guest stored 0 (spec/host.md 1.1)
LATENCY_UNIT_S = 100e-9
_IRQ_VALUE = struct.Struct("<i")
_PEER_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_GUEST_IRQ_NAME = re.compile(r"irq-guest-\d+-\d+")
_MONITOR_GROUP_WORDS = np.array(
    [(MONITOR_PENDING_OFFSET + MONITOR_GROUP_STRIDE * g) // 4 for g in range(MONITOR_GROUP_COUNT)],
    dtype=np.int64,
)


@njit(nogil=True, cache=True)
def take_pending_words(words, indices, out):  # pragma: no cover - body runs compiled
    """For each ``words[indices[i]]``: ``out[i]`` = its bits, cleared atomically; returns the OR of all.

    The plain load first keeps the common case (nothing pending) free of locked writes; the
    exchange then takes exactly the bits set up to that instant, so a bit the guest sets a moment
    later stays for the next scan (spec/vmbus.md 8.8).
    """
    seen = 0
    for i in range(indices.shape[0]):
        index = indices[i]
        if index < 0 or index >= words.shape[0]:
            out[i] = 0
            continue
        value = atomic_load_u32(words, index)
        if value != 0:
            value = atomic_xchg_u32(words, index, 0)
        out[i] = value
        seen |= value
    return seen


def _peer_pid(sock: socket.socket) -> int:
    """The process id at the other end of a Unix socket connection, 0 if the kernel will not say."""
    try:
        return _PEER_CREDENTIALS.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEER_CREDENTIALS.size)
        )[0]
    except OSError:
        return 0


def default_mac(index: int) -> bytes:
    """A locally administered MAC derived from the device index: 02:15:5d:00:HH:LL (index + 1)."""
    number = index + 1
    return bytes((0x02, 0x15, 0x5D, 0x00, (number >> 8) & 0xFF, number & 0xFF))


@dataclass
class HostOptions:
    """Everything ``netvsc host`` takes; validated by ``HostServer``."""

    root: Path
    devices: int = 1
    queues: int = 64
    macs: list[bytes] | None = None
    mtu: int = 1500
    backend: str = "loopback"
    monitor: bool = True
    nvsp_versions: tuple[int, ...] | None = None
    pcap_out: str | None = None
    link_change_delay_s: float | None = None
    vf_offer_delay_s: float | None = None
    sizes: MapSizes = DEFAULT_SIZES
    idle_scan_s: float = 1e-3
    idle_after_s: float = 0.2
    busy_poll_s: float = 200e-6  # after the last work, the loop spins this long before sleeping
    service_budget: int = 256  # frames one service() call handles before the loop moves on
    nic_module: str = "netvsc.host.nic"
    nic_extra: dict[str, Any] = field(default_factory=dict)


# Loop period while no guest has a device open (timers only; the selector wakes on opens).
NO_GUEST_WAIT_S = 0.05
# poll_backend() calls per NIC and loop turn while frames keep coming: a vswitch port's queue
# (1024 frames) drains faster than one service budget of another NIC can refill it.
BACKEND_BATCHES_PER_TURN = 4


class _Nic:
    """One NIC's run-time state in the server."""

    def __init__(self, device: NicDevice, config: Any, backend: Backend) -> None:
        self.device = device
        self.config = config
        self.backend = backend
        self.netvsp: Any = None
        self.netvsp_used = False  # the current NetVsp has served an open already
        self.rescinded = False  # removed by ctl rescind --device: no longer served
        self.open_connections: dict[int, socket.socket] = {}
        self.open_pids: dict[int, int] = {}  # connection fd -> guest process id (0: unknown)
        self.irq_peers: set[str] = set()
        self.interrupt_count = 0
        self.vf_fd: int | None = None  # the NetVSP's VF peer socket, registered with the selector
        self.dir_fd = os.open(device.dev_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.open_listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.open_listener.bind(self.address(OPEN_SOCKET_NAME))
        self.open_listener.listen(64)
        self.open_listener.setblocking(False)
        self.irq_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.irq_socket.bind(self.address(IRQ_SOCKET_NAME))
        self.irq_socket.setblocking(False)
        self.counters = {
            "channel_opens": 0,
            "channel_closes": 0,
            "monitor_signals": 0,
            "interrupt_page_signals": 0,
            "irq_writes": 0,
            "irq_bad_writes": 0,
            "interrupts_sent": 0,
            "service_calls": 0,
            "service_errors": 0,
            "backend_errors": 0,
            "rescinds": 0,
        }

    def address(self, name: str) -> str:
        # sun_path holds 107 bytes; roots can be deeper, so go through the directory's fd.
        return f"/proc/self/fd/{self.dir_fd}/{name}"

    @property
    def is_open(self) -> bool:
        return bool(self.open_connections)

    def publish_guest_pids(self) -> None:
        """Guest processes whose memory backs GPAs outside shared regions, newest open first."""
        self.device.guest_memory.processes.set_pids(list(reversed(self.open_pids.values())))

    def close_sockets(self) -> None:
        for sock in self.open_connections.values():
            sock.close()
        self.open_connections.clear()
        self.open_pids.clear()
        self.open_listener.close()
        self.irq_socket.close()
        if self.dir_fd >= 0:  # idempotent: a rescinded NIC is closed again at shutdown
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)
            self.dir_fd = -1


class HostServer:
    """The host process: builds the tree and NICs, runs the loop, removes everything on ``close``."""

    def __init__(self, options: HostOptions, *, clock=time.monotonic) -> None:
        self.options = options
        self.clock = clock
        self._validate(options)
        self.nic_module = importlib.import_module(options.nic_module)
        self.tree = DeviceTree(options.root, options.sizes)
        self.nics: list[_Nic] = []
        self.control: ControlServer | None = None
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.loops = 0
        self.unknown_signal_bits = 0
        self._dispatch_key: tuple = ()
        self._monitor_targets: dict[int, tuple[_Nic, int]] = {}
        self._int_targets: dict[int, tuple[_Nic, int]] = {}
        self._int_word_indices = np.zeros(0, dtype=np.int64)
        self._int_words_out = np.zeros(0, dtype=np.uint32)
        self._group_out = np.zeros(MONITOR_GROUP_COUNT, dtype=np.uint32)
        self._last_activity = 0.0
        self._last_work = -1.0  # when a service or a backend poll last moved anything
        # Channels a budgeted service left with data: serviced again without a signal.
        self._unfinished: set[tuple[_Nic, int]] = set()
        self._vswitch: Any = None
        self.tree.create()
        try:
            self.monitor_words = self.tree.monitor_page.view(np.uint32)
            self.monitor_latencies = self.tree.monitor_page[
                MONITOR_LATENCY_OFFSET : MONITOR_LATENCY_OFFSET
                + 2 * MONITOR_GROUP_COUNT * MONITOR_IDS_PER_GROUP
            ].view(np.uint16)
            self.int_words = self.tree.int_page.view(np.uint32)
            for index in range(options.devices):
                self._add_nic(index)
            self.control = ControlServer(self.tree.root, self.handle_control)
            self.selector.register(self.control.fileno(), selectors.EVENT_READ, ("ctl-listen", None))
        except BaseException:
            self.close()
            raise

    # -- set-up ---------------------------------------------------------------------------

    @staticmethod
    def _validate(options: HostOptions) -> None:
        if not 1 <= options.devices <= 64:
            raise ConfigError("devices", options.devices, "1..64 NICs")
        if not 1 <= options.queues <= 64:
            raise ConfigError("queues", options.queues, "1..64 channels per NIC")
        if not 68 <= options.mtu <= 9216 - 14:
            raise ConfigError("mtu", options.mtu, "68..9202 bytes (IP MTU; the frame adds 14)")
        if options.macs is not None:
            if len(options.macs) != options.devices:
                raise ConfigError("mac", len(options.macs), f"one MAC per device ({options.devices})")
            for mac in options.macs:
                if len(mac) != 6 or mac[0] & 1:
                    raise ConfigError("mac", mac.hex(":"), "a 6-byte unicast MAC address")
        if options.idle_scan_s < 0 or options.idle_after_s < 0 or options.busy_poll_s < 0:
            raise ConfigError("idle scan", options.idle_scan_s, "non-negative seconds")
        if options.service_budget < 1:
            raise ConfigError("service budget", options.service_budget, "at least 1 frame")

    def _make_backend(self, index: int) -> Backend:
        spec = self.options.backend
        if spec.split(":", 1)[0] == "vswitch" and self._vswitch is None:
            self._vswitch = VSwitch()
        backend = create_backend(spec, nic_index=index, vswitch=self._vswitch)
        if self.options.pcap_out:
            backend = wrap_backend(backend, self.options.pcap_out, nic_index=index)
        return backend

    def _add_nic(self, index: int) -> None:
        device = self.tree.add_nic(monitor=self.options.monitor)
        mac = self.options.macs[index] if self.options.macs else default_mac(index)
        config_args: dict[str, Any] = {"mac": mac, "mtu": self.options.mtu, "max_queues": self.options.queues}
        if self.options.nvsp_versions:
            config_args["nvsp_versions"] = tuple(self.options.nvsp_versions)
        if self.options.link_change_delay_s is not None:
            config_args["link_change_delay_s"] = self.options.link_change_delay_s
        if self.options.vf_offer_delay_s is not None:
            config_args["vf_offer_delay_s"] = self.options.vf_offer_delay_s
        config_args.update(self.options.nic_extra)
        config = self.nic_module.NicConfig(**config_args)
        backend = self._make_backend(index)
        nic = _Nic(device, config, backend)
        self.nics.append(nic)
        device.signal_guest = lambda relid, nic=nic: self._interrupt_guest(nic)
        nic.netvsp = self._new_netvsp(nic)
        self.selector.register(nic.open_listener.fileno(), selectors.EVENT_READ, ("open-listen", nic))
        self.selector.register(nic.irq_socket.fileno(), selectors.EVENT_READ, ("irq", nic))
        backend_fd = backend.fileno()
        if backend_fd is not None:
            self.selector.register(backend_fd, selectors.EVENT_READ, ("backend", nic))

    def _new_netvsp(self, nic: _Nic) -> Any:
        nic.netvsp_used = False
        netvsp = self.nic_module.NetVsp(nic.config, nic.device, nic.backend, clock=self.clock)
        if hasattr(netvsp, "service_budget"):
            netvsp.service_budget = self.options.service_budget
        return netvsp

    # -- channel open / close (uio open socket) ---------------------------------------------

    def _accept_open(self, nic: _Nic) -> None:
        while True:
            try:
                sock, _ = nic.open_listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            first = not nic.open_connections
            nic.open_connections[sock.fileno()] = sock
            nic.open_pids[sock.fileno()] = _peer_pid(sock)
            nic.publish_guest_pids()
            self.selector.register(sock.fileno(), selectors.EVENT_READ, ("open-conn", nic))
            if first:
                self._channel_open(nic)
            # The open is synchronous for the guest (uio contract): it waits for this byte.
            with contextlib.suppress(OSError):
                sock.send(b"\x01")

    def _open_readable(self, nic: _Nic, fd: int) -> None:
        sock = nic.open_connections.get(fd)
        if sock is None:
            return
        try:
            data = sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            return  # the contract has the guest send nothing; ignore it
        self.selector.unregister(fd)
        sock.close()
        del nic.open_connections[fd]
        nic.open_pids.pop(fd, None)
        nic.publish_guest_pids()
        if not nic.open_connections:
            self._channel_close(nic)

    def _channel_open(self, nic: _Nic) -> None:
        nic.device.rescind_subchannels()
        nic.device.reset_rings()
        if nic.netvsp_used:
            # The NetVSP was sent back to VERSION by channel_closed() and keeps what outlives a
            # close (a VF given to the guest, host.md 1.1); it takes a primary Channel over the
            # re-initialised headers so its cursors start where the guest's do.
            nic.netvsp.channel_opened(nic.device.primary_channel())
        nic.netvsp_used = True
        self._refresh_dispatch(force=True)
        nic.counters["channel_opens"] += 1  # counted once done: observers see the finished open
        log.info("nic %d: channel opened", nic.device.index)

    def _channel_close(self, nic: _Nic) -> None:
        try:
            nic.netvsp.channel_closed()
        except Exception:
            nic.counters["service_errors"] += 1
            log.exception("nic %d: channel_closed failed", nic.device.index)
        nic.device.rescind_subchannels()
        nic.irq_peers.clear()
        self._refresh_dispatch(force=True)
        nic.counters["channel_closes"] += 1  # counted once done: observers see the finished close
        log.info("nic %d: channel closed", nic.device.index)

    # -- signals from the guest --------------------------------------------------------------

    def _refresh_dispatch(self, force: bool = False) -> None:
        key = tuple((nic.is_open, len(nic.device.subchannels)) for nic in self.nics)
        if key == self._dispatch_key and not force:
            return
        self._dispatch_key = key
        self._monitor_targets = {}
        self._int_targets = {}
        for nic in self.nics:
            if not nic.is_open or nic.rescinded:
                continue
            relids = nic.device.channel_relids()
            for channel_index, monitor_id in enumerate(nic.device.channel_monitor_ids()):
                if monitor_id != MONITOR_NONE:
                    self._monitor_targets[monitor_id] = (nic, channel_index)
                else:
                    self._int_targets[relids[channel_index]] = (nic, channel_index)
        words = sorted({(INTERRUPT_PAGE_SEND_OFFSET + 4 * (relid // 32)) // 4 for relid in self._int_targets})
        self._int_word_indices = np.array(words, dtype=np.int64)
        self._int_words_out = np.zeros(len(words), dtype=np.uint32)

    def scan_interval(self, now: float) -> float:
        """Seconds until the next monitor-page scan: none while a channel is unfinished or work
        was done in the last ``busy_poll_s`` (the loop spins while frames flow), otherwise the
        smallest latency any open guest asked for."""
        if self._unfinished or now - self._last_work < self.options.busy_poll_s:
            return 0.0
        latency = None
        for monitor_id in self._monitor_targets:
            units = int(self.monitor_latencies[monitor_id])
            value = units * LATENCY_UNIT_S if units else DEFAULT_LATENCY_S
            latency = value if latency is None else min(latency, value)
        if latency is None:
            if not self._int_targets:
                # No guest has a channel open: nothing to scan; opens and ctl wake the selector.
                return NO_GUEST_WAIT_S
            latency = DEFAULT_LATENCY_S
        if self.options.idle_scan_s and now - self._last_activity > self.options.idle_after_s:
            latency = max(latency, self.options.idle_scan_s)
        return latency

    def scan_signals(self) -> int:
        """One scan of the monitor page and the interrupt page; services each signalled channel."""
        self._refresh_dispatch()  # subchannels may have come or gone (a request, a ctl rescind)
        serviced = 0
        if self._monitor_targets and take_pending_words(
            self.monitor_words, _MONITOR_GROUP_WORDS, self._group_out
        ):
            for group in range(MONITOR_GROUP_COUNT):
                bits = int(self._group_out[group])
                while bits:
                    bit = (bits & -bits).bit_length() - 1
                    bits &= bits - 1
                    target = self._monitor_targets.get(group * MONITOR_IDS_PER_GROUP + bit)
                    if target is None:
                        self.unknown_signal_bits += 1
                        continue
                    target[0].counters["monitor_signals"] += 1
                    self._service(*target)
                    serviced += 1
        if self._int_word_indices.shape[0] and take_pending_words(
            self.int_words, self._int_word_indices, self._int_words_out
        ):
            for position, word_index in enumerate(self._int_word_indices):
                bits = int(self._int_words_out[position])
                base_relid = (int(word_index) * 4 - INTERRUPT_PAGE_SEND_OFFSET) * 8
                while bits:
                    bit = (bits & -bits).bit_length() - 1
                    bits &= bits - 1
                    target = self._int_targets.get(base_relid + bit)
                    if target is None:
                        self.unknown_signal_bits += 1
                        continue
                    target[0].counters["interrupt_page_signals"] += 1
                    self._service(*target)
                    serviced += 1
        return serviced

    def _service(self, nic: _Nic, channel_index: int) -> None:
        nic.counters["service_calls"] += 1
        self._last_activity = self.clock()
        key = (nic, channel_index)
        try:
            if nic.netvsp.service(channel_index):
                self._last_work = self._last_activity
        except ProtocolError as exc:
            nic.counters["service_errors"] += 1
            log.warning("nic %d channel %d: %s", nic.device.index, channel_index, exc)
        except Exception:
            nic.counters["service_errors"] += 1
            log.exception("nic %d channel %d: service failed", nic.device.index, channel_index)
        if channel_index in getattr(nic.netvsp, "unfinished", ()):
            self._unfinished.add(key)
        else:
            self._unfinished.discard(key)
        self._refresh_dispatch()

    def _service_unfinished(self) -> None:
        """Go on with the channels a budgeted service left with data: no signal will come for
        them, the host keeps their mask set until their ring is empty."""
        for key in list(self._unfinished):
            nic, channel_index = key
            if nic.rescinded or not nic.is_open:
                self._unfinished.discard(key)
                continue
            self._service(nic, channel_index)

    def _irq_readable(self, nic: _Nic) -> None:
        while True:
            try:
                data, address = nic.irq_socket.recvfrom(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) != 4:
                nic.counters["irq_bad_writes"] += 1  # the kernel refuses other sizes with EINVAL
                continue
            nic.counters["irq_writes"] += 1
            peer = os.path.basename(address) if isinstance(address, str) else ""
            if _GUEST_IRQ_NAME.fullmatch(peer) and peer not in nic.irq_peers:
                nic.irq_peers.add(peer)
                if nic.interrupt_count:
                    # A new reader sees the count as it stands, as a fresh read of /dev/uioN would.
                    self._send_count(nic, peer)
            value = _IRQ_VALUE.unpack(data)[0]
            # irqcontrol: RX interrupt_mask = !value on the primary and every subchannel (2.4).
            areas = [nic.device.rings] + [s.area for s in nic.device.subchannels]
            for area in areas:
                half = area.shape[0] // 2
                area[half : half + HV_PAGE_SIZE].view(np.uint32)[RING_INTERRUPT_MASK] = 0 if value else 1
            if value and nic.is_open:
                # ... and the hypercall for every channel without a monitor.
                for channel_index, monitor_id in enumerate(nic.device.channel_monitor_ids()):
                    if monitor_id == MONITOR_NONE:
                        self._service(nic, channel_index)

    def _interrupt_guest(self, nic: _Nic) -> None:
        """One host-to-guest interrupt: the cumulative count goes to every guest irq socket."""
        nic.interrupt_count = (nic.interrupt_count + 1) & 0x7FFFFFFF
        nic.counters["interrupts_sent"] += 1
        for peer in list(nic.irq_peers):
            self._send_count(nic, peer)

    @staticmethod
    def _send_count(nic: _Nic, peer: str) -> None:
        try:
            nic.irq_socket.sendto(_IRQ_VALUE.pack(nic.interrupt_count), nic.address(peer))
        except BlockingIOError:
            pass  # the guest has unread counts; the next one carries this one too
        except OSError:
            nic.irq_peers.discard(peer)

    # -- control ------------------------------------------------------------------------------

    def _selected(self, request: dict) -> list[_Nic]:
        nic = request.get("nic")
        if nic is None:
            return self.nics
        if isinstance(nic, bool) or not isinstance(nic, int) or not 0 <= nic < len(self.nics):
            raise ConfigError("nic", nic, f"0..{len(self.nics) - 1}")
        return [self.nics[nic]]

    def handle_control(self, request: dict) -> dict:
        command = request["command"]
        args = {k: v for k, v in request.items() if k not in ("command", "nic")}
        if command == "ping":
            return {"pid": os.getpid(), "devices": len(self.nics)}
        if command == "status":
            return {"pid": os.getpid(), "nics": [self._status(nic) for nic in self.nics]}
        if command == "shutdown":
            self.stopping = True
            return {}
        if command == "counters":
            return {"nics": [self._counters(nic) for nic in self._selected(request)]}
        if command == "rescind" and args.get("device"):
            for nic in self._selected(request):
                self._rescind_device(nic)
            return {"rescinded": [nic.device.guid for nic in self._selected(request)]}
        if command in ("link", "mtu", "vf_offer", "vf_revoke", "rescind", "fault"):
            results = []
            for nic in self._selected(request):
                try:
                    results.append(nic.netvsp.control(command, **args) or {})
                finally:
                    self._sync_vf_fd(nic)
            return {"results": results}
        raise ConfigError(
            "command",
            command,
            "ping, status, counters, link, mtu, vf_offer, vf_revoke, rescind, fault, shutdown",
        )

    def _sync_vf_fd(self, nic: _Nic) -> None:
        """Wait on the NetVSP's VF peer socket while it has one (host.md 7: frames the guest sends
        on its VF); nothing is polled for a NIC without a VF."""
        vf_fileno = getattr(nic.netvsp, "vf_fileno", None)
        fd = vf_fileno() if vf_fileno is not None and not nic.rescinded else None
        if fd == nic.vf_fd:
            return
        if nic.vf_fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(nic.vf_fd)
        nic.vf_fd = None
        if fd is not None:
            self.selector.register(fd, selectors.EVENT_READ, ("vf", nic))
            nic.vf_fd = fd

    def _poll_vf(self, nic: _Nic) -> None:
        try:
            for _ in range(BACKEND_BATCHES_PER_TURN):
                if not nic.netvsp.poll_vf():
                    break
                self._last_activity = self._last_work = self.clock()
        except Exception:
            nic.counters["backend_errors"] += 1
            log.exception("nic %d: VF poll failed", nic.device.index)

    def _rescind_device(self, nic: _Nic) -> None:
        """Device removal (host.md 10, host#67): subchannels first, then the primary; the guest's
        open connection is hung up (a real uio fd then returns EIO) and the tree entries vanish."""
        if nic.rescinded:
            return
        if nic.is_open:
            with contextlib.suppress(Exception):
                nic.netvsp.channel_closed()
        for fd in [*nic.open_connections, nic.open_listener.fileno(), nic.irq_socket.fileno()]:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)
        backend_fd = nic.backend.fileno()
        if backend_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(backend_fd)
        if nic.vf_fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(nic.vf_fd)
            nic.vf_fd = None
        nic.close_sockets()
        nic.device.remove()
        self.tree.nics.remove(nic.device)
        nic.rescinded = True
        nic.counters["rescinds"] += 1
        self._refresh_dispatch(force=True)
        log.info("nic %d: device rescinded", nic.device.index)

    def _status(self, nic: _Nic) -> dict:
        device = nic.device
        return {
            "index": device.index,
            "guid": device.guid,
            "uio": device.uio_name,
            "relid": device.relid,
            "monitor_id": device.monitor_id,
            "mac": nic.config.mac.hex(":") if isinstance(nic.config.mac, bytes) else str(nic.config.mac),
            "open": nic.is_open,
            "rescinded": nic.rescinded,
            "subchannels": [s.relid for s in device.subchannels],
        }

    def _counters(self, nic: _Nic) -> dict:
        try:
            netvsp = dict(nic.netvsp.counters())
        except Exception as exc:
            netvsp = {"error": str(exc)}
        session = getattr(nic.netvsp, "session", None)  # the primary's NVSP session (a stand-in has none)
        return {
            "index": nic.device.index,
            "host": dict(nic.counters),
            "nvsp": {"version": int(getattr(session, "version", 0) or 0)},
            "netvsp": netvsp,
            "backend": dict(nic.backend.counters()),
            "guest_memory": {
                "rescans": nic.device.guest_memory.rescans,
                "refused": nic.device.guest_memory.refused,
                "process_reads": nic.device.guest_memory.processes.reads,
                "process_writes": nic.device.guest_memory.processes.writes,
                "process_faults": nic.device.guest_memory.processes.faults,
            },
        }

    # -- the loop -------------------------------------------------------------------------------

    def run_once(self, max_wait: float | None = None) -> None:
        """One loop turn: wait for descriptors up to the next scan, scan, poll backends, tick."""
        now = self.clock()
        wait = self.scan_interval(now)
        if max_wait is not None:
            wait = min(wait, max_wait)
        for key, _events in self._select(wait):
            kind, nic = key.data
            if kind == "open-listen":
                self._accept_open(nic)
            elif kind == "open-conn":
                self._open_readable(nic, key.fd)
            elif kind == "irq":
                self._irq_readable(nic)
            elif kind == "backend":
                self._poll_backend(nic)
            elif kind == "vf":
                self._poll_vf(nic)
            elif kind == "ctl-listen":
                sock = self.control.accept()
                if sock is not None:
                    self.selector.register(sock.fileno(), selectors.EVENT_READ, ("ctl-conn", None))
            elif kind == "ctl-conn" and not self.control.readable(key.fd):
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(key.fd)
        self.scan_signals()
        self._service_unfinished()
        now = self.clock()
        for nic in self.nics:
            if nic.rescinded:
                continue
            if nic.backend.fileno() is None:
                self._poll_backend(nic)
            try:
                nic.netvsp.tick(now)
            except Exception:
                nic.counters["service_errors"] += 1
                log.exception("nic %d: tick failed", nic.device.index)
        self.loops += 1

    def _select(self, wait: float) -> list:
        """``selector.select(wait)`` with sub-millisecond waits kept: epoll rounds its timeout up
        to whole milliseconds, which would make a 50 us monitor latency 1 ms."""
        if not 0 < wait < 1e-3:
            return self.selector.select(wait)
        events = self.selector.select(0)
        if events:
            return events
        time.sleep(wait)
        return self.selector.select(0)

    def _poll_backend(self, nic: _Nic) -> None:
        try:
            for _ in range(BACKEND_BATCHES_PER_TURN):
                if not nic.netvsp.poll_backend():
                    break
                self._last_activity = self._last_work = self.clock()
        except Exception:
            nic.counters["backend_errors"] += 1
            log.exception("nic %d: backend poll failed", nic.device.index)

    def serve_forever(self) -> None:
        """Run until SIGINT, SIGTERM or the ``shutdown`` command; handlers restored afterwards."""

        def stop(signum: int, _frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            self.stopping = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stopping:
                self.run_once()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def close(self) -> None:
        """Stop serving and remove the tree, the sockets and all shared memory files."""
        for nic in self.nics:
            with contextlib.suppress(Exception):
                if nic.netvsp is not None:
                    nic.netvsp.close()
            with contextlib.suppress(Exception):
                nic.backend.close()
            nic.close_sockets()
        if self._vswitch is not None and hasattr(self._vswitch, "close"):
            with contextlib.suppress(Exception):
                self._vswitch.close()
        if self.control is not None:
            self.control.close()
            self.control = None
        with contextlib.suppress(Exception):
            self.selector.close()
        self.nics.clear()
        self.tree.remove()

    def __enter__(self) -> HostServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
