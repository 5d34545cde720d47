"""A hostile or buggy peer: bad indices and descriptors are ProtocolErrors, counted, never a crash
or an out-of-bounds access (spec/vmbus.md 4.7, 8.4, 8.5). The suite also runs with
NUMBA_BOUNDSCHECK=1, where any stray index inside a kernel raises IndexError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netvsc.errors import ProtocolError
from netvsc.vmbus.ring import RingReader, RingView, RingWriter
from netvsc.wire.vmbus import PACKET_TYPE_INBAND, RING_READ_INDEX, RING_WRITE_INDEX

DSIZE = 4096


def make_ring(start: int = 0):
    view = RingView(np.zeros(4096 + DSIZE, dtype=np.uint8))
    view.initialize(write_index=start, read_index=start)
    return view, RingWriter(view), RingReader(view)


def descriptor(hlen8: int, tlen8: int, packet_type: int = PACKET_TYPE_INBAND) -> bytes:
    words = np.zeros(8, dtype="<u2")
    words[:4] = (packet_type, hlen8, tlen8, 0)
    return words.tobytes()


BAD_INDICES = [4, DSIZE, DSIZE + 8, 0xFFFF_FFF8, 0xFFFF_FFFF]


@pytest.mark.parametrize("bad_index", BAD_INDICES)
@pytest.mark.parametrize("operation", ["read", "peek", "skip", "read_batch", "avail_read"])
def test_reader_refuses_a_bad_write_index(bad_index, operation):
    view, _, reader = make_ring()
    view.header[RING_WRITE_INDEX] = bad_index
    calls = {
        "read": reader.read,
        "peek": reader.peek,
        "skip": reader.skip,
        "read_batch": lambda: reader.read_batch(np.zeros(256, np.uint8), np.zeros(5, np.int64)),
        "avail_read": reader.avail_read,
    }
    with pytest.raises(ProtocolError, match="peer index"):
        calls[operation]()
    assert reader.protocol_errors == 1
    assert reader.cursor == 0, "the reader moved on a bad index"


@pytest.mark.parametrize("bad_index", BAD_INDICES)
def test_writer_refuses_a_bad_read_index(bad_index):
    view, writer, _ = make_ring()
    view.header[RING_READ_INDEX] = bad_index
    with pytest.raises(ProtocolError, match="peer index"):
        writer.try_write(descriptor(2, 2))
    with pytest.raises(ProtocolError):
        writer.avail_write()
    assert writer.protocol_errors == 2
    assert view.write_index == 0 and writer.packets == 0, "something was published despite the bad index"


@pytest.mark.parametrize(
    ("hlen8", "tlen8", "message"),
    [(0, 2, "hlen < 2"), (1, 2, "hlen < 2"), (3, 2, "hlen > tlen"), (2, 100, "longer than the readable")],
)
@pytest.mark.parametrize("start", [0, DSIZE - 8])
def test_reader_refuses_bad_descriptors(hlen8, tlen8, message, start):
    view, writer, reader = make_ring(start)
    # A lying peer writes a well-framed 16-byte packet whose descriptor says something else.
    assert writer.try_write(descriptor(hlen8, tlen8))
    for operation in (reader.peek, reader.read, reader.skip):
        with pytest.raises(ProtocolError, match=message):
            operation()
    assert reader.protocol_errors == 3
    assert reader.cursor == start, "the reader consumed a bad packet"


def test_fewer_readable_bytes_than_a_minimal_packet_is_truncation():
    view, _, reader = make_ring()
    view.header[RING_WRITE_INDEX] = 16  # 16 readable bytes: no room for descriptor + trailer
    with pytest.raises(ProtocolError, match="longer than the readable"):
        reader.read()


def test_batch_returns_the_good_packets_then_reports_the_bad_one():
    view, writer, reader = make_ring()
    assert writer.try_write(descriptor(2, 3), bytes(8))
    assert writer.try_write(descriptor(2, 2))
    assert writer.try_write(descriptor(5, 2))
    out = np.zeros(1024, np.uint8)
    offsets = np.zeros(9, np.int64)
    assert reader.read_batch(out, offsets) == 2, "the good packets before the bad one are lost"
    assert offsets[:3].tolist() == [0, 24, 40]
    with pytest.raises(ProtocolError, match="hlen > tlen"):
        reader.read_batch(out, offsets)
    with pytest.raises(ProtocolError):
        reader.read_batch(out, offsets)  # the ring stays broken: reported again, never skipped silently
    assert reader.protocol_errors == 2


def test_commit_with_a_bad_write_index_is_reported():
    view, writer, reader = make_ring()
    writer.try_write(descriptor(2, 2))
    reader.read()
    view.header[RING_WRITE_INDEX] = 12
    view.header[3] = 64  # pending_send_sz set, so the rule reads the write index
    with pytest.raises(ProtocolError):
        reader.commit()
    assert view.read_index == 24, "the read index must be published before the check"


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    write_index=st.integers(0, 2**32 - 1),
    read_index=st.integers(0, DSIZE // 8 - 1),
    aligned=st.booleans(),
)
def test_garbage_ring_never_crashes_the_reader(seed, write_index, read_index, aligned):
    rng = np.random.default_rng(seed)
    view = RingView(np.zeros(4096 + DSIZE, dtype=np.uint8))
    view.initialize(read_index=read_index * 8)
    view.data[:] = rng.integers(0, 256, DSIZE, dtype=np.uint8)
    # Chain plausible-looking descriptors from the read index so that the reader goes deep,
    # with lengths that are sometimes inconsistent and headers that straddle the end.
    position = read_index * 8
    for _ in range(40):
        hlen8, tlen8 = int(rng.integers(0, 4)), int(rng.integers(0, 48))
        header = np.frombuffer(descriptor(hlen8, tlen8), np.uint8)
        view.data[(position + np.arange(16)) % DSIZE] = header
        position = (position + tlen8 * 8 + 8) % DSIZE
    view.header[RING_WRITE_INDEX] = (write_index % DSIZE) & ~7 if aligned else write_index
    reader = RingReader(view)
    out = np.zeros(DSIZE, np.uint8)
    offsets = np.zeros(DSIZE // 24 + 2, np.int64)
    consumed = 0
    for _ in range(DSIZE // 24 + 2):
        try:
            count = reader.read_batch(out, offsets)
        except ProtocolError:
            break
        if count == 0:
            break
        consumed += int(offsets[count]) + 8 * count
        assert consumed <= DSIZE, "reader consumed more bytes than the ring holds"
    assert reader.bytes == consumed
