"""Sizes and field offsets of every wire structure, pinned to the numbers of the spec chapters.

The table below is written from spec/vmbus.md (3.2, 3.4, 4.1, 4.4, 4.5, 5.1) and
spec/nvsp-rndis.md (1.4, 4.3, 4.5 - 4.7, 5.2 - 5.8), not from the code.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from netvsc.wire import STRUCTURES, ndis, nvsp, rndis, vmbus

# name: (size, {field: offset})
SPEC_LAYOUTS: dict[str, tuple[int, dict[str, int]]] = {
    # spec/vmbus.md
    "vmbus_ring_header": (
        4096,
        {"write_index": 0, "read_index": 4, "interrupt_mask": 8, "pending_send_size": 12, "feature_bits": 64},
    ),
    "vmbus_monitor_page": (
        4096,
        {"trigger_state": 0, "trigger_group": 8, "next_check_time": 64, "latency": 576, "parameter": 1088},
    ),
    "vmbus_monitor_trigger_group": (8, {"pending": 0, "armed": 4}),
    "vmbus_monitor_parameter": (8, {"connection_id": 0, "flag_number": 4}),
    "vmbus_packet_descriptor": (
        16,
        {"type": 0, "data_offset8": 2, "length8": 4, "flags": 6, "transaction_id": 8},
    ),
    "vmbus_packet_trailer": (8, {"reserved": 0, "start_index": 4}),
    "vmbus_transfer_page_header": (
        24,
        {
            "type": 0,
            "transaction_id": 8,
            "transfer_page_set_id": 16,
            "sender_owns_set": 18,
            "range_count": 20,
        },
    ),
    "vmbus_transfer_page_range": (8, {"byte_count": 0, "byte_offset": 4}),
    "vmbus_gpa_direct_header": (24, {"type": 0, "transaction_id": 8, "reserved": 16, "range_count": 20}),
    "vmbus_gpa_range_header": (8, {"byte_count": 0, "byte_offset": 4}),
    "vmbus_gpa_page_range": (16, {"byte_count": 0, "byte_offset": 4, "page_number": 8}),
    # spec/nvsp-rndis.md 1.4: size = the bytes the type's fields occupy
    "nvsp_header": (4, {"type": 0}),
    "nvsp_init": (12, {"type": 0, "min_protocol_version": 4, "max_protocol_version": 8}),
    "nvsp_init_complete": (16, {"negotiated_version": 4, "max_mdl_chain_length": 8, "status": 12}),
    "nvsp_send_ndis_version": (12, {"ndis_major": 4, "ndis_minor": 8}),
    "nvsp_send_receive_buffer": (10, {"gpadl_handle": 4, "id": 8}),
    "nvsp_send_receive_buffer_complete": (
        28,
        {
            "status": 4,
            "num_sections": 8,
            "section_offset": 12,
            "sub_allocation_size": 16,
            "num_sub_allocations": 20,
            "section_end_offset": 24,
        },
    ),
    "nvsp_revoke_receive_buffer": (6, {"id": 4}),
    "nvsp_send_send_buffer": (10, {"gpadl_handle": 4, "id": 8}),
    "nvsp_send_send_buffer_complete": (12, {"status": 4, "section_size": 8}),
    "nvsp_revoke_send_buffer": (6, {"id": 4}),
    "nvsp_send_rndis_packet": (
        16,
        {"channel_type": 4, "send_buffer_section_index": 8, "send_buffer_section_size": 12},
    ),
    "nvsp_send_rndis_packet_complete": (8, {"status": 4}),
    "nvsp_send_ndis_config": (20, {"mtu": 4, "reserved": 8, "capabilities": 12}),
    "nvsp_send_vf_association": (12, {"allocated": 4, "serial": 8}),
    "nvsp_switch_data_path": (8, {"active_data_path": 4}),
    "nvsp_oid_query_ex": (12, {"header_type": 4, "oid": 8}),
    "nvsp_oid_query_ex_complete": (12, {"status": 4, "bytes": 8}),
    "nvsp_subchannel_request": (12, {"operation": 4, "num_subchannels": 8}),
    "nvsp_subchannel_complete": (12, {"status": 4, "num_subchannels": 8}),
    "nvsp_send_indirection_table": (12, {"count": 4, "offset": 8}),
    # spec/nvsp-rndis.md 4
    "rndis_header": (8, {"type": 0, "length": 4}),
    "rndis_packet_msg": (
        44,
        {
            "type": 0,
            "length": 4,
            "data_offset": 8,
            "data_length": 12,
            "oob_data_offset": 16,
            "oob_data_length": 20,
            "num_oob_data_elements": 24,
            "per_packet_info_offset": 28,
            "per_packet_info_length": 32,
            "vc_handle": 36,
            "reserved": 40,
        },
    ),
    "rndis_initialize_msg": (
        24,
        {"request_id": 8, "major_version": 12, "minor_version": 16, "max_transfer_size": 20},
    ),
    "rndis_initialize_cmplt": (
        52,
        {
            "request_id": 8,
            "status": 12,
            "major_version": 16,
            "minor_version": 20,
            "device_flags": 24,
            "medium": 28,
            "max_packets_per_message": 32,
            "max_transfer_size": 36,
            "packet_alignment_factor": 40,
            "af_list_offset": 44,
            "af_list_size": 48,
        },
    ),
    "rndis_halt_msg": (12, {"request_id": 8}),
    "rndis_query_msg": (
        28,
        {
            "request_id": 8,
            "oid": 12,
            "info_buffer_length": 16,
            "info_buffer_offset": 20,
            "device_vc_handle": 24,
        },
    ),
    "rndis_set_msg": (
        28,
        {
            "request_id": 8,
            "oid": 12,
            "info_buffer_length": 16,
            "info_buffer_offset": 20,
            "device_vc_handle": 24,
        },
    ),
    "rndis_query_cmplt": (
        24,
        {"request_id": 8, "status": 12, "info_buffer_length": 16, "info_buffer_offset": 20},
    ),
    "rndis_set_cmplt": (16, {"request_id": 8, "status": 12}),
    "rndis_reset_msg": (12, {"reserved": 8}),
    "rndis_reset_cmplt": (16, {"status": 8, "addressing_reset": 12}),
    "rndis_indicate_status_msg": (20, {"status": 8, "status_buffer_length": 12, "status_buffer_offset": 16}),
    "rndis_diagnostic_info": (8, {"diag_status": 0, "error_offset": 4}),
    "rndis_keepalive_msg": (12, {"request_id": 8}),
    "rndis_keepalive_cmplt": (16, {"request_id": 8, "status": 12}),
    "rndis_ppi_header": (12, {"size": 0, "type": 4, "offset": 8}),
    "rndis_packet_id_info": (4, {"version": 0, "flags": 1, "packet_id": 2}),
    # spec/nvsp-rndis.md 5
    "ndis_object_header": (4, {"type": 0, "revision": 1, "size": 2}),
    "ndis_offload_parameters": (
        28,
        {
            "header_type": 0,
            "ipv4_checksum": 4,
            "tcp4_checksum": 5,
            "udp4_checksum": 6,
            "tcp6_checksum": 7,
            "udp6_checksum": 8,
            "lso_v1": 9,
            "ipsec_v1": 10,
            "lso_v2_ipv4": 11,
            "lso_v2_ipv6": 12,
            "tcp_connection_ipv4": 13,
            "tcp_connection_ipv6": 14,
            "flags": 16,
            "ipsec_v2": 20,
            "ipsec_v2_ipv4": 21,
            "rsc_ipv4": 22,
            "rsc_ipv6": 23,
            "encapsulated_packet_task_offload": 24,
            "encapsulation_types": 25,
        },
    ),
    "ndis_offload_capabilities": (
        156,
        {
            "ipv4_tx_encapsulation": 4,
            "ipv6_rx_flags": 32,
            "lso_v1_encapsulation": 36,
            "ipsec_v1_encapsulation": 52,
            "lso_v2_ipv4_encapsulation": 80,
            "lso_v2_ipv4_max_size": 84,
            "lso_v2_ipv6_options": 104,
            "flags": 108,
            "ipsec_v2_encapsulation": 112,
            "ipsec_v2_udp_esp": 128,
            "rsc_ipv4": 144,
            "rsc_ipv6": 145,
            "encapsulation_flags": 148,
            "encapsulation_max_header_size": 152,
        },
    ),
    "ndis_rss_capabilities": (
        18,
        {
            "capabilities_flags": 4,
            "number_of_interrupt_messages": 8,
            "number_of_receive_queues": 12,
            "number_of_indirection_table_entries": 16,
        },
    ),
    "ndis_rss_parameters": (
        44,
        {
            "flags": 4,
            "base_cpu_number": 6,
            "hash_information": 8,
            "indirection_table_size": 12,
            "indirection_table_offset": 16,
            "hash_secret_key_size": 20,
            "hash_secret_key_offset": 24,
            "processor_masks_offset": 28,
            "number_of_processor_masks": 32,
            "processor_masks_entry_size": 36,
            "default_processor_group": 40,
        },
    ),
    "ndis_rss_parameters_with_table_and_key": (
        592,
        {"hash_information": 8, "indirection_table": 40, "hash_secret_key": 552},
    ),
    "ndis_link_speed": (16, {"transmit_link_speed": 0, "receive_link_speed": 8}),  # 5.1: u64 xmit, u64 rcv
    # Not laid out in the spec (5.1 names the OID): NDIS_OFFLOAD_ENCAPSULATION revision 1.
    "ndis_offload_encapsulation": (
        28,
        {
            "ipv4_enabled": 4,
            "ipv4_encapsulation_type": 8,
            "ipv4_header_size": 12,
            "ipv6_enabled": 16,
            "ipv6_encapsulation_type": 20,
            "ipv6_header_size": 24,
        },
    ),
    "rndis_config_parameter": (
        20,
        {"name_offset": 0, "name_length": 4, "parameter_type": 8, "value_offset": 12, "value_length": 16},
    ),
}

# Revision sizes of versioned NDIS objects (spec/nvsp-rndis.md 5.3 - 5.6, 8.5).
REVISION_SIZES = [
    ("offload parameters", ndis.OFFLOAD_PARAMETERS_SIZE, {1: 20, 2: 22, 3: 28}),
    ("offload capabilities", ndis.OFFLOAD_CAPABILITIES_SIZE, {1: 112, 2: 144, 3: 156}),
    ("rss capabilities", ndis.RSS_CAPABILITIES_SIZE, {1: 16, 2: 18}),
    ("rss parameters", ndis.RSS_PARAMETERS_SIZE, {1: 28, 2: 40, 3: 44}),
]


@pytest.mark.parametrize("name", sorted(SPEC_LAYOUTS))
def test_structure_matches_spec(name):
    size, offsets = SPEC_LAYOUTS[name]
    struct = STRUCTURES[name]
    assert struct.size == size, f"{name}: spec size {size}, declared {struct.size}"
    assert struct.dtype.itemsize == size, f"{name}: dtype itemsize {struct.dtype.itemsize}, spec {size}"
    seen = {field: struct.offset(field) for field in offsets}
    assert seen == offsets, f"{name}: spec offsets {offsets}, declared {seen}"
    dtype_offsets = {field: struct.dtype.fields[field][1] for field in offsets}
    assert dtype_offsets == offsets, f"{name}: dtype offsets {dtype_offsets}, spec {offsets}"


def test_every_structure_is_pinned():
    unpinned = sorted(set(STRUCTURES) - set(SPEC_LAYOUTS))
    assert not unpinned, f"structures without a pinned spec layout: {unpinned}"


@pytest.mark.parametrize(("what", "declared", "spec"), REVISION_SIZES, ids=[r[0] for r in REVISION_SIZES])
def test_revision_sizes(what, declared, spec):
    assert declared == spec, f"{what}: spec sizes {spec}, declared {declared}"


def test_message_sizes_and_constants():
    seen = {
        "guest nvsp": nvsp.NVSP_GUEST_MESSAGE_SIZE,
        "host nvsp < 6.1": nvsp.host_message_size(nvsp.NVSP_VERSION_6),
        "host nvsp 6.1": nvsp.host_message_size(nvsp.NVSP_VERSION_61),
        "rss placement": ndis.RSS_PARAMETERS_WITH_TABLE_AND_KEY_SIZE,
        "rndis packet header": rndis.RNDIS_PACKET_HEADER_SIZE,
        "ring data starts at": vmbus.RING_HEADER_SIZE,
    }
    expected = {
        "guest nvsp": 40,
        "host nvsp < 6.1": 28,
        "host nvsp 6.1": 40,
        "rss placement": 592,
        "rndis packet header": 44,
        "ring data starts at": 4096,
    }
    assert seen == expected


def test_protocol_versions_and_ndis_versions():
    versions = [hex(v) for v in nvsp.NVSP_VERSIONS_NEWEST_FIRST]
    assert versions == ["0x60001", "0x60000", "0x50000", "0x40000", "0x30002", "0x2"], versions
    assert nvsp.ndis_version_for(nvsp.NVSP_VERSION_4) == 0x00060001
    assert nvsp.ndis_version_for(nvsp.NVSP_VERSION_5) == 0x0006001E


def test_toeplitz_keys_are_the_spec_keys():
    dpdk = (
        "2c c6 81 d1 5b db f4 f7 fc a2 83 19 db 1a 3e 94 6b 9e 38 d9 "
        "2c 9c 03 d1 ad 99 44 a7 d9 56 3d 59 06 3c 25 f3 fc 1f dc 2a"
    )
    linux = (
        "6d 5a 56 da 25 5b 0e c2 41 67 25 3d 43 a3 8f b0 d0 ca 2b cb "
        "ae 7b 30 b4 77 cb 2d a3 80 30 f2 0c 6a 42 b7 3b be ac 01 fa"
    )
    assert ndis.TOEPLITZ_KEY_DPDK.hex(" ") == dpdk
    assert ndis.TOEPLITZ_KEY_LINUX.hex(" ") == linux


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("OID_GEN_SUPPORTED_LIST", ndis.OID_GEN_SUPPORTED_LIST, 0x00010101),
        ("OID_GEN_MAXIMUM_FRAME_SIZE", ndis.OID_GEN_MAXIMUM_FRAME_SIZE, 0x00010106),
        ("OID_GEN_LINK_SPEED", ndis.OID_GEN_LINK_SPEED, 0x00010107),
        ("OID_GEN_CURRENT_PACKET_FILTER", ndis.OID_GEN_CURRENT_PACKET_FILTER, 0x0001010E),
        ("OID_GEN_CURRENT_LOOKAHEAD", ndis.OID_GEN_CURRENT_LOOKAHEAD, 0x0001010F),
        ("OID_GEN_MEDIA_CONNECT_STATUS", ndis.OID_GEN_MEDIA_CONNECT_STATUS, 0x00010114),
        ("OID_GEN_RECEIVE_SCALE_CAPABILITIES", ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES, 0x00010203),
        ("OID_GEN_RECEIVE_SCALE_PARAMETERS", ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, 0x00010204),
        ("OID_GEN_RNDIS_CONFIG_PARAMETER", ndis.OID_GEN_RNDIS_CONFIG_PARAMETER, 0x0001021B),
        ("OID_GEN_FRIENDLY_NAME", ndis.OID_GEN_FRIENDLY_NAME, 0x00020216),
        ("OID_802_3_PERMANENT_ADDRESS", ndis.OID_802_3_PERMANENT_ADDRESS, 0x01010101),
        ("OID_OFFLOAD_ENCAPSULATION", ndis.OID_OFFLOAD_ENCAPSULATION, 0x0101010A),
        ("OID_TCP_OFFLOAD_PARAMETERS", ndis.OID_TCP_OFFLOAD_PARAMETERS, 0xFC01020C),
        ("OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES", ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, 0xFC01020D),
    ],
)
def test_oid_values(name, value, expected):
    assert value == expected, f"{name}: spec {expected:#010x}, defined {value:#010x}"
    assert ndis.OID_NAMES[expected] == name, f"OID_NAMES[{expected:#x}] is {ndis.OID_NAMES.get(expected)}"


def test_all_spec_oids_are_named():
    assert len(ndis.OID_NAMES) == 31, f"spec 5.1 lists 31 OIDs, OID_NAMES has {len(ndis.OID_NAMES)}"


def test_decode_agrees_with_numpy_dtype():
    # The encode/decode helpers and the numpy dtype must describe the same bytes.
    rng = np.random.default_rng(7)
    for name, struct in STRUCTURES.items():
        raw = rng.integers(0, 256, struct.size, dtype=np.uint8).tobytes()
        record = struct.decode(raw)
        view = struct.view(raw)
        for field in struct.fields:
            if field.kind == "struct":
                continue
            through_numpy = view[field.name]
            through_decode = getattr(record, field.name)
            if field.kind == "bytes":
                through_numpy = through_numpy.tobytes()
            elif field.count != 1:
                through_numpy = tuple(int(x) for x in through_numpy)
            else:
                through_numpy = int(through_numpy)
            assert through_numpy == through_decode, (
                f"{name}.{field.name}: numpy {through_numpy}, decode {through_decode}"
            )
        assert struct.encode(
            **{f.name: getattr(record, f.name) for f in struct.fields if f.kind != "struct"}
        ) == bytes(_only_fields(struct, raw)), f"{name}: re-encoding the decoded fields changed the bytes"


def _only_fields(struct, raw: bytes) -> bytearray:
    """``raw`` with the gaps between fields (reserved bytes) zeroed, as encode writes them."""
    out = bytearray(struct.size)
    for field in struct.fields:
        if field.kind != "struct":
            out[field.offset : field.end] = raw[field.offset : field.end]
    return out


def test_ring_header_view_writes_shared_memory():
    page = bytearray(vmbus.RING_HEADER_SIZE)
    header = vmbus.RING_HEADER.view(page)
    header["write_index"] = 0x1234
    header["feature_bits"] = vmbus.RING_FEATURE_PENDING_SEND_SIZE
    words = np.frombuffer(page, dtype="<u4")
    assert words[vmbus.RING_WRITE_INDEX] == 0x1234, f"write index word holds {words[0]:#x}"
    assert words[vmbus.RING_FEATURE_BITS] == 1, f"feature bits word holds {words[16]:#x}"


def test_python_m_wire_json_lists_pinned_layouts():
    result = subprocess.run(
        [sys.executable, "-m", "netvsc.wire", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}, stderr: {result.stderr}"
    layouts = json.loads(result.stdout)
    for name, (size, offsets) in SPEC_LAYOUTS.items():
        assert name in layouts, f"{name} missing from --json output"
        assert layouts[name]["size"] == size, f"{name}: --json size {layouts[name]['size']}, spec {size}"
        seen = {field: layouts[name]["fields"][field] for field in offsets}
        assert seen == offsets, f"{name}: --json offsets {seen}, spec {offsets}"


def test_python_m_wire_table_is_readable():
    result = subprocess.run(
        [sys.executable, "-m", "netvsc.wire"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"exit {result.returncode}, stderr: {result.stderr}"
    assert "rndis_packet_msg  (44 bytes" in result.stdout, result.stdout[:500]
