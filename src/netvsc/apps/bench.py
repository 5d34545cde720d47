"""``netvsc bench``: throughput measurements of the driver and its building blocks (JSON out).

Layer 8 (apps). ``netvsc bench`` (no sub-command) measures the data path: the driver's RX and
TX cost per packet, txonly -> rxonly through the emulated host, a raw AF_PACKET socket on a veth
pair as the baseline, the ratios, and with ``--peer dpdk`` DPDK testpmd's rate beside ours (the
measurements are in ``apps.bench_datapath``). ``bench ring`` moves small in-band packets
between two processes through one shared VMBus ring (batched writes and reads, the signalling
and pending-send rules of spec/vmbus.md 3.7 and 3.9 active, a busy-polling reader) and, as a
baseline, the same payloads through a ``multiprocessing`` pipe. Numbers from a shared 2-core
machine are noisy: compare runs on one machine, never assert them in tests.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import time

import click
import numpy as np

from netvsc.vmbus.ring import RingReader, RingView, RingWriter
from netvsc.wire.vmbus import HV_PAGE_SIZE, PACKET_TYPE_INBAND

# Control words shared by the two ring processes (a page after the ring), one writer each.
CONTROL_STOP = 0  # reader -> writer: stop writing
CONTROL_READER_SIGNALS = 1  # reader's pending-send signals (the writer waits for a change)
CONTROL_WRITER_SIGNALS = 2  # writer's empty -> non-empty signals
CONTROL_WRITER_WAITS = 3  # times the writer found the ring full and had to wait
CONTROL_WRITER_READY = 4  # writer -> reader: kernels loaded, writing starts now
CONTROL_WORDS = HV_PAGE_SIZE // 4

WRITER_WAIT_DEADLINE = 10.0  # seconds a blocked writer waits for the reader before giving up


def _ring_writer_main(area: np.ndarray, ring_bytes: int, payload: int, batch: int) -> None:
    writer = RingWriter(RingView(area[:ring_bytes], name="bench"))
    control = area[ring_bytes:].view(np.uint32)
    payloads = np.full(payload * batch, 0x5A, dtype=np.uint8)
    offsets = np.arange(0, payload * batch + 1, payload, dtype=np.int64)
    transaction_ids = np.arange(batch, dtype=np.int64)
    needed = (16 + payload + 7) // 8 * 8 + 8
    _warm_up(payload, batch)  # compile or load the kernels for this process before the clock runs
    control[CONTROL_WRITER_READY] = 1
    while control[CONTROL_STOP] == 0:
        written = writer.write_inband_batch(payloads, offsets, transaction_ids, PACKET_TYPE_INBAND)
        if writer.take_signal():
            control[CONTROL_WRITER_SIGNALS] += 1
        if written:
            continue
        # Note the signal count before asking: a signal sent between the request and the wait
        # must not be lost.
        seen = int(control[CONTROL_READER_SIGNALS])
        if writer.request_space(needed):
            continue
        # Full: wait for the reader's pending-send signal (or the stop word), then withdraw.
        control[CONTROL_WRITER_WAITS] += 1
        deadline = time.monotonic() + WRITER_WAIT_DEADLINE
        while control[CONTROL_READER_SIGNALS] == seen and control[CONTROL_STOP] == 0:
            if time.monotonic() > deadline:
                raise SystemExit("bench writer: no pending-send signal from the reader (lost wake-up)")
        writer.clear_pending_send()


def _measure_ring(seconds: float, payload: int, batch: int, ring_kib: int) -> dict:
    ring_bytes = HV_PAGE_SIZE + ring_kib * 1024
    area = np.frombuffer(mmap.mmap(-1, ring_bytes + CONTROL_WORDS * 4), dtype=np.uint8)
    view = RingView(area[:ring_bytes], name="bench")
    view.initialize(interrupt_mask=1)
    control = area[ring_bytes:].view(np.uint32)
    reader = RingReader(view)
    packet_bytes = (16 + payload + 7) // 8 * 8
    out = np.empty(packet_bytes * batch, dtype=np.uint8)
    offsets = np.zeros(batch + 1, dtype=np.int64)
    _warm_up(payload, batch)  # compile (or load) the kernels before forking and timing
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_ring_writer_main, args=(area, ring_bytes, payload, batch), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 120  # a first run may compile the kernels
        while control[CONTROL_WRITER_READY] == 0:
            if time.monotonic() > deadline or child.exitcode is not None:
                raise click.ClickException("ring writer did not start")
            time.sleep(0.01)
        packets = 0
        started = time.perf_counter()
        end = started + seconds
        now = started
        while now < end:
            count = reader.read_batch(out, offsets, batch)
            if count:
                packets += count
                if reader.commit():
                    control[CONTROL_READER_SIGNALS] += 1
            elif reader.unmask_interrupts():
                reader.mask_interrupts()  # data arrived while unmasking: keep draining
            else:
                reader.mask_interrupts()  # a polling reader spins instead of sleeping
            now = time.perf_counter()
        elapsed = now - started
        control[CONTROL_STOP] = 1
        child.join(timeout=WRITER_WAIT_DEADLINE)
        if child.exitcode != 0:
            raise click.ClickException(f"ring writer failed (exit code {child.exitcode})")
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
    return {
        "packets": packets,
        "seconds": round(elapsed, 3),
        "pps": round(packets / elapsed),
        "bytes_per_packet": packet_bytes + 8,
        "writer_signals": int(control[CONTROL_WRITER_SIGNALS]),
        "reader_signals": int(control[CONTROL_READER_SIGNALS]),
        "writer_waits": int(control[CONTROL_WRITER_WAITS]),
        "protocol_errors": reader.protocol_errors,
    }


def _warm_up(payload: int, batch: int) -> None:
    view = RingView(np.zeros(2 * HV_PAGE_SIZE, dtype=np.uint8))
    view.initialize()
    writer, reader = RingWriter(view), RingReader(view)
    payloads = np.zeros(payload * batch, dtype=np.uint8)
    offsets = np.arange(0, payload * batch + 1, payload, dtype=np.int64)
    writer.write_inband_batch(payloads, offsets, np.arange(batch, dtype=np.int64), PACKET_TYPE_INBAND)
    writer.take_signal()
    writer.request_space(8)
    writer.clear_pending_send()
    out = np.empty(HV_PAGE_SIZE, dtype=np.uint8)
    reader.read_batch(out, np.zeros(batch + 1, dtype=np.int64), batch)
    reader.commit()
    reader.unmask_interrupts()
    reader.mask_interrupts()


def _pipe_sender_main(connection, stop, payload: int) -> None:
    message = bytes([0x5A]) * payload
    while not stop.is_set():
        for _ in range(256):
            connection.send_bytes(message)
    connection.send_bytes(b"")  # end marker: the receiver drains up to here
    connection.close()


def _measure_pipe(seconds: float, payload: int) -> dict:
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    stop = context.Event()
    child = context.Process(target=_pipe_sender_main, args=(sending, stop, payload), daemon=True)
    child.start()
    sending.close()
    try:
        packets = 0
        started = time.perf_counter()
        end = started + seconds
        now = started
        while now < end:
            for _ in range(64):
                receiving.recv_bytes()
            packets += 64
            now = time.perf_counter()
        elapsed = now - started
        stop.set()
        while receiving.poll(WRITER_WAIT_DEADLINE) and receiving.recv_bytes():
            pass
        child.join(timeout=WRITER_WAIT_DEADLINE)
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=5)
        receiving.close()
    return {"packets": packets, "seconds": round(elapsed, 3), "pps": round(packets / elapsed)}


PARTS = ("driver", "e2e", "afpacket")

# Issue 5's targets, reported beside the figures (never asserted anywhere).
TARGETS = {
    "driver_rx_ns_per_packet_max": 100,
    "driver_tx_ns_per_packet_max": 150,
    "vs_afpacket_min": 6,
    "e2e_mpps_64_min": 2.0,
    "e2e_gbps_1500_min": 10.0,
}


def _parse_parts(text: str, peer: str | None) -> list[str]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    for part in parts:
        if part not in (*PARTS, "peer"):
            raise click.BadParameter(f"{part}: accepted {', '.join(PARTS)}, peer", param_hint="--parts")
    if peer and "peer" not in parts:
        parts.append("peer")
    if "peer" in parts and not peer:
        raise click.BadParameter("the peer part needs --peer dpdk", param_hint="--parts")
    return parts


def _targets(result: dict) -> dict:
    """Which of issue 5's targets this run's figures meet (None: not measured)."""
    driver = result.get("driver", {})
    ratios = result.get("ratios", {})
    e2e = result.get("e2e", {})

    def worst(direction: str) -> float | None:
        values = [r["ns_per_packet"] for r in driver.get(direction, {}).values() if "ns_per_packet" in r]
        return max(values) if values else None

    rx, tx = worst("rx"), worst("tx")
    ratio_values = [v for k, v in ratios.items() if k.endswith("_vs_afpacket")]
    return {
        **TARGETS,
        "driver_rx_met": None if rx is None else rx <= TARGETS["driver_rx_ns_per_packet_max"],
        "driver_tx_met": None if tx is None else tx <= TARGETS["driver_tx_ns_per_packet_max"],
        "vs_afpacket_met": min(ratio_values) >= TARGETS["vs_afpacket_min"] if ratio_values else None,
        "e2e_mpps_64_met": e2e["64"]["mpps"] >= TARGETS["e2e_mpps_64_min"] if "64" in e2e else None,
        "e2e_gbps_1500_met": e2e["1500"]["gbps"] >= TARGETS["e2e_gbps_1500_min"] if "1500" in e2e else None,
    }


def run_datapath(
    parts: list[str], runs: int, seconds: float, afpacket_packets: int, peer_seconds: float
) -> dict:
    """Every part asked for, in one JSON-able result (see ``apps.bench_datapath``)."""
    from netvsc.apps import bench_datapath as measure

    result: dict = {"bench": "datapath", "burst": 32, "frame_size": 64, "parts": parts}
    started = time.monotonic()
    if "driver" in parts:
        result["driver"] = {
            "rx": measure.driver_rx(runs=max(runs * 4, 5)),
            "tx": measure.driver_tx(runs=runs, seconds=seconds / 2),
        }
    if "e2e" in parts:
        result["e2e"] = measure.e2e((64, 1500), runs=runs, seconds=seconds)
    if "afpacket" in parts:
        result["afpacket"] = measure.afpacket(afpacket_packets, runs=runs)
    if "driver" in parts and "afpacket" in parts:
        result["ratios"] = measure.ratios(result["driver"], result["afpacket"])
    if "peer" in parts:
        result["peer"] = measure.dpdk_peer(peer_seconds, runs=runs)
    result["targets"] = _targets(result)
    result["seconds_total"] = round(time.monotonic() - started, 1)
    return result


def _print_datapath(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "driver" in result:
        table = Table(
            title="driver cost, guest CPU ns/packet (64-byte frames, burst 32)", title_justify="left"
        )
        for heading in ("direction", "mode", "ns/packet", "wall ns/packet", "packets/run", "runs"):
            table.add_column(heading, justify="right")
        for direction, modes in result["driver"].items():
            for mode, figures in modes.items():
                table.add_row(
                    direction,
                    mode,
                    f"{figures['ns_per_packet']:,}",
                    f"{figures['ns_per_packet_wall']:,}",
                    f"{figures['packets_per_run']:,}",
                    str(figures["runs"]),
                )
        console.print(table)
    if "e2e" in result:
        for figures in result["e2e"].values():
            if isinstance(figures, dict):
                console.print(
                    f"end to end, txonly -> vswitch -> rxonly, {figures['frame_size']}-byte frames: "
                    f"{figures['mpps']} Mpps, {figures['gbps']} Gbit/s",
                    highlight=False,
                )
    if "afpacket" in result:
        baseline = result["afpacket"]
        if "skipped" in baseline:
            console.print(f"AF_PACKET baseline skipped: {baseline['skipped']}", highlight=False)
        else:
            console.print(
                f"AF_PACKET on a veth pair: send {baseline['send_ns_per_packet']:,} ns/packet, "
                f"recv {baseline['recv_ns_per_packet']:,} ns/packet (CPU)",
                highlight=False,
            )
    for name, value in result.get("ratios", {}).items():
        console.print(f"{name}: {value}x", highlight=False)
    if "peer" in result:
        peer = result["peer"]
        if "skipped" in peer:
            console.print(f"DPDK peer skipped: {peer['skipped']}", highlight=False)
        else:
            console.print(
                f"DPDK testpmd {peer['dpdk_mpps']} Mpps, ours {peer['ours_mpps']} Mpps "
                f"({peer['shape']}): ours / DPDK = {peer['ratio']}",
                highlight=False,
            )
    met = {k: v for k, v in result["targets"].items() if k.endswith("_met") and v is not None}
    console.print(
        "issue 5 targets met: " + ", ".join(f"{k[:-4]} {'yes' if v else 'no'}" for k, v in met.items())
    )


@click.group(invoke_without_command=True)
@click.option(
    "--parts",
    default=",".join(PARTS),
    show_default=True,
    help="What to measure: driver (RX/TX ns/packet, copy and ext modes), e2e (txonly -> rxonly "
    "through the emulated host), afpacket (the raw-socket baseline; needs root).",
)
@click.option("--peer", type=click.Choice(["dpdk"]), default=None, help="Also measure DPDK testpmd's rate.")
@click.option(
    "--runs", type=click.IntRange(1, 1000), default=3, show_default=True, help="Repetitions (medians)."
)
@click.option(
    "--seconds",
    type=click.FloatRange(0.1, 600),
    default=1.0,
    show_default=True,
    help="Measurement window of each end-to-end run (the TX runs take half of it).",
)
@click.option(
    "--afpacket-packets",
    type=click.IntRange(1000, 10_000_000),
    default=100_000,
    show_default=True,
    help="Frames per AF_PACKET run.",
)
@click.option(
    "--peer-seconds",
    type=click.FloatRange(0.5, 600),
    default=3.0,
    show_default=True,
    help="Measurement time of each side of the DPDK comparison.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench(
    ctx: click.Context,
    parts: str,
    peer: str | None,
    runs: int,
    seconds: float,
    afpacket_packets: int,
    peer_seconds: float,
    as_json: bool,
) -> None:
    """Measurements, JSON with --json. Without a sub-command: the data path (driver RX/TX cost,
    end to end through the emulated host, the AF_PACKET baseline, ratios; DPDK with --peer dpdk).

    Each part starts its own emulated host and removes it; about 40 s with the defaults.
    """
    if ctx.invoked_subcommand is not None:
        return
    from netvsc.errors import NetvscError

    try:
        result = run_datapath(_parse_parts(parts, peer), runs, seconds, afpacket_packets, peer_seconds)
    except NetvscError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result))
    else:
        _print_datapath(result)


@bench.command("ring")
@click.option(
    "--seconds",
    type=click.FloatRange(0.1, 600),
    default=3.0,
    show_default=True,
    help="Measurement time of each side of the comparison.",
)
@click.option(
    "--payload",
    type=click.IntRange(0, 65536),
    default=64,
    show_default=True,
    help="Payload bytes per packet.",
)
@click.option(
    "--batch",
    type=click.IntRange(1, 65536),
    default=256,
    show_default=True,
    help="Packets per batched write and read.",
)
@click.option(
    "--ring-kib",
    type=click.IntRange(4, 1 << 20),
    default=2044,
    show_default=True,
    help="Data area of the ring in KiB (multiple of 4); 2044 + header = the usual 2 MiB ring.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def ring(seconds: float, payload: int, batch: int, ring_kib: int, as_json: bool) -> None:
    """Shared-memory VMBus ring between two processes, against a multiprocessing pipe."""
    if ring_kib % 4:
        raise click.BadParameter(f"{ring_kib}: accepted multiples of 4", param_hint="--ring-kib")
    ring_result = _measure_ring(seconds, payload, batch, ring_kib)
    pipe_result = _measure_pipe(seconds, payload)
    result = {
        "payload": payload,
        "batch": batch,
        "ring_kib": ring_kib,
        "ring": ring_result,
        "pipe": pipe_result,
        "ratio": round(ring_result["pps"] / max(pipe_result["pps"], 1), 1),
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    for name, measured in (("ring", ring_result), ("pipe", pipe_result)):
        click.echo(
            f"{name}: {measured['pps']:>12,} packets/s  ({measured['packets']:,} in {measured['seconds']} s)"
        )
    click.echo(f"ring / pipe: {result['ratio']}x")
