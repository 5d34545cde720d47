"""Decoders reject truncated or inconsistent input with ProtocolError, and only with it.

First the specific inconsistencies the spec names (4.4, 4.5, 4.7 of spec/vmbus.md; 1.1,
4.3, 4.5, 4.6, 5.x of spec/nvsp-rndis.md), then hypothesis feeding truncations, mutations
and garbage to every decoder: each either decodes or raises ProtocolError.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire import STRUCTURES, ndis, nvsp, rndis, vmbus

FRAME = bytes(range(60))


def put_u32(message: bytes, offset: int, value: int) -> bytes:
    out = bytearray(message)
    out[offset : offset + 4] = value.to_bytes(4, "little")
    return bytes(out)


def put_u16(message: bytes, offset: int, value: int) -> bytes:
    out = bytearray(message)
    out[offset : offset + 2] = value.to_bytes(2, "little")
    return bytes(out)


def rejects(decoder, data, *args, match: str | None = None, **kwargs) -> None:
    with pytest.raises(ProtocolError, match=match):
        result = decoder(data, *args, **kwargs)
        pytest.fail(f"expected ProtocolError, decoded {result!r}")


# --- structures ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_every_structure_rejects_a_short_buffer(name):
    struct = STRUCTURES[name]
    rejects(struct.decode, bytes(struct.size - 1), match="needs")
    rejects(struct.decode, bytes(struct.size), 1, match="needs")
    rejects(struct.decode, bytes(struct.size), -1, match="needs")
    assert struct.decode(bytes(struct.size + 3), 3) is not None


# --- VMBus channel packets -------------------------------------------------------------------

INBAND = vmbus.encode_inband_packet(nvsp.encode_init(nvsp.NVSP_VERSION_61), 1, completion_requested=True)
XFER = vmbus.encode_transfer_page_packet(
    0xCAFE, [(1806, 0), (1806, 1806)], nvsp.encode_send_rndis_packet(0, size=28), 7
)
GPA = vmbus.encode_gpa_direct_packet(
    [(24, 0x10, [0x12345]), (5000, 0xF00, [1, 2, 3])], nvsp.encode_send_rndis_packet(1), 0
)


def test_descriptor_header_length_below_two():
    rejects(vmbus.decode_channel_packet, put_u16(INBAND, 2, 1), match="data_offset8 1 < 2")


def test_descriptor_header_longer_than_packet():
    rejects(vmbus.decode_channel_packet, put_u16(INBAND, 2, 8), match="> length8")


def test_packet_longer_than_buffer():
    rejects(vmbus.decode_channel_packet, INBAND[:-8], match="needs 56 bytes")
    rejects(vmbus.decode_channel_packet, put_u16(INBAND, 4, 8), match="needs 64 bytes")


def test_packet_ignores_trailer_and_following_bytes():
    decoded = vmbus.decode_channel_packet(INBAND + bytes(8) + b"\xff" * 16)
    assert len(decoded.payload) == 40, f"payload expected 40 bytes, seen {len(decoded.payload)}"


def test_unknown_flags_are_reported_not_rejected():
    decoded = vmbus.decode_channel_packet(put_u16(INBAND, 6, 0x3))
    assert decoded.unknown_flags == 0x2, f"unknown flags expected 0x2, seen {decoded.unknown_flags:#x}"


def test_transfer_page_range_count_exceeds_header():
    rejects(vmbus.decode_channel_packet, put_u32(XFER, 20, 3), match="3 ranges need 48 header bytes")
    rejects(vmbus.decode_channel_packet, put_u32(XFER, 20, 0xFFFFFFFF), match="ranges need")


def test_transfer_page_header_shorter_than_24():
    rejects(vmbus.decode_channel_packet, put_u16(XFER, 2, 2), match="header length 16 < 24")


def test_gpa_direct_range_count_zero():
    rejects(vmbus.decode_channel_packet, put_u32(GPA, 20, 0), match="range count 0")


def test_gpa_direct_pages_past_header():
    # Second range: 5000 bytes at 0xF00 needs 3 pages; claim one more byte than fits into 3 pages.
    second_range = 24 + 16
    rejects(
        vmbus.decode_channel_packet, put_u32(GPA, second_range, 3 * 4096 - 0xF00 + 1), match="page numbers"
    )


def test_gpa_direct_byte_offset_beyond_first_page():
    rejects(vmbus.decode_channel_packet, put_u32(GPA, 28, 0x1000), match="byte offset")


def test_gpa_direct_byte_count_zero():
    rejects(vmbus.decode_channel_packet, put_u32(GPA, 24, 0), match="byte count 0")


def test_gpa_direct_general_ranges_round_trip():
    decoded = vmbus.decode_channel_packet(GPA)
    expected = (vmbus.GpaRange(24, 0x10, (0x12345,)), vmbus.GpaRange(5000, 0xF00, (1, 2, 3)))
    assert decoded.gpa_ranges == expected, f"ranges expected {expected}, seen {decoded.gpa_ranges}"


# --- NVSP ------------------------------------------------------------------------------------

NVSP_SAMPLES = {
    nvsp.NVSP_MSG_INIT: nvsp.encode_init(nvsp.NVSP_VERSION_5),
    nvsp.NVSP_MSG_INIT_COMPLETE: nvsp.encode_init_complete(1),
    nvsp.NVSP_MSG_SEND_NDIS_VERSION: nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30),
    nvsp.NVSP_MSG_SEND_RECEIVE_BUFFER: nvsp.encode_send_receive_buffer(0x1000),
    nvsp.NVSP_MSG_SEND_RECEIVE_BUFFER_COMPLETE: nvsp.encode_send_receive_buffer_complete(
        1, sub_allocation_size=1806, num_sub_allocations=100
    ),
    nvsp.NVSP_MSG_REVOKE_RECEIVE_BUFFER: nvsp.encode_revoke_receive_buffer(),
    nvsp.NVSP_MSG_SEND_SEND_BUFFER: nvsp.encode_send_send_buffer(0x1001),
    nvsp.NVSP_MSG_SEND_SEND_BUFFER_COMPLETE: nvsp.encode_send_send_buffer_complete(1, 6144),
    nvsp.NVSP_MSG_REVOKE_SEND_BUFFER: nvsp.encode_revoke_send_buffer(),
    nvsp.NVSP_MSG_SEND_RNDIS_PACKET: nvsp.encode_send_rndis_packet(0, 5, 296),
    nvsp.NVSP_MSG_SEND_RNDIS_PACKET_COMPLETE: nvsp.encode_send_rndis_packet_complete(),
    nvsp.NVSP_MSG_SEND_NDIS_CONFIG: nvsp.encode_send_ndis_config(1514, 0x0C),
    nvsp.NVSP_MSG_SEND_VF_ASSOCIATION: nvsp.encode_send_vf_association(True, 7),
    nvsp.NVSP_MSG_SWITCH_DATA_PATH: nvsp.encode_switch_data_path(nvsp.DATA_PATH_VF),
    nvsp.NVSP_MSG_OID_QUERY_EX: nvsp.encode_oid_query_ex(ndis.OID_GEN_LINK_SPEED),
    nvsp.NVSP_MSG_OID_QUERY_EX_COMPLETE: nvsp.encode_oid_query_ex_complete(ndis.OID_GEN_LINK_SPEED, 0),
    nvsp.NVSP_MSG_SUBCHANNEL: nvsp.encode_subchannel_request(3),
    nvsp.NVSP_MSG_SEND_INDIRECTION_TABLE: nvsp.encode_send_indirection_table(list(range(16))),
}


def test_every_nvsp_type_has_a_sample():
    assert set(NVSP_SAMPLES) == set(nvsp.LAYOUT_BY_TYPE), "NVSP types without a decode test"


@pytest.mark.parametrize("message_type", sorted(NVSP_SAMPLES))
def test_nvsp_shorter_than_its_fields(message_type):
    sample = NVSP_SAMPLES[message_type]
    needed = nvsp.LAYOUT_BY_TYPE[message_type].size
    if message_type == nvsp.NVSP_MSG_SEND_INDIRECTION_TABLE:
        needed = len(sample)  # the table is part of its fields
    assert nvsp.decode_nvsp(sample[:needed]).type == message_type
    rejects(nvsp.decode_nvsp, sample[: needed - 1], match="short|needs")


@pytest.mark.parametrize("message_type", sorted(NVSP_SAMPLES))
def test_nvsp_host_padding_accepted(message_type):
    sample = NVSP_SAMPLES[message_type]
    padded = sample + bytes(256 - len(sample))
    assert nvsp.decode_nvsp(padded) == nvsp.decode_nvsp(sample), (
        f"type {message_type}: padding changed fields"
    )


def test_nvsp_unknown_type_and_empty():
    rejects(nvsp.decode_nvsp, put_u32(bytes(40), 0, 109), match="type 109 has no known layout")
    rejects(nvsp.decode_nvsp, b"", match="needs 4 bytes")


def test_nvsp_indirection_table_past_message():
    table = NVSP_SAMPLES[nvsp.NVSP_MSG_SEND_INDIRECTION_TABLE]
    rejects(nvsp.decode_nvsp, table[:-1], match="entries")
    rejects(nvsp.decode_nvsp, put_u32(table, 8, 4), match="overlaps the header")
    rejects(nvsp.decode_nvsp, put_u32(table, 4, 0x40000000), match="entries")


def test_nvsp_indirection_table_linux_offset_override():
    # Host bug of NVSP <= 6 hosts: table really at 40 while the message says 12 (spec 7.4).
    message = nvsp.encode_message(nvsp.SEND_INDIRECTION_TABLE, 40, count=16, offset=12)
    message += b"".join((i % 2).to_bytes(4, "little") for i in range(16))
    decoded = nvsp.decode_send_indirection_table(message, table_offset=40)
    assert decoded.entries == tuple(i % 2 for i in range(16)), f"entries {decoded.entries}"


# --- RNDIS -----------------------------------------------------------------------------------

PACKET = rndis.encode_packet_msg(
    FRAME, [rndis.Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 9), rndis.Ppi.u32(rndis.PPI_TYPE_IEEE_8021Q, 0x645)]
)
PPI_AREA = 44  # absolute start of the first PPI element


def test_packet_msg_data_past_length():
    rejects(
        rndis.decode_packet_msg, put_u32(PACKET, 12, len(FRAME) + 1), match="data .* past the message length"
    )
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 8, 0xFFFFFFF0), match="past the message length")


def test_packet_msg_length_past_buffer_and_range():
    rejects(rndis.decode_packet_msg, PACKET[:-1], match=f"needs {len(PACKET)} bytes")
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 4, len(PACKET) + 8), match="needs")
    rejects(rndis.decode_packet_msg, PACKET, limit=len(PACKET) - 1, match="exceeds its range")


def test_packet_msg_length_below_header():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 4, 40), match="length 40 < header size 44")


def test_packet_msg_data_length_zero_and_data_in_header():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 12, 0), match="data length 0")
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 8, 32), match="data offset 32 < 36")


def test_packet_msg_ppi_area_past_length_or_misplaced():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 32, 0x1000), match="per-packet info")
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 28, 38), match="PPI offset 38")
    rejects(rndis.decode_packet_msg, put_u32(PACKET, 28, 32), match="PPI offset 32")


def test_packet_msg_oob_area_past_length():
    message = put_u32(put_u32(PACKET, 16, 36), 20, 0x10000)
    rejects(rndis.decode_packet_msg, message, match="oob data")


def test_ppi_size_zero():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, PPI_AREA, 0), match="size 0")


def test_ppi_size_not_multiple_of_four():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, PPI_AREA, 14), match="not a multiple of 4")


def test_ppi_size_below_offset_and_offset_inside_header():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, PPI_AREA + 8, 20), match="payload offset 20")
    rejects(rndis.decode_packet_msg, put_u32(PACKET, PPI_AREA + 8, 4), match="payload offset 4")


def test_ppi_past_area():
    rejects(rndis.decode_packet_msg, put_u32(PACKET, PPI_AREA + 16, 20), match="runs past the PPI area")


def test_ppi_area_with_leftover_bytes():
    # PPI length 20: one 16-byte element, then 4 bytes that cannot hold a header.
    message = put_u32(put_u32(PACKET, 32, 20), 8, 36 + 20)
    rejects(rndis.decode_packet_msg, message, match="bytes left")


def test_ppi_with_larger_payload_and_internal_type():
    packet_id = rndis.encode_packet_id(77, rndis.PACKET_ID_FLAG_FRAGMENT | rndis.PACKET_ID_FLAG_FIRST)
    message = rndis.encode_packet_msg(
        FRAME, [(rndis.PPI_TYPE_PACKET_ID, packet_id), (50, b"\x01\x02\x03\x04\x05")]
    )
    decoded = rndis.decode_packet_msg(message)
    assert decoded.ppi(rndis.PPI_TYPE_PACKET_ID).payload == packet_id
    assert decoded.ppi(1) is None, "a non-internal lookup matched the internal packet-id element"
    assert decoded.ppi(50).payload == b"\x01\x02\x03\x04\x05\x00\x00\x00", decoded.ppi(50)
    assert rndis.decode_packet_id(packet_id).packet_id == 77


def test_ppi_value_needs_four_bytes():
    with pytest.raises(ProtocolError, match="a u32 needs 4"):
        value = rndis.Ppi(rndis.PPI_TYPE_HASH_VALUE, b"\x01").value
        pytest.fail(f"a 1-byte payload read as {value}")


QUERY_CMPLT = rndis.encode_query_complete(2, 0, bytes(6))


def test_query_complete_info_past_message():
    rejects(rndis.decode_rndis, put_u32(QUERY_CMPLT, 16, 7), match="runs past the message length 30")
    rejects(rndis.decode_rndis, put_u32(QUERY_CMPLT, 20, 0xFFFFFFF0), match="runs past")


def test_query_complete_info_inside_header():
    rejects(rndis.decode_rndis, put_u32(QUERY_CMPLT, 20, 4), match="overlaps the 24-byte header")


def test_query_complete_without_data():
    decoded = rndis.decode_rndis(rndis.encode_query_complete(2, rndis.RNDIS_STATUS_NOT_SUPPORTED))
    assert (decoded.status, decoded.info) == (rndis.RNDIS_STATUS_NOT_SUPPORTED, b""), decoded


def test_set_value_past_message_and_indicate_buffer_past_message():
    request = rndis.encode_set(3, ndis.OID_GEN_CURRENT_PACKET_FILTER, bytes(4))
    rejects(rndis.decode_rndis, put_u32(request, 16, 5), match="runs past")
    indication = rndis.encode_indicate_status(rndis.RNDIS_STATUS_LINK_SPEED_CHANGE, bytes(4))
    rejects(rndis.decode_rndis, put_u32(indication, 12, 8), match="runs past")


@pytest.mark.parametrize(
    "message",
    [
        rndis.encode_initialize(1),
        rndis.encode_initialize_complete(1),
        rndis.encode_halt(1),
        rndis.encode_query(1, 1),
        rndis.encode_set(1, 1, b"\x00"),
        rndis.encode_query_complete(1),
        rndis.encode_set_complete(1),
        rndis.encode_reset(),
        rndis.encode_reset_complete(),
        rndis.encode_indicate_status(rndis.RNDIS_STATUS_MEDIA_CONNECT),
        rndis.encode_keepalive(1),
        rndis.encode_keepalive_complete(1),
    ],
    ids=lambda m: hex(int.from_bytes(m[:4], "little")),
)
def test_control_message_truncated_or_short_length(message):
    rejects(rndis.decode_rndis, message[:-1], match="needs")
    rejects(rndis.decode_rndis, put_u32(message, 4, 8), match="length 8 <")
    rejects(rndis.decode_rndis, message, limit=len(message) - 1, match="exceeds its range")
    assert rndis.decode_rndis(message + b"\xee" * 9).length == len(message), "trailing bytes were not ignored"


def test_rndis_unknown_type():
    rejects(
        rndis.decode_rndis, put_u32(rndis.encode_halt(1), 0, rndis.RNDIS_MSG_SET_EX), match="no known layout"
    )


# --- NDIS objects ----------------------------------------------------------------------------


def test_offload_capabilities_type_size_and_zero_extension():
    capabilities = ndis.encode_offload_capabilities(3, lso_v2_ipv4_max_size=0xF53C, rsc_ipv4=1)
    rejects(ndis.decode_offload_capabilities, put_u16(capabilities, 0, 0x0380), match="object type 0x80")
    rejects(ndis.decode_offload_capabilities, put_u16(capabilities, 2, 100), match="size 100 < minimum 112")
    rejects(ndis.decode_offload_capabilities, capabilities[:150], match="needs 156")
    # A revision-2 object (144 bytes) followed by garbage: the RSC fields must read 0.
    revision2 = put_u16(capabilities, 2, 144)[:144] + b"\xff" * 12
    decoded = ndis.decode_offload_capabilities(revision2)
    assert (decoded.lso_v2_ipv4_max_size, decoded.rsc_ipv4) == (0xF53C, 0), decoded


def test_offload_parameters_decoding():
    rejects(ndis.decode_offload_parameters, ndis.encode_offload_parameters(3)[:27], match="needs 28")
    rejects(
        ndis.decode_offload_parameters, put_u16(ndis.encode_offload_parameters(3), 2, 16), match="minimum 20"
    )
    decoded = ndis.decode_offload_parameters(ndis.encode_offload_parameters(2, lso_v2_ipv4=2) + b"\xff" * 6)
    assert (decoded.header_size, decoded.lso_v2_ipv4, decoded.rsc_ipv4) == (22, 2, 0), decoded


def test_rss_capabilities_revision_1_has_no_table_count():
    capabilities = ndis.encode_rss_capabilities(1, number_of_receive_queues=8)
    decoded = ndis.decode_rss_capabilities(capabilities + b"\x80\x00")
    assert (decoded.number_of_receive_queues, decoded.number_of_indirection_table_entries) == (8, 0), decoded
    rejects(ndis.decode_rss_capabilities, put_u16(capabilities, 2, 12), match="minimum 16")


def test_rss_parameters_table_and_key_bounds():
    rss = ndis.encode_rss_parameters(0x1701, [0, 1] * 64, ndis.TOEPLITZ_KEY_LINUX)
    rejects(ndis.decode_rss_parameters, rss[:-1], match="hash key")
    rejects(ndis.decode_rss_parameters, put_u16(rss, 12, 514), match="not a multiple of 4")
    rejects(ndis.decode_rss_parameters, put_u32(rss, 16, 100), match="indirection table")
    rejects(ndis.decode_rss_parameters, put_u16(rss, 2, 24), match="minimum 28")
    decoded = ndis.decode_rss_parameters(ndis.encode_rss_parameters(1, [3] * 16, bytes(40), revision=3))
    assert (decoded.header_size, decoded.indirection_table_offset, decoded.indirection_table) == (
        44,
        44,
        (3,) * 16,
    )


def test_config_parameter_round_trip_and_errors():
    encoded = ndis.encode_rndis_config_parameter("NetworkAddress", "00155d010203")
    assert len(encoded) == 72, f"Linux's NetworkAddress object is 72 bytes, seen {len(encoded)}"
    decoded = ndis.decode_rndis_config_parameter(encoded)
    assert (decoded.name, decoded.value, decoded.parameter_type) == ("NetworkAddress", "00155d010203", 2)
    rejects(ndis.decode_rndis_config_parameter, encoded[:-1], match="value")
    rejects(ndis.decode_rndis_config_parameter, put_u32(encoded, 4, 27), match="odd length")
    rejects(ndis.decode_rndis_config_parameter, put_u32(encoded, 0, 0x7FFFFFFF), match="name")
    integer = ndis.decode_rndis_config_parameter(ndis.encode_rndis_config_parameter("*LsoV2IPv4", 1))
    assert integer.value == 1, integer


# --- caller errors when encoding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: rndis.encode_vlan_ppi_value(4096), "vlan id"),
        (lambda: rndis.encode_vlan_ppi_value(1, priority=8), "vlan priority"),
        (lambda: rndis.vlan_tci_to_ppi(0x10000), "vlan tci"),
        (lambda: rndis.encode_lso_v2(0, 34, ipv6=False), "lso mss"),
        (lambda: rndis.encode_lso_v2(0x100000, 34, ipv6=False), "lso mss"),
        (lambda: rndis.encode_lso_v2(1448, 0x400, ipv6=False), "lso tcp header offset"),
        (
            lambda: rndis.encode_checksum_tx_request(tcp=True, transport_offset=1024),
            "transport header offset",
        ),
        (lambda: rndis.encode_packet_msg(b""), "frame length"),
        (lambda: nvsp.encode_init(1 << 32), "nvsp_init.min_protocol_version"),
        (lambda: nvsp.encode_init(2, size=8), "nvsp message size"),
        (
            lambda: nvsp.encode_send_rndis_packet(0, nvsp.SEND_SECTION_INDEX_NONE, 5),
            "send_buffer_section_size",
        ),
        (lambda: vmbus.encode_gpa_direct_packet([], b"", 0), "gpa ranges"),
        (lambda: vmbus.encode_gpa_direct_packet([(100, 0x1000, [1])], b"", 0), "gpa byte_offset"),
        (lambda: vmbus.encode_gpa_direct_packet([(5000, 0, [1])], b"", 0), "gpa page_numbers"),
        (lambda: vmbus.encode_inband_packet(bytes(600_000), 1), "packet length"),
        (lambda: ndis.encode_rss_parameters(1, [0] * 16, bytes(39)), "hash key length"),
        (lambda: ndis.encode_rss_parameters(1, [], bytes(40)), "indirection table entries"),
        (lambda: ndis.encode_offload_parameters(1, rsc_ipv4=2), "ndis_offload_parameters.rsc_ipv4"),
        (lambda: ndis.encode_offload_capabilities(4), "ndis_offload_capabilities revision"),
    ],
)
def test_bad_caller_input_is_a_config_error(build, parameter):
    with pytest.raises(ConfigError) as caught:
        result = build()
        pytest.fail(f"expected ConfigError for {parameter}, built {result!r}")
    assert caught.value.parameter == parameter, (
        f"ConfigError names {caught.value.parameter!r}, expected {parameter!r}"
    )
    assert isinstance(caught.value, ValueError)


# --- hypothesis: every decoder, any input ----------------------------------------------------

DECODERS = {
    "channel_packet": vmbus.decode_channel_packet,
    "packet_descriptor": vmbus.decode_packet_descriptor,
    "nvsp": nvsp.decode_nvsp,
    "nvsp_completion": lambda buf, offset=0: nvsp.decode_nvsp(buf, offset, completion=True),
    "nvsp_indirection_table": nvsp.decode_send_indirection_table,
    "rndis": rndis.decode_rndis,
    "packet_msg": rndis.decode_packet_msg,
    "ppis": lambda buf, offset=0: rndis.decode_ppis(bytes(buf)[offset:] if offset >= 0 else b""),
    "offload_parameters": ndis.decode_offload_parameters,
    "offload_capabilities": ndis.decode_offload_capabilities,
    "offload_encapsulation": ndis.decode_offload_encapsulation,
    "rss_capabilities": ndis.decode_rss_capabilities,
    "rss_parameters": ndis.decode_rss_parameters,
    "config_parameter": ndis.decode_rndis_config_parameter,
    **{f"struct:{name}": struct.decode for name, struct in STRUCTURES.items()},
}

VALID_MESSAGES = [
    INBAND,
    XFER,
    GPA,
    PACKET,
    QUERY_CMPLT,
    rndis.encode_indicate_status(rndis.RNDIS_STATUS_LINK_SPEED_CHANGE, bytes(4)),
    rndis.encode_set(
        6, ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, ndis.encode_rss_parameters(1, [0] * 16, bytes(40))
    ),
    rndis.encode_initialize_complete(1),
    ndis.encode_offload_capabilities(2),
    ndis.encode_offload_parameters(3),
    ndis.encode_rss_capabilities(),
    ndis.encode_rss_parameters(0x1701, [0, 1, 2, 3] * 32, ndis.TOEPLITZ_KEY_DPDK),
    ndis.encode_rndis_config_parameter("NetworkAddress", "00155d010203"),
    *NVSP_SAMPLES.values(),
]


def mutated(message: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    out = bytearray(message)
    for position, value in edits:
        out[position % len(out)] = value
    return bytes(out[: cut % (len(out) + 1)])


inputs = st.one_of(
    st.binary(max_size=96),
    st.builds(
        mutated,
        st.sampled_from(VALID_MESSAGES),
        st.lists(st.tuples(st.integers(0, 4096), st.integers(0, 255)), max_size=4),
        st.integers(0, 4096),
    ),
)


def decodes_or_protocol_error(decoder, data: bytes, offset: int) -> None:
    with contextlib.suppress(ProtocolError):
        decoder(data, offset)


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=inputs, offset=st.integers(-2, 8))
def test_decoder_never_raises_anything_but_protocol_error(name, data, offset):
    decodes_or_protocol_error(DECODERS[name], data, offset)


TRUNCATION_CASES = [
    ("in-band packet", INBAND, vmbus.decode_channel_packet),
    ("transfer-page packet", XFER, vmbus.decode_channel_packet),
    ("GPA-direct packet", GPA, vmbus.decode_channel_packet),
    ("PACKET_MSG", PACKET, rndis.decode_rndis),
    ("QUERY_CMPLT", QUERY_CMPLT, rndis.decode_rndis),
    ("INDICATE_STATUS", VALID_MESSAGES[5], rndis.decode_rndis),
    ("SET RSS", VALID_MESSAGES[6], rndis.decode_rndis),
    ("RSS parameters", VALID_MESSAGES[11], ndis.decode_rss_parameters),
    ("config parameter", VALID_MESSAGES[12], ndis.decode_rndis_config_parameter),
]


@settings(max_examples=200, deadline=None)
@given(case=st.sampled_from(TRUNCATION_CASES), cut=st.integers(0, 10_000))
def test_truncated_message_never_decodes_as_the_whole(case, cut):
    """Cutting a valid message anywhere before its end is a ProtocolError, never a short decode."""
    what, message, decoder = case
    cut %= len(message)
    with pytest.raises(ProtocolError):
        decoded = decoder(message[:cut])
        pytest.fail(f"{what} of {len(message)} bytes cut to {cut} bytes decoded as {decoded!r}")


@settings(max_examples=150, deadline=None)
@given(message=st.sampled_from(list(NVSP_SAMPLES.values())), cut=st.integers(0, 100))
def test_truncated_nvsp_below_its_fields_never_decodes(message, cut):
    message_type = int.from_bytes(message[:4], "little")
    needed = nvsp.LAYOUT_BY_TYPE[message_type].size
    if message_type == nvsp.NVSP_MSG_SEND_INDIRECTION_TABLE:
        needed = len(message)
    cut %= needed
    with pytest.raises(ProtocolError):
        decoded = nvsp.decode_nvsp(message[:cut])
        pytest.fail(f"type {message_type} cut to {cut} bytes decoded as {decoded!r}")
