"""Ring signalling: the writer's empty->non-empty rule (3.7), the reader's pending-send-size
rule (3.9), and the host's mask / drain / unmask / re-check loop (3.7, 3.10)."""

from __future__ import annotations

import numpy as np
import pytest

from netvsc.fastpath import ring as kernels
from netvsc.vmbus.ring import RingReader, RingView, RingWriter
from netvsc.wire.vmbus import PACKET_TYPE_INBAND, RING_PENDING_SEND_SIZE

DSIZE = 4096
PACKET_TOTAL = 64  # every packet below: 16-byte descriptor + 40-byte payload + 8-byte trailer


def make_ring(feature_bits: int = 1, interrupt_mask: int = 0):
    view = RingView(np.zeros(4096 + DSIZE, dtype=np.uint8))
    view.initialize(feature_bits=feature_bits, interrupt_mask=interrupt_mask)
    return view, RingWriter(view), RingReader(view)


def packet(transaction_id: int = 0) -> bytes:
    descriptor = np.zeros(8, dtype="<u2")
    descriptor[:4] = (PACKET_TYPE_INBAND, 2, 7, 0)
    descriptor.view("<u8")[1] = transaction_id
    return descriptor.tobytes() + bytes(40)


# -- writer: 3.7 -------------------------------------------------------------------------------


def test_first_packet_into_an_empty_unmasked_ring_signals_and_the_next_does_not():
    _, writer, _ = make_ring()
    assert writer.try_write(packet())
    assert writer.take_signal(), "empty -> non-empty with the mask clear must signal"
    assert not writer.take_signal(), "the signal was reported twice"
    assert writer.try_write(packet())
    assert not writer.take_signal(), "the ring was not empty: no signal"


def test_no_signal_while_the_reader_masks():
    _, writer, _ = make_ring(interrupt_mask=1)
    assert writer.try_write(packet())
    assert not writer.take_signal()


def test_mask_set_between_publish_and_signal_cancels_the_signal():
    view, writer, reader = make_ring()
    assert writer.try_write(packet())
    reader.mask_interrupts()  # the reader woke up on its own and is draining
    assert not writer.take_signal(), "take_signal must re-check the mask right before signalling"


def test_a_burst_signals_once():
    _, writer, _ = make_ring()
    for number in range(5):
        assert writer.try_write(packet(number))
    assert writer.take_signal()
    assert not writer.take_signal()


def test_a_batch_publishes_once_and_signals_once():
    view, writer, reader = make_ring()
    payloads = np.zeros(40 * 10, dtype=np.uint8)
    offsets = np.arange(0, 401, 40, dtype=np.int64)
    assert (
        writer.write_inband_batch(payloads, offsets, np.arange(10, dtype=np.uint64), PACKET_TYPE_INBAND) == 10
    )
    assert view.write_index == 10 * PACKET_TOTAL
    assert writer.take_signal()
    assert not writer.take_signal()


def _stage(view: RingView, writer: RingWriter, transaction_id: int) -> int:
    piece = np.frombuffer(packet(transaction_id), dtype=np.uint8)
    return kernels.ring_stage_packet(view.header, view.data, writer.state, (piece,))


def _transaction_ids(reader: RingReader) -> list[int]:
    ids = []
    while (read := reader.read()) is not None:
        ids.append(int(read[8:16].view("<u8")[0]))
    return ids


def test_staged_packets_stay_unseen_until_one_publish_with_one_signal():
    """A burst stages its packets: the write index moves once, at the publish, and the
    empty -> non-empty rule applies to all of them together."""
    view, writer, reader = make_ring()
    for number in range(3):
        assert _stage(view, writer, number) == 1
    assert view.write_index == 0 and reader.read() is None
    assert not writer.take_signal(), "nothing was published yet"
    kernels.ring_publish(view.header, writer.state)
    assert view.write_index == 3 * PACKET_TOTAL
    assert writer.take_signal() and not writer.take_signal()
    kernels.ring_publish(view.header, writer.state)  # nothing staged: no store, no signal
    assert view.write_index == 3 * PACKET_TOTAL and not writer.take_signal()
    assert _transaction_ids(reader) == [0, 1, 2]


def test_a_publishing_write_publishes_what_was_staged_before_it():
    view, writer, reader = make_ring()
    assert _stage(view, writer, 1) == 1
    assert writer.try_write(packet(2))
    assert view.write_index == 2 * PACKET_TOTAL
    assert writer.take_signal() and not writer.take_signal()
    assert _transaction_ids(reader) == [1, 2]


def test_staging_stops_at_the_readers_index_and_goes_on_once_it_moves():
    """The writer remembers the space it last saw free and loads the reader's index again only
    when that runs out: it never writes over unread bytes, and sees space the reader freed."""
    view, writer, reader = make_ring()
    staged = 0
    while _stage(view, writer, staged) == 1:
        staged += 1
    assert staged == (DSIZE - 1) // PACKET_TOTAL  # full rule: one total short of dsize stays free
    kernels.ring_publish(view.header, writer.state)
    reader.read()
    reader.read()
    reader.commit()  # two packets' space given back
    assert _stage(view, writer, 100) == 1 and _stage(view, writer, 101) == 1
    assert _stage(view, writer, 102) == 0, "the third would overwrite a packet not yet committed"


def test_signal_again_only_after_the_reader_caught_up():
    _, writer, reader = make_ring()
    writer.try_write(packet(1))
    writer.try_write(packet(2))
    writer.take_signal()
    reader.read()
    reader.commit()  # one packet still unread
    writer.try_write(packet(3))
    assert not writer.take_signal(), "the reader had not consumed everything: no signal"
    reader.read()
    reader.read()
    reader.commit()
    writer.try_write(packet(4))
    assert writer.take_signal(), "ring was empty again: signal"


def test_consumed_but_uncommitted_packets_do_not_count_as_empty():
    _, writer, reader = make_ring()
    writer.try_write(packet(1))
    writer.take_signal()
    reader.read()  # not committed: the writer still sees the old read index
    writer.try_write(packet(2))
    assert not writer.take_signal()


# -- reader: 3.9 -------------------------------------------------------------------------------


def fill_then_free_one(pending: int, feature_bits: int = 1):
    """Fill the ring (63 packets, 64 bytes left), set pending_send_sz, read one packet back:
    64 bytes were free before the commit and 128 after it, 64 bytes read."""
    view, writer, reader = make_ring(feature_bits=feature_bits)
    while writer.try_write(packet()):
        pass
    assert writer.avail_write() == PACKET_TOTAL
    view.header[RING_PENDING_SEND_SIZE] = pending
    assert reader.read() is not None
    return view, writer, reader


@pytest.mark.parametrize(
    ("scenario", "pending", "feature_bits", "signals"),
    [
        ("writer blocked, now has room", 64, 1, True),
        ("feature bit clear: the writer polls", 64, 0, False),
        ("nobody waiting (p == 0)", 0, 1, False),
        ("writer was not blocked before this commit", 32, 1, False),
        ("still not enough room", 200, 1, False),
        ("exactly p free is not enough: the ring never fills", 128, 1, False),
        ("low 3 bits of p ignored ('ring size - 1' style requests)", 71, 1, True),
        ("p below 8 masks to zero", 7, 1, False),
    ],
)
def test_pending_send_size_rule(scenario, pending, feature_bits, signals):
    view, _, reader = fill_then_free_one(pending, feature_bits)
    assert reader.commit() == signals, scenario
    assert view.read_index == PACKET_TOTAL, "commit must publish the read index whatever it decides"


def test_commit_without_reading_never_signals():
    view, writer, reader = fill_then_free_one(64)
    assert reader.commit()
    assert not reader.commit(), "a second commit freed nothing"


def test_blocked_writer_asks_for_space_and_is_woken():
    view, writer, reader = make_ring()
    while writer.try_write(packet()):
        pass
    assert not writer.request_space(PACKET_TOTAL), "no room yet: the writer must wait"
    assert view.pending_send_size == PACKET_TOTAL
    reader.read()
    assert reader.commit(), "the commit freed what the writer asked for"
    assert writer.try_write(packet())
    writer.clear_pending_send()
    assert view.pending_send_size == 0


def test_request_space_withdraws_itself_when_room_appeared_meanwhile():
    view, writer, reader = make_ring()
    while writer.try_write(packet()):
        pass
    reader.read()
    reader.commit()  # the reader freed space before the writer asked
    assert writer.request_space(PACKET_TOTAL), "room is there: retry at once"
    assert view.pending_send_size == 0


# -- host side: mask while draining, unmask, re-check (3.7) ------------------------------------


def test_mask_drain_unmask_recheck_loop():
    view, writer, reader = make_ring()
    reader.mask_interrupts()
    writer.try_write(packet(1))
    assert not writer.take_signal(), "reader is draining: no signal"
    assert reader.read() is not None
    assert reader.read() is None
    reader.commit()
    assert not reader.unmask_interrupts(), "nothing arrived: the reader may sleep"
    assert view.interrupt_mask == 0
    writer.try_write(packet(2))
    assert writer.take_signal(), "the reader is asleep with the mask clear: the writer must wake it"


def test_data_published_while_masked_is_found_by_the_recheck():
    view, writer, reader = make_ring()
    reader.mask_interrupts()
    writer.try_write(packet(1))
    reader.read()
    reader.commit()
    writer.try_write(packet(2))  # lands after the drain, before the unmask
    assert not writer.take_signal(), "mask was still set"
    assert reader.unmask_interrupts(), "the re-check must see the packet nobody will signal"
    reader.mask_interrupts()
    assert reader.read() is not None
