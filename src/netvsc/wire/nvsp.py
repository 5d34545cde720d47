"""NVSP wire format: message types, versions, status codes and every message layout (spec/nvsp-rndis.md 1).

Layer 1 (wire): constants and byte layouts only, no I/O.

Each message structure is declared at the size of the fields its type defines (the
length a parser needs); ``encode_*`` pads to the size the sender uses: 40 bytes for
the guest (``NVSP_GUEST_MESSAGE_SIZE``), 28 or 40 for the host depending on the
negotiated version (``host_message_size``). Parsers accept trailing bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire._struct import Record, Struct, byte_view, require_length

# Message sizes (spec/nvsp-rndis.md 1.1).
NVSP_HEADER_SIZE = 4
NVSP_GUEST_MESSAGE_SIZE = 40  # guests always send 40 bytes
NVSP_HOST_MESSAGE_SIZE_V1 = 28  # host messages before NVSP 6.1 (OpenVMM PACKET_SIZE_V1)
NVSP_HOST_MESSAGE_SIZE_V61 = 40  # host messages from NVSP 6.1 (OpenVMM PACKET_SIZE_V61)
NVSP_RESPONSE_BUFFER_SIZE = 256  # room for the largest host message (DPDK NVS_RESPSIZE_MAX)

# Message types (spec/nvsp-rndis.md 1.2).
NVSP_MSG_NONE = 0
NVSP_MSG_INIT = 1
NVSP_MSG_INIT_COMPLETE = 2
NVSP_MSG_SEND_NDIS_VERSION = 100
NVSP_MSG_SEND_RECEIVE_BUFFER = 101
NVSP_MSG_SEND_RECEIVE_BUFFER_COMPLETE = 102
NVSP_MSG_REVOKE_RECEIVE_BUFFER = 103
NVSP_MSG_SEND_SEND_BUFFER = 104
NVSP_MSG_SEND_SEND_BUFFER_COMPLETE = 105
NVSP_MSG_REVOKE_SEND_BUFFER = 106
NVSP_MSG_SEND_RNDIS_PACKET = 107
NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE = 108
NVSP_MSG_SEND_NDIS_CONFIG = 125
NVSP_MSG_SEND_VF_ASSOCIATION = 128
NVSP_MSG_SWITCH_DATA_PATH = 129
NVSP_MSG_UPLINK_CONNECT_STATE_DEPRECATED = 130
NVSP_MSG_OID_QUERY_EX = 131
NVSP_MSG_OID_QUERY_EX_COMPLETE = 132
NVSP_MSG_SUBCHANNEL = 133  # request and completion share the number
NVSP_MSG_SEND_INDIRECTION_TABLE = 134
NVSP_MSG_PD_API = 135
NVSP_MSG_PD_POST_BATCH = 136

# Protocol versions, (major << 16) | minor (spec/nvsp-rndis.md 1.5). There is no version 3.
NVSP_VERSION_1 = 0x00000002
NVSP_VERSION_2 = 0x00030002
NVSP_VERSION_4 = 0x00040000
NVSP_VERSION_5 = 0x00050000
NVSP_VERSION_6 = 0x00060000
NVSP_VERSION_61 = 0x00060001
NVSP_VERSIONS_NEWEST_FIRST = (
    NVSP_VERSION_61,
    NVSP_VERSION_6,
    NVSP_VERSION_5,
    NVSP_VERSION_4,
    NVSP_VERSION_2,
    NVSP_VERSION_1,
)

# Status codes (spec/nvsp-rndis.md 1.3); guests accept only SUCCESS.
NVSP_STATUS_NONE = 0
NVSP_STATUS_SUCCESS = 1
NVSP_STATUS_FAILURE = 2
NVSP_STATUS_PROTOCOL_TOO_NEW = 3
NVSP_STATUS_PROTOCOL_TOO_OLD = 4
NVSP_STATUS_INVALID_RNDIS_PACKET = 5
NVSP_STATUS_BUSY = 6
NVSP_STATUS_PROTOCOL_UNSUPPORTED = 7

# NDIS version sent in SEND_NDIS_VERSION (spec/nvsp-rndis.md 1.6).
NDIS_VERSION_6_1 = 0x00060001  # NVSP <= 4
NDIS_VERSION_6_20 = 0x00060014  # threshold: RSS supported from here
NDIS_VERSION_6_30 = 0x0006001E  # NVSP >= 5

# NDIS config capability bits (spec/nvsp-rndis.md 1.7).
NDIS_CONFIG_CAP_VMQ = 0x01
NDIS_CONFIG_CAP_CHIMNEY = 0x02
NDIS_CONFIG_CAP_SRIOV = 0x04
NDIS_CONFIG_CAP_IEEE8021Q = 0x08
NDIS_CONFIG_CAP_CORRELATION_ID = 0x10
NDIS_CONFIG_CAP_TEAMING = 0x20
NDIS_CONFIG_CAP_VIRTUAL_SUBNET_ID = 0x40
NDIS_CONFIG_CAP_RSC = 0x80

# NDIS config MTU: the frame size, L3 MTU + Ethernet header (spec/nvsp-rndis.md 1.7).
NDIS_CONFIG_MTU_ETHERNET_HEADER = 14
NDIS_CONFIG_MTU_MIN = 1514  # OpenVMM's accepted range
NDIS_CONFIG_MTU_MAX = 9216

# Buffer ids (spec/nvsp-rndis.md 1.4, 2.1).
RECEIVE_BUFFER_ID = 0xCAFE  # DPDK and Linux; also the transfer-page set id of received packets
SEND_BUFFER_ID_DPDK = 0xFACE
SEND_BUFFER_ID_LINUX = 0

# SEND_RNDIS_PACKET fields (spec/nvsp-rndis.md 1.4, 3.2).
RNDIS_CHANNEL_TYPE_DATA = 0
RNDIS_CHANNEL_TYPE_CONTROL = 1
SEND_SECTION_INDEX_NONE = 0xFFFFFFFF  # send buffer not used; size must be 0

# SWITCH_DATA_PATH values (spec/nvsp-rndis.md 1.4).
DATA_PATH_SYNTHETIC = 0
DATA_PATH_VF = 1

# SUBCHANNEL operations (spec/nvsp-rndis.md 1.4).
SUBCHANNEL_OPERATION_NONE = 0
SUBCHANNEL_OPERATION_ALLOCATE = 1

# Host notifications and their transaction ids as OpenVMM sends them (spec/nvsp-rndis.md 1.2, 7.5).
VF_ASSOCIATION_TRANSACTION_ID = 0x8000000000000000
SWITCH_DATA_PATH_TRANSACTION_ID = 0x8000000000000001

# Send indirection table (spec/nvsp-rndis.md 1.4, 7.4).
SEND_INDIRECTION_TABLE_ENTRIES = 16
SEND_INDIRECTION_TABLE_OFFSET = 12  # right after the 8-byte body (OpenVMM)
SEND_INDIRECTION_TABLE_MESSAGE_SIZE = 76
SEND_INDIRECTION_TABLE_QUIRK_OFFSET = 40  # Linux's fallback for NVSP <= 6 hosts

# Receive buffer: the only section count any VSP sends (spec/nvsp-rndis.md 1.4).
RECEIVE_BUFFER_SECTION_COUNT = 1

# Values OpenVMM puts in INIT_COMPLETE (spec/nvsp-rndis.md 1.4).
INIT_COMPLETE_NEGOTIATED_VERSION_DEPRECATED = 0xFFFFFFFF
INIT_COMPLETE_MAX_MDL_CHAIN_LENGTH = 34


def host_message_size(nvsp_version: int) -> int:
    """Size the host pads its NVSP messages to: 28 before 6.1, 40 from 6.1 (spec/nvsp-rndis.md 1.1)."""
    return NVSP_HOST_MESSAGE_SIZE_V61 if nvsp_version >= NVSP_VERSION_61 else NVSP_HOST_MESSAGE_SIZE_V1


def ndis_version_for(nvsp_version: int) -> int:
    """NDIS version a guest announces for an NVSP version (spec/nvsp-rndis.md 1.6)."""
    return NDIS_VERSION_6_30 if nvsp_version >= NVSP_VERSION_5 else NDIS_VERSION_6_1


# ---------------------------------------------------------------------------------------------
# Layouts (spec/nvsp-rndis.md 1.4); every offset counts from the type field.
# ---------------------------------------------------------------------------------------------


def _message(name: str, size: int, *fields: tuple) -> Struct:
    return Struct(f"nvsp_{name}", size, [("type", 0, "u32"), *fields], spec="nvsp-rndis.md 1.4")


NVSP_HEADER = Struct("nvsp_header", NVSP_HEADER_SIZE, [("type", 0, "u32")], spec="nvsp-rndis.md 1.1")
INIT = _message("init", 12, ("min_protocol_version", 4, "u32"), ("max_protocol_version", 8, "u32"))
INIT_COMPLETE = _message(
    "init_complete",
    16,
    ("negotiated_version", 4, "u32"),
    ("max_mdl_chain_length", 8, "u32"),
    ("status", 12, "u32"),
)
SEND_NDIS_VERSION = _message("send_ndis_version", 12, ("ndis_major", 4, "u32"), ("ndis_minor", 8, "u32"))
SEND_RECEIVE_BUFFER = _message("send_receive_buffer", 10, ("gpadl_handle", 4, "u32"), ("id", 8, "u16"))
SEND_RECEIVE_BUFFER_COMPLETE = _message(
    "send_receive_buffer_complete",
    28,
    ("status", 4, "u32"),
    ("num_sections", 8, "u32"),
    ("section_offset", 12, "u32"),
    ("sub_allocation_size", 16, "u32"),
    ("num_sub_allocations", 20, "u32"),
    ("section_end_offset", 24, "u32"),
)
REVOKE_RECEIVE_BUFFER = _message("revoke_receive_buffer", 6, ("id", 4, "u16"))
SEND_SEND_BUFFER = _message("send_send_buffer", 10, ("gpadl_handle", 4, "u32"), ("id", 8, "u16"))
SEND_SEND_BUFFER_COMPLETE = _message(
    "send_send_buffer_complete", 12, ("status", 4, "u32"), ("section_size", 8, "u32")
)
REVOKE_SEND_BUFFER = _message("revoke_send_buffer", 6, ("id", 4, "u16"))
SEND_RNDIS_PACKET = _message(
    "send_rndis_packet",
    16,
    ("channel_type", 4, "u32"),
    ("send_buffer_section_index", 8, "u32"),
    ("send_buffer_section_size", 12, "u32"),
)
SEND_RNDIS_PACKET_COMPLETE = _message("send_rndis_packet_complete", 8, ("status", 4, "u32"))
SEND_NDIS_CONFIG = _message(
    "send_ndis_config", 20, ("mtu", 4, "u32"), ("reserved", 8, "u32"), ("capabilities", 12, "u64")
)
SEND_VF_ASSOCIATION = _message("send_vf_association", 12, ("allocated", 4, "u32"), ("serial", 8, "u32"))
SWITCH_DATA_PATH = _message("switch_data_path", 8, ("active_data_path", 4, "u32"))
OID_QUERY_EX = _message(
    "oid_query_ex",
    12,
    ("header_type", 4, "u8"),  # NDIS object header (spec/nvsp-rndis.md 5.2)
    ("header_revision", 5, "u8"),
    ("header_size", 6, "u16"),
    ("oid", 8, "u32"),
)
OID_QUERY_EX_COMPLETE = _message("oid_query_ex_complete", 12, ("status", 4, "u32"), ("bytes", 8, "u32"))
SUBCHANNEL_REQUEST = _message(
    "subchannel_request", 12, ("operation", 4, "u32"), ("num_subchannels", 8, "u32")
)
SUBCHANNEL_COMPLETE = _message("subchannel_complete", 12, ("status", 4, "u32"), ("num_subchannels", 8, "u32"))
SEND_INDIRECTION_TABLE = _message("send_indirection_table", 12, ("count", 4, "u32"), ("offset", 8, "u32"))

# Layout of each type as received. SUBCHANNEL (133) has two layouts: the receiver picks by
# role (``decode_nvsp(..., completion=True)`` for the completion).
LAYOUT_BY_TYPE: dict[int, Struct] = {
    NVSP_MSG_INIT: INIT,
    NVSP_MSG_INIT_COMPLETE: INIT_COMPLETE,
    NVSP_MSG_SEND_NDIS_VERSION: SEND_NDIS_VERSION,
    NVSP_MSG_SEND_RECEIVE_BUFFER: SEND_RECEIVE_BUFFER,
    NVSP_MSG_SEND_RECEIVE_BUFFER_COMPLETE: SEND_RECEIVE_BUFFER_COMPLETE,
    NVSP_MSG_REVOKE_RECEIVE_BUFFER: REVOKE_RECEIVE_BUFFER,
    NVSP_MSG_SEND_SEND_BUFFER: SEND_SEND_BUFFER,
    NVSP_MSG_SEND_SEND_BUFFER_COMPLETE: SEND_SEND_BUFFER_COMPLETE,
    NVSP_MSG_REVOKE_SEND_BUFFER: REVOKE_SEND_BUFFER,
    NVSP_MSG_SEND_RNDIS_PACKET: SEND_RNDIS_PACKET,
    NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE: SEND_RNDIS_PACKET_COMPLETE,
    NVSP_MSG_SEND_NDIS_CONFIG: SEND_NDIS_CONFIG,
    NVSP_MSG_SEND_VF_ASSOCIATION: SEND_VF_ASSOCIATION,
    NVSP_MSG_SWITCH_DATA_PATH: SWITCH_DATA_PATH,
    NVSP_MSG_OID_QUERY_EX: OID_QUERY_EX,
    NVSP_MSG_OID_QUERY_EX_COMPLETE: OID_QUERY_EX_COMPLETE,
    NVSP_MSG_SUBCHANNEL: SUBCHANNEL_REQUEST,
    NVSP_MSG_SEND_INDIRECTION_TABLE: SEND_INDIRECTION_TABLE,
}


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def encode_message(layout: Struct, size: int = NVSP_GUEST_MESSAGE_SIZE, **fields: Any) -> bytes:
    """``layout`` with its type field set, zero-padded to ``size`` bytes (at least the layout)."""
    if size < layout.size:
        raise ConfigError("nvsp message size", size, f"at least {layout.size} for {layout.name}")
    message_type = _TYPE_OF_LAYOUT[layout.name]
    return layout.encode(type=message_type, **fields) + bytes(size - layout.size)


def encode_init(
    min_protocol_version: int, max_protocol_version: int | None = None, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """INIT (1); DPDK and Linux ask for one exact version (min = max)."""
    if max_protocol_version is None:
        max_protocol_version = min_protocol_version
    return encode_message(
        INIT, size, min_protocol_version=min_protocol_version, max_protocol_version=max_protocol_version
    )


def encode_init_complete(
    status: int,
    *,
    negotiated_version: int = INIT_COMPLETE_NEGOTIATED_VERSION_DEPRECATED,
    max_mdl_chain_length: int = INIT_COMPLETE_MAX_MDL_CHAIN_LENGTH,
    size: int = NVSP_HOST_MESSAGE_SIZE_V1,
) -> bytes:
    """INIT_COMPLETE (2); built before a version exists, so 28 bytes by default."""
    return encode_message(
        INIT_COMPLETE,
        size,
        negotiated_version=negotiated_version,
        max_mdl_chain_length=max_mdl_chain_length,
        status=status,
    )


def encode_send_ndis_version(ndis_version: int, *, size: int = NVSP_GUEST_MESSAGE_SIZE) -> bytes:
    """SEND_NDIS_VERSION (100) from a packed NDIS version such as ``NDIS_VERSION_6_30``."""
    return encode_message(
        SEND_NDIS_VERSION, size, ndis_major=ndis_version >> 16, ndis_minor=ndis_version & 0xFFFF
    )


def encode_send_ndis_config(mtu: int, capabilities: int, *, size: int = NVSP_GUEST_MESSAGE_SIZE) -> bytes:
    """SEND_NDIS_CONFIG (125): ``mtu`` is the frame size (L3 MTU + 14)."""
    return encode_message(SEND_NDIS_CONFIG, size, mtu=mtu, capabilities=capabilities)


def encode_send_receive_buffer(
    gpadl_handle: int, buffer_id: int = RECEIVE_BUFFER_ID, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """SEND_RECEIVE_BUFFER (101)."""
    return encode_message(SEND_RECEIVE_BUFFER, size, gpadl_handle=gpadl_handle, id=buffer_id)


def encode_send_receive_buffer_complete(
    status: int,
    *,
    sub_allocation_size: int,
    num_sub_allocations: int,
    section_offset: int = 0,
    section_end_offset: int | None = None,
    num_sections: int = RECEIVE_BUFFER_SECTION_COUNT,
    size: int = NVSP_HOST_MESSAGE_SIZE_V1,
) -> bytes:
    """SEND_RECEIVE_BUFFER_COMPLETE (102) with one section; end offset = slot size x count by default."""
    if section_end_offset is None:
        section_end_offset = section_offset + sub_allocation_size * num_sub_allocations
    return encode_message(
        SEND_RECEIVE_BUFFER_COMPLETE,
        size,
        status=status,
        num_sections=num_sections,
        section_offset=section_offset,
        sub_allocation_size=sub_allocation_size,
        num_sub_allocations=num_sub_allocations,
        section_end_offset=section_end_offset,
    )


def encode_revoke_receive_buffer(
    buffer_id: int = RECEIVE_BUFFER_ID, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """REVOKE_RECEIVE_BUFFER (103)."""
    return encode_message(REVOKE_RECEIVE_BUFFER, size, id=buffer_id)


def encode_send_send_buffer(
    gpadl_handle: int, buffer_id: int = SEND_BUFFER_ID_DPDK, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """SEND_SEND_BUFFER (104)."""
    return encode_message(SEND_SEND_BUFFER, size, gpadl_handle=gpadl_handle, id=buffer_id)


def encode_send_send_buffer_complete(
    status: int, section_size: int, *, size: int = NVSP_HOST_MESSAGE_SIZE_V1
) -> bytes:
    """SEND_SEND_BUFFER_COMPLETE (105)."""
    return encode_message(SEND_SEND_BUFFER_COMPLETE, size, status=status, section_size=section_size)


def encode_revoke_send_buffer(
    buffer_id: int = SEND_BUFFER_ID_DPDK, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """REVOKE_SEND_BUFFER (106)."""
    return encode_message(REVOKE_SEND_BUFFER, size, id=buffer_id)


def encode_send_rndis_packet(
    channel_type: int,
    send_buffer_section_index: int = SEND_SECTION_INDEX_NONE,
    send_buffer_section_size: int = 0,
    *,
    size: int = NVSP_GUEST_MESSAGE_SIZE,
) -> bytes:
    """SEND_RNDIS_PACKET (107); index ``SEND_SECTION_INDEX_NONE`` requires size 0 (spec 8.5)."""
    if send_buffer_section_index == SEND_SECTION_INDEX_NONE and send_buffer_section_size != 0:
        raise ConfigError("send_buffer_section_size", send_buffer_section_size, "0 when no section is used")
    return encode_message(
        SEND_RNDIS_PACKET,
        size,
        channel_type=channel_type,
        send_buffer_section_index=send_buffer_section_index,
        send_buffer_section_size=send_buffer_section_size,
    )


def encode_send_rndis_packet_complete(
    status: int = NVSP_STATUS_SUCCESS, *, size: int = NVSP_GUEST_MESSAGE_SIZE
) -> bytes:
    """SEND_RNDIS_PACKET_COMPLETE (108); hosts read only the first 8 bytes."""
    return encode_message(SEND_RNDIS_PACKET_COMPLETE, size, status=status)


def encode_send_vf_association(
    allocated: bool, serial: int, *, size: int = NVSP_HOST_MESSAGE_SIZE_V1
) -> bytes:
    """SEND_VF_ASSOCIATION (128), host to guest."""
    return encode_message(SEND_VF_ASSOCIATION, size, allocated=int(bool(allocated)), serial=serial)


def encode_switch_data_path(active_data_path: int, *, size: int = NVSP_GUEST_MESSAGE_SIZE) -> bytes:
    """SWITCH_DATA_PATH (129); OpenVMM's host-to-guest notification is 8 bytes (``size=8``)."""
    return encode_message(SWITCH_DATA_PATH, size, active_data_path=active_data_path)


def encode_oid_query_ex(
    oid: int,
    *,
    header_type: int = 0,
    header_revision: int = 0,
    header_size: int = 0,
    size: int = NVSP_GUEST_MESSAGE_SIZE,
) -> bytes:
    """OID_QUERY_EX (131): NDIS object header at 4, OID at 8."""
    return encode_message(
        OID_QUERY_EX,
        size,
        header_type=header_type,
        header_revision=header_revision,
        header_size=header_size,
        oid=oid,
    )


def encode_oid_query_ex_complete(
    status: int, byte_count: int, *, size: int = NVSP_HOST_MESSAGE_SIZE_V1
) -> bytes:
    """OID_QUERY_EX_COMPLETE (132); ``status`` is an RNDIS/NDIS status."""
    return encode_message(OID_QUERY_EX_COMPLETE, size, status=status, bytes=byte_count)


def encode_subchannel_request(
    num_subchannels: int,
    operation: int = SUBCHANNEL_OPERATION_ALLOCATE,
    *,
    size: int = NVSP_GUEST_MESSAGE_SIZE,
) -> bytes:
    """SUBCHANNEL request (133)."""
    return encode_message(SUBCHANNEL_REQUEST, size, operation=operation, num_subchannels=num_subchannels)


def encode_subchannel_complete(
    status: int, num_subchannels: int, *, size: int = NVSP_HOST_MESSAGE_SIZE_V1
) -> bytes:
    """SUBCHANNEL completion (133): status and the count actually allocated."""
    return encode_message(SUBCHANNEL_COMPLETE, size, status=status, num_subchannels=num_subchannels)


def encode_send_indirection_table(
    entries: Sequence[int], *, table_offset: int = SEND_INDIRECTION_TABLE_OFFSET
) -> bytes:
    """SEND_INDIRECTION_TABLE (134): header, then the u32 entries at ``table_offset``.

    OpenVMM's form (offset 12, 16 entries) is 76 bytes.
    """
    if table_offset < SEND_INDIRECTION_TABLE.size:
        raise ConfigError("table_offset", table_offset, f"at least {SEND_INDIRECTION_TABLE.size}")
    message = bytearray(
        encode_message(SEND_INDIRECTION_TABLE, table_offset, count=len(entries), offset=table_offset)
    )
    for entry in entries:
        if not 0 <= entry <= 0xFFFFFFFF:
            raise ConfigError("indirection table entry", entry, "0..0xffffffff")
        message += entry.to_bytes(4, "little")
    return bytes(message)


_TYPE_OF_LAYOUT: dict[str, int] = {layout.name: t for t, layout in LAYOUT_BY_TYPE.items()}
_TYPE_OF_LAYOUT[SUBCHANNEL_COMPLETE.name] = NVSP_MSG_SUBCHANNEL


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def peek_message_type(buf: Any, offset: int = 0) -> int:
    """The type field of an NVSP message (ProtocolError if fewer than 4 bytes)."""
    return NVSP_HEADER.decode(buf, offset).type


def decode_nvsp(buf: Any, offset: int = 0, *, completion: bool = False) -> Record:
    """Decode an NVSP message by its type, checking it holds the fields of that type.

    Trailing bytes (host padding to 28/40) are ignored. ``completion`` selects the
    completion layout of SUBCHANNEL (133), whose request and completion share the type.
    A type with no layout here is a ProtocolError naming it; an empty completion
    payload has no type at all and must be recognised by the caller before decoding.
    SEND_INDIRECTION_TABLE is decoded with its entries (``decode_send_indirection_table``).
    """
    message_type = peek_message_type(buf, offset)
    if message_type == NVSP_MSG_SEND_INDIRECTION_TABLE:
        return decode_send_indirection_table(buf, offset)
    layout = LAYOUT_BY_TYPE.get(message_type)
    if layout is None:
        raise ProtocolError(f"nvsp: message type {message_type} has no known layout")
    if completion and message_type == NVSP_MSG_SUBCHANNEL:
        layout = SUBCHANNEL_COMPLETE
    return _decode_layout(layout, buf, offset)


def _decode_layout(layout: Struct, buf: Any, offset: int) -> Record:
    view = byte_view(buf)
    if offset < 0 or len(view) - offset < layout.size:
        raise ProtocolError(
            f"{layout.name}: message of {max(len(view) - offset, 0)} bytes is shorter than "
            f"its fields ({layout.size} bytes)"
        )
    return layout.decode(view, offset)


def decode_send_indirection_table(buf: Any, offset: int = 0, *, table_offset: int | None = None) -> Record:
    """SEND_INDIRECTION_TABLE (134) with ``entries``; ``table_offset`` overrides the message's
    offset field (Linux's workaround for hosts that put the table at 40, spec 7.4)."""
    view = byte_view(buf)
    header = _decode_layout(SEND_INDIRECTION_TABLE, view, offset)
    if header.type != NVSP_MSG_SEND_INDIRECTION_TABLE:
        raise ProtocolError(f"nvsp: type {header.type} is not SEND_INDIRECTION_TABLE")
    at = header.offset if table_offset is None else table_offset
    if at < SEND_INDIRECTION_TABLE.size:
        raise ProtocolError(f"nvsp_send_indirection_table: table offset {at} overlaps the header")
    require_length("nvsp_send_indirection_table entries", view, offset + at, 4 * header.count)
    start = offset + at
    entries = tuple(
        int.from_bytes(view[i : i + 4], "little") for i in range(start, start + 4 * header.count, 4)
    )
    return Record(SEND_INDIRECTION_TABLE.name, {**header._asdict(), "entries": entries})
