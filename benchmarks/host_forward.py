"""Host forward-path cost: ns per frame from NIC 0's guest TX ring to NIC 1's guest RX ring.

Outside the package (it drives the host through the test suite's ``miniguest`` for bring-up).
Two emulated NICs on one vswitch (``netvsc host --devices 2 --backend vswitch``); a guest
stand-in, written as numba kernels so it costs next to nothing, plays a fast poll-mode driver:

- NIC 0 transmits: ``section`` mode puts up to 8 RNDIS PACKET messages in each send-buffer
  section (tx_copybreak aggregation; 8 is the host's max_packets_per_message, host.md 4.2) and
  posts one SEND_RNDIS_PACKET per section; ``gpa`` mode sends every frame as a GPA-direct packet
  with two ranges, the RNDIS header and the frame, as DPDK does above tx_copybreak;
- NIC 1 receives: every transfer-page packet is counted and completed at once;
- NIC 0's send completions are drained.

Modes of measurement:

- ``direct`` (default): host and stand-in in this process, one thread. Each round the stand-in
  prefills NIC 0's TX ring, then the host's work is timed alone: NIC 0's ``service`` (ring read,
  RNDIS parse, completions, vswitch forward), NIC 1's ``poll_backend`` until the switch queue is
  empty (slots, transfer-page packets) and NIC 1's ``service`` (the receive completions the
  stand-in wrote for the previous round). Reported: host ns/frame, median of the runs.
- ``process``: ``netvsc host`` in its own process pinned to CPU 0, the stand-in pinned to CPU 1
  in one nogil kernel loop for ``--seconds``; reported: frames/s and Gbit/s (frame bytes)
  delivered to NIC 1, median of the runs. This is issue 5's end-to-end shape with the
  cheapest possible guest.

    python benchmarks/host_forward.py --frame-size 64 --runs 5
    python benchmarks/host_forward.py --frame-size 1500 --tx gpa
    python benchmarks/host_forward.py --mode process --seconds 3 --json

``NETVSC_BENCH_SRC=/other/checkout/src`` measures another version of the package with the same
stand-in (the "before" of a change).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from numba import njit

HERE = Path(__file__).resolve().parent
# The package measured: this checkout's, or another one's (NETVSC_BENCH_SRC=/old/checkout/src) to
# compare versions with the same benchmark.
SRC = Path(os.environ.get("NETVSC_BENCH_SRC", HERE.parent / "src")).resolve()
sys.path.insert(0, str(HERE.parent / "tests"))  # miniguest: bring-up only
sys.path.insert(0, str(SRC))

from miniguest import MiniGuest  # noqa: E402
from netvsc.fastpath.atomics import atomic_load_u32, atomic_or_u32, full_fence  # noqa: E402
from netvsc.fastpath.ring import (  # noqa: E402
    ring_commit,
    ring_read_batch,
    ring_take_signal,
    ring_write_batch,
    ring_write_inband_batch,
)
from netvsc.host.server import HostOptions, HostServer, default_mac  # noqa: E402
from netvsc.host.tree import MapSizes  # noqa: E402
from netvsc.vmbus.guestmem import GuestMemoryRegion  # noqa: E402
from netvsc.wire import ndis, nvsp, rndis  # noqa: E402
from netvsc.wire.vmbus import (  # noqa: E402
    MONITOR_GROUP_STRIDE,
    MONITOR_PENDING_OFFSET,
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_INBAND,
    PACKET_TYPE_XFER_PAGES,
    RING_INTERRUPT_MASK,
    encode_gpa_direct_packet,
)

PACKETS_PER_SECTION = 8  # max_packets_per_message in the host's INITIALIZE_CMPLT (host.md 4.2)
SECTION_SIZE = 6144
# The host's default map sizes (tree.DEFAULT_SIZES), subchannel rings aside (none are opened).
SIZES = MapSizes(rings=4 << 20, recv_buffer=31 << 20, send_buffer=16 << 20, subchannel_ring=64 << 10)
_COMPLETION_PAYLOAD = np.frombuffer(
    nvsp.encode_send_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS), dtype=np.uint8
)
_SCRATCH_BYTES = 4 << 20


# ---------------------------------------------------------------------------------------------
# Frames and the stand-in's prebuilt packets


def udp_frame(size: int, src_mac: bytes, dst_mac: bytes) -> bytes:
    """An IPv4/UDP frame of ``size`` bytes (no FCS) with correct checksums."""
    from netvsc.fastpath.checksum import internet_checksum

    payload_length = size - 14 - 20 - 8
    ip = bytearray(20)
    ip[0] = 0x45
    ip[2:4] = (20 + 8 + payload_length).to_bytes(2, "big")
    ip[6] = 0x40  # DF
    ip[8] = 64
    ip[9] = 17
    ip[12:16] = bytes((198, 18, 0, 1))
    ip[16:20] = bytes((198, 19, 0, 1))
    ip[10:12] = int(internet_checksum(np.frombuffer(bytes(ip), dtype=np.uint8), 0, 20)).to_bytes(2, "big")
    payload = bytes(i & 0xFF for i in range(payload_length))
    udp = bytearray(8)
    udp[0:2] = (1024).to_bytes(2, "big")
    udp[2:4] = (1025).to_bytes(2, "big")
    udp[4:6] = (8 + payload_length).to_bytes(2, "big")
    pseudo = bytes(ip[12:20]) + bytes((0, 17)) + (8 + payload_length).to_bytes(2, "big")
    checksum = int(internet_checksum(np.frombuffer(pseudo + bytes(udp) + payload, dtype=np.uint8), 0,
                                     len(pseudo) + 8 + payload_length))
    udp[6:8] = (checksum or 0xFFFF).to_bytes(2, "big")
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip) + bytes(udp) + payload


class SectionSends:
    """Every send-buffer section prefilled with aggregated PACKET messages; one SEND_RNDIS_PACKET
    payload per section, posted as in-band packets."""

    def __init__(self, send_buffer: np.ndarray, frame: bytes, per_section: int) -> None:
        message = rndis.encode_packet_msg(frame, align=8)
        per_section = min(per_section, SECTION_SIZE // len(message))
        self.frames_per_packet = per_section
        self.sections = send_buffer.shape[0] // SECTION_SIZE
        section_bytes = len(message) * per_section
        block = np.frombuffer(message * per_section, dtype=np.uint8)
        payloads = bytearray()
        for section in range(self.sections):
            start = section * SECTION_SIZE
            send_buffer[start : start + section_bytes] = block
            payloads += nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA, section, section_bytes)
        size = nvsp.NVSP_GUEST_MESSAGE_SIZE
        self.blob = np.frombuffer(bytes(payloads), dtype=np.uint8).copy()
        self.offsets = np.arange(self.sections + 1, dtype=np.int64) * size
        self.tids = np.arange(1, self.sections + 1, dtype=np.int64)


class GpaSends:
    """DPDK's GPA-direct send: one packet per frame with two ranges (RNDIS header, frame)."""

    def __init__(self, memory: GuestMemoryRegion, frame: bytes, count: int) -> None:
        self.frames_per_packet = 1
        message = rndis.encode_packet_msg(frame)
        header = message[: rndis.RNDIS_PACKET_HEADER_SIZE]
        packets = []
        self.memory = memory
        for index in range(count):
            header_at = index * 64
            frame_at = (1 << 20) + index * 2048
            memory.array[header_at : header_at + len(header)] = np.frombuffer(header, dtype=np.uint8)
            memory.array[frame_at : frame_at + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
            ranges = [memory.page_range(header_at, len(header)), memory.page_range(frame_at, len(frame))]
            packet = encode_gpa_direct_packet(
                ranges, nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA), index + 1
            )
            packets.append(packet)
        self.blob = np.frombuffer(b"".join(packets), dtype=np.uint8).copy()
        self.offsets = np.zeros(count + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(p) for p in packets])
        self.sections = count
        self.tids = np.arange(1, count + 1, dtype=np.int64)  # as written into the packets


# ---------------------------------------------------------------------------------------------
# Stand-in kernels


@njit(nogil=True, cache=True)
def post_inband(header, data, state, blob, offsets, tids, first, count):
    """Post ``count`` prebuilt SEND_RNDIS_PACKET payloads from index ``first``; returns how many."""
    return ring_write_inband_batch(
        header,
        data,
        state,
        blob,
        offsets[first : first + count + 1],
        count,
        PACKET_TYPE_INBAND,
        PACKET_FLAG_COMPLETION_REQUESTED,
        tids[first : first + count],
    )


@njit(nogil=True, cache=True)
def post_raw(header, data, state, blob, offsets, first, count):
    """Post ``count`` prebuilt whole packets (GPA-direct) from index ``first``."""
    return ring_write_batch(header, data, state, blob, offsets[first : first + count + 1], count)


def completion_blob(count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` copies of SEND_RNDIS_PACKET_COMPLETE(success), and their offsets."""
    blob = np.tile(_COMPLETION_PAYLOAD, count)
    return blob, np.arange(count + 1, dtype=np.int64) * _COMPLETION_PAYLOAD.shape[0]


# results words
R_FRAMES = 0  # ranges of transfer-page packets received (frames)
R_COMPLETIONS = 1  # send completions received
R_PACKETS = 2
R_SIGNAL = 3  # a commit freed space a blocked host asked for: signal it
R_DONE = 4  # completion ids in ``done`` from the last drain call
R_POSTED = 5
R_LAST_RANGE = 6  # the last range received as its ring bytes: offset << 32 | byte count
R_LOOPS = 7  # turns of the process-mode stand-in
R_WORDS = 8


@njit(nogil=True, cache=True)
def drain(
    rx_header, rx_data, rx_state, tx_header, tx_data, tx_state,
    scratch, offsets, comp_blob, comp_offsets, tids, done, results,
):  # pragma: no cover - compiled
    """Read every packet of a guest RX ring: transfer-page packets are counted (frames = ranges)
    and completed at once; the transaction ids of send completions go to ``done``
    (``results[R_DONE]`` of them). Returns the packets read."""
    total = 0
    results[R_DONE] = 0
    batch = min(tids.shape[0], comp_offsets.shape[0] - 1)
    while True:
        count = ring_read_batch(rx_header, rx_data, rx_state, scratch, offsets, batch)
        if count <= 0:
            break
        to_complete = 0
        for i in range(count):
            at = offsets[i]
            packet_type = np.int64(scratch[at]) | (np.int64(scratch[at + 1]) << 8)
            tid = np.int64(0)
            for b in range(8):
                tid |= np.int64(scratch[at + 8 + b]) << (8 * b)
            if packet_type == PACKET_TYPE_XFER_PAGES:
                ranges = np.int64(scratch[at + 20]) | (np.int64(scratch[at + 21]) << 8)
                results[R_FRAMES] += ranges
                last = at + 24 + 8 * (ranges - 1)
                if ranges > 0 and last + 8 <= offsets[i + 1]:
                    word = np.int64(0)
                    for b in range(8):
                        word |= np.int64(scratch[last + b]) << (8 * b)
                    results[R_LAST_RANGE] = word
                tids[to_complete] = tid
                to_complete += 1
            elif packet_type == PACKET_TYPE_COMPLETION:
                if results[R_DONE] < done.shape[0]:
                    done[results[R_DONE]] = tid
                    results[R_DONE] += 1
                results[R_COMPLETIONS] += 1
        if ring_commit(rx_header, rx_data, rx_state) == 1:
            results[R_SIGNAL] = 1
        written = 0
        while written < to_complete:
            n = ring_write_inband_batch(
                tx_header, tx_data, tx_state, comp_blob, comp_offsets, to_complete - written,
                PACKET_TYPE_COMPLETION, 0, tids[written:to_complete],
            )
            if n <= 0:
                break  # the host's ring is full (it reads as fast as it can): the slots stay held
            written += n
        results[R_PACKETS] += count
        total += count
    return total


@njit(nogil=True, cache=True)
def _signal(words, word_index, bit):
    full_fence()
    atomic_or_u32(words, word_index, bit)


@njit(nogil=True, cache=True)
def guest_loop(
    tx0, rx0, tx1, rx1, blob, offsets, tids, gpa, in_flight_max, burst, monitor_words, signals,
    scratch, scratch_offsets, comp_blob, comp_offsets, comp_tids, done, results, stop,
):  # pragma: no cover - compiled
    """The ``process`` mode stand-in, until ``stop[0]`` becomes non-zero: keep NIC 0's ring fed
    (``burst`` sends per write, at most ``in_flight_max`` outstanding, a send's buffer reused once
    its completion is back), drain and complete NIC 1. ``tx0`` ... are (header, data, state)
    tuples; ``signals`` holds (word index, bit) of NIC 0's and NIC 1's monitor ids."""
    sends = offsets.shape[0] - 1
    free = np.empty(sends, dtype=np.int64)
    for i in range(sends):
        free[i] = sends - 1 - i  # a stack: lowest index on top
    free_count = min(sends, in_flight_max)
    base = sends - free_count
    for i in range(free_count):
        free[i] = free[base + i]
    outstanding = np.zeros(sends, dtype=np.uint8)  # a completion frees only what is out
    while atomic_load_u32(stop, 0) == 0:
        results[R_LOOPS] += 1
        posted = 0
        while free_count > 0 and posted < burst:
            first = free[free_count - 1]
            if gpa:
                written = ring_write_batch(tx0[0], tx0[1], tx0[2], blob, offsets[first : first + 2], 1)
            else:
                written = ring_write_inband_batch(
                    tx0[0], tx0[1], tx0[2], blob, offsets[first : first + 2], 1, PACKET_TYPE_INBAND,
                    PACKET_FLAG_COMPLETION_REQUESTED, tids[first : first + 1],
                )
            if written <= 0:
                break
            outstanding[first] = 1
            free_count -= 1
            posted += 1
        results[R_POSTED] += posted
        if ring_take_signal(tx0[0], tx0[2]):
            _signal(monitor_words, signals[0], signals[1])
        drain(rx0[0], rx0[1], rx0[2], tx0[0], tx0[1], tx0[2], scratch, scratch_offsets, comp_blob,
              comp_offsets, comp_tids, done, results)
        for k in range(results[R_DONE]):
            tid = done[k]
            if 1 <= tid <= sends and outstanding[tid - 1]:
                outstanding[tid - 1] = 0
                free[free_count] = tid - 1
                free_count += 1
        if results[R_SIGNAL]:
            results[R_SIGNAL] = 0
            _signal(monitor_words, signals[0], signals[1])
        drain(rx1[0], rx1[1], rx1[2], tx1[0], tx1[1], tx1[2], scratch, scratch_offsets, comp_blob,
              comp_offsets, comp_tids, done, results)
        if ring_take_signal(tx1[0], tx1[2]) or results[R_SIGNAL]:
            results[R_SIGNAL] = 0
            _signal(monitor_words, signals[2], signals[3])
    return results[R_FRAMES]


# ---------------------------------------------------------------------------------------------
# Bring-up


class GuestRings:
    """The stand-in's view of one guest channel: the arrays its kernels take."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.tx = (channel.tx.header, channel.tx.data, channel.tx.state)
        self.rx = (channel.rx.header, channel.rx.data, channel.rx.state)
        # A polling driver: the host need not interrupt it.
        channel.rx.header[RING_INTERRUPT_MASK] = 1


class Testbed:
    """A host with two NICs on a vswitch, both brought up by a MiniGuest (server in a thread
    meanwhile), then left to the caller to drive."""

    def __init__(self, root: Path, frame_size: int, tx: str, per_section: int = PACKETS_PER_SECTION) -> None:
        options = HostOptions(root=root, devices=2, backend="vswitch", sizes=SIZES)
        if hasattr(options, "busy_poll_s"):
            options.busy_poll_s = 0  # no spinning while the bring-up thread shares the GIL
        self.server = HostServer(options)
        self.guests: list[MiniGuest] = []
        self.memory: GuestMemoryRegion | None = None
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                self.server.run_once(max_wait=0.001)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            for index in range(2):
                guest = MiniGuest(root, self.server.nics[index].device.guid)
                self.guests.append(guest)
                guest.setup(nvsp.NVSP_VERSION_61)
                guest.rndis_init()
                guest.set_packet_filter(ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST)
        finally:
            stop.set()
            thread.join(10)
        self.frame = udp_frame(frame_size, default_mac(0), default_mac(1))
        self.rings = [GuestRings(g.channels[0]) for g in self.guests]
        if tx == "section":
            self.sends = SectionSends(self.guests[0].dev.send_buffer, self.frame, per_section)
        else:
            self.memory = GuestMemoryRegion(4 << 20, root)
            self.sends = GpaSends(self.memory, self.frame, 512)
        self.gpa = tx == "gpa"
        self.netvsps = [nic.netvsp for nic in self.server.nics]
        self.scratch = np.zeros(_SCRATCH_BYTES, dtype=np.uint8)
        self.scratch_offsets = np.zeros(513, dtype=np.int64)
        self.comp_blob, self.comp_offsets = completion_blob(512)
        self.tids = np.zeros(512, dtype=np.int64)
        self.done = np.zeros(1 << 16, dtype=np.int64)
        self.results = np.zeros(R_WORDS, dtype=np.int64)
        self.next_send = 0

    def post(self, packets: int) -> int:
        """Post ``packets`` sends on NIC 0 (round robin over the prebuilt ones)."""
        sends = self.sends
        posted = 0
        while posted < packets:
            first = self.next_send
            count = min(packets - posted, sends.sections - first)
            if self.gpa:
                n = post_raw(*self.rings[0].tx, sends.blob, sends.offsets, first, count)
            else:
                n = post_inband(*self.rings[0].tx, sends.blob, sends.offsets, sends.tids, first, count)
            posted += n
            self.next_send = (first + n) % sends.sections
            if n < count:
                break
        return posted

    def drain(self, nic: int) -> None:
        rings = self.rings[nic]
        drain(*rings.rx, *rings.tx, self.scratch, self.scratch_offsets, self.comp_blob,
              self.comp_offsets, self.tids, self.done, self.results)

    def host_round(self) -> tuple[int, int]:
        """The host's work for one round, timed: (wall ns, this thread's CPU ns). The CPU time
        leaves out what other processes of a shared machine take from us."""
        first, second = self.netvsps
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        first.service(0)
        while second.poll_backend():
            pass
        second.service(0)
        return time.perf_counter_ns() - start, time.thread_time_ns() - start_cpu

    def check_delivery(self) -> None:
        """Nothing dropped, and the last frame NIC 1 received is the frame NIC 0 sent."""
        counters = self.netvsps[1].counters()
        bad = {k: v for k, v in counters.items() if "dropped" in k and v}
        if bad:
            raise AssertionError(f"NIC 1 dropped frames: {bad}")
        word = int(self.results[R_LAST_RANGE])
        count, offset = word & 0xFFFFFFFF, word >> 32
        received = bytes(self.guests[1].dev.recv_buffer[offset : offset + count])
        message = rndis.decode_rndis(received, limit=count)
        if message.frame != self.frame:
            raise AssertionError("NIC 1 received another frame than NIC 0 sent")

    def close(self) -> None:
        for guest in self.guests:
            with contextlib.suppress(Exception):
                guest.close()
        if self.memory is not None:
            self.memory.close()
        self.server.close()


def run_direct(frame_size: int, tx: str, packets_per_round: int, rounds: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="netvsc-bench-") as tmp:
        bed = Testbed(Path(tmp) / "root", frame_size, tx)
        try:
            frames_before = int(bed.results[R_FRAMES])
            host_ns = host_cpu_ns = 0
            for round_number in range(warmup + rounds):
                if round_number == warmup:
                    host_ns = host_cpu_ns = 0
                    frames_before = int(bed.results[R_FRAMES])
                bed.post(packets_per_round)
                wall, cpu = bed.host_round()
                host_ns += wall
                host_cpu_ns += cpu
                bed.drain(0)
                bed.drain(1)
            frames = int(bed.results[R_FRAMES]) - frames_before
            expected = rounds * packets_per_round * bed.sends.frames_per_packet
            bed.check_delivery()
            return {
                "frames": frames,
                "expected_frames": expected,
                "host_ns": host_ns,
                "host_cpu_ns": host_cpu_ns,
                "ns_per_frame": host_ns / max(frames, 1),
                "cpu_ns_per_frame": host_cpu_ns / max(frames, 1),
                "frames_per_packet": bed.sends.frames_per_packet,
            }
        finally:
            bed.close()


def _monitor_signal(guest: MiniGuest) -> tuple[int, int]:
    monitor_id = guest.dev.monitor_id
    group, bit = divmod(monitor_id, 32)
    return (MONITOR_PENDING_OFFSET + MONITOR_GROUP_STRIDE * group) // 4, 1 << bit


def _die_with_parent() -> None:
    """In the host's child process: SIGTERM when the benchmark dies (no spinning orphan)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_process(frame_size: int, tx: str, seconds: float, *, latency_us: int = 50,
                in_flight: int = 1024, burst: int = 32) -> dict:
    """``netvsc host`` in its own process on CPU 0, the stand-in guest on CPU 1 for ``seconds``."""
    cpus = sorted(os.sched_getaffinity(0))
    host_cpu, guest_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], cpus[0])
    with tempfile.TemporaryDirectory(prefix="netvsc-bench-") as tmp:
        root = Path(tmp) / "root"
        env = dict(os.environ, PYTHONPATH=str(SRC))
        # BENCH_HOST_PY_ARGS="-m cProfile -o host.prof" profiles the host process.
        python = [sys.executable, *os.environ.get("BENCH_HOST_PY_ARGS", "").split()]
        host = subprocess.Popen(
            ["taskset", "-c", str(host_cpu), *python, "-m", "netvsc", "host", "--root", str(root),
             "--devices", "2", "--backend", "vswitch"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=_die_with_parent,
        )
        guests: list[MiniGuest] = []
        memory = None
        try:
            os.sched_setaffinity(0, {guest_cpu})
            deadline = time.monotonic() + 60
            while not (root / "run" / "netvsc-host.sock").exists():
                if host.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"host did not start: {host.stderr.read() if host.stderr else ''}")
                time.sleep(0.05)
            from netvsc.host.control import request

            nics = request(root, "status")["nics"]
            for nic in nics:
                guest = MiniGuest(root, nic["guid"], latency_us=latency_us)
                guests.append(guest)
                guest.setup(nvsp.NVSP_VERSION_61)
                guest.rndis_init()
                guest.set_packet_filter(ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST)
            macs = [bytes.fromhex(n["mac"].replace(":", "")) for n in nics]
            frame = udp_frame(frame_size, macs[0], macs[1])
            if tx == "section":
                sends = SectionSends(guests[0].dev.send_buffer, frame, PACKETS_PER_SECTION)
            else:
                memory = GuestMemoryRegion(4 << 20, root)
                sends = GpaSends(memory, frame, 512)
            rings = [GuestRings(g.channels[0]) for g in guests]
            monitor_words = guests[0].dev.monitor_page[:4096].view(np.uint32)
            signals = np.array([*_monitor_signal(guests[0]), *_monitor_signal(guests[1])], dtype=np.int64)
            comp_blob, comp_offsets = completion_blob(512)
            scratch = np.zeros(_SCRATCH_BYTES, dtype=np.uint8)
            scratch_offsets = np.zeros(513, dtype=np.int64)
            comp_tids = np.zeros(512, dtype=np.int64)
            done = np.zeros(1 << 16, dtype=np.int64)
            results = np.zeros(R_WORDS, dtype=np.int64)
            stop = np.zeros(1, dtype=np.uint32)

            def host_cpu_s() -> float:
                fields = Path(f"/proc/{host.pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

            def loop(seconds_to_run: float) -> tuple[int, float]:
                stop[0] = 0
                before = int(results[R_FRAMES])
                timer = threading.Timer(seconds_to_run, lambda: stop.__setitem__(0, 1))
                started = time.perf_counter()
                timer.start()
                guest_loop(rings[0].tx, rings[0].rx, rings[1].tx, rings[1].rx, sends.blob, sends.offsets,
                           sends.tids,
                           tx == "gpa", in_flight, burst, monitor_words, signals, scratch,
                           scratch_offsets, comp_blob, comp_offsets, comp_tids, done, results, stop)
                elapsed = time.perf_counter() - started
                timer.join()
                return int(results[R_FRAMES]) - before, elapsed

            loop(0.5)  # warm-up: compiles, fills the pipeline
            cpu_before = host_cpu_s()
            frames, elapsed = loop(seconds)
            host_cpu = host_cpu_s() - cpu_before
            both = request(root, "counters")["nics"]
            counters = both[1]["netvsp"]
            rate = frames / elapsed
            return {
                "frames": frames,
                "seconds": elapsed,
                "frames_per_s": rate,
                "gbit_per_s": rate * frame_size * 8 / 1e9,
                "host_cpu_share": host_cpu / elapsed,  # of one CPU: below 1, the host waited or was preempted
                "host_cpu_ns_per_frame": host_cpu * 1e9 / max(frames, 1),
                "frames_per_packet": sends.frames_per_packet,
                "nic1_drops": {k: v for k, v in counters.items() if "dropped" in k and v},
                "sent_frames": int(results[R_POSTED]) * sends.frames_per_packet,
                "guest_turns": int(results[R_LOOPS]),
                "switch_drops": sum(nic["backend"].get("rx_dropped_queue_full", 0) for nic in both),
                "host": [nic["host"] for nic in both],
            }
        finally:
            os.sched_setaffinity(0, set(cpus))
            for guest in guests:
                with contextlib.suppress(Exception):
                    guest.close()
            if memory is not None:
                memory.close()
            host.terminate()
            try:
                host.wait(20)
            except subprocess.TimeoutExpired:
                host.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frame-size", type=int, default=64)
    parser.add_argument("--tx", choices=("section", "gpa"), default=None,
                        help="how NIC 0 sends (default: section up to 512 bytes, gpa above, as tx_copybreak)")
    parser.add_argument("--mode", choices=("direct", "process"), default="direct")
    parser.add_argument("--packets", type=int, default=None, help="VMBus packets per round (direct)")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tx = args.tx or ("section" if args.frame_size <= 512 else "gpa")
    results = []
    for _ in range(args.runs):
        if args.mode == "direct":
            per_packet = PACKETS_PER_SECTION if tx == "section" else 1
            packets = args.packets or max(1, 256 // per_packet)
            results.append(run_direct(args.frame_size, tx, packets, args.rounds, args.warmup))
        else:
            results.append(run_process(args.frame_size, tx, args.seconds))
    key = "ns_per_frame" if args.mode == "direct" else "frames_per_s"
    values = [r[key] for r in results]
    summary = {
        "mode": args.mode,
        "frame_size": args.frame_size,
        "tx": tx,
        key + "_median": statistics.median(values),
        key + "_all": values,
        "runs": results,
    }
    if args.mode == "process":
        summary["gbit_per_s_median"] = statistics.median(r["gbit_per_s"] for r in results)
    else:
        summary["cpu_ns_per_frame_median"] = statistics.median(r["cpu_ns_per_frame"] for r in results)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif args.mode == "direct":
        print(f"{args.frame_size} B, {tx}: host {summary[key + '_median']:.0f} ns/frame wall, "
              f"{summary['cpu_ns_per_frame_median']:.0f} ns/frame CPU (median of {len(values)}: "
              f"{', '.join(f'{v:.0f}' for v in values)} wall)")
    else:
        print(f"{args.frame_size} B, {tx}: {summary[key + '_median'] / 1e6:.2f} Mpps, "
              f"{summary['gbit_per_s_median']:.2f} Gbit/s (median of {len(values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
