"""One VMBus ring buffer seen by one endpoint: ``RingView``, ``RingWriter``, ``RingReader``.

Layer 4 (vmbus). Thin Python objects around the kernels of fastpath/ring.py: they own the
numpy views and the private state arrays, and turn the kernels' error codes into
``ProtocolError`` (a misbehaving peer) or ``ConfigError`` (a caller asking for the impossible).
The writer and reader classes serve both roles: the guest writes TX and reads RX, the emulated
host writes RX and reads TX (spec/vmbus.md 3).
"""

from __future__ import annotations

import numpy as np

from netvsc.errors import ConfigError, ProtocolError
from netvsc.fastpath import ring as kernels
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    PACKET_ALIGNMENT,
    PACKET_DESCRIPTOR_SIZE,
    PACKET_TRAILER_SIZE,
    RING_FEATURE_BITS,
    RING_FEATURE_PENDING_SEND_SIZE,
    RING_HEADER_SIZE,
    RING_INTERRUPT_MASK,
    RING_PENDING_SEND_SIZE,
    RING_READ_INDEX,
    RING_WRITE_INDEX,
)

__all__ = ["RingReader", "RingView", "RingWriter", "as_piece"]

_ERROR_TEXT = {
    kernels.ERR_BAD_PEER_INDEX: "peer index out of range or not a multiple of 8",
    kernels.ERR_HLEN_TOO_SMALL: "descriptor hlen < 2",
    kernels.ERR_HLEN_BEYOND_TLEN: "descriptor hlen > tlen",
    kernels.ERR_TRUNCATED: "packet longer than the readable bytes",
}


def as_piece(piece: object) -> np.ndarray:
    """A packet piece as the kernels take it: 1-D, C-contiguous, writable uint8 (copies only if needed)."""
    if isinstance(piece, np.ndarray):
        array = piece.reshape(-1).view(np.uint8) if piece.dtype != np.uint8 else piece.reshape(-1)
    else:
        array = np.frombuffer(piece, dtype=np.uint8)  # bytes, bytearray, memoryview
    return np.require(array, np.uint8, ["C", "W"])


class RingView:
    """Header page and data area of one ring inside a shared mapping.

    ``buffer`` is the ring's bytes (a uint8 array over shared memory): the 4096-byte header page,
    then the data area, so ``dsize = len(buffer) - 4096``.
    """

    def __init__(self, buffer: np.ndarray, name: str = "ring") -> None:
        if not isinstance(buffer, np.ndarray) or buffer.dtype != np.uint8 or buffer.ndim != 1:
            raise ConfigError(f"{name} buffer", type(buffer).__name__, "a 1-D uint8 numpy array")
        size = buffer.shape[0]
        if size % HV_PAGE_SIZE != 0 or size <= RING_HEADER_SIZE:
            raise ConfigError(
                f"{name} size", size, "a multiple of 4096 larger than 4096 (header page + data)"
            )
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise ConfigError(f"{name} buffer", "read-only or strided", "a writable contiguous mapping")
        self.name = name
        self.buffer = buffer
        self.header = buffer[:RING_HEADER_SIZE].view(np.uint32)
        self.data = buffer[RING_HEADER_SIZE:]
        self.dsize = size - RING_HEADER_SIZE

    def initialize(
        self,
        *,
        write_index: int = 0,
        read_index: int = 0,
        interrupt_mask: int = 0,
        pending_send_size: int = 0,
        feature_bits: int = RING_FEATURE_PENDING_SEND_SIZE,
    ) -> None:
        """Set up a fresh header, as the kernel (or the emulated host) does at channel open.

        Call before any ``RingWriter``/``RingReader`` is attached: they take their private cursors
        from the header once.
        """
        for index in (write_index, read_index):
            if not (0 <= index < self.dsize and index % PACKET_ALIGNMENT == 0):
                raise ConfigError("ring index", index, f"a multiple of 8 in [0, {self.dsize})")
        self.header[:] = 0
        self.header[RING_WRITE_INDEX] = write_index
        self.header[RING_READ_INDEX] = read_index
        self.header[RING_INTERRUPT_MASK] = interrupt_mask
        self.header[RING_PENDING_SEND_SIZE] = pending_send_size
        self.header[RING_FEATURE_BITS] = feature_bits

    # Shared header fields, for diagnostics and tests (never for the data path).
    @property
    def write_index(self) -> int:
        return int(self.header[RING_WRITE_INDEX])

    @property
    def read_index(self) -> int:
        return int(self.header[RING_READ_INDEX])

    @property
    def interrupt_mask(self) -> int:
        return int(self.header[RING_INTERRUPT_MASK])

    @property
    def pending_send_size(self) -> int:
        return int(self.header[RING_PENDING_SEND_SIZE])

    @property
    def feature_bits(self) -> int:
        return int(self.header[RING_FEATURE_BITS])

    @property
    def max_packet_total(self) -> int:
        """Largest ``tlen * 8 + 8`` this ring can ever accept (strictly below dsize, 3.5)."""
        return min(self.dsize - PACKET_ALIGNMENT, kernels.MAX_PACKET_BYTES + PACKET_TRAILER_SIZE)


class _Endpoint:
    _role = "endpoint"

    def __init__(self, view: RingView, own_index_word: int, state_words: int) -> None:
        self.view = view
        self.header = view.header
        self.data = view.data
        self.dsize = view.dsize
        self.state = np.zeros(state_words, dtype=np.int64)
        # The private cursor starts from the shared header once and is never read back (8.4).
        own_index = int(view.header[own_index_word])
        if not (own_index < view.dsize and own_index % PACKET_ALIGNMENT == 0):
            raise ProtocolError(f"{view.name}: initial index {own_index} invalid for dsize {view.dsize}")
        self.state[0] = own_index

    def _raise(self, code: int, operation: str) -> None:
        text = _ERROR_TEXT.get(code, f"error code {code}")
        raise ProtocolError(
            f"{self.view.name} {self._role} {operation}: {text} "
            f"(write_index={self.view.write_index}, read_index={self.view.read_index}, "
            f"cursor={int(self.state[0])}, dsize={self.dsize})"
        )


class RingWriter(_Endpoint):
    """The writing end of a ring: one writer per ring (funnel several producers through one)."""

    _role = "writer"

    def __init__(self, view: RingView) -> None:
        super().__init__(view, RING_WRITE_INDEX, kernels.WRITER_STATE_WORDS)
        self.state[kernels.WRITER_PUBLISHED] = self.state[kernels.WRITER_CURSOR]

    def _check(self, result: int, operation: str, total: int | None = None) -> int:
        if result == kernels.ERR_BAD_PACKET_LENGTH:
            raise ConfigError(
                "packet length", total, f"16 .. {self.view.max_packet_total - 8} bytes for dsize {self.dsize}"
            )
        if result < 0:
            self._raise(result, operation)
        return result

    def try_write(self, *pieces: object) -> bool:
        """Write one packet made of ``pieces`` (descriptor first); the ring adds padding and trailer.

        Returns False when the ring is too full (nothing written).
        """
        arrays = tuple(as_piece(piece) for piece in pieces)
        if not arrays:
            raise ConfigError("pieces", 0, "at least one piece (the descriptor)")
        result = kernels.ring_write_packet(self.header, self.data, self.state, arrays)
        return self._check(result, "write", sum(a.shape[0] for a in arrays)) == 1

    def write_batch(self, blob: np.ndarray, offsets: np.ndarray, count: int | None = None) -> int:
        """Write pre-built packets ``blob[offsets[i]:offsets[i+1]]``; returns how many fitted."""
        count = len(offsets) - 1 if count is None else count
        result = kernels.ring_write_batch(self.header, self.data, self.state, blob, offsets, count)
        return self._check(result, "write batch")

    def write_inband_batch(
        self,
        payloads: np.ndarray,
        offsets: np.ndarray,
        transaction_ids: np.ndarray,
        packet_type: int,
        flags: int = 0,
        count: int | None = None,
    ) -> int:
        """Write packets with plain descriptors (in-band or completion) around
        ``payloads[offsets[i]:offsets[i+1]]``; returns how many fitted."""
        count = len(offsets) - 1 if count is None else count
        if transaction_ids.dtype != np.int64:
            transaction_ids = transaction_ids.astype(np.uint64, copy=False).view(np.int64)
        result = kernels.ring_write_inband_batch(
            self.header, self.data, self.state, payloads, offsets, count, packet_type, flags, transaction_ids
        )
        return self._check(result, "write batch")

    def take_signal(self) -> bool:
        """Whether the reader must be signalled for everything published since the last call (3.7)."""
        if not self.state[kernels.WRITER_SIGNAL_PENDING]:
            return False  # nothing published needs one: no kernel call (this state is private)
        return bool(kernels.ring_take_signal(self.header, self.state))

    def avail_write(self) -> int:
        """Free bytes (a packet of ``total`` bytes fits only if this is strictly greater)."""
        return self._check(kernels.ring_writer_avail(self.header, self.data, self.state), "avail")

    def request_space(self, needed: int) -> bool:
        """Ask the reader to signal once ``needed`` bytes (``tlen*8 + 8``) are free (3.9).

        Returns True if they are free already (request withdrawn: retry now), False if the caller
        must wait for the reader's signal. Only useful when the ring's feature bit 0 is set.
        """
        if not 0 < needed < self.dsize:
            raise ConfigError("needed", needed, f"1 .. {self.dsize - 1} bytes")
        return (
            self._check(kernels.ring_request_space(self.header, self.data, self.state, needed), "request")
            == 1
        )

    def clear_pending_send(self) -> None:
        kernels.ring_clear_pending_send(self.header)

    @property
    def cursor(self) -> int:
        return int(self.state[kernels.WRITER_CURSOR])

    @property
    def packets(self) -> int:
        return int(self.state[kernels.WRITER_PACKETS])

    @property
    def bytes(self) -> int:
        return int(self.state[kernels.WRITER_BYTES])

    @property
    def full_events(self) -> int:
        return int(self.state[kernels.WRITER_FULL_EVENTS])

    @property
    def protocol_errors(self) -> int:
        return int(self.state[kernels.WRITER_PROTOCOL_ERRORS])


class RingReader(_Endpoint):
    """The reading end of a ring: single consumer."""

    _role = "reader"

    def __init__(self, view: RingView) -> None:
        super().__init__(view, RING_READ_INDEX, kernels.READER_STATE_WORDS)
        # Private copy target for read(): a packet never exceeds this (3.5).
        self._scratch = np.empty(min(self.dsize, kernels.MAX_PACKET_BYTES), dtype=np.uint8)
        self._descriptor = np.empty(PACKET_DESCRIPTOR_SIZE, dtype=np.uint8)

    def _check(self, result: int, operation: str) -> int:
        if result == kernels.ERR_BUFFER_TOO_SMALL:
            needed = int(self.state[kernels.READER_NEEDED])
            raise ConfigError("buffer size", "too small", f"at least {needed} bytes for the next packet")
        if result < 0:
            self._raise(result, operation)
        return result

    def avail_read(self) -> int:
        return self._check(kernels.ring_reader_avail(self.header, self.data, self.state), "avail")

    def peek(self) -> np.ndarray | None:
        """A validated copy of the next packet's 16-byte descriptor, or None when empty."""
        length = self._check(kernels.ring_peek(self.header, self.data, self.state, self._descriptor), "peek")
        return self._descriptor.copy() if length else None

    def read(self, out: np.ndarray | None = None) -> np.ndarray | None:
        """Consume the next packet: its ``tlen * 8`` bytes (descriptor included), or None when empty.

        With ``out`` the bytes go there and a view of ``out`` is returned; otherwise a new array.
        Call ``commit()`` afterwards (once per burst) to give the space back.
        """
        target = self._scratch if out is None else out
        length = self._check(kernels.ring_read_packet(self.header, self.data, self.state, target), "read")
        if length == 0:
            return None
        return target[:length].copy() if out is None else target[:length]

    def read_batch(self, out: np.ndarray, offsets: np.ndarray, max_packets: int | None = None) -> int:
        """Read packets back to back into ``out``; packet i is ``out[offsets[i]:offsets[i+1]]``."""
        max_packets = len(offsets) - 1 if max_packets is None else max_packets
        return self._check(
            kernels.ring_read_batch(self.header, self.data, self.state, out, offsets, max_packets),
            "read batch",
        )

    def skip(self) -> bool:
        """Consume the next packet without copying it; False when empty."""
        return self._check(kernels.ring_skip(self.header, self.data, self.state), "skip") > 0

    def commit(self) -> bool:
        """Publish the read index; True when the writer waits for the space just freed (signal it)."""
        return self._check(kernels.ring_commit(self.header, self.data, self.state), "commit") == 1

    def mask_interrupts(self) -> None:
        """Tell the writer not to signal: this reader is draining."""
        kernels.ring_mask_interrupts(self.header)

    def unmask_interrupts(self) -> bool:
        """Clear the mask before sleeping; True if data arrived meanwhile (keep draining)."""
        return self._check(kernels.ring_unmask_interrupts(self.header, self.data, self.state), "unmask") > 0

    @property
    def cursor(self) -> int:
        return int(self.state[kernels.READER_CURSOR])

    @property
    def packets(self) -> int:
        return int(self.state[kernels.READER_PACKETS])

    @property
    def bytes(self) -> int:
        return int(self.state[kernels.READER_BYTES])

    @property
    def protocol_errors(self) -> int:
        return int(self.state[kernels.READER_PROTOCOL_ERRORS])
