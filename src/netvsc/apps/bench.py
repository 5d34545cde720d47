"""``netvsc bench``: throughput measurements of the driver's building blocks (JSON out).

Layer 8 (apps). ``bench ring`` moves small in-band packets between two processes through one
shared VMBus ring (batched writes and reads, the signalling and pending-send rules of
spec/vmbus.md 3.7 and 3.9 active, a busy-polling reader) and, as a baseline, the same payloads
through a ``multiprocessing`` pipe. Numbers from a shared 2-core machine are noisy: compare runs
on one machine, never assert them in tests.
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


@click.group()
def bench() -> None:
    """Throughput measurements (JSON with --json)."""


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
