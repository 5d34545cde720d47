"""VMBus wire formats: ring header, channel packets, monitor and interrupt pages (spec/vmbus.md).

Layer 1 (wire): constants and byte layouts only, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire._struct import Record, Struct, byte_view, require_length

# Hyper-V's page is a protocol constant (spec/vmbus.md conventions), never the system page size.
HV_PAGE_SIZE = 4096
HV_PAGE_SHIFT = 12

# Class GUID of synthetic NICs (spec/vmbus.md 1.1).
NETVSC_CLASS_GUID = "f8615163-df3e-46c5-913f-f2d2f965ed0e"

# Ring header page: indices of the u32 words (spec/vmbus.md 3.2).
RING_WRITE_INDEX = 0
RING_READ_INDEX = 1
RING_INTERRUPT_MASK = 2
RING_PENDING_SEND_SIZE = 3
RING_FEATURE_BITS = 16
RING_HEADER_WORDS = 17
RING_HEADER_SIZE = HV_PAGE_SIZE  # data starts one Hyper-V page into each ring
RING_FEATURE_PENDING_SEND_SIZE = 0x1

# Channel packet framing (spec/vmbus.md 3.4, 4.1).
PACKET_DESCRIPTOR_SIZE = 16
PACKET_TRAILER_SIZE = 8
PACKET_ALIGNMENT = 8
PACKET_MAX_LENGTH8 = 0xFFFF  # tlen is a u16 count of 8-byte units

# Channel packet types (spec/vmbus.md 4.2).
PACKET_TYPE_INBAND = 0x6
PACKET_TYPE_XFER_PAGES = 0x7
PACKET_TYPE_GPA_DIRECT = 0x9
PACKET_TYPE_COMPLETION = 0xB

# Channel packet flags (spec/vmbus.md 4.1).
PACKET_FLAG_COMPLETION_REQUESTED = 0x1

# Monitor page (spec/vmbus.md 5.1).
MONITOR_ID_COUNT = 128
MONITOR_NONE = 255  # "no monitor": signal through the interrupt page
MONITOR_PENDING_OFFSET = 8  # + 8 * group: u32 pending bits of trigger group g
MONITOR_GROUP_STRIDE = 8
MONITOR_LATENCY_OFFSET = 576  # + 2 * m: u16 latency of monitor id m, 100 ns units
MONITOR_PARAMETER_OFFSET = 1088  # + 8 * m: u32 connection id, u16 flag number, u16 reserved
MONITOR_LATENCY_MAX = 0xFFFF  # in 100 ns units

# Interrupt page (spec/vmbus.md 5.3): guest-to-host bits in the second half.
INTERRUPT_PAGE_SEND_OFFSET = 2048

# Transfer-page and GPA-direct extensions (spec/vmbus.md 4.4, 4.5).
TRANSFER_PAGE_HEADER_SIZE = 24  # descriptor + set id + reserved + range count
TRANSFER_PAGE_RANGE_SIZE = 8
GPA_DIRECT_HEADER_SIZE = 24  # descriptor + reserved + range count
GPA_RANGE_HEADER_SIZE = 8  # byte_count, byte_offset; page numbers follow
GPA_PFN_SIZE = 8
GPA_PAGE_RANGE_SIZE = 16  # the one-page form: byte_count, byte_offset, one page number
GPA_RANGE_MAX_BYTE_OFFSET = HV_PAGE_SIZE - 1  # offset lies within the first page (4.5)
PACKET_MIN_DATA_OFFSET8 = 2  # hlen is at least the descriptor (4.1)
PACKET_MAX_BYTES = PACKET_MAX_LENGTH8 * PACKET_ALIGNMENT  # 524,280 (3.5, 4.6)
KNOWN_PACKET_FLAGS = PACKET_FLAG_COMPLETION_REQUESTED  # no other flag bit is defined (4.1)

# Monitor page (spec/vmbus.md 5.1): trigger groups of 32 monitor ids each.
MONITOR_PAGE_SIZE = HV_PAGE_SIZE
MONITOR_GROUP_COUNT = 4
MONITOR_IDS_PER_GROUP = 32

# Interrupt page (spec/vmbus.md 5.3).
INTERRUPT_PAGE_SIZE = HV_PAGE_SIZE


# ---------------------------------------------------------------------------------------------
# Structures
# ---------------------------------------------------------------------------------------------

# Ring header page (spec/vmbus.md 3.2); the data area starts right after it.
RING_HEADER = Struct(
    "vmbus_ring_header",
    RING_HEADER_SIZE,
    [
        ("write_index", 4 * RING_WRITE_INDEX, "u32"),
        ("read_index", 4 * RING_READ_INDEX, "u32"),
        ("interrupt_mask", 4 * RING_INTERRUPT_MASK, "u32"),
        ("pending_send_size", 4 * RING_PENDING_SEND_SIZE, "u32"),
        ("feature_bits", 4 * RING_FEATURE_BITS, "u32"),
    ],
    spec="vmbus.md 3.2",
)

# One trigger group of the monitor page (spec/vmbus.md 5.1).
MONITOR_TRIGGER_GROUP = Struct(
    "vmbus_monitor_trigger_group",
    8,
    [("pending", 0, "u32"), ("armed", 4, "u32")],
    spec="vmbus.md 5.1",
)

# Per-monitor-id parameter filled by the host (spec/vmbus.md 5.1).
MONITOR_PARAMETER = Struct(
    "vmbus_monitor_parameter",
    8,
    [("connection_id", 0, "u32"), ("flag_number", 4, "u16")],
    spec="vmbus.md 5.1",
)

MONITOR_PAGE = Struct(
    "vmbus_monitor_page",
    MONITOR_PAGE_SIZE,
    [
        ("trigger_state", 0, "u32"),
        ("trigger_group", MONITOR_PENDING_OFFSET, MONITOR_TRIGGER_GROUP, MONITOR_GROUP_COUNT),
        ("next_check_time", 64, "u32", MONITOR_ID_COUNT),
        ("latency", MONITOR_LATENCY_OFFSET, "u16", MONITOR_ID_COUNT),
        ("parameter", MONITOR_PARAMETER_OFFSET, MONITOR_PARAMETER, MONITOR_ID_COUNT),
    ],
    spec="vmbus.md 5.1",
)

# Channel packet descriptor (spec/vmbus.md 4.1).
PACKET_DESCRIPTOR = Struct(
    "vmbus_packet_descriptor",
    PACKET_DESCRIPTOR_SIZE,
    [
        ("type", 0, "u16"),
        ("data_offset8", 2, "u16"),
        ("length8", 4, "u16"),
        ("flags", 6, "u16"),
        ("transaction_id", 8, "u64"),
    ],
    spec="vmbus.md 4.1",
)

# The 8 bytes after every packet in the ring: u32 0, u32 start index (spec/vmbus.md 3.4).
PACKET_TRAILER = Struct(
    "vmbus_packet_trailer",
    PACKET_TRAILER_SIZE,
    [("reserved", 0, "u32"), ("start_index", 4, "u32")],
    spec="vmbus.md 3.4",
)

# Transfer-page (receive buffer) packet header, descriptor included (spec/vmbus.md 4.4).
TRANSFER_PAGE_HEADER = Struct(
    "vmbus_transfer_page_header",
    TRANSFER_PAGE_HEADER_SIZE,
    [
        ("type", 0, "u16"),
        ("data_offset8", 2, "u16"),
        ("length8", 4, "u16"),
        ("flags", 6, "u16"),
        ("transaction_id", 8, "u64"),
        ("transfer_page_set_id", 16, "u16"),
        ("sender_owns_set", 18, "u8"),  # garbage on some hosts: never validated (4.4)
        ("range_count", 20, "u32"),
    ],
    spec="vmbus.md 4.4",
)

# One transfer-page range: length first, then offset (spec/vmbus.md 4.4).
TRANSFER_PAGE_RANGE = Struct(
    "vmbus_transfer_page_range",
    TRANSFER_PAGE_RANGE_SIZE,
    [("byte_count", 0, "u32"), ("byte_offset", 4, "u32")],
    spec="vmbus.md 4.4",
)

# GPA-direct packet header, descriptor included (spec/vmbus.md 4.5).
GPA_DIRECT_HEADER = Struct(
    "vmbus_gpa_direct_header",
    GPA_DIRECT_HEADER_SIZE,
    [
        ("type", 0, "u16"),
        ("data_offset8", 2, "u16"),
        ("length8", 4, "u16"),
        ("flags", 6, "u16"),
        ("transaction_id", 8, "u64"),
        ("reserved", 16, "u32"),
        ("range_count", 20, "u32"),
    ],
    spec="vmbus.md 4.5",
)

# General GPA range: this header, then ceil((byte_offset + byte_count) / 4096) u64 page numbers.
GPA_RANGE_HEADER = Struct(
    "vmbus_gpa_range_header",
    GPA_RANGE_HEADER_SIZE,
    [("byte_count", 0, "u32"), ("byte_offset", 4, "u32")],
    spec="vmbus.md 4.5",
)

# The one-page form DPDK and Linux send: byte_offset + byte_count <= 4096 (spec/vmbus.md 4.5).
GPA_PAGE_RANGE = Struct(
    "vmbus_gpa_page_range",
    GPA_PAGE_RANGE_SIZE,
    [("byte_count", 0, "u32"), ("byte_offset", 4, "u32"), ("page_number", 8, "u64")],
    spec="vmbus.md 4.5",
)


# ---------------------------------------------------------------------------------------------
# Building packets (control path; the fast path uses the constants above)
# ---------------------------------------------------------------------------------------------


class TransferPageRange(NamedTuple):
    """One RNDIS message in the receive buffer: ``byte_count`` bytes at ``byte_offset``."""

    byte_count: int
    byte_offset: int


class GpaRange(NamedTuple):
    """A guest-physical range: ``byte_count`` bytes from ``byte_offset`` into the first page."""

    byte_count: int
    byte_offset: int
    page_numbers: tuple[int, ...]


def align8(length: int) -> int:
    """``length`` rounded up to the 8-byte packet alignment."""
    return (length + PACKET_ALIGNMENT - 1) & ~(PACKET_ALIGNMENT - 1)


def ring_bytes_for_packet(packet_length: int) -> int:
    """Bytes a packet of ``packet_length`` (descriptor to padding) takes in a ring, trailer included."""
    return align8(packet_length) + PACKET_TRAILER_SIZE


def packet_trailer_value(start_index: int) -> int:
    """The u64 written after a packet: its start index in the upper half (spec/vmbus.md 3.4)."""
    return (start_index & 0xFFFFFFFF) << 32


def gpa_page_count(byte_offset: int, byte_count: int) -> int:
    """Page numbers a general GPA range carries (spec/vmbus.md 4.5)."""
    return (byte_offset + byte_count + HV_PAGE_SIZE - 1) >> HV_PAGE_SHIFT


def _frame(packet_type: int, extension: bytes, payload: bytes, transaction_id: int, flags: int) -> bytes:
    header_length = PACKET_DESCRIPTOR_SIZE + len(extension)
    total = align8(header_length + len(payload))
    if total > PACKET_MAX_BYTES:
        raise ConfigError("packet length", total, f"at most {PACKET_MAX_BYTES} bytes")
    descriptor = PACKET_DESCRIPTOR.encode(
        type=packet_type,
        data_offset8=header_length // PACKET_ALIGNMENT,
        length8=total // PACKET_ALIGNMENT,
        flags=flags,
        transaction_id=transaction_id,
    )
    packet = descriptor + extension + bytes(payload)
    return packet + bytes(total - len(packet))


def encode_inband_packet(payload: bytes, transaction_id: int, *, completion_requested: bool = False) -> bytes:
    """In-band packet (type 6): descriptor, payload, zero padding to 8 bytes (spec/vmbus.md 4.3)."""
    flags = PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
    return _frame(PACKET_TYPE_INBAND, b"", payload, transaction_id, flags)


def encode_completion_packet(payload: bytes, transaction_id: int) -> bytes:
    """Completion packet (type 0xB), flags 0, echoing ``transaction_id`` (spec/vmbus.md 4.2, 4.3)."""
    return _frame(PACKET_TYPE_COMPLETION, b"", payload, transaction_id, 0)


def encode_transfer_page_packet(
    transfer_page_set_id: int,
    ranges: Sequence[tuple[int, int]],
    payload: bytes,
    transaction_id: int,
    *,
    completion_requested: bool = True,
) -> bytes:
    """Transfer-page packet (type 7) with ranges (byte_count, byte_offset) (spec/vmbus.md 4.4).

    Hosts always request a completion: the guest's completion returns the receive-buffer space.
    """
    extension = bytearray(
        TRANSFER_PAGE_HEADER.encode(transfer_page_set_id=transfer_page_set_id, range_count=len(ranges))[
            PACKET_DESCRIPTOR_SIZE:
        ]
    )
    for byte_count, byte_offset in ranges:
        extension += TRANSFER_PAGE_RANGE.encode(byte_count=byte_count, byte_offset=byte_offset)
    flags = PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
    return _frame(PACKET_TYPE_XFER_PAGES, bytes(extension), payload, transaction_id, flags)


def encode_gpa_range(byte_count: int, byte_offset: int, page_numbers: Sequence[int]) -> bytes:
    """One general GPA range; the one-page form is the case of a single page number."""
    if byte_count == 0:
        raise ConfigError("gpa byte_count", byte_count, "1..0xffffffff")
    if not 0 <= byte_offset <= GPA_RANGE_MAX_BYTE_OFFSET:
        raise ConfigError("gpa byte_offset", byte_offset, f"0..{GPA_RANGE_MAX_BYTE_OFFSET:#x}")
    needed = gpa_page_count(byte_offset, byte_count)
    if len(page_numbers) != needed:
        raise ConfigError(
            "gpa page_numbers", len(page_numbers), f"exactly {needed} for {byte_count} bytes at {byte_offset}"
        )
    out = bytearray(GPA_RANGE_HEADER.encode(byte_count=byte_count, byte_offset=byte_offset))
    for page_number in page_numbers:
        if not 0 <= page_number <= 0xFFFFFFFFFFFFFFFF:
            raise ConfigError("gpa page number", page_number, "0..2**64-1")
        out += page_number.to_bytes(GPA_PFN_SIZE, "little")
    return bytes(out)


def encode_gpa_direct_packet(
    ranges: Sequence[GpaRange | tuple[int, int, Sequence[int]]],
    payload: bytes,
    transaction_id: int,
    *,
    completion_requested: bool = True,
) -> bytes:
    """GPA-direct packet (type 9) with general ranges (byte_count, byte_offset, page_numbers).

    A range with one page number is the 16-byte one-page form (spec/vmbus.md 4.5). Guests
    always request the completion (DPDK hard-codes it), so that is the default.
    """
    if not ranges:
        raise ConfigError("gpa ranges", 0, "at least one range")
    extension = bytearray(GPA_DIRECT_HEADER.encode(range_count=len(ranges))[PACKET_DESCRIPTOR_SIZE:])
    for byte_count, byte_offset, page_numbers in ranges:
        extension += encode_gpa_range(byte_count, byte_offset, page_numbers)
    flags = PACKET_FLAG_COMPLETION_REQUESTED if completion_requested else 0
    return _frame(PACKET_TYPE_GPA_DIRECT, bytes(extension), payload, transaction_id, flags)


# ---------------------------------------------------------------------------------------------
# Parsing packets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelPacket:
    """A decoded channel packet (copied out of the ring: never a view of shared memory).

    ``payload`` is everything from ``data_offset8 * 8`` to ``length8 * 8`` (padding included:
    the device protocol finds its own length). ``transfer_page_set_id`` and ``ranges`` are
    set for transfer-page packets, ``gpa_ranges`` for GPA-direct packets.
    """

    type: int
    data_offset8: int
    length8: int
    flags: int
    transaction_id: int
    payload: bytes
    transfer_page_set_id: int | None = None
    ranges: tuple[TransferPageRange, ...] = ()
    gpa_ranges: tuple[GpaRange, ...] = ()

    @property
    def completion_requested(self) -> bool:
        return bool(self.flags & PACKET_FLAG_COMPLETION_REQUESTED)

    @property
    def unknown_flags(self) -> int:
        """Flag bits no one defines: readers count them and carry on (spec/vmbus.md 4.7)."""
        return self.flags & ~KNOWN_PACKET_FLAGS


def decode_packet_descriptor(buf: Any, offset: int = 0) -> Record:
    """The 16-byte descriptor, with ``2 <= data_offset8 <= length8`` checked (spec/vmbus.md 4.7)."""
    descriptor = PACKET_DESCRIPTOR.decode(buf, offset)
    if descriptor.data_offset8 < PACKET_MIN_DATA_OFFSET8:
        raise ProtocolError(f"channel packet: data_offset8 {descriptor.data_offset8} < 2")
    if descriptor.data_offset8 > descriptor.length8:
        raise ProtocolError(
            f"channel packet: data_offset8 {descriptor.data_offset8} > length8 {descriptor.length8}"
        )
    return descriptor


def decode_channel_packet(buf: Any, offset: int = 0) -> ChannelPacket:
    """Decode and validate one packet (descriptor to padding) starting at ``offset``.

    Bytes after ``length8 * 8`` (the trailer, further packets) are ignored. Unknown packet
    types are returned with their payload and no extension, for the caller to count and skip.
    """
    view = byte_view(buf)
    descriptor = decode_packet_descriptor(view, offset)
    header_length = descriptor.data_offset8 * PACKET_ALIGNMENT
    total = descriptor.length8 * PACKET_ALIGNMENT
    require_length("channel packet", view, offset, total)
    packet = bytes(view[offset : offset + total])
    common = dict(
        type=descriptor.type,
        data_offset8=descriptor.data_offset8,
        length8=descriptor.length8,
        flags=descriptor.flags,
        transaction_id=descriptor.transaction_id,
        payload=packet[header_length:],
    )
    if descriptor.type == PACKET_TYPE_XFER_PAGES:
        set_id, ranges = _decode_transfer_page_extension(packet, header_length)
        return ChannelPacket(**common, transfer_page_set_id=set_id, ranges=ranges)
    if descriptor.type == PACKET_TYPE_GPA_DIRECT:
        return ChannelPacket(**common, gpa_ranges=_decode_gpa_extension(packet, header_length))
    return ChannelPacket(**common)


def _decode_transfer_page_extension(packet: bytes, header_length: int) -> tuple[int, tuple]:
    if header_length < TRANSFER_PAGE_HEADER_SIZE:
        raise ProtocolError(
            f"transfer-page packet: header length {header_length} < {TRANSFER_PAGE_HEADER_SIZE}"
        )
    header = TRANSFER_PAGE_HEADER.decode(packet)
    # Check the count against the header length before looping (spec/vmbus.md 8.5).
    needed = TRANSFER_PAGE_HEADER_SIZE + TRANSFER_PAGE_RANGE_SIZE * header.range_count
    if needed > header_length:
        raise ProtocolError(
            f"transfer-page packet: {header.range_count} ranges need {needed} header bytes, "
            f"header length is {header_length}"
        )
    ranges = tuple(
        TransferPageRange(
            int.from_bytes(packet[at : at + 4], "little"), int.from_bytes(packet[at + 4 : at + 8], "little")
        )
        for at in range(TRANSFER_PAGE_HEADER_SIZE, needed, TRANSFER_PAGE_RANGE_SIZE)
    )
    return header.transfer_page_set_id, ranges


def _decode_gpa_extension(packet: bytes, header_length: int) -> tuple[GpaRange, ...]:
    if header_length < GPA_DIRECT_HEADER_SIZE:
        raise ProtocolError(f"GPA-direct packet: header length {header_length} < {GPA_DIRECT_HEADER_SIZE}")
    header = GPA_DIRECT_HEADER.decode(packet)
    if header.range_count == 0:
        raise ProtocolError("GPA-direct packet: range count 0")
    # Each range takes at least 16 bytes: bound the count before looping.
    if GPA_DIRECT_HEADER_SIZE + GPA_PAGE_RANGE_SIZE * header.range_count > header_length:
        raise ProtocolError(
            f"GPA-direct packet: {header.range_count} ranges cannot fit in header length {header_length}"
        )
    ranges = []
    at = GPA_DIRECT_HEADER_SIZE
    for index in range(header.range_count):
        if at + GPA_RANGE_HEADER_SIZE > header_length:
            raise ProtocolError(f"GPA-direct packet: range {index} runs past header length {header_length}")
        byte_count = int.from_bytes(packet[at : at + 4], "little")
        byte_offset = int.from_bytes(packet[at + 4 : at + 8], "little")
        if byte_count == 0:
            raise ProtocolError(f"GPA-direct packet: range {index} has byte count 0")
        if byte_offset > GPA_RANGE_MAX_BYTE_OFFSET:
            raise ProtocolError(f"GPA-direct packet: range {index} byte offset {byte_offset:#x} > 0xfff")
        pages = gpa_page_count(byte_offset, byte_count)
        end = at + GPA_RANGE_HEADER_SIZE + GPA_PFN_SIZE * pages
        if end > header_length:
            raise ProtocolError(
                f"GPA-direct packet: range {index} needs {pages} page numbers, "
                f"past header length {header_length}"
            )
        page_numbers = tuple(
            int.from_bytes(packet[p : p + GPA_PFN_SIZE], "little")
            for p in range(at + GPA_RANGE_HEADER_SIZE, end, GPA_PFN_SIZE)
        )
        ranges.append(GpaRange(byte_count, byte_offset, page_numbers))
        at = end
    return tuple(ranges)
