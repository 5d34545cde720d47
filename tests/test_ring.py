"""The VMBus ring: framing, wrap-around, space accounting and the full rule (spec/vmbus.md 3.3-3.5).

Every scenario starts both indices at an arbitrary multiple of 8 so that descriptors, payloads
and padding cross the end of the data area at every possible position.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netvsc.errors import ConfigError
from netvsc.vmbus.ring import RingReader, RingView, RingWriter
from netvsc.wire.vmbus import PACKET_TYPE_INBAND

DSIZE = 4096  # smallest legal ring: one header page + one data page


def make_ring(start: int = 0, dsize: int = DSIZE, feature_bits: int = 1):
    view = RingView(np.zeros(4096 + dsize, dtype=np.uint8))
    view.initialize(write_index=start, read_index=start, feature_bits=feature_bits)
    return view, RingWriter(view), RingReader(view)


def inband_packet(payload: bytes, transaction_id: int, packet_type: int = PACKET_TYPE_INBAND) -> bytes:
    """Descriptor + payload, unpadded: what a sender hands to try_write."""
    tlen8 = (16 + len(payload) + 7) // 8
    descriptor = np.zeros(8, dtype="<u2")
    descriptor[:4] = (packet_type, 2, tlen8, 0)
    descriptor.view("<u8")[1] = transaction_id
    return descriptor.tobytes() + payload


def padded(packet: bytes) -> bytes:
    return packet + bytes(-len(packet) % 8)


def ring_bytes(view: RingView, offset: int, length: int) -> bytes:
    """Bytes of the data area read with wrap-around (test-side oracle)."""
    positions = (offset + np.arange(length)) % view.dsize
    return view.data[positions].tobytes()


def split_pieces(packet: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(packet)) for c in cuts})
    bounds = [0, *points, len(packet)]
    return [packet[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 700), st.lists(st.integers(0, 720), max_size=3)),
        st.tuples(st.just("read"), st.just(0), st.just([])),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start_unit=st.integers(0, DSIZE // 8 - 1), ops=operations)
def test_written_packets_read_back_identical_at_every_start_position(start_unit, ops):
    start = start_unit * 8
    view, writer, reader = make_ring(start)
    in_flight: deque[bytes] = deque()
    used = 0
    for number, (op, size, cuts) in enumerate(ops):
        if op == "write":
            payload = bytes((number * 37 + i) & 0xFF for i in range(size))
            packet = inband_packet(payload, number)
            total = len(padded(packet)) + 8
            free_before = writer.avail_write()
            assert free_before == DSIZE - used, f"writer sees {free_before} free, model says {DSIZE - used}"
            packet_start = writer.cursor
            accepted = writer.try_write(*split_pieces(packet, cuts))
            assert accepted == (free_before > total), (
                f"free {free_before}, total {total}: accepted={accepted} breaks the strict full rule"
            )
            if accepted:
                in_flight.append(packet)
                used += total
                trailer = ring_bytes(view, (packet_start + total - 8) % DSIZE, 8)
                assert trailer == (packet_start << 32).to_bytes(8, "little"), "trailer is not start << 32"
            else:
                assert writer.full_events >= 1
        else:
            got = reader.read()
            if not in_flight:
                assert got is None, "read from an empty ring returned a packet"
                continue
            expected = padded(in_flight.popleft())
            assert got is not None and got.tobytes() == expected, "packet changed in the ring"
            used -= len(expected) + 8
            reader.commit()
        assert writer.avail_write() >= 8, "the ring was filled completely (write index reached read index)"
        assert reader.avail_read() == used, f"reader sees {reader.avail_read()} readable, model says {used}"
        assert view.write_index == (start + writer.bytes) % DSIZE
    while in_flight:
        got = reader.read()
        assert got is not None and got.tobytes() == padded(in_flight.popleft())
    assert reader.read() is None
    reader.commit()
    assert view.read_index == view.write_index, "indices differ after draining everything"
    assert writer.avail_write() == DSIZE


@settings(max_examples=100, deadline=None)
@given(
    start_unit=st.integers(0, DSIZE // 8 - 1),
    sizes=st.lists(st.integers(0, 400), min_size=1, max_size=40),
    read_chunk=st.integers(1, 16),
)
def test_batches_round_trip_and_publish_once(start_unit, sizes, read_chunk):
    start = start_unit * 8
    view, writer, reader = make_ring(start)
    payloads = np.concatenate(
        [np.full(s, k & 0xFF, dtype=np.uint8) for k, s in enumerate(sizes)] or [[]]
    ).astype(np.uint8)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ids = np.arange(len(sizes), dtype=np.uint64) + 1000
    written = writer.write_inband_batch(payloads, offsets, ids, PACKET_TYPE_INBAND)
    totals = [len(padded(bytes(16 + s))) + 8 for s in sizes]
    fitting = 0
    free = DSIZE
    for total in totals:
        if free <= total:
            break
        free -= total
        fitting += 1
    assert written == fitting, f"batch wrote {written}, {fitting} fit"
    assert writer.avail_write() == free
    out = np.zeros(DSIZE, dtype=np.uint8)
    packet_offsets = np.zeros(read_chunk + 1, dtype=np.int64)
    received = []
    while True:
        count = reader.read_batch(out, packet_offsets)
        if count == 0:
            break
        received += [out[packet_offsets[i] : packet_offsets[i + 1]].tobytes() for i in range(count)]
    expected = [padded(inband_packet(bytes([k & 0xFF]) * sizes[k], 1000 + k)) for k in range(written)]
    assert received == expected
    reader.commit()
    assert view.read_index == view.write_index == (start + sum(totals[:written])) % DSIZE


def test_prebuilt_batch_writes_each_packet_with_its_own_trailer():
    view, writer, reader = make_ring(start=DSIZE - 16)
    packets = [inband_packet(bytes(range(n)), n) for n in (0, 5, 17, 40)]
    blob = np.frombuffer(b"".join(packets), dtype=np.uint8).copy()
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in packets])]).astype(np.int64)
    assert writer.write_batch(blob, offsets) == 4
    position = DSIZE - 16
    for packet in packets:
        length = len(padded(packet))
        assert ring_bytes(view, position, length) == padded(packet)
        assert ring_bytes(view, (position + length) % DSIZE, 8) == (position << 32).to_bytes(8, "little")
        position = (position + length + 8) % DSIZE
    assert [reader.read().tobytes() for _ in packets] == [padded(p) for p in packets]


@pytest.mark.parametrize("start", [DSIZE - 8, DSIZE - 16, DSIZE - 24, 0])
def test_descriptor_and_payload_straddling_the_end(start):
    view, writer, reader = make_ring(start)
    packet = inband_packet(bytes(range(1, 30)), 0xDEADBEEF_12345678)
    assert writer.try_write(packet[:3], packet[3:16], packet[16:])
    descriptor = reader.peek()
    assert descriptor is not None and descriptor.tobytes() == packet[:16], "peek saw another descriptor"
    assert reader.avail_read() == len(padded(packet)) + 8, "peek moved the reader"
    assert reader.read().tobytes() == padded(packet)


def test_refuses_a_packet_when_free_space_equals_its_total():
    view, writer, reader = make_ring()
    packet = inband_packet(bytes(40), 1)  # 56 bytes + 8 trailer = 64
    for _ in range(DSIZE // 64 - 1):
        assert writer.try_write(packet)
    assert writer.avail_write() == 64
    assert not writer.try_write(packet), "a write that would fill the ring completely was accepted"
    assert writer.full_events == 1
    assert writer.try_write(inband_packet(bytes(32), 2)), "a 56-byte packet fits in 64 free bytes"
    assert writer.avail_write() == 8
    assert not writer.try_write(inband_packet(b"", 3))


@pytest.mark.parametrize("length", [0, 8, 15])
def test_packets_shorter_than_a_descriptor_are_refused(length):
    _, writer, _ = make_ring()
    with pytest.raises(ConfigError):
        writer.try_write(bytes(length))


def test_packet_that_could_never_fit_is_a_config_error_not_full():
    _, writer, _ = make_ring()
    with pytest.raises(ConfigError):
        writer.try_write(inband_packet(bytes(DSIZE - 16 - 8), 1))  # total == dsize
    assert writer.try_write(inband_packet(bytes(DSIZE - 16 - 16), 1)), (
        "total == dsize - 8 must fit an empty ring"
    )


@pytest.mark.parametrize("size", [0, 4096, 4096 + 100, 12288 + 8])
def test_ring_view_rejects_bad_sizes(size):
    with pytest.raises(ConfigError):
        RingView(np.zeros(size, dtype=np.uint8))


def test_ring_view_derives_dsize_from_its_buffer():
    view = RingView(np.zeros(4096 * 513, dtype=np.uint8))
    assert view.dsize == 4096 * 512
