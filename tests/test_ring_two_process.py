"""Two processes on one shared ring: a million packets of random sizes arrive complete, in order,
unchanged, exactly once, with the real wake-up rules deciding when each side sleeps.

The writer (child) waits for the reader's pending-send signal when the ring is full; the reader
(this process) masks while draining, unmasks and re-checks before sleeping, and waits for the
writer's empty->non-empty signal. A lost wake-up shows as a wait that reaches its deadline.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time

import numpy as np

from netvsc.vmbus.ring import RingReader, RingView, RingWriter
from netvsc.wire.vmbus import PACKET_TYPE_INBAND

TOTAL_PACKETS = 1_000_000
WRITE_BATCH = 64
RING_BYTES = 4096 + 64 * 1024  # a small ring: it wraps and fills thousands of times
WAIT_DEADLINE = 30.0  # seconds a side may sleep without its wake-up before the test fails
EXIT_LOST_WAKEUP = 3


def payload_lengths(seqs: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random payload length of each sequence number (0..300, some larger)."""
    mixed = (seqs.astype(np.uint64) * np.uint64(2654435761)) >> np.uint64(7)
    lengths = (mixed % np.uint64(301)).astype(np.int64)
    large = (seqs % 97) == 0
    lengths[large] = (mixed[large] % np.uint64(4000)).astype(np.int64)
    return lengths


def payload_bytes(seqs: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated payloads: byte j of packet s is a function of (s, j)."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    owner = np.repeat(seqs.astype(np.int64), lengths)
    position = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    return ((owner * 31 + position * 7 + (owner >> 8)) & 0xFF).astype(np.uint8)


def expected_packets(first_seq: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """What the reader must see: descriptor + payload + zero padding, back to back, and offsets."""
    seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
    lengths = payload_lengths(seqs)
    tlen8 = (16 + lengths + 7) // 8
    offsets = np.concatenate([[0], np.cumsum(tlen8 * 8)]).astype(np.int64)
    blob = np.zeros(int(offsets[-1]), dtype=np.uint8)
    descriptors = np.zeros((count, 2), dtype="<u8")
    words = descriptors.view("<u2")
    words[:, 0], words[:, 1], words[:, 2], words[:, 3] = PACKET_TYPE_INBAND, 2, tlen8, 0
    descriptors[:, 1] = seqs
    blob[(offsets[:-1, None] + np.arange(16)).ravel()] = descriptors.view(np.uint8).ravel()
    payload_starts = np.repeat(offsets[:-1] + 16, lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(
        np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths
    )
    blob[payload_starts + within] = payload_bytes(seqs, lengths)
    return blob, offsets


def writer_main(area, total, reader_wakeup, writer_wakeup) -> None:
    writer = RingWriter(RingView(area[:RING_BYTES], name="soak"))
    seq = 0
    while seq < total:
        count = min(WRITE_BATCH, total - seq)
        seqs = np.arange(seq, seq + count, dtype=np.int64)
        lengths = payload_lengths(seqs)
        payloads = payload_bytes(seqs, lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        sent = 0
        while sent < count:
            written = writer.write_inband_batch(
                payloads, offsets[sent:], seqs[sent:], PACKET_TYPE_INBAND, count=count - sent
            )
            if writer.take_signal():
                reader_wakeup.release()
            if written:
                sent += written
                continue
            needed = int(16 + lengths[sent] + 7) // 8 * 8 + 8
            if writer.request_space(needed):
                continue
            # Blocked: only the reader's pending-send signal may wake us.
            if not writer_wakeup.acquire(timeout=WAIT_DEADLINE):
                os._exit(EXIT_LOST_WAKEUP)
            writer.clear_pending_send()
        seq += count


def test_a_million_packets_between_two_processes():
    area = np.frombuffer(mmap.mmap(-1, RING_BYTES), dtype=np.uint8)  # MAP_SHARED: survives fork
    view = RingView(area[:RING_BYTES], name="soak")
    view.initialize(interrupt_mask=1)  # the reader starts out draining
    reader = RingReader(view)
    context = multiprocessing.get_context("fork")
    reader_wakeup, writer_wakeup = context.Semaphore(0), context.Semaphore(0)
    child = context.Process(
        target=writer_main, args=(area, TOTAL_PACKETS, reader_wakeup, writer_wakeup), daemon=True
    )
    chunk = np.zeros(8 << 20, dtype=np.uint8)
    chunk_offsets = np.zeros(65537, dtype=np.int64)
    received = 0
    child.start()
    try:
        while received < TOTAL_PACKETS:
            # Gather a chunk with several batch reads, then check it in one vectorised pass.
            used, count = 0, 0
            while count < 65536 and used + 8192 <= chunk.shape[0] and received + count < TOTAL_PACKETS:
                got = reader.read_batch(chunk[used:], chunk_offsets[count:], 65536 - count)
                chunk_offsets[count] = 0  # read_batch restarts offsets at 0 even when it reads nothing
                if got == 0:
                    break
                chunk_offsets[count : count + got + 1] += used
                count += got
                used = int(chunk_offsets[count])
                if reader.commit():
                    writer_wakeup.release()
            chunk_offsets[count] = used
            if count:
                expected, offsets = expected_packets(received, count)
                assert np.array_equal(chunk_offsets[: count + 1], offsets), (
                    f"packet lengths differ in packets {received}..{received + count}"
                )
                if not np.array_equal(chunk[:used], expected):
                    bad = int(np.argmax(chunk[:used] != expected))
                    packet = int(np.searchsorted(offsets, bad, side="right")) - 1
                    raise AssertionError(
                        f"packet {received + packet} corrupted at byte {bad - offsets[packet]}"
                    )
                received += count
                continue
            # Empty: unmask, re-check, and only then sleep until the writer's signal.
            if reader.unmask_interrupts():
                reader.mask_interrupts()
                continue
            deadline = time.monotonic() + WAIT_DEADLINE
            while not reader_wakeup.acquire(timeout=0.5):
                assert child.exitcode in (None, 0), f"writer died with exit code {child.exitcode}"
                assert time.monotonic() < deadline, "reader slept past its deadline: lost wake-up"
            reader.mask_interrupts()
        child.join(timeout=WAIT_DEADLINE)
        assert child.exitcode == 0, f"writer exit code {child.exitcode} ({EXIT_LOST_WAKEUP} = lost wake-up)"
        assert reader.read() is None, "packets beyond the last one arrived (duplicates)"
        assert reader.packets == TOTAL_PACKETS
    finally:
        if child.is_alive():
            child.kill()
        child.join(timeout=10)
