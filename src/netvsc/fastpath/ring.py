"""VMBus ring buffer kernels: write, read, commit and signal decisions (spec/vmbus.md 3, 4.7, 8.3-8.6).

Layer 3 (fastpath). Every function here works on numpy arrays only:

- ``header``: uint32 view of the ring's 4096-byte header page (word indices from wire.vmbus);
- ``data``: uint8 view of the data area; its length is ``dsize``, a multiple of 8. Since packets
  start on 8-byte boundaries, every aligned 8-byte word lies whole inside the area: descriptors,
  padding words and trailers are stored and loaded as single 8-byte words (fastpath/lebytes.py),
  and only byte runs (payloads, whole-packet copies) are split at the end (8.6);
- ``state``: a small int64 array private to one endpoint (a writer or a reader) holding its
  private cursor and counters (layouts ``WRITER_*`` and ``READER_*`` below).

The same kernels serve both roles: the guest writes its TX ring and reads its RX ring, the
emulated host writes the RX ring and reads the TX ring.

Kernels never raise on peer data: a bad index or descriptor is reported by a negative return
code (``ERR_*``) and counted in ``state``; the Python wrappers (vmbus/ring.py) turn codes into
exceptions. Every value read from shared memory is read once, validated, and only the snapshot
is used afterwards, so a hostile peer cannot make a kernel index out of bounds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.fastpath.atomics import (
    atomic_load_u32,
    atomic_store_release_u32,
    atomic_store_u32,
    compiler_barrier,
    copy_bytes,
    full_fence,
)
from netvsc.fastpath.borrow import borrowed
from netvsc.fastpath.lebytes import load_u64, store_u64
from netvsc.wire.vmbus import (
    PACKET_ALIGNMENT,
    PACKET_DESCRIPTOR_SIZE,
    PACKET_MAX_LENGTH8,
    PACKET_TRAILER_SIZE,
    RING_FEATURE_BITS,
    RING_FEATURE_PENDING_SEND_SIZE,
    RING_INTERRUPT_MASK,
    RING_PENDING_SEND_SIZE,
    RING_READ_INDEX,
    RING_WRITE_INDEX,
)

# Return codes: >= 0 is a count or a length, < 0 an error.
ERR_BAD_PEER_INDEX = -1  # peer's index >= dsize or not a multiple of 8
ERR_HLEN_TOO_SMALL = -2  # descriptor hlen < 2
ERR_HLEN_BEYOND_TLEN = -3  # descriptor hlen > tlen
ERR_TRUNCATED = -4  # packet (tlen*8 + trailer) longer than the readable bytes
ERR_BUFFER_TOO_SMALL = -5  # caller's buffer too small (not a protocol error); need in READER_NEEDED
ERR_BAD_PACKET_LENGTH = -6  # writer: packet shorter than a descriptor or too large for this ring

PROTOCOL_ERROR_CODES = (ERR_BAD_PEER_INDEX, ERR_HLEN_TOO_SMALL, ERR_HLEN_BEYOND_TLEN, ERR_TRUNCATED)

# Writer state (int64 words).
WRITER_CURSOR = 0  # private write index: never read back from the shared header (8.4)
WRITER_SIGNAL_PENDING = 1  # 1 when a publish turned the ring empty -> non-empty and mask was clear
WRITER_PACKETS = 2
WRITER_BYTES = 3  # ring bytes written, descriptors, padding and trailers included
WRITER_FULL_EVENTS = 4  # calls that had to refuse a packet for lack of space
WRITER_PROTOCOL_ERRORS = 5
WRITER_PUBLISHED = 6  # the write index last published; staged packets lie between it and the cursor
WRITER_FREE_SEEN = 7  # bytes free after the cursor when the peer's read index was last loaded
WRITER_STATE_WORDS = 8

# Reader state (int64 words).
READER_CURSOR = 0  # private read index, published by ring_commit only
READER_UNCOMMITTED = 1  # bytes consumed since the last commit (3.9 "bytes_read")
READER_PACKETS = 2
READER_BYTES = 3
READER_PROTOCOL_ERRORS = 4
READER_NEEDED = 5  # packet length the caller's buffer lacked room for (ERR_BUFFER_TOO_SMALL)
READER_AVAIL_SEEN = 6  # bytes readable after the cursor when the peer's write index was last loaded
READER_STATE_WORDS = 8

# Largest packet body a descriptor can describe (tlen is a u16 count of 8-byte units, 3.5).
MAX_PACKET_BYTES = PACKET_MAX_LENGTH8 * PACKET_ALIGNMENT
# The smallest packet is a bare descriptor plus its trailer.
MIN_PACKET_TOTAL = PACKET_DESCRIPTOR_SIZE + PACKET_TRAILER_SIZE


# ---------------------------------------------------------------------------------------------
# Index arithmetic (3.3)


@njit(nogil=True, cache=True)
def ring_advance(index, nbytes, dsize):
    """Index ``nbytes`` after ``index`` (``nbytes < dsize``)."""
    index += nbytes
    if index >= dsize:
        index -= dsize
    return index


@njit(nogil=True, cache=True)
def ring_free_bytes(write_index, read_index, dsize):
    """Bytes a writer may use; an empty ring (``write_index == read_index``) gives ``dsize``."""
    if write_index >= read_index:
        return dsize - (write_index - read_index)
    return read_index - write_index


@njit(nogil=True, cache=True)
def ring_index_valid(index, dsize):
    """A peer's index is usable only below ``dsize`` and 8-byte aligned (4.7, 8.4)."""
    return 0 <= index < dsize and index % PACKET_ALIGNMENT == 0


# ---------------------------------------------------------------------------------------------
# Copies with wrap-around (8.6): every access splits at the end of the data area.


@njit(nogil=True, cache=True)
def _copy_into_ring(data, dsize, pos, src, src_start, nbytes):
    first = dsize - pos
    if nbytes < first:
        copy_bytes(data, pos, src, src_start, nbytes)
        return pos + nbytes
    copy_bytes(data, pos, src, src_start, first)
    rest = nbytes - first
    copy_bytes(data, 0, src, src_start + first, rest)
    return rest


@njit(nogil=True, cache=True)
def _zero_padding_word(data, dsize, pos, padded):
    """Zero the last word of a ``padded``-byte packet starting at ``pos`` before its bytes are
    copied in: the content then overwrites the word's head and the padding stays zero."""
    last = pos + padded - PACKET_ALIGNMENT
    if last >= dsize:
        last -= dsize
    store_u64(data, last, 0)


@njit(nogil=True, cache=True)
def _store_word(data, dsize, pos, value):
    """Store one 8-byte word at the aligned byte offset ``pos``; returns the offset after it."""
    store_u64(data, pos, value)
    pos += PACKET_ALIGNMENT
    return 0 if pos == dsize else pos


@njit(nogil=True, cache=True)
def _copy_from_ring(data, dsize, pos, dst, dst_start, nbytes):
    first = dsize - pos
    if nbytes <= first:
        copy_bytes(dst, dst_start, data, pos, nbytes)
        return
    copy_bytes(dst, dst_start, data, pos, first)
    copy_bytes(dst, dst_start + first, data, 0, nbytes - first)


@njit(nogil=True, cache=True)
def _writer_peer_read_index(header, state, dsize):
    read_index = np.int64(atomic_load_u32(header, RING_READ_INDEX))
    if not ring_index_valid(read_index, dsize):
        state[WRITER_PROTOCOL_ERRORS] += 1
        return np.int64(ERR_BAD_PEER_INDEX)
    return read_index


@njit(nogil=True, cache=True)
def _packet_total_valid(content, padded, dsize):
    # Strict full rule (3.5): a write needs avail_write > total, and avail_write <= dsize.
    return (
        content >= PACKET_DESCRIPTOR_SIZE
        and padded <= MAX_PACKET_BYTES
        and padded + PACKET_TRAILER_SIZE < dsize
    )


@njit(nogil=True, cache=True)
def _writer_room(header, state, dsize, total):
    """1 when a ``total``-byte packet fits after the cursor, 0 when the ring is full, or an
    ``ERR_*`` code. The peer's read index (a cache line the peer writes) is loaded only when the
    space known free from the last load does not suffice: that space only grows meanwhile."""
    if state[WRITER_FREE_SEEN] > total:
        return 1
    read_index = _writer_peer_read_index(header, state, dsize)
    if read_index < 0:
        return read_index
    compiler_barrier()
    free = ring_free_bytes(state[WRITER_CURSOR], read_index, dsize)
    state[WRITER_FREE_SEEN] = free
    if free <= total:
        state[WRITER_FULL_EVENTS] += 1
        return 0
    return 1


@njit(nogil=True, cache=True)
def _publish(header, state):
    """Publish the cursor as the write index, then apply the TX signalling rule (3.7) to
    everything published by this call."""
    batch_start = state[WRITER_PUBLISHED]
    new_cursor = state[WRITER_CURSOR]
    state[WRITER_PUBLISHED] = new_cursor
    # Packet bytes must be in memory before the index that exposes them (3.11): a release
    # store; the barrier keeps the compiler from sinking plain stores below it.
    compiler_barrier()
    atomic_store_release_u32(header, RING_WRITE_INDEX, new_cursor)
    # Store of write_index -> load of interrupt_mask needs a full fence, else a reader that
    # is unmasking right now is missed and both sides wait forever (3.11).
    full_fence()
    if atomic_load_u32(header, RING_INTERRUPT_MASK) != 0:
        return
    read_index = np.int64(atomic_load_u32(header, RING_READ_INDEX))
    # Only an empty -> non-empty transition is worth a signal: the reader had consumed
    # everything up to the start of what was just published.
    if read_index == batch_start:
        state[WRITER_SIGNAL_PENDING] = 1


@njit(nogil=True, cache=True)
def ring_publish(header, state):
    """Publish the packets staged since the last publish, if any (``ring_stage_packet``)."""
    if state[WRITER_CURSOR] != state[WRITER_PUBLISHED]:
        _publish(header, state)


@njit(nogil=True, cache=True)
def ring_stage_packet(header, data, state, pieces):
    """Write one packet gathered from ``pieces`` (a tuple of 1-D uint8 arrays) without
    publishing it: the reader sees it at the next ``ring_publish`` (or publishing write).

    A burst stages its packets and publishes once: each publish is a store to the line the
    reader polls plus a full fence, which costs more than writing a small packet. The pieces
    are the packet's bytes in order (descriptor first); the kernel adds zero padding to 8 bytes
    and the trailer. Returns 1 (written), 0 (ring full, nothing written) or an ``ERR_*`` code.
    """
    dsize = data.shape[0]
    content = 0
    for piece in pieces:
        content += piece.shape[0]
    padded = (content + PACKET_ALIGNMENT - 1) & ~(PACKET_ALIGNMENT - 1)
    if not _packet_total_valid(content, padded, dsize):
        return ERR_BAD_PACKET_LENGTH
    total = padded + PACKET_TRAILER_SIZE
    room = _writer_room(header, state, dsize, total)
    if room != 1:
        return room
    start = state[WRITER_CURSOR]
    _zero_padding_word(data, dsize, start, padded)
    pos = start
    for piece in pieces:
        pos = _copy_into_ring(data, dsize, pos, piece, 0, piece.shape[0])
    # The trailer holds the packet's start (3.4): u64 ``start << 32``.
    state[WRITER_CURSOR] = _store_word(data, dsize, ring_advance(start, padded, dsize), start << 32)
    state[WRITER_FREE_SEEN] -= total
    state[WRITER_PACKETS] += 1
    state[WRITER_BYTES] += total
    return 1


@njit(nogil=True, cache=True)
def ring_write_packet(header, data, state, pieces):
    """``ring_stage_packet``, then publish (with any packets staged before it)."""
    result = ring_stage_packet(header, data, state, pieces)
    if result == 1:
        _publish(header, state)
    return result


@njit(nogil=True, cache=True)
def ring_write_batch(header, data, state, blob, offsets, count):
    """Write up to ``count`` pre-built packets ``blob[offsets[i]:offsets[i+1]]``, publish once.

    Each packet starts with its descriptor; the kernel pads and adds trailers. Stops at the first
    packet that does not fit. Returns the number written, or an ``ERR_*`` code when the first
    packet is malformed (a malformed later one ends the batch before it).
    """
    # No reference counting inside the call (fastpath/borrow.py).
    header, data, state, blob = borrowed(header), borrowed(data), borrowed(state), borrowed(blob)
    offsets = borrowed(offsets)
    dsize = data.shape[0]
    read_index = _writer_peer_read_index(header, state, dsize)
    if read_index < 0:
        return read_index
    batch_start = state[WRITER_CURSOR]
    compiler_barrier()
    free = ring_free_bytes(batch_start, read_index, dsize)
    pos = batch_start
    written = 0
    for packet_number in range(count):
        first = offsets[packet_number]
        content = offsets[packet_number + 1] - first
        padded = (content + PACKET_ALIGNMENT - 1) & ~(PACKET_ALIGNMENT - 1)
        if not _packet_total_valid(content, padded, dsize) or first < 0 or first + content > blob.shape[0]:
            if written == 0:
                return ERR_BAD_PACKET_LENGTH
            break
        total = padded + PACKET_TRAILER_SIZE
        if free <= total:
            state[WRITER_FULL_EVENTS] += 1
            break
        packet_start = pos
        _zero_padding_word(data, dsize, pos, padded)
        _copy_into_ring(data, dsize, pos, blob, first, content)
        pos = _store_word(data, dsize, ring_advance(packet_start, padded, dsize), packet_start << 32)
        free -= total
        written += 1
        state[WRITER_BYTES] += total
    state[WRITER_FREE_SEEN] = free
    if written > 0:
        state[WRITER_PACKETS] += written
        state[WRITER_CURSOR] = pos
        _publish(header, state)
    return written


@njit(nogil=True, cache=True)
def ring_write_inband_batch(
    header, data, state, payloads, offsets, count, packet_type, flags, transaction_ids
):
    """Write up to ``count`` packets with plain descriptors (hlen 2) around the payloads
    ``payloads[offsets[i]:offsets[i+1]]``, transaction id ``transaction_ids[i]`` (an int64 array:
    a uint64 id viewed as int64); publish once.

    For in-band and completion packets (4.3). Returns the number written or an ``ERR_*`` code.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    header, data, state, payloads = borrowed(header), borrowed(data), borrowed(state), borrowed(payloads)
    offsets, transaction_ids = borrowed(offsets), borrowed(transaction_ids)
    dsize = data.shape[0]
    read_index = _writer_peer_read_index(header, state, dsize)
    if read_index < 0:
        return read_index
    batch_start = state[WRITER_CURSOR]
    compiler_barrier()
    free = ring_free_bytes(batch_start, read_index, dsize)
    # First descriptor word: type u16, hlen u16 (2), tlen u16 (per packet), flags u16. Built as a
    # signed int64 so that a flags value with bit 15 set stays in range.
    signed_flags = flags & 0xFFFF
    if signed_flags >= 0x8000:
        signed_flags -= 0x10000
    descriptor_word = (
        (packet_type & 0xFFFF) | ((PACKET_DESCRIPTOR_SIZE // PACKET_ALIGNMENT) << 16) | (signed_flags << 48)
    )
    pos = batch_start
    written = 0
    for packet_number in range(count):
        first = offsets[packet_number]
        payload_length = offsets[packet_number + 1] - first
        content = PACKET_DESCRIPTOR_SIZE + payload_length
        padded = (content + PACKET_ALIGNMENT - 1) & ~(PACKET_ALIGNMENT - 1)
        if (
            not _packet_total_valid(content, padded, dsize)
            or first < 0
            or payload_length < 0
            or first + payload_length > payloads.shape[0]
        ):
            if written == 0:
                return ERR_BAD_PACKET_LENGTH
            break
        total = padded + PACKET_TRAILER_SIZE
        if free <= total:
            state[WRITER_FULL_EVENTS] += 1
            break
        tlen = padded // PACKET_ALIGNMENT
        packet_start = pos
        _zero_padding_word(data, dsize, pos, padded)
        pos = _store_word(data, dsize, pos, descriptor_word | (tlen << 32))
        pos = _store_word(data, dsize, pos, transaction_ids[packet_number])
        _copy_into_ring(data, dsize, pos, payloads, first, payload_length)
        pos = _store_word(data, dsize, ring_advance(packet_start, padded, dsize), packet_start << 32)
        free -= total
        written += 1
        state[WRITER_BYTES] += total
    state[WRITER_FREE_SEEN] = free
    if written > 0:
        state[WRITER_PACKETS] += written
        state[WRITER_CURSOR] = pos
        _publish(header, state)
    return written


@njit(nogil=True, cache=True)
def ring_take_signal(header, state):
    """1 if the peer must be signalled for what was published since the last call, else 0.

    Re-checks the interrupt mask right before the signal (3.7 "when actually signalling").
    """
    if state[WRITER_SIGNAL_PENDING] == 0:
        return 0
    state[WRITER_SIGNAL_PENDING] = 0
    full_fence()
    if atomic_load_u32(header, RING_INTERRUPT_MASK) != 0:
        return 0
    return 1


@njit(nogil=True, cache=True)
def ring_writer_avail(header, data, state):
    """Bytes free for the writer (from its private cursor and one read-index snapshot)."""
    dsize = data.shape[0]
    read_index = _writer_peer_read_index(header, state, dsize)
    if read_index < 0:
        return read_index
    return ring_free_bytes(state[WRITER_CURSOR], read_index, dsize)


@njit(nogil=True, cache=True)
def ring_request_space(header, data, state, needed):
    """The writer is blocked: publish ``pending_send_sz = needed`` and re-check the space.

    Returns 1 when ``needed`` bytes fit now (the request is withdrawn, retry the write), 0 when
    the writer must wait for the reader's signal (3.9), or an ``ERR_*`` code.
    """
    dsize = data.shape[0]
    atomic_store_u32(header, RING_PENDING_SEND_SIZE, needed)
    # Store of pending_send_sz -> load of read_index: either this re-check sees the reader's
    # new index or the reader sees our request (the mirror of the reader's fence in 3.9).
    full_fence()
    read_index = _writer_peer_read_index(header, state, dsize)
    if read_index < 0:
        return read_index
    if ring_free_bytes(state[WRITER_CURSOR], read_index, dsize) > needed:
        atomic_store_u32(header, RING_PENDING_SEND_SIZE, 0)
        return 1
    return 0


@njit(nogil=True, cache=True)
def ring_clear_pending_send(header):
    """The writer is no longer waiting for space."""
    atomic_store_u32(header, RING_PENDING_SEND_SIZE, 0)


# ---------------------------------------------------------------------------------------------
# Reader


@njit(nogil=True, cache=True)
def _reader_available(header, state, dsize):
    """Readable bytes from one validated snapshot of the peer's write index, or an error.
    The count is remembered (``READER_AVAIL_SEEN``) for the packets that follow."""
    write_index = np.int64(atomic_load_u32(header, RING_WRITE_INDEX))
    if not ring_index_valid(write_index, dsize):
        return np.int64(ERR_BAD_PEER_INDEX)
    available = dsize - ring_free_bytes(write_index, state[READER_CURSOR], dsize)
    state[READER_AVAIL_SEEN] = available
    return available


@njit(nogil=True, cache=True)
def _validated_length(first_word, available):
    """Packet length ``tlen * 8`` from a private copy of the descriptor's first word (4.7),
    or an error code."""
    hlen = (first_word >> 16) & 0xFFFF
    tlen = (first_word >> 32) & 0xFFFF
    if hlen < PACKET_DESCRIPTOR_SIZE // PACKET_ALIGNMENT:
        return np.int64(ERR_HLEN_TOO_SMALL)
    if hlen > tlen:
        return np.int64(ERR_HLEN_BEYOND_TLEN)
    length = tlen * PACKET_ALIGNMENT
    if length + PACKET_TRAILER_SIZE > available:
        return np.int64(ERR_TRUNCATED)
    return length


@njit(nogil=True, cache=True)
def _next_packet(header, data, dsize, state):
    """The next packet's validated length and a private copy of its first descriptor word:
    ``(length, word)``; length 0 when the ring is empty, or an error code.

    The peer's write index (a line the peer writes) is loaded only when the bytes known readable
    from the last load do not hold the whole packet: they only grow meanwhile.
    """
    available = state[READER_AVAIL_SEEN]
    fresh = available < MIN_PACKET_TOTAL
    if fresh:
        available = _reader_available(header, state, dsize)
        if available <= 0:
            return available, np.int64(0)
        if available < MIN_PACKET_TOTAL:
            return np.int64(ERR_TRUNCATED), np.int64(0)
    # One load of the length word into private memory; only this copy is validated and used.
    first_word = load_u64(data, state[READER_CURSOR])
    length = _validated_length(first_word, available)
    if length == ERR_TRUNCATED and not fresh:
        # Known bytes end inside this packet: its rest may have been published since.
        available = _reader_available(header, state, dsize)
        if available < 0:
            return available, np.int64(0)
        length = _validated_length(first_word, available)
    return length, first_word


@njit(nogil=True, cache=True)
def _count_reader_error(state, code):
    if code < 0 and code != ERR_BUFFER_TOO_SMALL:
        state[READER_PROTOCOL_ERRORS] += 1
    return code


@njit(nogil=True, cache=True)
def ring_reader_avail(header, data, state):
    """Readable bytes (``avail_read``) or an error code."""
    return _count_reader_error(state, _reader_available(header, state, data.shape[0]))


@njit(nogil=True, cache=True)
def ring_peek(header, data, state, descriptor_out):
    """Copy the next packet's validated descriptor into ``descriptor_out`` (16 bytes).

    Returns the packet length ``tlen * 8``, 0 when empty, or an error. Moves nothing.
    """
    dsize = data.shape[0]
    if descriptor_out.shape[0] < PACKET_DESCRIPTOR_SIZE:
        state[READER_NEEDED] = PACKET_DESCRIPTOR_SIZE
        return ERR_BUFFER_TOO_SMALL
    length, first_word = _next_packet(header, data, dsize, state)
    if length > 0:
        store_u64(descriptor_out, 0, first_word)
        store_u64(descriptor_out, 8, load_u64(data, ring_advance(state[READER_CURSOR], 8, dsize)))
    return _count_reader_error(state, length)


@njit(nogil=True, cache=True)
def _peek_into(header, data, dsize, state, out, out_start):
    """Copy the next packet into ``out[out_start:]`` without consuming it; its length, 0, or an error."""
    length, first_word = _next_packet(header, data, dsize, state)
    if length <= 0:
        return length
    if out.shape[0] - out_start < length:
        state[READER_NEEDED] = length
        return np.int64(ERR_BUFFER_TOO_SMALL)
    # One copy of the packet out of shared memory, then the validated word over its head, so
    # the caller's bytes agree with the lengths checked even if the peer rewrote the ring.
    _copy_from_ring(data, dsize, state[READER_CURSOR], out, out_start, length)
    store_u64(out, out_start, first_word)
    return length


@njit(nogil=True, cache=True)
def _consume(state, length, dsize):
    """Move the private cursor past a packet of ``length`` bytes (its trailer too)."""
    total = length + PACKET_TRAILER_SIZE
    state[READER_CURSOR] = ring_advance(state[READER_CURSOR], total, dsize)
    state[READER_AVAIL_SEEN] -= total
    state[READER_UNCOMMITTED] += total
    state[READER_BYTES] += total


@njit(nogil=True, cache=True)
def _read_into(header, data, dsize, state, out, out_start):
    length = _peek_into(header, data, dsize, state, out, out_start)
    if length > 0:
        _consume(state, length, dsize)
    return length


@njit(nogil=True, cache=True)
def ring_read_packet(header, data, state, out):
    """Copy the next packet (descriptor included, ``tlen * 8`` bytes) into ``out`` and consume it.

    Returns its length, 0 when empty, or an error (``ERR_BUFFER_TOO_SMALL``: nothing consumed,
    the length needed in ``READER_NEEDED``). The read index is published by ``ring_commit``.
    """
    header, data, state, out = borrowed(header), borrowed(data), borrowed(state), borrowed(out)
    length = _read_into(header, data, data.shape[0], state, out, 0)
    if length > 0:
        state[READER_PACKETS] += 1
    return _count_reader_error(state, length)


@njit(nogil=True, cache=True)
def ring_read_batch(header, data, state, out, offsets, max_packets):
    """Read up to ``max_packets`` packets back to back into ``out``; packet i is
    ``out[offsets[i]:offsets[i+1]]``.

    Returns the number read. A bad packet ends the batch before it; it is reported (as an error
    code) only when it is the first, so the good packets before it are never lost.
    """
    # No reference counting inside the call (fastpath/borrow.py).
    header, data, state, out = borrowed(header), borrowed(data), borrowed(state), borrowed(out)
    offsets = borrowed(offsets)
    dsize = data.shape[0]
    offsets[0] = 0
    out_pos = 0
    packets = 0
    limit = min(max_packets, offsets.shape[0] - 1)
    while packets < limit:
        length = _read_into(header, data, dsize, state, out, out_pos)
        if length <= 0:
            if packets == 0:
                return _count_reader_error(state, length)
            break
        out_pos += length
        packets += 1
        offsets[packets] = out_pos
    state[READER_PACKETS] += packets
    return packets


@njit(nogil=True, cache=True)
def ring_peek_packet(header, data, state, out):
    """Copy the next packet (descriptor included, ``tlen * 8`` bytes) into ``out`` and leave it in
    the ring; ``ring_consume`` takes it. For readers that decide per packet whether they handle
    it. Returns its length, 0 when empty, or an error."""
    header, data, state, out = borrowed(header), borrowed(data), borrowed(state), borrowed(out)
    return _count_reader_error(state, _peek_into(header, data, data.shape[0], state, out, 0))


@njit(nogil=True, cache=True)
def ring_consume(data, state, length):
    """Consume the packet ``ring_peek_packet`` just returned (``length`` is what it returned)."""
    _consume(state, length, data.shape[0])
    state[READER_PACKETS] += 1


@njit(nogil=True, cache=True)
def ring_skip(header, data, state):
    """Consume the next packet without copying its body. Returns its length, 0, or an error."""
    dsize = data.shape[0]
    length, _ = _next_packet(header, data, dsize, state)
    if length <= 0:
        return _count_reader_error(state, length)
    _consume(state, length, dsize)
    state[READER_PACKETS] += 1
    return length


@njit(nogil=True, cache=True)
def ring_commit(header, data, state):
    """Publish the private read index, then apply the pending-send-size rule (3.9).

    Returns 1 when the writer is waiting for space that this commit provided (signal it),
    0 otherwise, or an error code.
    """
    dsize = data.shape[0]
    read_index = state[READER_CURSOR]
    bytes_read = state[READER_UNCOMMITTED]
    if bytes_read == 0:
        return 0  # the published index is the cursor already: no store to the peer's line
    state[READER_UNCOMMITTED] = 0
    # Every copy out of the packets must be done before the writer may reuse their space: a
    # release store; the barrier keeps the compiler from sinking plain loads below it.
    compiler_barrier()
    atomic_store_release_u32(header, RING_READ_INDEX, read_index)
    if (atomic_load_u32(header, RING_FEATURE_BITS) & RING_FEATURE_PENDING_SEND_SIZE) == 0:
        return 0  # the writer does not use pending_send_sz: it polls
    # Store of read_index -> load of pending_send_sz needs a full fence, else a writer that
    # sets it right now is missed (3.11).
    full_fence()
    # Writers may ask for "ring size - 1" meaning "wake me when empty"; only 8-byte multiples
    # can ever be freed, so compare on the masked value as OpenVMM does (3.5).
    pending = np.int64(atomic_load_u32(header, RING_PENDING_SEND_SIZE)) & ~np.int64(PACKET_ALIGNMENT - 1)
    if pending == 0:
        return 0
    write_index = np.int64(atomic_load_u32(header, RING_WRITE_INDEX))
    if not ring_index_valid(write_index, dsize):
        return _count_reader_error(state, np.int64(ERR_BAD_PEER_INDEX))
    free = ring_free_bytes(write_index, read_index, dsize)
    if free - bytes_read > pending:
        return 0  # the writer had enough room before this commit: it is not blocked on us
    if free <= pending:
        return 0  # still not enough (exactly enough is not enough: the ring never fills)
    return 1


@njit(nogil=True, cache=True)
def ring_mask_interrupts(header):
    """Reader tells the writer not to signal: it is draining (3.7, 3.10)."""
    atomic_store_u32(header, RING_INTERRUPT_MASK, 1)


@njit(nogil=True, cache=True)
def ring_unmask_interrupts(header, data, state):
    """Reader is about to sleep: clear the mask, then re-check for data published meanwhile.

    Returns the readable bytes seen after unmasking (> 0: keep draining, the writer may not
    have signalled), or an error code.
    """
    atomic_store_u32(header, RING_INTERRUPT_MASK, 0)
    # Store of the mask -> load of write_index: the mirror of the writer's fence in 3.7.
    full_fence()
    return _count_reader_error(state, _reader_available(header, state, data.shape[0]))
