"""The data-path measurements of ``netvsc bench``: driver cost, end-to-end rate, baselines.

Layer 8 (apps). Every figure comes from an emulated host the measurement starts for itself
(``apps.embedded``) and removes afterwards, and is the median of several repetitions:

- ``driver_rx``: the driver's receive cost in ns/packet. The host (``gen`` backend, 64-byte
  frames) fills the receive ring while the guest does not poll, until every receive slot is used;
  then only the guest's ``rx_burst`` + free loop that drains it is timed, in the guest thread's
  CPU time. The port's monitor latency is set to its maximum (~6.5 ms), so the host notices the
  receive completions, and refills, only after the drain: its work stays out of the figure.
- ``driver_tx``: the driver's transmit cost. The host's ``null`` backend only completes; the
  guest builds bursts (the txonly kernel) and sends them, and its thread's CPU time is divided by
  the packets sent. When the ring or the send buffer is full it sleeps (no CPU time) instead of
  spinning, so the host's speed does not enter the figure.
- ``e2e``: txonly on port 0 to rxonly on port 1 through the host's vswitch (two NICs), one
  guest thread doing both, the host in its own process: the rate port 1 receives.
- ``afpacket``: what a Python user has otherwise: a raw ``AF_PACKET`` socket on a veth pair
  between two network namespaces (198.18.0.0/15), ``socket.send`` of 64-byte frames in a loop,
  and ``recv_into`` of frames queued beforehand. Needs root.
- ``dpdk_peer``: DPDK's testpmd (its own netvsc PMD) through the same kind of host, txonly to
  rxonly, against ours in the same shape (``apps.dpdk_peer``).

Modes: ``copy`` is the driver's default (received frames copied into mbufs; frames up to
``tx_copybreak`` copied into send-buffer sections); ``ext`` is zero-copy (``rx_extmbuf_enable=1,
rx_copybreak=0``: mbufs attached to the receive-buffer slots; ``tx_copybreak=0``: every frame
sent from its mbuf as guest-physical page ranges).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import time
import uuid

from netvsc.apps import forwarding as fw
from netvsc.apps import fwd_kernels as fk
from netvsc.apps.embedded import EmbeddedHost
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool

__all__ = [
    "MODES",
    "afpacket",
    "driver_rx",
    "driver_tx",
    "dpdk_peer",
    "e2e",
    "ratios",
]

MODES = {
    "copy": {"rx": "", "tx": ""},
    "ext": {"rx": "rx_extmbuf_enable=1,rx_copybreak=0", "tx": "tx_copybreak=0"},
}
QUIET_LATENCY = "latency=6500"  # the host scans for guest signals every 6.5 ms (the maximum)
RX_STAGING = 4096  # RX descriptors (the staging ring) of the receive measurement
RX_HOST_ARGS = ("--recv-buffer-size", "7M")  # 4096 slots of 1792 bytes (256 + MTU 1500 + 36)
PREFILL_STABLE_READS = 3
PREFILL_POLL_S = 0.02
WARMUP_TIMEOUT_S = 120.0  # a cold numba cache: the host compiles at its first send
PREFILL_TIMEOUT_S = 120.0  # as long as a host compiling with a cold cache may need
TX_FULL_SLEEP_S = 20e-6
ETH_P_BENCH = 0x88B5  # IEEE local experimental ethertype: no stack in the namespace handles it
SOL_PACKET = 263
PACKET_STATISTICS = 6


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def _open_port(host: EmbeddedHost, index: int, devargs: str):
    from netvsc.pmd.port import NetvscPort

    return NetvscPort.open(host.guids[index], devargs, root=host.root)


def _devargs(*parts: str) -> str:
    return ",".join(part for part in parts if part)


# -- driver receive ---------------------------------------------------------------------------


def _wait_prefilled(host: EmbeddedHost, nic: int = 0, after: int = 0) -> int:
    """Wait until the host has delivered frames beyond ``after`` (the count before the last
    drain) and then stops (every slot used); returns the frames delivered so far."""
    deadline = time.monotonic() + PREFILL_TIMEOUT_S
    last, stable = -1, 0
    while time.monotonic() < deadline:
        delivered = int(host.counters(nic)["netvsp"].get("rx_frames_delivered", 0))
        stable = stable + 1 if delivered == last and delivered > after else 0
        if stable >= PREFILL_STABLE_READS:
            return delivered
        last = delivered
        time.sleep(PREFILL_POLL_S)
    raise TimeoutError("the host did not fill the receive ring")


def _rx_runs(host: EmbeddedHost, mode: str, runs: int, burst: int, frame_size: int) -> dict:
    devargs = _devargs(QUIET_LATENCY, MODES[mode]["rx"])
    cpu, wall, sizes = [], [], []
    with contextlib.ExitStack() as stack:
        pool = Mempool(16384, 2176, root=host.root, name=f"bench-rx-{mode}")
        stack.callback(pool.close)  # after the port is closed (callbacks run last first)
        port = _open_port(host, 0, devargs)
        stack.callback(port.close)
        fw.configure_ports([port], pool, 1, 1, RX_STAGING, 512)
        # Nobody but this loop reads queue 0: the port's control worker, which polls the primary
        # channel in the background (for control traffic; ControlWorker.background_poll), would
        # otherwise take the frames into the staging ring and let the host refill meanwhile.
        if getattr(port, "worker", None) is not None:
            port.worker.background_poll = False
        batch = PacketBatch(burst, pool)
        indices = batch.indices
        ptab = pool.table.table
        rx_burst = port.rx_burst
        free_burst = fk.entry("free_burst")
        missed_before = 0
        prefilled = 0  # frames the host had delivered when the last run started
        consumed = 0  # frames the runs so far took
        for run in range(runs + 1):  # run 0 compiles the kernels and is not counted
            # Refilled after the last drain (a slow host may not have started yet).
            prefilled = _wait_prefilled(host, after=prefilled)
            if run == 1:
                missed_before = port.stats().imissed
            # The frames delivered before this run, no more: a host that refills the slots a
            # drain completes as fast as the guest takes them (interpreted kernels) would keep
            # a drain-until-empty going for ever.
            waiting = prefilled - consumed
            received = 0
            cpu_start, wall_start = time.thread_time_ns(), time.perf_counter_ns()
            while received < waiting:
                n = rx_burst(0, batch, min(burst, waiting - received))
                if not n:
                    break
                free_burst(ptab, indices, n)
                received += n
            consumed += received
            cpu_ns = time.thread_time_ns() - cpu_start
            wall_ns = time.perf_counter_ns() - wall_start
            if run and received:
                cpu.append(cpu_ns / received)
                wall.append(wall_ns / received)
                sizes.append(received)
        stats = port.stats()
    return {
        "mode": mode,
        "devargs": devargs,
        "burst": burst,
        "frame_size": frame_size,
        "ns_per_packet": _median(cpu),
        "ns_per_packet_wall": _median(wall),
        "packets_per_run": int(statistics.median(sizes)) if sizes else 0,
        "runs": len(cpu),
        "rx_missed": stats.imissed - missed_before,  # frames dropped in the measured runs
        "rx_errors": stats.ierrors,
    }


def driver_rx(
    modes: tuple[str, ...] = tuple(MODES), runs: int = 20, burst: int = 32, frame_size: int = 64
) -> dict:
    """Per mode: median guest CPU ns per packet of ``rx_burst`` + free over a pre-filled ring."""
    # As many receive slots as the queue's staging ring holds: the first rx_burst takes the whole
    # pre-filled ring into the staging ring (as DPDK's does), and one slot more would be a frame
    # dropped (imissed) inside the timed loop.
    with EmbeddedHost(1, f"gen:size={frame_size}", RX_HOST_ARGS, prefix="netvsc-bench-") as host:
        return {mode: _rx_runs(host, mode, runs, burst, frame_size) for mode in modes}


# -- driver transmit --------------------------------------------------------------------------


def _tx_runs(host: EmbeddedHost, mode: str, runs: int, seconds: float, burst: int, frame_size: int) -> dict:
    devargs = MODES[mode]["tx"] or None
    cpu, wall, sent_per_run = [], [], []
    waits = 0
    with contextlib.ExitStack() as stack:
        pool = Mempool(16384, 2176, root=host.root, name=f"bench-tx-{mode}")
        stack.callback(pool.close)  # after the port is closed (callbacks run last first)
        port = _open_port(host, 0, devargs)
        stack.callback(port.close)
        fw.configure_ports([port], pool, 1, 1, 512, 4096)
        template = fw.udp_frame(frame_size, b"\xff" * 6, bytes(port.mac_address))
        batch = PacketBatch(burst, pool)
        indices = batch.indices
        ptab = pool.table.table
        tx_burst = port.tx_burst
        build_frames = fk.entry("build_frames")
        sleep = time.sleep
        for run in range(runs + 1):  # run 0 compiles the kernels and is not counted
            sent = 0
            cpu_start, wall_start = time.thread_time_ns(), time.perf_counter_ns()
            end = time.perf_counter() + (seconds if run else 0.1)
            # Run 0 also waits for the host's first completions (a host that is still compiling
            # its kernels would leave the measured runs facing a full ring).
            warm_deadline = time.perf_counter() + WARMUP_TIMEOUT_S
            while time.perf_counter() < end or (
                not run and port.stats().opackets == 0 and time.perf_counter() < warm_deadline
            ):
                if not batch.count:
                    batch.count = build_frames(ptab, indices, burst, template, frame_size)
                sent += tx_burst(0, batch)
                if batch.count:
                    waits += 1
                    sleep(TX_FULL_SLEEP_S)
            cpu_ns = time.thread_time_ns() - cpu_start
            wall_ns = time.perf_counter_ns() - wall_start
            if run and sent:
                cpu.append(cpu_ns / sent)
                wall.append(wall_ns / sent)
                sent_per_run.append(sent)
        if batch.count:
            fk.free_burst(ptab, indices, batch.count)
            batch.count = 0
        port.stop()
        stats = port.stats()
    return {
        "mode": mode,
        "devargs": devargs or "",
        "burst": burst,
        "frame_size": frame_size,
        "ns_per_packet": _median(cpu),
        "ns_per_packet_wall": _median(wall),
        "packets_per_run": int(statistics.median(sent_per_run)) if sent_per_run else 0,
        "runs": len(cpu),
        "full_waits": waits,
        "tx_errors": stats.oerrors,
    }


def driver_tx(
    modes: tuple[str, ...] = tuple(MODES),
    runs: int = 5,
    seconds: float = 0.4,
    burst: int = 32,
    frame_size: int = 64,
) -> dict:
    """Per mode: median guest CPU ns per packet sent (txonly's frame build + ``tx_burst``) into
    a host that only completes; a full ring or send buffer sleeps, so waiting costs no CPU."""
    with EmbeddedHost(1, "null", prefix="netvsc-bench-") as host:
        return {mode: _tx_runs(host, mode, runs, seconds, burst, frame_size) for mode in modes}


# -- end to end -------------------------------------------------------------------------------


def e2e(
    frame_sizes: tuple[int, ...] = (64, 1500),
    runs: int = 3,
    seconds: float = 1.0,
    *,
    devargs: str | None = None,
    host_args: tuple[str, ...] = (),
) -> dict:
    """txonly on port 0 to rxonly on port 1 through the host's vswitch: the rate port 1 receives
    (median of ``runs`` windows of ``seconds``) for each frame size."""
    results = {}
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(EmbeddedHost(2, "vswitch", host_args, prefix="netvsc-bench-"))
        pool = Mempool(16384, 2176, root=host.root, name="bench-e2e")
        stack.callback(pool.close)  # after the ports are closed (callbacks run last first)
        ports = []
        for index in range(2):
            ports.append(_open_port(host, index, devargs))
            stack.callback(ports[-1].close)
        fw.configure_ports(ports, pool, 1, 1, 1024, 1024)
        for size in frame_sizes:
            streams = [fw.Stream("txonly", None, 0, 0, 0), fw.Stream("rxonly", 1, 0, None, 0)]
            engine = fw.Forwarding(ports, pool, streams, fw.ForwardConfig(txpkts=size))
            engine.warm_up()
            engine.run(0.3)  # warm: rings and the switch in their steady state
            # ...and until frames arrive (a host compiling its kernels with a cold cache).
            warm_deadline = time.monotonic() + WARMUP_TIMEOUT_S
            while ports[1].stats().ipackets == 0 and time.monotonic() < warm_deadline:
                engine.run(0.2)
            rates, rates_bits, sent_rates = [], [], []
            received = 0
            for _ in range(runs):
                before = [port.stats() for port in ports]
                engine.run(seconds)
                after = [port.stats() for port in ports]
                elapsed = engine.elapsed
                received += after[1].ipackets - before[1].ipackets
                rates.append((after[1].ipackets - before[1].ipackets) / elapsed)
                rates_bits.append((after[1].ibytes - before[1].ibytes) * 8 / elapsed)
                sent_rates.append((after[0].opackets - before[0].opackets) / elapsed)
            results[str(size)] = {
                "frame_size": size,
                "mpps": round(statistics.median(rates) / 1e6, 3),
                "gbps": round(statistics.median(rates_bits) / 1e9, 3),
                "tx_mpps": round(statistics.median(sent_rates) / 1e6, 3),
                "received": received,
                "runs": runs,
                "seconds": seconds,
                "dropped_by_testpmd": engine.totals()["dropped"],
            }
        for port in ports:
            port.stop()
        results["mempool_full_after_stop"] = pool.available() == pool.n
    return results


# -- AF_PACKET baseline -----------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _link_mac(netns: str, ifname: str) -> bytes:
    out = subprocess.run(
        ["ip", "-n", netns, "-br", "link", "show", "dev", ifname],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    return bytes.fromhex(out[2].replace(":", ""))


def afpacket(count: int = 100_000, runs: int = 5, frame_size: int = 64) -> dict:
    """ns/packet of ``socket.send`` and of ``recv_into`` on raw AF_PACKET sockets at the two ends
    of a veth pair in two namespaces this function creates (and deletes)."""
    if os.geteuid() != 0:
        return {"skipped": "needs root (it creates two network namespaces and a veth pair)"}
    from netvsc.host.backends.tap import open_in_netns

    tag = uuid.uuid4().hex[:6]
    sender_ns, receiver_ns = f"nvb-s-{tag}", f"nvb-r-{tag}"
    created: list[str] = []
    sockets: list[socket.socket] = []
    try:
        for name in (sender_ns, receiver_ns):
            _ip("netns", "add", name)
            created.append(name)
        _ip(
            "-n", sender_ns, "link", "add", "vb0", "type", "veth", "peer", "name", "vb1", "netns", receiver_ns
        )
        for netns, ifname, address in (
            (sender_ns, "vb0", "198.18.0.1/15"),
            (receiver_ns, "vb1", "198.19.0.1/15"),
        ):
            _ip("-n", netns, "addr", "add", address, "dev", ifname)
            _ip("-n", netns, "link", "set", ifname, "up")
        destination = _link_mac(receiver_ns, "vb1")
        source = _link_mac(sender_ns, "vb0")
        frame = destination + source + ETH_P_BENCH.to_bytes(2, "big")
        frame += bytes(frame_size - len(frame))

        def sender_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind(("vb0", 0))
            return sock

        def receiver_socket() -> socket.socket:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_BENCH))
            sock.setsockopt(socket.SOL_SOCKET, 33, 512 << 20)  # SO_RCVBUFFORCE: hold every frame
            sock.bind(("vb1", ETH_P_BENCH))
            return sock

        sender = open_in_netns(sender_ns, sender_socket)
        sockets.append(sender)
        receiver = open_in_netns(receiver_ns, receiver_socket)
        sockets.append(receiver)
        receiver.settimeout(2.0)
        buffer = bytearray(2048)
        send = sender.send
        recv_into = receiver.recv_into
        send_cpu, recv_cpu, send_wall, recv_wall = [], [], [], []
        lost = 0
        for run in range(runs + 1):  # run 0 warms up
            cpu_start, wall_start = time.thread_time_ns(), time.perf_counter_ns()
            for _ in range(count):
                send(frame)
            cpu_ns = time.thread_time_ns() - cpu_start
            wall_ns = time.perf_counter_ns() - wall_start
            queued = count - _drops(receiver)
            cpu_start2, wall_start2 = time.thread_time_ns(), time.perf_counter_ns()
            received = 0
            with contextlib.suppress(TimeoutError, socket.timeout):
                for _ in range(queued):
                    recv_into(buffer)
                    received += 1
            cpu_ns2 = time.thread_time_ns() - cpu_start2
            wall_ns2 = time.perf_counter_ns() - wall_start2
            lost += count - received
            if run:
                send_cpu.append(cpu_ns / count)
                send_wall.append(wall_ns / count)
                if received:
                    recv_cpu.append(cpu_ns2 / received)
                    recv_wall.append(wall_ns2 / received)
        return {
            "frame_size": frame_size,
            "packets_per_run": count,
            "runs": runs,
            "send_ns_per_packet": _median(send_cpu),
            "send_ns_per_packet_wall": _median(send_wall),
            "recv_ns_per_packet": _median(recv_cpu),
            "recv_ns_per_packet_wall": _median(recv_wall),
            "lost": lost,
        }
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for name in created:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _ip("netns", "del", name)


def _drops(sock: socket.socket) -> int:
    """Frames the socket dropped since the last call (PACKET_STATISTICS: packets, drops)."""
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    return int.from_bytes(raw[4:8], "little")


# -- DPDK as the peer -------------------------------------------------------------------------


def dpdk_peer(seconds: float = 3.0, runs: int = 3, frame_size: int = 64) -> dict:
    """DPDK testpmd's txonly -> rxonly rate through the emulated host and ours in the same shape
    (two NICs on the vswitch, one queue, ``frame_size``-byte frames), and ours / DPDK's."""
    from netvsc.apps.dpdk_testpmd import testpmd_path

    if testpmd_path() is None:
        return {"skipped": "dpdk-testpmd not installed (apt-get install dpdk librte-net-netvsc23)"}
    from netvsc.apps import dpdk_peer as peer

    dpdk = peer.run_dpdk_peer(seconds, frame_size=frame_size)
    ours = e2e((frame_size,), runs=runs, seconds=seconds / runs, host_args=peer.HOST_SIZES)[str(frame_size)]
    return {
        "shape": "txonly on NIC 0 -> vswitch -> rxonly on NIC 1, one queue each",
        "frame_size": frame_size,
        "dpdk_mpps": round(dpdk.mpps, 3),
        "ours_mpps": ours["mpps"],
        "ratio": round(ours["mpps"] / dpdk.mpps, 2) if dpdk.mpps else None,
        "dpdk": {
            "seconds": round(dpdk.seconds, 3),
            "rx_packets": dpdk.rx_packets,
            "note": "two testpmd processes (sender, receiver), forwarding lcores on CPU 1",
        },
        "ours": ours,
    }


# -- ratios -----------------------------------------------------------------------------------


def ratios(driver: dict, baseline: dict) -> dict:
    """AF_PACKET ns/packet over ours, for each direction and mode (higher: ours is cheaper)."""
    if "skipped" in baseline:
        return {"skipped": baseline["skipped"]}
    out = {}
    for direction, key in (("rx", "recv_ns_per_packet"), ("tx", "send_ns_per_packet")):
        for mode, result in driver.get(direction, {}).items():
            ours = result.get("ns_per_packet")
            if ours and ours == ours:  # not NaN
                out[f"{direction}_{mode}_vs_afpacket"] = round(baseline[key] / ours, 1)
    return out
