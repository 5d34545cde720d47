"""NDIS wire format carried by RNDIS: OIDs, NDIS objects, offload and RSS structures, packet filter
(spec/nvsp-rndis.md 5, 6).

Layer 1 (wire): constants and byte layouts only, no I/O.

Versioned NDIS objects are declared at their newest revision; a revision's size
is a prefix of it. Decoders read only ``header_size`` bytes of an object and
zero-extend the rest (how hosts treat a shorter revision, spec 5.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire._struct import Record, Struct, byte_view, require_length

# ---------------------------------------------------------------------------------------------
# OIDs (spec/nvsp-rndis.md 5.1)
# ---------------------------------------------------------------------------------------------

OID_GEN_SUPPORTED_LIST = 0x00010101
OID_GEN_HARDWARE_STATUS = 0x00010102
OID_GEN_MEDIA_SUPPORTED = 0x00010103
OID_GEN_MEDIA_IN_USE = 0x00010104
OID_GEN_MAXIMUM_LOOKAHEAD = 0x00010105
OID_GEN_MAXIMUM_FRAME_SIZE = 0x00010106
OID_GEN_LINK_SPEED = 0x00010107
OID_GEN_TRANSMIT_BUFFER_SPACE = 0x00010108
OID_GEN_RECEIVE_BUFFER_SPACE = 0x00010109
OID_GEN_VENDOR_ID = 0x0001010C
OID_GEN_CURRENT_PACKET_FILTER = 0x0001010E
OID_GEN_CURRENT_LOOKAHEAD = 0x0001010F
OID_GEN_MAXIMUM_TOTAL_SIZE = 0x00010111
OID_GEN_MAC_OPTIONS = 0x00010113
OID_GEN_MEDIA_CONNECT_STATUS = 0x00010114
OID_GEN_MAXIMUM_SEND_PACKETS = 0x00010115
OID_GEN_RECEIVE_SCALE_CAPABILITIES = 0x00010203
OID_GEN_RECEIVE_SCALE_PARAMETERS = 0x00010204
OID_GEN_MAX_LINK_SPEED = 0x00010206
OID_GEN_LINK_STATE = 0x00010207
OID_GEN_RNDIS_CONFIG_PARAMETER = 0x0001021B
OID_GEN_VLAN_ID = 0x0001021C
OID_GEN_FRIENDLY_NAME = 0x00020216
OID_802_3_PERMANENT_ADDRESS = 0x01010101
OID_802_3_CURRENT_ADDRESS = 0x01010102
OID_802_3_MULTICAST_LIST = 0x01010103
OID_802_3_MAXIMUM_LIST_SIZE = 0x01010104
OID_OFFLOAD_ENCAPSULATION = 0x0101010A
OID_TCP_OFFLOAD_CURRENT_CONFIG = 0xFC01020B
OID_TCP_OFFLOAD_PARAMETERS = 0xFC01020C
OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES = 0xFC01020D

OID_NAMES: dict[int, str] = {
    value: name
    for name, value in list(globals().items())
    if name.startswith("OID_") and isinstance(value, int)
}

# Values of simple OIDs (spec/nvsp-rndis.md 5.1, 6).
NDIS_MEDIUM_802_3 = 0  # OID_GEN_MEDIA_SUPPORTED / _IN_USE
NDIS_HARDWARE_STATUS_READY = 0
NDIS_MEDIA_STATE_CONNECTED = 0  # OID_GEN_MEDIA_CONNECT_STATUS
NDIS_MEDIA_STATE_DISCONNECTED = 1
LINK_SPEED_UNIT_BPS = 100  # OID_GEN_LINK_SPEED counts 100 bit/s units
MAC_ADDRESS_SIZE = 6  # OID_802_3_PERMANENT_ADDRESS / _CURRENT_ADDRESS

# OID_GEN_MAC_OPTIONS bits (spec/nvsp-rndis.md 5.1).
NDIS_MAC_OPTION_COPY_LOOKAHEAD_DATA = 0x001
NDIS_MAC_OPTION_TRANSFERS_NOT_PEND = 0x004
NDIS_MAC_OPTION_NO_LOOPBACK = 0x008
NDIS_MAC_OPTION_8021P_PRIORITY = 0x040
NDIS_MAC_OPTION_8021Q_VLAN = 0x200

# NETWORK_CHANGE indication buffer values (spec/nvsp-rndis.md 6).
NETWORK_CHANGE_POSSIBLE = 1
NETWORK_CHANGE_DEFINITE = 2
NETWORK_CHANGE_FROM_MEDIA = 3

# ---------------------------------------------------------------------------------------------
# Packet filter, OID_GEN_CURRENT_PACKET_FILTER (spec/nvsp-rndis.md 5.7)
# ---------------------------------------------------------------------------------------------

NDIS_PACKET_TYPE_NONE = 0x00000000
NDIS_PACKET_TYPE_DIRECTED = 0x00000001
NDIS_PACKET_TYPE_MULTICAST = 0x00000002
NDIS_PACKET_TYPE_ALL_MULTICAST = 0x00000004
NDIS_PACKET_TYPE_BROADCAST = 0x00000008
NDIS_PACKET_TYPE_SOURCE_ROUTING = 0x00000010
NDIS_PACKET_TYPE_PROMISCUOUS = 0x00000020
NDIS_PACKET_TYPE_SMT = 0x00000040
NDIS_PACKET_TYPE_ALL_LOCAL = 0x00000080
NDIS_PACKET_TYPE_GROUP = 0x00001000
NDIS_PACKET_TYPE_ALL_FUNCTIONAL = 0x00002000
NDIS_PACKET_TYPE_FUNCTIONAL = 0x00004000
NDIS_PACKET_TYPE_MAC_FRAME = 0x00008000
# What DPDK and Linux set at start: directed | all multicast | broadcast = 0x0D.
NDIS_PACKET_FILTER_DEFAULT = (
    NDIS_PACKET_TYPE_DIRECTED | NDIS_PACKET_TYPE_ALL_MULTICAST | NDIS_PACKET_TYPE_BROADCAST
)

# ---------------------------------------------------------------------------------------------
# NDIS object header (spec/nvsp-rndis.md 5.2)
# ---------------------------------------------------------------------------------------------

NDIS_OBJECT_TYPE_DEFAULT = 0x80
NDIS_OBJECT_TYPE_RSS_CAPABILITIES = 0x88
NDIS_OBJECT_TYPE_RSS_PARAMETERS = 0x89
NDIS_OBJECT_TYPE_OID_REQUEST = 0x96
NDIS_OBJECT_TYPE_OFFLOAD = 0xA7
NDIS_OBJECT_TYPE_OFFLOAD_ENCAPSULATION = 0xA8
NDIS_OBJECT_HEADER_SIZE = 4

_HEADER_FIELDS = (("header_type", 0, "u8"), ("header_revision", 1, "u8"), ("header_size", 2, "u16"))

NDIS_OBJECT_HEADER = Struct(
    "ndis_object_header",
    NDIS_OBJECT_HEADER_SIZE,
    [("type", 0, "u8"), ("revision", 1, "u8"), ("size", 2, "u16")],
    spec="nvsp-rndis.md 5.2",
)

# ---------------------------------------------------------------------------------------------
# Offload parameters, OID_TCP_OFFLOAD_PARAMETERS (spec/nvsp-rndis.md 5.3)
# ---------------------------------------------------------------------------------------------

OFFLOAD_PARAMETERS_REVISION_1 = 1
OFFLOAD_PARAMETERS_REVISION_2 = 2  # NDIS 6.1: adds IPsec v2
OFFLOAD_PARAMETERS_REVISION_3 = 3  # NDIS 6.30: adds RSC and encapsulation
OFFLOAD_PARAMETERS_SIZE = {1: 20, 2: 22, 3: 28}

# Checksum fields: values, not bits (DPDK pitfall: OR-ing TX 2 and RX 3 gives 3, RX only).
OFFLOAD_CHECKSUM_NO_CHANGE = 0
OFFLOAD_CHECKSUM_TX_RX_DISABLED = 1
OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED = 2
OFFLOAD_CHECKSUM_RX_ENABLED_TX_DISABLED = 3
OFFLOAD_CHECKSUM_TX_RX_ENABLED = 4
# LSO v1/v2 and RSC fields.
OFFLOAD_LSO_NO_CHANGE = 0
OFFLOAD_LSO_DISABLED = 1
OFFLOAD_LSO_ENABLED = 2
OFFLOAD_RSC_NO_CHANGE = 0
OFFLOAD_RSC_DISABLED = 1
OFFLOAD_RSC_ENABLED = 2
# IPsec v1 field.
OFFLOAD_IPSEC_V1_NO_CHANGE = 0
OFFLOAD_IPSEC_V1_DISABLED = 1
OFFLOAD_IPSEC_V1_AH_ENABLED = 2
OFFLOAD_IPSEC_V1_ESP_ENABLED = 3
OFFLOAD_IPSEC_V1_AH_AND_ESP_ENABLED = 4

OFFLOAD_PARAMETERS = Struct(
    "ndis_offload_parameters",
    OFFLOAD_PARAMETERS_SIZE[3],
    [
        *_HEADER_FIELDS,
        ("ipv4_checksum", 4, "u8"),
        ("tcp4_checksum", 5, "u8"),
        ("udp4_checksum", 6, "u8"),
        ("tcp6_checksum", 7, "u8"),
        ("udp6_checksum", 8, "u8"),
        ("lso_v1", 9, "u8"),
        ("ipsec_v1", 10, "u8"),
        ("lso_v2_ipv4", 11, "u8"),
        ("lso_v2_ipv6", 12, "u8"),
        ("tcp_connection_ipv4", 13, "u8"),
        ("tcp_connection_ipv6", 14, "u8"),
        ("flags", 16, "u32"),
        ("ipsec_v2", 20, "u8"),
        ("ipsec_v2_ipv4", 21, "u8"),
        ("rsc_ipv4", 22, "u8"),
        ("rsc_ipv6", 23, "u8"),
        ("encapsulated_packet_task_offload", 24, "u8"),
        ("encapsulation_types", 25, "u8"),
    ],
    spec="nvsp-rndis.md 5.3",
)

# ---------------------------------------------------------------------------------------------
# Offload capabilities, OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES / _CURRENT_CONFIG (spec 5.4)
# ---------------------------------------------------------------------------------------------

OFFLOAD_CAPABILITIES_REVISION_1 = 1
OFFLOAD_CAPABILITIES_REVISION_2 = 2  # NDIS 6.1
OFFLOAD_CAPABILITIES_REVISION_3 = 3  # NDIS 6.30
OFFLOAD_CAPABILITIES_SIZE = {1: 112, 2: 144, 3: 156}

# Encapsulation values.
NDIS_ENCAPSULATION_NOT_SUPPORTED = 0x00
NDIS_ENCAPSULATION_NULL = 0x01
NDIS_ENCAPSULATION_IEEE_802_3 = 0x02
NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q = 0x04
NDIS_ENCAPSULATION_IEEE_802_3_P_AND_Q_IN_OOB = 0x08
NDIS_ENCAPSULATION_IEEE_LLC_SNAP_ROUTED = 0x10  # RFC 1483

# Checksum capability bits: each capability is a 2-bit field whose value 1 means supported.
CHECKSUM_CAP_IPV4_OPTIONS = 0x001
CHECKSUM_CAP_IPV4_TCP_OPTIONS = 0x004
CHECKSUM_CAP_IPV4_TCP = 0x010
CHECKSUM_CAP_IPV4_UDP = 0x040
CHECKSUM_CAP_IPV4_HEADER = 0x100
CHECKSUM_CAP_IPV6_EXTENSION_HEADERS = 0x001
CHECKSUM_CAP_IPV6_TCP_OPTIONS = 0x004
CHECKSUM_CAP_IPV6_TCP = 0x010
CHECKSUM_CAP_IPV6_UDP = 0x040
LSO_V2_IPV6_CAP_EXTENSION_HEADERS = 0x001
LSO_V2_IPV6_CAP_TCP_OPTIONS = 0x004

# What OpenVMM advertises for LSO v2 (spec 4.7, 5.4).
LSO_V2_MAX_SIZE_OPENVMM = 0xF53C
LSO_V2_MIN_SEGMENTS_OPENVMM = 2

OFFLOAD_CAPABILITIES = Struct(
    "ndis_offload_capabilities",
    OFFLOAD_CAPABILITIES_SIZE[3],
    [
        *_HEADER_FIELDS,
        ("ipv4_tx_encapsulation", 4, "u32"),
        ("ipv4_tx_flags", 8, "u32"),
        ("ipv4_rx_encapsulation", 12, "u32"),
        ("ipv4_rx_flags", 16, "u32"),
        ("ipv6_tx_encapsulation", 20, "u32"),
        ("ipv6_tx_flags", 24, "u32"),
        ("ipv6_rx_encapsulation", 28, "u32"),
        ("ipv6_rx_flags", 32, "u32"),
        ("lso_v1_encapsulation", 36, "u32"),
        ("lso_v1_max_size", 40, "u32"),
        ("lso_v1_min_segments", 44, "u32"),
        ("lso_v1_options", 48, "u32"),
        ("ipsec_v1_encapsulation", 52, "u32"),
        ("ipsec_v1_ah_esp_combined", 56, "u32"),
        ("ipsec_v1_transport_tunnel_combined", 60, "u32"),
        ("ipsec_v1_ipv4_options", 64, "u32"),
        ("ipsec_v1_flags", 68, "u32"),
        ("ipsec_v1_ipv4_ah", 72, "u32"),
        ("ipsec_v1_ipv4_esp", 76, "u32"),
        ("lso_v2_ipv4_encapsulation", 80, "u32"),
        ("lso_v2_ipv4_max_size", 84, "u32"),
        ("lso_v2_ipv4_min_segments", 88, "u32"),
        ("lso_v2_ipv6_encapsulation", 92, "u32"),
        ("lso_v2_ipv6_max_size", 96, "u32"),
        ("lso_v2_ipv6_min_segments", 100, "u32"),
        ("lso_v2_ipv6_options", 104, "u32"),
        ("flags", 108, "u32"),
        # Revision 2 (NDIS 6.1): IPsec v2.
        ("ipsec_v2_encapsulation", 112, "u32"),
        ("ipsec_v2_ipv6", 116, "u8"),
        ("ipsec_v2_ipv4_options", 117, "u8"),
        ("ipsec_v2_ipv6_extension_headers", 118, "u8"),
        ("ipsec_v2_ah", 119, "u8"),
        ("ipsec_v2_esp", 120, "u8"),
        ("ipsec_v2_ah_esp", 121, "u8"),
        ("ipsec_v2_transport", 122, "u8"),
        ("ipsec_v2_tunnel", 123, "u8"),
        ("ipsec_v2_transport_tunnel", 124, "u8"),
        ("ipsec_v2_lso", 125, "u8"),
        ("ipsec_v2_extended_sequence_numbers", 126, "u8"),
        ("ipsec_v2_udp_esp", 128, "u32"),
        ("ipsec_v2_authentication", 132, "u32"),
        ("ipsec_v2_encryption", 136, "u32"),
        ("ipsec_v2_sa_offload_capacity", 140, "u32"),
        # Revision 3 (NDIS 6.30): RSC and NVGRE encapsulation offload.
        ("rsc_ipv4", 144, "u8"),
        ("rsc_ipv6", 145, "u8"),
        ("encapsulation_flags", 148, "u32"),
        ("encapsulation_max_header_size", 152, "u32"),
    ],
    spec="nvsp-rndis.md 5.4",
)

# ---------------------------------------------------------------------------------------------
# OID_OFFLOAD_ENCAPSULATION object (type 0xA8, revision 1; spec 5.1 names it, the NDIS
# NDIS_OFFLOAD_ENCAPSULATION structure gives the layout).
# ---------------------------------------------------------------------------------------------

OFFLOAD_ENCAPSULATION_REVISION_1 = 1
OFFLOAD_ENCAPSULATION_SIZE = 28
NDIS_OFFLOAD_SET_NO_CHANGE = 0
NDIS_OFFLOAD_SET_ON = 1
NDIS_OFFLOAD_SET_OFF = 2

OFFLOAD_ENCAPSULATION = Struct(
    "ndis_offload_encapsulation",
    OFFLOAD_ENCAPSULATION_SIZE,
    [
        *_HEADER_FIELDS,
        ("ipv4_enabled", 4, "u32"),
        ("ipv4_encapsulation_type", 8, "u32"),
        ("ipv4_header_size", 12, "u32"),
        ("ipv6_enabled", 16, "u32"),
        ("ipv6_encapsulation_type", 20, "u32"),
        ("ipv6_header_size", 24, "u32"),
    ],
    spec="nvsp-rndis.md 5.1",
)

# OID_GEN_MAX_LINK_SPEED payload (spec/nvsp-rndis.md 5.1): bit/s.
LINK_SPEED = Struct(
    "ndis_link_speed",
    16,
    [("transmit_link_speed", 0, "u64"), ("receive_link_speed", 8, "u64")],
    spec="nvsp-rndis.md 5.1",
)

# ---------------------------------------------------------------------------------------------
# RSS (spec/nvsp-rndis.md 5.5, 5.6)
# ---------------------------------------------------------------------------------------------

RSS_CAPABILITIES_REVISION_1 = 1  # NDIS 6.0-6.20
RSS_CAPABILITIES_REVISION_2 = 2  # adds the indirection table entry count
RSS_CAPABILITIES_SIZE = {1: 16, 2: 18}  # the 2 padding bytes of revision 2 are not counted

# RSS capability flags (spec 5.5). 0x100/0x200/0x400 are IPV4/IPV6/IPV6_EX in DPDK, TCP_* in
# Linux and OpenVMM: the same bits.
RSS_CAP_HASH_TOEPLITZ = 0x00000001
RSS_CAP_HASH_FUNCTION_MASK = 0x000000FF
RSS_CAP_TCP_IPV4 = 0x00000100
RSS_CAP_TCP_IPV6 = 0x00000200
RSS_CAP_TCP_IPV6_EX = 0x00000400
RSS_CAP_UDP_IPV4 = 0x00000800
RSS_CAP_UDP_IPV6 = 0x00001000
RSS_CAP_UDP_IPV6_EX = 0x00002000
RSS_CAP_MSI = 0x01000000
RSS_CAP_CLASSIFICATION_AT_ISR = 0x02000000
RSS_CAP_CLASSIFICATION_AT_DPC = 0x04000000
RSS_CAP_USING_MSI_X = 0x08000000
RSS_CAP_RSS_AVAILABLE_ON_PORTS = 0x10000000
RSS_CAP_SUPPORTS_MSI_X = 0x20000000
RSS_CAP_SUPPORTS_INDEPENDENT_ENTRY_MOVE = 0x40000000

RSS_CAPABILITIES = Struct(
    "ndis_rss_capabilities",
    RSS_CAPABILITIES_SIZE[2],
    [
        *_HEADER_FIELDS,
        ("capabilities_flags", 4, "u32"),
        ("number_of_interrupt_messages", 8, "u32"),
        ("number_of_receive_queues", 12, "u32"),
        ("number_of_indirection_table_entries", 16, "u16"),
    ],
    spec="nvsp-rndis.md 5.5",
)

RSS_PARAMETERS_REVISION_1 = 1
RSS_PARAMETERS_REVISION_2 = 2  # adds processor masks
RSS_PARAMETERS_REVISION_3 = 3  # adds the default processor
RSS_PARAMETERS_SIZE = {1: 28, 2: 40, 3: 44}

# RSS parameters flags (spec 5.6).
RSS_PARAM_FLAG_BASE_CPU_UNCHANGED = 0x0001
RSS_PARAM_FLAG_HASH_INFO_UNCHANGED = 0x0002
RSS_PARAM_FLAG_ITABLE_UNCHANGED = 0x0004
RSS_PARAM_FLAG_HASH_KEY_UNCHANGED = 0x0008
RSS_PARAM_FLAG_DISABLE_RSS = 0x0010
RSS_PARAM_FLAG_DEFAULT_PROCESSOR_UNCHANGED = 0x0020

# Hash information = function (bits 0-7) | types (bits 8-23) (spec 5.6); also the hash info PPI.
NDIS_HASH_FUNCTION_TOEPLITZ = 0x00000001
NDIS_HASH_FUNCTION_MASK = 0x000000FF
NDIS_HASH_TYPE_MASK = 0x00FFFF00
NDIS_HASH_IPV4 = 0x00000100
NDIS_HASH_TCP_IPV4 = 0x00000200
NDIS_HASH_IPV6 = 0x00000400
NDIS_HASH_IPV6_EX = 0x00000800
NDIS_HASH_TCP_IPV6 = 0x00001000
NDIS_HASH_TCP_IPV6_EX = 0x00002000
NDIS_HASH_UDP_IPV4 = 0x00004000  # OpenVMM only
NDIS_HASH_UDP_IPV6 = 0x00008000  # OpenVMM only
NDIS_HASH_UDP_IPV6_EX = 0x00010000  # OpenVMM only
# What Linux always sends: Toeplitz over IPv4, TCP/IPv4, IPv6, TCP/IPv6.
RSS_HASH_INFORMATION_LINUX = (
    NDIS_HASH_FUNCTION_TOEPLITZ | NDIS_HASH_IPV4 | NDIS_HASH_TCP_IPV4 | NDIS_HASH_IPV6 | NDIS_HASH_TCP_IPV6
)

RSS_HASH_KEY_SIZE = 40
RSS_INDIRECTION_TABLE_ENTRIES = 128  # Hyper-V's receive table (VMS_SWITCH_RSS_MAX_...)
RSS_INDIRECTION_TABLE_MIN_ENTRIES = 16
RSS_INDIRECTION_ENTRY_SIZE = 4
# DPDK/Linux placement: object (40), table at 40, key at 552, 592 bytes in all (spec 5.6).
RSS_PARAMETERS_TABLE_OFFSET = RSS_PARAMETERS_SIZE[2]
RSS_PARAMETERS_KEY_OFFSET = (
    RSS_PARAMETERS_TABLE_OFFSET + RSS_INDIRECTION_TABLE_ENTRIES * RSS_INDIRECTION_ENTRY_SIZE
)
RSS_PARAMETERS_WITH_TABLE_AND_KEY_SIZE = RSS_PARAMETERS_KEY_OFFSET + RSS_HASH_KEY_SIZE

# Default 40-byte Toeplitz keys (spec 5.6). DPDK's equals the MLX5 PMD's, so a flow lands on
# the same queue through the VF and the synthetic NIC.
TOEPLITZ_KEY_DPDK = bytes.fromhex(
    "2cc681d15bdbf4f7fca28319db1a3e946b9e38d92c9c03d1ad9944a7d9563d59063c25f3fc1fdc2a"
)
TOEPLITZ_KEY_LINUX = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)

RSS_PARAMETERS = Struct(
    "ndis_rss_parameters",
    RSS_PARAMETERS_SIZE[3],
    [
        *_HEADER_FIELDS,
        ("flags", 4, "u16"),
        ("base_cpu_number", 6, "u16"),
        ("hash_information", 8, "u32"),
        ("indirection_table_size", 12, "u16"),  # bytes, not entries
        ("indirection_table_offset", 16, "u32"),  # from the start of this object
        ("hash_secret_key_size", 20, "u16"),
        ("hash_secret_key_offset", 24, "u32"),  # from the start of this object
        ("processor_masks_offset", 28, "u32"),
        ("number_of_processor_masks", 32, "u32"),
        ("processor_masks_entry_size", 36, "u32"),
        ("default_processor_group", 40, "u16"),  # PROCESSOR_NUMBER: group, number, reserved
        ("default_processor_number", 42, "u8"),
    ],
    spec="nvsp-rndis.md 5.6",
)

RSS_PARAMETERS_WITH_TABLE_AND_KEY = Struct(
    "ndis_rss_parameters_with_table_and_key",
    RSS_PARAMETERS_WITH_TABLE_AND_KEY_SIZE,
    [
        *(
            (f.name, f.offset, f.kind, f.count)
            for f in RSS_PARAMETERS.fields
            if f.end <= RSS_PARAMETERS_SIZE[2]
        ),
        ("indirection_table", RSS_PARAMETERS_TABLE_OFFSET, "u32", RSS_INDIRECTION_TABLE_ENTRIES),
        ("hash_secret_key", RSS_PARAMETERS_KEY_OFFSET, "bytes", RSS_HASH_KEY_SIZE),
    ],
    spec="nvsp-rndis.md 5.6",
)

# ---------------------------------------------------------------------------------------------
# RNDIS config parameter, OID_GEN_RNDIS_CONFIG_PARAMETER (spec/nvsp-rndis.md 5.8)
# ---------------------------------------------------------------------------------------------

CONFIG_PARAMETER_TYPE_INTEGER = 0
CONFIG_PARAMETER_TYPE_HEX_INTEGER = 1
CONFIG_PARAMETER_TYPE_STRING = 2
CONFIG_PARAMETER_TYPE_MULTI_STRING = 3
CONFIG_PARAMETER_TYPE_BINARY = 4
CONFIG_PARAMETER_NAME_NETWORK_ADDRESS = "NetworkAddress"  # Linux sets the MAC with it

RNDIS_CONFIG_PARAMETER = Struct(
    "rndis_config_parameter",
    20,
    [
        ("name_offset", 0, "u32"),  # from the start of this object
        ("name_length", 4, "u32"),  # bytes of UTF-16LE, no terminator
        ("parameter_type", 8, "u32"),
        ("value_offset", 12, "u32"),  # from the start of this object
        ("value_length", 16, "u32"),
    ],
    spec="nvsp-rndis.md 5.8",
)


# ---------------------------------------------------------------------------------------------
# Encoding and decoding of NDIS objects
# ---------------------------------------------------------------------------------------------


def encode_ndis_object_header(object_type: int, revision: int, size: int) -> bytes:
    return NDIS_OBJECT_HEADER.encode(type=object_type, revision=revision, size=size)


def _encode_versioned(
    layout: Struct, object_type: int, sizes: dict[int, int], revision: int, fields: dict
) -> bytes:
    if revision not in sizes:
        raise ConfigError(f"{layout.name} revision", revision, f"one of {sorted(sizes)}")
    size = sizes[revision]
    encoded = layout.encode(header_type=object_type, header_revision=revision, header_size=size, **fields)
    for name, value in fields.items():
        if value and layout.end_of(name) > size:
            raise ConfigError(f"{layout.name}.{name}", value, f"0: revision {revision} ends at byte {size}")
    return encoded[:size]


def _decode_versioned(
    layout: Struct, object_type: int | None, minimum_size: int, buf: Any, offset: int
) -> Record:
    view = byte_view(buf)
    header = NDIS_OBJECT_HEADER.decode(view, offset)
    if object_type is not None and header.type != object_type:
        raise ProtocolError(f"{layout.name}: object type {header.type:#x}, expected {object_type:#x}")
    if object_type is not None and header.revision < 1:
        raise ProtocolError(f"{layout.name}: revision 0")
    if header.size < minimum_size:
        raise ProtocolError(f"{layout.name}: object size {header.size} < minimum {minimum_size}")
    require_length(layout.name, view, offset, header.size)
    return layout.decode(view, offset, available=header.size)


def encode_offload_parameters(revision: int = OFFLOAD_PARAMETERS_REVISION_3, **fields: int) -> bytes:
    """NDIS_OFFLOAD_PARAMETERS of a revision (sizes 20/22/28); fields not given are "no change"."""
    return _encode_versioned(
        OFFLOAD_PARAMETERS, NDIS_OBJECT_TYPE_DEFAULT, OFFLOAD_PARAMETERS_SIZE, revision, fields
    )


def decode_offload_parameters(buf: Any, offset: int = 0) -> Record:
    """Type 0x80, size >= 20 and within the buffer; fields past the size read as 0."""
    return _decode_versioned(
        OFFLOAD_PARAMETERS, NDIS_OBJECT_TYPE_DEFAULT, OFFLOAD_PARAMETERS_SIZE[1], buf, offset
    )


def encode_offload_capabilities(revision: int = OFFLOAD_CAPABILITIES_REVISION_3, **fields: int) -> bytes:
    """NDIS_OFFLOAD of a revision (sizes 112/144/156). With no fields it is the query input."""
    return _encode_versioned(
        OFFLOAD_CAPABILITIES, NDIS_OBJECT_TYPE_OFFLOAD, OFFLOAD_CAPABILITIES_SIZE, revision, fields
    )


def decode_offload_capabilities(buf: Any, offset: int = 0) -> Record:
    """Type 0xA7, revision >= 1, size >= 112 and within the buffer; fields past the size read as 0."""
    return _decode_versioned(
        OFFLOAD_CAPABILITIES, NDIS_OBJECT_TYPE_OFFLOAD, OFFLOAD_CAPABILITIES_SIZE[1], buf, offset
    )


def encode_offload_encapsulation(**fields: int) -> bytes:
    return _encode_versioned(
        OFFLOAD_ENCAPSULATION,
        NDIS_OBJECT_TYPE_OFFLOAD_ENCAPSULATION,
        {OFFLOAD_ENCAPSULATION_REVISION_1: OFFLOAD_ENCAPSULATION_SIZE},
        OFFLOAD_ENCAPSULATION_REVISION_1,
        fields,
    )


def decode_offload_encapsulation(buf: Any, offset: int = 0) -> Record:
    return _decode_versioned(
        OFFLOAD_ENCAPSULATION, NDIS_OBJECT_TYPE_OFFLOAD_ENCAPSULATION, OFFLOAD_ENCAPSULATION_SIZE, buf, offset
    )


def encode_rss_capabilities(revision: int = RSS_CAPABILITIES_REVISION_2, **fields: int) -> bytes:
    """NDIS_RECEIVE_SCALE_CAPABILITIES (16/18 bytes). With no fields it is the query input."""
    return _encode_versioned(
        RSS_CAPABILITIES, NDIS_OBJECT_TYPE_RSS_CAPABILITIES, RSS_CAPABILITIES_SIZE, revision, fields
    )


def decode_rss_capabilities(buf: Any, offset: int = 0) -> Record:
    """Type 0x88, size >= 16 and within the buffer; a revision-1 object has 0 table entries."""
    return _decode_versioned(
        RSS_CAPABILITIES, NDIS_OBJECT_TYPE_RSS_CAPABILITIES, RSS_CAPABILITIES_SIZE[1], buf, offset
    )


def encode_rss_parameters(
    hash_information: int,
    indirection_table: Sequence[int],
    hash_secret_key: bytes,
    *,
    flags: int = 0,
    base_cpu_number: int = 0,
    revision: int = RSS_PARAMETERS_REVISION_2,
) -> bytes:
    """RSS parameters object followed by its table and key, as DPDK and Linux place them.

    Revision 2 with 128 entries gives the 592-byte form: table at 40, key at 552.
    """
    if revision not in RSS_PARAMETERS_SIZE:
        raise ConfigError("rss parameters revision", revision, f"one of {sorted(RSS_PARAMETERS_SIZE)}")
    if not 1 <= len(indirection_table) <= RSS_INDIRECTION_TABLE_ENTRIES:
        raise ConfigError(
            "indirection table entries", len(indirection_table), f"1..{RSS_INDIRECTION_TABLE_ENTRIES}"
        )
    key = bytes(hash_secret_key)
    if len(key) != RSS_HASH_KEY_SIZE:
        raise ConfigError("hash key length", len(key), f"exactly {RSS_HASH_KEY_SIZE} bytes")
    object_size = RSS_PARAMETERS_SIZE[revision]
    table_size = RSS_INDIRECTION_ENTRY_SIZE * len(indirection_table)
    header = RSS_PARAMETERS.encode(
        header_type=NDIS_OBJECT_TYPE_RSS_PARAMETERS,
        header_revision=revision,
        header_size=object_size,
        flags=flags,
        base_cpu_number=base_cpu_number,
        hash_information=hash_information,
        indirection_table_size=table_size,
        indirection_table_offset=object_size,
        hash_secret_key_size=len(key),
        hash_secret_key_offset=object_size + table_size,
    )[:object_size]
    table = bytearray()
    for entry in indirection_table:
        if not 0 <= entry <= 0xFFFFFFFF:
            raise ConfigError("indirection table entry", entry, "0..0xffffffff")
        table += int(entry).to_bytes(RSS_INDIRECTION_ENTRY_SIZE, "little")
    return header + bytes(table) + key


def decode_rss_parameters(buf: Any, offset: int = 0) -> Record:
    """RSS parameters with ``indirection_table`` (tuple) and ``hash_secret_key`` (bytes).

    The header type is not checked (vmswitch does not check it, spec 5.2); sizes and the
    table and key placement are: everything must lie in the buffer, the table size must be
    a whole number of u32 entries. Offsets count from the object start (``offset``).
    """
    view = byte_view(buf)
    params = _decode_versioned(RSS_PARAMETERS, None, RSS_PARAMETERS_SIZE[1], view, offset)
    if params.indirection_table_size % RSS_INDIRECTION_ENTRY_SIZE:
        raise ProtocolError(
            f"rss parameters: table size {params.indirection_table_size} is not a multiple of 4"
        )
    table_at = offset + params.indirection_table_offset
    require_length("rss parameters indirection table", view, table_at, params.indirection_table_size)
    key_at = offset + params.hash_secret_key_offset
    require_length("rss parameters hash key", view, key_at, params.hash_secret_key_size)
    table = tuple(
        int.from_bytes(view[at : at + 4], "little")
        for at in range(table_at, table_at + params.indirection_table_size, RSS_INDIRECTION_ENTRY_SIZE)
    )
    key = bytes(view[key_at : key_at + params.hash_secret_key_size])
    return Record(
        RSS_PARAMETERS.name, {**params._asdict(), "indirection_table": table, "hash_secret_key": key}
    )


def encode_rndis_config_parameter(
    name: str, value: str | int | bytes, parameter_type: int | None = None
) -> bytes:
    """Config parameter object: header (20), UTF-16LE name, then the value.

    ``value`` is a str (string, UTF-16LE), an int (u32) or bytes (binary); ``parameter_type``
    defaults from it. Linux's NetworkAddress setting is 72 bytes.
    """
    encoded_name = name.encode("utf-16-le")
    if isinstance(value, str):
        encoded_value = value.encode("utf-16-le")
        default_type = CONFIG_PARAMETER_TYPE_STRING
    elif isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ConfigError("config parameter value", value, "0..0xffffffff")
        encoded_value = value.to_bytes(4, "little")
        default_type = CONFIG_PARAMETER_TYPE_INTEGER
    else:
        encoded_value = bytes(value)
        default_type = CONFIG_PARAMETER_TYPE_BINARY
    name_offset = RNDIS_CONFIG_PARAMETER.size
    value_offset = name_offset + len(encoded_name)
    header = RNDIS_CONFIG_PARAMETER.encode(
        name_offset=name_offset,
        name_length=len(encoded_name),
        parameter_type=default_type if parameter_type is None else parameter_type,
        value_offset=value_offset,
        value_length=len(encoded_value),
    )
    return header + encoded_name + encoded_value


def decode_rndis_config_parameter(buf: Any, offset: int = 0) -> Record:
    """Config parameter with ``name`` (str) and ``value`` (str, tuple of str, int or bytes by type)."""
    view = byte_view(buf)
    header = RNDIS_CONFIG_PARAMETER.decode(view, offset)
    require_length("config parameter name", view, offset + header.name_offset, header.name_length)
    require_length("config parameter value", view, offset + header.value_offset, header.value_length)
    name_at = offset + header.name_offset
    value_at = offset + header.value_offset
    raw_name = bytes(view[name_at : name_at + header.name_length])
    raw_value = bytes(view[value_at : value_at + header.value_length])
    name = _utf16("config parameter name", raw_name)
    value: Any
    if header.parameter_type == CONFIG_PARAMETER_TYPE_STRING:
        value = _utf16("config parameter value", raw_value)
    elif header.parameter_type == CONFIG_PARAMETER_TYPE_MULTI_STRING:
        value = tuple(s for s in _utf16("config parameter value", raw_value).split("\0") if s)
    elif header.parameter_type in (CONFIG_PARAMETER_TYPE_INTEGER, CONFIG_PARAMETER_TYPE_HEX_INTEGER):
        if len(raw_value) != 4:
            raise ProtocolError(
                f"config parameter {name!r}: integer value of {len(raw_value)} bytes, expected 4"
            )
        value = int.from_bytes(raw_value, "little")
    else:
        value = raw_value
    return Record(RNDIS_CONFIG_PARAMETER.name, {**header._asdict(), "name": name, "value": value})


def _utf16(what: str, raw: bytes) -> str:
    if len(raw) % 2:
        raise ProtocolError(f"{what}: odd length {len(raw)} for UTF-16")
    try:
        return raw.decode("utf-16-le")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{what}: not UTF-16LE ({error.reason})") from None
