"""RNDIS wire format: message types, status codes, control and data messages, per-packet info
(spec/nvsp-rndis.md 4).

Layer 1 (wire): constants and byte layouts only, no I/O.

Offsets inside RNDIS messages count from offset 8 (spec 4.4): ``RNDIS_OFFSET_BASE`` is
added to every data/PPI/info-buffer/status-buffer offset before it is used. PPIs live
here because they are part of PACKET_MSG; their payload bit layouts (4.7) come with
encoders and decoders that check caller input (``ConfigError``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire._struct import Record, Struct, byte_view, require_length

# ---------------------------------------------------------------------------------------------
# Message types (spec/nvsp-rndis.md 4.1)
# ---------------------------------------------------------------------------------------------

RNDIS_MSG_PACKET = 0x00000001
RNDIS_MSG_INITIALIZE = 0x00000002
RNDIS_MSG_HALT = 0x00000003
RNDIS_MSG_QUERY = 0x00000004
RNDIS_MSG_SET = 0x00000005
RNDIS_MSG_RESET = 0x00000006
RNDIS_MSG_INDICATE_STATUS = 0x00000007
RNDIS_MSG_KEEPALIVE = 0x00000008
RNDIS_MSG_SET_EX = 0x00000009
RNDIS_MSG_BUS = 0xFF000001
RNDIS_MSG_COMPLETION = 0x80000000  # completion type = request type | this bit
RNDIS_MSG_INITIALIZE_CMPLT = RNDIS_MSG_INITIALIZE | RNDIS_MSG_COMPLETION
RNDIS_MSG_QUERY_CMPLT = RNDIS_MSG_QUERY | RNDIS_MSG_COMPLETION
RNDIS_MSG_SET_CMPLT = RNDIS_MSG_SET | RNDIS_MSG_COMPLETION
RNDIS_MSG_RESET_CMPLT = RNDIS_MSG_RESET | RNDIS_MSG_COMPLETION
RNDIS_MSG_KEEPALIVE_CMPLT = RNDIS_MSG_KEEPALIVE | RNDIS_MSG_COMPLETION
RNDIS_MSG_SET_EX_CMPLT = RNDIS_MSG_SET_EX | RNDIS_MSG_COMPLETION

# ---------------------------------------------------------------------------------------------
# Status codes (spec/nvsp-rndis.md 4.2)
# ---------------------------------------------------------------------------------------------

RNDIS_STATUS_SUCCESS = 0x00000000
RNDIS_STATUS_PENDING = 0x00000103
RNDIS_STATUS_BUFFER_OVERFLOW = 0x80000005
RNDIS_STATUS_FAILURE = 0xC0000001
RNDIS_STATUS_RESOURCES = 0xC000009A
RNDIS_STATUS_NOT_SUPPORTED = 0xC00000BB
RNDIS_STATUS_BAD_VERSION = 0xC0010004
RNDIS_STATUS_INVALID_LENGTH = 0xC0010014
RNDIS_STATUS_INVALID_DATA = 0xC0010015
RNDIS_STATUS_BUFFER_TOO_SHORT = 0xC0010016
RNDIS_STATUS_INVALID_OID = 0xC0010017
# Indications (INDICATE_STATUS_MSG status field, spec 4.2, 6).
RNDIS_STATUS_MEDIA_CONNECT = 0x4001000B
RNDIS_STATUS_MEDIA_DISCONNECT = 0x4001000C
RNDIS_STATUS_MEDIA_SPECIFIC_INDICATION = 0x40010012
RNDIS_STATUS_LINK_SPEED_CHANGE = 0x40010013
RNDIS_STATUS_NETWORK_CHANGE = 0x40010018
RNDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG = 0x40020006

# ---------------------------------------------------------------------------------------------
# Fixed values and sizes (spec/nvsp-rndis.md 4.3 - 4.6)
# ---------------------------------------------------------------------------------------------

RNDIS_OFFSET_BASE = 8  # data, PPI, info-buffer and status-buffer offsets count from here (4.4)
RNDIS_HEADER_SIZE = 8
RNDIS_MAJOR_VERSION = 1
RNDIS_MINOR_VERSION = 0
RNDIS_MAX_TRANSFER_SIZE_GUEST = 0x4000  # what DPDK and Linux ask for in INITIALIZE
RNDIS_DEVICE_FLAG_CONNECTIONLESS = 0x1
RNDIS_DEVICE_FLAG_CONNECTION_ORIENTED = 0x2
RNDIS_DEVICE_FLAG_RAW_DATA = 0x4
RNDIS_MEDIUM_802_3 = 0
# INITIALIZE_CMPLT values OpenVMM sends.
RNDIS_MAX_PACKETS_PER_MESSAGE_OPENVMM = 8
RNDIS_MAX_TRANSFER_SIZE_OPENVMM = 0xEFFFFFFF
RNDIS_PACKET_ALIGNMENT_FACTOR_OPENVMM = 3  # alignment = 1 << 3
RNDIS_INITIALIZE_CMPLT_SIZE_DPDK_READS = 48  # DPDK stops before af_list_size

RNDIS_PACKET_HEADER_SIZE = 44
RNDIS_PACKET_MIN_DATA_OFFSET = RNDIS_PACKET_HEADER_SIZE - RNDIS_OFFSET_BASE  # 36
RNDIS_INFO_BUFFER_OFFSET = 20  # QUERY/SET: buffer at absolute 28 (always place it there)
RNDIS_QUERY_CMPLT_INFO_BUFFER_OFFSET = 16  # data at absolute 24
RNDIS_INDICATE_STATUS_BUFFER_OFFSET = 12  # buffer at absolute 20
# DPDK's worst-case per-packet header when aggregating: header + 4 PPIs of 16 bytes (spec 3.3).
RNDIS_PACKET_WORST_CASE_HEADER = RNDIS_PACKET_HEADER_SIZE + 4 * 16

# ---------------------------------------------------------------------------------------------
# Per-packet info (spec/nvsp-rndis.md 4.6, 4.7)
# ---------------------------------------------------------------------------------------------

PPI_HEADER_SIZE = 12
PPI_ALIGNMENT = 4
PPI_INTERNAL = 0x80000000  # bit 31: vendor-private type space
PPI_TYPE_MASK = 0x7FFFFFFF

PPI_TYPE_CHECKSUM_INFO = 0
PPI_TYPE_IPSEC = 1
PPI_TYPE_LSO = 2
PPI_TYPE_CLASSIFICATION_HANDLE = 3
PPI_TYPE_SCATTER_GATHER_LIST = 5
PPI_TYPE_IEEE_8021Q = 6
PPI_TYPE_ORIGINAL_PACKET_INFO = 7
PPI_TYPE_HASH_VALUE = 8  # "packet cancel id" in NDIS; the hash value on the wire
PPI_TYPE_HASH_INFO = 9  # "original NBL" in NDIS; the hash function and type bits
PPI_TYPE_CACHED_NBL = 10
PPI_TYPE_SHORT_PACKET_PAD = 11
PPI_TYPE_PACKET_ID = PPI_INTERNAL | 1  # RSC fragment info

# Checksum info, transmit request (4.7).
CHECKSUM_TX_IPV4 = 0x00000001
CHECKSUM_TX_IPV6 = 0x00000002
CHECKSUM_TX_TCP = 0x00000004
CHECKSUM_TX_UDP = 0x00000008
CHECKSUM_TX_IP_HEADER = 0x00000010
CHECKSUM_TX_TRANSPORT_OFFSET_SHIFT = 16
CHECKSUM_TX_TRANSPORT_OFFSET_MASK = 0x03FF0000
CHECKSUM_TX_TRANSPORT_OFFSET_MAX = 0x3FF

# Checksum info, receive result (4.7); 0 means "no information".
CHECKSUM_RX_TCP_FAILED = 0x001
CHECKSUM_RX_UDP_FAILED = 0x002
CHECKSUM_RX_IP_FAILED = 0x004
CHECKSUM_RX_TCP_SUCCEEDED = 0x008
CHECKSUM_RX_UDP_SUCCEEDED = 0x010
CHECKSUM_RX_IP_SUCCEEDED = 0x020
CHECKSUM_RX_LOOPBACK = 0x040
CHECKSUM_RX_TCP_VALUE_INVALID = 0x080
CHECKSUM_RX_IP_VALUE_INVALID = 0x100

# IEEE 802.1Q info (4.7): priority 0-2, CFI/DEI 3, VLAN id 4-15.
VLAN_PPI_PRIORITY_MASK = 0x0007
VLAN_PPI_DEI = 0x0008
VLAN_PPI_VLAN_ID_SHIFT = 4
VLAN_PPI_VLAN_ID_MASK = 0xFFF0
VLAN_ID_MAX = 0xFFF
VLAN_PRIORITY_MAX = 7

# LSO v2 (4.7).
LSO_V2_MSS_MASK = 0x000FFFFF
LSO_V2_MSS_MAX = 0xFFFFF
LSO_V2_TCP_OFFSET_SHIFT = 20
LSO_V2_TCP_OFFSET_MASK = 0x3FF00000
LSO_V2_TCP_OFFSET_MAX = 0x3FF
LSO_V2_TYPE = 0x40000000  # 1 = LSO v2
LSO_V2_IPV6 = 0x80000000  # IP version: 0 = IPv4, 1 = IPv6

# Packet id (RSC fragment) flags (4.7).
PACKET_ID_VERSION = 1
PACKET_ID_FLAG_FRAGMENT = 0x01
PACKET_ID_FLAG_FIRST = 0x02
PACKET_ID_FLAG_LAST = 0x04

# ---------------------------------------------------------------------------------------------
# Layouts (spec/nvsp-rndis.md 4.3, 4.5, 4.6); offsets from the start of the message.
# ---------------------------------------------------------------------------------------------

_COMMON = (("type", 0, "u32"), ("length", 4, "u32"))

RNDIS_HEADER = Struct("rndis_header", RNDIS_HEADER_SIZE, list(_COMMON), spec="nvsp-rndis.md 4.1")
PACKET_MSG = Struct(
    "rndis_packet_msg",
    RNDIS_PACKET_HEADER_SIZE,
    [
        *_COMMON,
        ("data_offset", 8, "u32"),
        ("data_length", 12, "u32"),
        ("oob_data_offset", 16, "u32"),
        ("oob_data_length", 20, "u32"),
        ("num_oob_data_elements", 24, "u32"),
        ("per_packet_info_offset", 28, "u32"),
        ("per_packet_info_length", 32, "u32"),
        ("vc_handle", 36, "u32"),
        ("reserved", 40, "u32"),
    ],
    spec="nvsp-rndis.md 4.5",
)
INITIALIZE_MSG = Struct(
    "rndis_initialize_msg",
    24,
    [
        *_COMMON,
        ("request_id", 8, "u32"),
        ("major_version", 12, "u32"),
        ("minor_version", 16, "u32"),
        ("max_transfer_size", 20, "u32"),
    ],
    spec="nvsp-rndis.md 4.3",
)
INITIALIZE_CMPLT = Struct(
    "rndis_initialize_cmplt",
    52,
    [
        *_COMMON,
        ("request_id", 8, "u32"),
        ("status", 12, "u32"),
        ("major_version", 16, "u32"),
        ("minor_version", 20, "u32"),
        ("device_flags", 24, "u32"),
        ("medium", 28, "u32"),
        ("max_packets_per_message", 32, "u32"),
        ("max_transfer_size", 36, "u32"),
        ("packet_alignment_factor", 40, "u32"),
        ("af_list_offset", 44, "u32"),
        ("af_list_size", 48, "u32"),
    ],
    spec="nvsp-rndis.md 4.3",
)
HALT_MSG = Struct("rndis_halt_msg", 12, [*_COMMON, ("request_id", 8, "u32")], spec="nvsp-rndis.md 4.3")
_QUERY_SET_FIELDS = (
    *_COMMON,
    ("request_id", 8, "u32"),
    ("oid", 12, "u32"),
    ("info_buffer_length", 16, "u32"),
    ("info_buffer_offset", 20, "u32"),  # from offset 8
    ("device_vc_handle", 24, "u32"),
)
QUERY_MSG = Struct("rndis_query_msg", 28, list(_QUERY_SET_FIELDS), spec="nvsp-rndis.md 4.3")
SET_MSG = Struct("rndis_set_msg", 28, list(_QUERY_SET_FIELDS), spec="nvsp-rndis.md 4.3")
QUERY_CMPLT = Struct(
    "rndis_query_cmplt",
    24,
    [
        *_COMMON,
        ("request_id", 8, "u32"),
        ("status", 12, "u32"),
        ("info_buffer_length", 16, "u32"),
        ("info_buffer_offset", 20, "u32"),  # from offset 8
    ],
    spec="nvsp-rndis.md 4.3",
)
SET_CMPLT = Struct(
    "rndis_set_cmplt",
    16,
    [*_COMMON, ("request_id", 8, "u32"), ("status", 12, "u32")],
    spec="nvsp-rndis.md 4.3",
)
RESET_MSG = Struct("rndis_reset_msg", 12, [*_COMMON, ("reserved", 8, "u32")], spec="nvsp-rndis.md 4.3")
RESET_CMPLT = Struct(
    "rndis_reset_cmplt",
    16,
    [*_COMMON, ("status", 8, "u32"), ("addressing_reset", 12, "u32")],
    spec="nvsp-rndis.md 4.3",
)
INDICATE_STATUS_MSG = Struct(
    "rndis_indicate_status_msg",
    20,
    [
        *_COMMON,
        ("status", 8, "u32"),
        ("status_buffer_length", 12, "u32"),
        ("status_buffer_offset", 16, "u32"),  # from offset 8; 0 when there is no buffer
    ],
    spec="nvsp-rndis.md 4.3",
)
DIAGNOSTIC_INFO = Struct(
    "rndis_diagnostic_info",
    8,
    [("diag_status", 0, "u32"), ("error_offset", 4, "u32")],
    spec="nvsp-rndis.md 4.3",
)
KEEPALIVE_MSG = Struct(
    "rndis_keepalive_msg", 12, [*_COMMON, ("request_id", 8, "u32")], spec="nvsp-rndis.md 4.3"
)
KEEPALIVE_CMPLT = Struct(
    "rndis_keepalive_cmplt",
    16,
    [*_COMMON, ("request_id", 8, "u32"), ("status", 12, "u32")],
    spec="nvsp-rndis.md 4.3",
)
PPI_HEADER = Struct(
    "rndis_ppi_header",
    PPI_HEADER_SIZE,
    [("size", 0, "u32"), ("type", 4, "u32"), ("offset", 8, "u32")],
    spec="nvsp-rndis.md 4.6",
)
PACKET_ID_INFO = Struct(
    "rndis_packet_id_info",
    4,
    [("version", 0, "u8"), ("flags", 1, "u8"), ("packet_id", 2, "u16")],
    spec="nvsp-rndis.md 4.7",
)

LAYOUT_BY_TYPE: dict[int, Struct] = {
    RNDIS_MSG_PACKET: PACKET_MSG,
    RNDIS_MSG_INITIALIZE: INITIALIZE_MSG,
    RNDIS_MSG_INITIALIZE_CMPLT: INITIALIZE_CMPLT,
    RNDIS_MSG_HALT: HALT_MSG,
    RNDIS_MSG_QUERY: QUERY_MSG,
    RNDIS_MSG_QUERY_CMPLT: QUERY_CMPLT,
    RNDIS_MSG_SET: SET_MSG,
    RNDIS_MSG_SET_CMPLT: SET_CMPLT,
    RNDIS_MSG_RESET: RESET_MSG,
    RNDIS_MSG_RESET_CMPLT: RESET_CMPLT,
    RNDIS_MSG_INDICATE_STATUS: INDICATE_STATUS_MSG,
    RNDIS_MSG_KEEPALIVE: KEEPALIVE_MSG,
    RNDIS_MSG_KEEPALIVE_CMPLT: KEEPALIVE_CMPLT,
}


# ---------------------------------------------------------------------------------------------
# Control messages: encoding
# ---------------------------------------------------------------------------------------------


def encode_initialize(
    request_id: int,
    *,
    major_version: int = RNDIS_MAJOR_VERSION,
    minor_version: int = RNDIS_MINOR_VERSION,
    max_transfer_size: int = RNDIS_MAX_TRANSFER_SIZE_GUEST,
) -> bytes:
    return INITIALIZE_MSG.encode(
        type=RNDIS_MSG_INITIALIZE,
        length=INITIALIZE_MSG.size,
        request_id=request_id,
        major_version=major_version,
        minor_version=minor_version,
        max_transfer_size=max_transfer_size,
    )


def encode_initialize_complete(
    request_id: int,
    status: int = RNDIS_STATUS_SUCCESS,
    *,
    major_version: int = RNDIS_MAJOR_VERSION,
    minor_version: int = RNDIS_MINOR_VERSION,
    device_flags: int = RNDIS_DEVICE_FLAG_CONNECTIONLESS,
    medium: int = RNDIS_MEDIUM_802_3,
    max_packets_per_message: int = RNDIS_MAX_PACKETS_PER_MESSAGE_OPENVMM,
    max_transfer_size: int = RNDIS_MAX_TRANSFER_SIZE_OPENVMM,
    packet_alignment_factor: int = RNDIS_PACKET_ALIGNMENT_FACTOR_OPENVMM,
) -> bytes:
    """INITIALIZE_CMPLT; the defaults are OpenVMM's values."""
    return INITIALIZE_CMPLT.encode(
        type=RNDIS_MSG_INITIALIZE_CMPLT,
        length=INITIALIZE_CMPLT.size,
        request_id=request_id,
        status=status,
        major_version=major_version,
        minor_version=minor_version,
        device_flags=device_flags,
        medium=medium,
        max_packets_per_message=max_packets_per_message,
        max_transfer_size=max_transfer_size,
        packet_alignment_factor=packet_alignment_factor,
    )


def encode_halt(request_id: int) -> bytes:
    return HALT_MSG.encode(type=RNDIS_MSG_HALT, length=HALT_MSG.size, request_id=request_id)


def _encode_query_or_set(layout: Struct, message_type: int, request_id: int, oid: int, info: bytes) -> bytes:
    info = bytes(info)
    # The buffer always goes right after the 28-byte header: OpenVMM ignores the offset field.
    return (
        layout.encode(
            type=message_type,
            length=layout.size + len(info),
            request_id=request_id,
            oid=oid,
            info_buffer_length=len(info),
            info_buffer_offset=RNDIS_INFO_BUFFER_OFFSET,
        )
        + info
    )


def encode_query(request_id: int, oid: int, info: bytes = b"") -> bytes:
    """QUERY_MSG with an optional input buffer at absolute offset 28 (offset field 20)."""
    return _encode_query_or_set(QUERY_MSG, RNDIS_MSG_QUERY, request_id, oid, info)


def encode_set(request_id: int, oid: int, value: bytes) -> bytes:
    """SET_MSG with the value at absolute offset 28 (offset field 20)."""
    return _encode_query_or_set(SET_MSG, RNDIS_MSG_SET, request_id, oid, value)


def encode_query_complete(request_id: int, status: int = RNDIS_STATUS_SUCCESS, info: bytes = b"") -> bytes:
    """QUERY_CMPLT with data at absolute 24 (offset field 16), as OpenVMM sends it."""
    info = bytes(info)
    return (
        QUERY_CMPLT.encode(
            type=RNDIS_MSG_QUERY_CMPLT,
            length=QUERY_CMPLT.size + len(info),
            request_id=request_id,
            status=status,
            info_buffer_length=len(info),
            info_buffer_offset=RNDIS_QUERY_CMPLT_INFO_BUFFER_OFFSET if info else 0,
        )
        + info
    )


def encode_set_complete(request_id: int, status: int = RNDIS_STATUS_SUCCESS) -> bytes:
    return SET_CMPLT.encode(
        type=RNDIS_MSG_SET_CMPLT, length=SET_CMPLT.size, request_id=request_id, status=status
    )


def encode_reset() -> bytes:
    return RESET_MSG.encode(type=RNDIS_MSG_RESET, length=RESET_MSG.size)


def encode_reset_complete(status: int = RNDIS_STATUS_SUCCESS, addressing_reset: int = 0) -> bytes:
    return RESET_CMPLT.encode(
        type=RNDIS_MSG_RESET_CMPLT, length=RESET_CMPLT.size, status=status, addressing_reset=addressing_reset
    )


def encode_indicate_status(status: int, buffer: bytes = b"") -> bytes:
    """INDICATE_STATUS_MSG; a buffer goes at absolute 20 (offset field 12), none gives offset 0."""
    buffer = bytes(buffer)
    return (
        INDICATE_STATUS_MSG.encode(
            type=RNDIS_MSG_INDICATE_STATUS,
            length=INDICATE_STATUS_MSG.size + len(buffer),
            status=status,
            status_buffer_length=len(buffer),
            status_buffer_offset=RNDIS_INDICATE_STATUS_BUFFER_OFFSET if buffer else 0,
        )
        + buffer
    )


def encode_keepalive(request_id: int) -> bytes:
    return KEEPALIVE_MSG.encode(type=RNDIS_MSG_KEEPALIVE, length=KEEPALIVE_MSG.size, request_id=request_id)


def encode_keepalive_complete(request_id: int, status: int = RNDIS_STATUS_SUCCESS) -> bytes:
    return KEEPALIVE_CMPLT.encode(
        type=RNDIS_MSG_KEEPALIVE_CMPLT, length=KEEPALIVE_CMPLT.size, request_id=request_id, status=status
    )


# ---------------------------------------------------------------------------------------------
# PACKET_MSG and PPIs
# ---------------------------------------------------------------------------------------------


class Ppi(NamedTuple):
    """One per-packet-info element: its wire type (bit 31 = internal) and its payload bytes."""

    type: int
    payload: bytes

    @classmethod
    def u32(cls, ppi_type: int, value: int) -> Ppi:
        """An element with a 4-byte payload (every PPI this project sends)."""
        if not 0 <= value <= 0xFFFFFFFF:
            raise ConfigError(f"ppi {ppi_type:#x} value", value, "0..0xffffffff")
        return cls(ppi_type, value.to_bytes(4, "little"))

    @property
    def value(self) -> int:
        """The payload as a u32 (ProtocolError if it is shorter than 4 bytes)."""
        if len(self.payload) < 4:
            raise ProtocolError(f"ppi {self.type:#x}: payload of {len(self.payload)} bytes, a u32 needs 4")
        return int.from_bytes(self.payload[:4], "little")


def encode_ppi(ppi_type: int, payload: bytes) -> bytes:
    """One PPI element: header (size, type, offset 12), payload, zero padding to 4 bytes."""
    payload = bytes(payload)
    size = (PPI_HEADER_SIZE + len(payload) + PPI_ALIGNMENT - 1) & ~(PPI_ALIGNMENT - 1)
    header = PPI_HEADER.encode(size=size, type=ppi_type, offset=PPI_HEADER_SIZE)
    return header + payload + bytes(size - PPI_HEADER_SIZE - len(payload))


def encode_packet_msg(frame: bytes, ppis: Iterable[Ppi | tuple[int, bytes]] = (), *, align: int = 1) -> bytes:
    """PACKET_MSG: header, PPIs, frame, contiguous (spec 4.5).

    ``align`` > 1 pads the message with zeros to a multiple of it and counts the padding in
    ``length``, as a sender does for every message but the last of an aggregated section
    (spec 3.3).
    """
    frame = bytes(frame)
    if not frame:
        raise ConfigError("frame length", 0, "at least 1 byte")
    if align < 1 or align & (align - 1):
        raise ConfigError("align", align, "a power of two")
    ppi_area = b"".join(encode_ppi(ppi_type, payload) for ppi_type, payload in ppis)
    unpadded = RNDIS_PACKET_HEADER_SIZE + len(ppi_area) + len(frame)
    length = (unpadded + align - 1) & ~(align - 1)
    header = PACKET_MSG.encode(
        type=RNDIS_MSG_PACKET,
        length=length,
        data_offset=RNDIS_PACKET_MIN_DATA_OFFSET + len(ppi_area),
        data_length=len(frame),
        per_packet_info_offset=RNDIS_PACKET_MIN_DATA_OFFSET if ppi_area else 0,
        per_packet_info_length=len(ppi_area),
    )
    return header + ppi_area + frame + bytes(length - unpadded)


@dataclass(frozen=True)
class PacketMessage:
    """A decoded PACKET_MSG. ``data_start`` is the absolute offset of the frame in the buffer given."""

    header: Record
    ppis: tuple[Ppi, ...]
    data_start: int
    frame: bytes

    @property
    def length(self) -> int:
        return self.header.length

    def ppi(self, ppi_type: int) -> Ppi | None:
        """The first element of exactly this wire type (internal bit included), or None."""
        for element in self.ppis:
            if element.type == ppi_type:
                return element
        return None


def decode_packet_msg(buf: Any, offset: int = 0, *, limit: int | None = None) -> PacketMessage:
    """Decode and validate a PACKET_MSG at ``offset`` (spec 4.5, 4.6).

    ``limit`` bounds the message from outside (the transfer-page range byte count); the
    message's ``length`` must fit in it and in the buffer. Rejected with ProtocolError: a
    header past the buffer, a length below 44, a frame of 0 bytes or past ``length``, a
    data offset inside the header, OOB or PPI areas past ``length``, and any malformed PPI.
    """
    view = byte_view(buf)
    header = PACKET_MSG.decode(view, offset)
    if header.type != RNDIS_MSG_PACKET:
        raise ProtocolError(f"rndis packet: type {header.type:#x} is not PACKET_MSG")
    length = header.length
    if length < RNDIS_PACKET_HEADER_SIZE:
        raise ProtocolError(f"rndis packet: length {length} < header size {RNDIS_PACKET_HEADER_SIZE}")
    if limit is not None and length > limit:
        raise ProtocolError(f"rndis packet: length {length} exceeds its range of {limit} bytes")
    require_length("rndis packet", view, offset, length)
    if header.data_length == 0:
        raise ProtocolError("rndis packet: data length 0")
    if header.data_offset < RNDIS_PACKET_MIN_DATA_OFFSET:
        raise ProtocolError(
            f"rndis packet: data offset {header.data_offset} < {RNDIS_PACKET_MIN_DATA_OFFSET}"
        )
    # All arithmetic in Python ints: no 32-bit wrap-around (DPDK pitfall: overflowing sums).
    _check_area("data", header.data_offset, header.data_length, length)
    if header.oob_data_length:
        _check_area("oob data", header.oob_data_offset, header.oob_data_length, length)
    ppis: tuple[Ppi, ...] = ()
    if header.per_packet_info_length:
        ppi_offset = header.per_packet_info_offset
        if ppi_offset < RNDIS_PACKET_MIN_DATA_OFFSET or ppi_offset % PPI_ALIGNMENT:
            raise ProtocolError(f"rndis packet: PPI offset {ppi_offset} (must be >= 36 and 4-byte aligned)")
        _check_area("per-packet info", ppi_offset, header.per_packet_info_length, length)
        start = offset + RNDIS_OFFSET_BASE + ppi_offset
        ppis = decode_ppis(view[start : start + header.per_packet_info_length])
    data_start = offset + RNDIS_OFFSET_BASE + header.data_offset
    frame = bytes(view[data_start : data_start + header.data_length])
    return PacketMessage(header, ppis, data_start, frame)


def _check_area(what: str, area_offset: int, area_length: int, message_length: int) -> None:
    end = RNDIS_OFFSET_BASE + area_offset + area_length
    if end > message_length:
        raise ProtocolError(
            f"rndis packet: {what} ({area_length} bytes at offset {area_offset}) ends at {end}, "
            f"past the message length {message_length}"
        )


def decode_ppis(area: Any) -> tuple[Ppi, ...]:
    """Walk a PPI area: every element must have 12 <= offset <= size, size a non-zero multiple
    of 4 within the area, and no bytes may be left over (spec 4.6; a size-0 element would make
    DPDK spin forever)."""
    view = byte_view(area)
    elements = []
    at = 0
    while at < len(view):
        if len(view) - at < PPI_HEADER_SIZE:
            raise ProtocolError(f"ppi at {at}: {len(view) - at} bytes left, a header needs {PPI_HEADER_SIZE}")
        element = PPI_HEADER.decode(view, at)
        if element.size == 0:
            raise ProtocolError(f"ppi at {at}: size 0")
        if element.size % PPI_ALIGNMENT:
            raise ProtocolError(f"ppi at {at}: size {element.size} is not a multiple of 4")
        if element.offset < PPI_HEADER_SIZE or element.offset > element.size:
            raise ProtocolError(
                f"ppi at {at}: payload offset {element.offset} outside 12..size {element.size}"
            )
        if at + element.size > len(view):
            raise ProtocolError(
                f"ppi at {at}: size {element.size} runs past the PPI area of {len(view)} bytes"
            )
        payload = bytes(view[at + element.offset : at + element.size])
        elements.append(Ppi(element.type, payload))
        at += element.size
    return tuple(elements)


# ---------------------------------------------------------------------------------------------
# Control messages: decoding
# ---------------------------------------------------------------------------------------------


def peek_message_type(buf: Any, offset: int = 0) -> int:
    return RNDIS_HEADER.decode(buf, offset).type


def decode_rndis(buf: Any, offset: int = 0, *, limit: int | None = None) -> Record | PacketMessage:
    """Decode any RNDIS message by type: PACKET_MSG gives a ``PacketMessage``, the rest a Record.

    The message ``length`` must cover its fixed fields and fit in the buffer (and in ``limit``,
    the range carrying it). Trailing bytes after ``length`` are ignored. QUERY, SET and
    QUERY_CMPLT records carry ``info`` (bytes), INDICATE_STATUS carries ``status_buffer``.
    """
    view = byte_view(buf)
    common = RNDIS_HEADER.decode(view, offset)
    if common.type == RNDIS_MSG_PACKET:
        return decode_packet_msg(view, offset, limit=limit)
    layout = LAYOUT_BY_TYPE.get(common.type)
    if layout is None:
        raise ProtocolError(f"rndis: message type {common.type:#x} has no known layout")
    if common.length < layout.size:
        raise ProtocolError(f"{layout.name}: length {common.length} < its fields ({layout.size} bytes)")
    if limit is not None and common.length > limit:
        raise ProtocolError(f"{layout.name}: length {common.length} exceeds its range of {limit} bytes")
    require_length(layout.name, view, offset, common.length)
    message = layout.decode(view, offset)
    extra: dict[str, bytes] = {}
    if layout in (QUERY_MSG, SET_MSG, QUERY_CMPLT):
        extra["info"] = _buffer(
            layout.name,
            view,
            offset,
            common.length,
            message.info_buffer_offset,
            message.info_buffer_length,
            layout.size,
        )
    elif layout is INDICATE_STATUS_MSG:
        extra["status_buffer"] = _buffer(
            layout.name,
            view,
            offset,
            common.length,
            message.status_buffer_offset,
            message.status_buffer_length,
            layout.size,
        )
    if extra:
        return Record(layout.name, {**message._asdict(), **extra})
    return message


def _buffer(
    what: str,
    view: memoryview,
    offset: int,
    length: int,
    buffer_offset: int,
    buffer_length: int,
    header_size: int,
) -> bytes:
    """A buffer placed by an offset relative to byte 8; it must lie after the header and inside
    the message (DPDK pitfall avoided: it accepted data running into the header)."""
    if buffer_length == 0:
        return b""
    start = RNDIS_OFFSET_BASE + buffer_offset
    if start < header_size:
        raise ProtocolError(f"{what}: buffer at {start} overlaps the {header_size}-byte header")
    if start + buffer_length > length:
        raise ProtocolError(
            f"{what}: buffer of {buffer_length} bytes at {start} runs past the message length {length}"
        )
    return bytes(view[offset + start : offset + start + buffer_length])


# ---------------------------------------------------------------------------------------------
# PPI payload values (spec/nvsp-rndis.md 4.7)
# ---------------------------------------------------------------------------------------------


def vlan_tci_to_ppi(tci: int) -> int:
    """802.1Q TCI (PCP 13-15, DEI 12, VID 0-11) -> NDIS 802.1Q info value."""
    if not 0 <= tci <= 0xFFFF:
        raise ConfigError("vlan tci", tci, "0..0xffff")
    return (tci >> 13) | (((tci >> 12) & 1) << 3) | ((tci & 0xFFF) << 4)


def vlan_ppi_to_tci(value: int) -> int:
    """NDIS 802.1Q info value -> 802.1Q TCI; the reserved bits 16-31 are ignored."""
    priority = value & VLAN_PPI_PRIORITY_MASK
    dei = (value >> 3) & 1
    vlan_id = (value >> VLAN_PPI_VLAN_ID_SHIFT) & VLAN_ID_MAX
    return (priority << 13) | (dei << 12) | vlan_id


def encode_vlan_ppi_value(vlan_id: int, priority: int = 0, dei: int = 0) -> int:
    """802.1Q info value from its parts."""
    if not 0 <= vlan_id <= VLAN_ID_MAX:
        raise ConfigError("vlan id", vlan_id, f"0..{VLAN_ID_MAX}")
    if not 0 <= priority <= VLAN_PRIORITY_MAX:
        raise ConfigError("vlan priority", priority, f"0..{VLAN_PRIORITY_MAX}")
    if dei not in (0, 1):
        raise ConfigError("vlan dei", dei, "0 or 1")
    return priority | (dei << 3) | (vlan_id << VLAN_PPI_VLAN_ID_SHIFT)


def encode_checksum_tx_request(
    *,
    ipv4: bool = False,
    ipv6: bool = False,
    tcp: bool = False,
    udp: bool = False,
    ip_header: bool = False,
    transport_offset: int = 0,
) -> int:
    """Transmit checksum request; ``transport_offset`` = bytes from the frame start to TCP/UDP."""
    if not 0 <= transport_offset <= CHECKSUM_TX_TRANSPORT_OFFSET_MAX:
        raise ConfigError(
            "transport header offset", transport_offset, f"0..{CHECKSUM_TX_TRANSPORT_OFFSET_MAX}"
        )
    value = transport_offset << CHECKSUM_TX_TRANSPORT_OFFSET_SHIFT
    for flag, bit in (
        (ipv4, CHECKSUM_TX_IPV4),
        (ipv6, CHECKSUM_TX_IPV6),
        (tcp, CHECKSUM_TX_TCP),
        (udp, CHECKSUM_TX_UDP),
        (ip_header, CHECKSUM_TX_IP_HEADER),
    ):
        if flag:
            value |= bit
    return value


class ChecksumTxRequest(NamedTuple):
    ipv4: bool
    ipv6: bool
    tcp: bool
    udp: bool
    ip_header: bool
    transport_offset: int


def decode_checksum_tx_request(value: int) -> ChecksumTxRequest:
    return ChecksumTxRequest(
        bool(value & CHECKSUM_TX_IPV4),
        bool(value & CHECKSUM_TX_IPV6),
        bool(value & CHECKSUM_TX_TCP),
        bool(value & CHECKSUM_TX_UDP),
        bool(value & CHECKSUM_TX_IP_HEADER),
        (value & CHECKSUM_TX_TRANSPORT_OFFSET_MASK) >> CHECKSUM_TX_TRANSPORT_OFFSET_SHIFT,
    )


def encode_lso_v2(mss: int, tcp_header_offset: int, *, ipv6: bool) -> int:
    """LSO v2 value: MSS, TCP header offset from the frame start, type bit, IP version bit."""
    if not 1 <= mss <= LSO_V2_MSS_MAX:
        raise ConfigError("lso mss", mss, f"1..{LSO_V2_MSS_MAX}")
    if not 0 <= tcp_header_offset <= LSO_V2_TCP_OFFSET_MAX:
        raise ConfigError("lso tcp header offset", tcp_header_offset, f"0..{LSO_V2_TCP_OFFSET_MAX}")
    value = mss | (tcp_header_offset << LSO_V2_TCP_OFFSET_SHIFT) | LSO_V2_TYPE
    return value | LSO_V2_IPV6 if ipv6 else value


class LsoV2(NamedTuple):
    mss: int
    tcp_header_offset: int
    ipv6: bool


def decode_lso_v2(value: int) -> LsoV2:
    """LSO v2 value -> parts; a value without the LSO v2 type bit is a ProtocolError."""
    if not value & LSO_V2_TYPE:
        raise ProtocolError(f"lso ppi {value:#010x}: type bit (LSO v2) not set")
    return LsoV2(
        value & LSO_V2_MSS_MASK,
        (value & LSO_V2_TCP_OFFSET_MASK) >> LSO_V2_TCP_OFFSET_SHIFT,
        bool(value & LSO_V2_IPV6),
    )


def decode_packet_id(payload: bytes) -> Record:
    """RSC packet id PPI payload: version, flags, packet id."""
    if len(payload) < PACKET_ID_INFO.size:
        raise ProtocolError(f"packet id ppi: payload of {len(payload)} bytes, needs {PACKET_ID_INFO.size}")
    return PACKET_ID_INFO.decode(payload)


def encode_packet_id(packet_id: int, flags: int, version: int = PACKET_ID_VERSION) -> bytes:
    return PACKET_ID_INFO.encode(version=version, flags=flags, packet_id=packet_id)


def aggregate_packet_msgs(messages: Sequence[bytes], alignment: int) -> bytes:
    """Concatenate encoded PACKET_MSGs into one send-buffer section (spec 3.3).

    Every message but the last is padded to ``alignment`` and its ``length`` grows by the
    padding; the last is not padded, so the result's length is the section byte count.
    """
    if alignment < 1 or alignment & (alignment - 1):
        raise ConfigError("alignment", alignment, "a power of two")
    out = bytearray()
    for index, message in enumerate(messages):
        message = bytearray(message)
        if index + 1 < len(messages):
            padded = (len(message) + alignment - 1) & ~(alignment - 1)
            message += bytes(padded - len(message))
            at = PACKET_MSG.offset("length")
            message[at : at + 4] = padded.to_bytes(4, "little")
        out += message
    return bytes(out)
