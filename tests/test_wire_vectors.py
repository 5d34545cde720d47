"""The test vectors of spec/nvsp-rndis.md section 8, byte for byte, both ways.

Each expected byte string is copied from the spec (``00 x n`` = n zero bytes). The
encoders must produce it exactly, and the decoders must give back the fields it was
built from.
"""

from __future__ import annotations

import re

import pytest

from netvsc.wire import ndis, nvsp, rndis, vmbus


def spec_hex(text: str) -> bytes:
    """Bytes from the spec's notation: hex pairs, '|' separators, '00 × n' runs."""
    text = re.sub(
        r"([0-9a-fA-F]{2})\s*[×x]\s*(\d+)", lambda m: " ".join([m.group(1)] * int(m.group(2))), text
    )
    return bytes.fromhex(text.replace("|", " "))


def assert_bytes(seen: bytes, expected: bytes, what: str) -> None:
    assert seen == expected, f"{what}:\n expected {expected.hex(' ')}\n     seen {seen.hex(' ')}"


def assert_fields(record, what: str, **expected) -> None:
    seen = {name: getattr(record, name) for name in expected}
    assert seen == expected, f"{what}: expected fields {expected}, decoded {seen}"


# --- 8.1 NVSP --------------------------------------------------------------------------------

INIT_61 = "01 00 00 00 01 00 06 00 01 00 06 00 | 00 × 28"


def test_nvsp_init_exact_version_61():
    encoded = nvsp.encode_init(nvsp.NVSP_VERSION_61)
    assert_bytes(encoded, spec_hex(INIT_61), "INIT 6.1")
    assert_fields(
        nvsp.decode_nvsp(encoded),
        "INIT 6.1",
        type=1,
        min_protocol_version=0x60001,
        max_protocol_version=0x60001,
    )


def test_nvsp_init_version_range():
    encoded = nvsp.encode_init(nvsp.NVSP_VERSION_1, nvsp.NVSP_VERSION_61)
    assert_bytes(encoded, spec_hex("01 00 00 00 02 00 00 00 01 00 06 00 | 00 × 28"), "INIT range")
    assert_fields(
        nvsp.decode_nvsp(encoded), "INIT range", min_protocol_version=2, max_protocol_version=0x60001
    )


def test_nvsp_init_in_inband_packet():
    expected = spec_hex("06 00 02 00 07 00 01 00 01 00 00 00 00 00 00 00" + INIT_61)
    packet = vmbus.encode_inband_packet(nvsp.encode_init(nvsp.NVSP_VERSION_61), 1, completion_requested=True)
    assert_bytes(packet, expected, "in-band INIT")
    decoded = vmbus.decode_channel_packet(packet)
    assert (decoded.type, decoded.data_offset8, decoded.length8, decoded.flags, decoded.transaction_id) == (
        6,
        2,
        7,
        1,
        1,
    ), f"descriptor decoded as {decoded}"
    assert_bytes(decoded.payload, spec_hex(INIT_61), "in-band payload")


def test_nvsp_init_complete_openvmm_form():
    expected = spec_hex("02 00 00 00 ff ff ff ff 22 00 00 00 01 00 00 00 | 00 × 12")
    encoded = nvsp.encode_init_complete(nvsp.NVSP_STATUS_SUCCESS)
    assert len(expected) == 28
    assert_bytes(encoded, expected, "INIT_COMPLETE")
    assert_fields(
        nvsp.decode_nvsp(encoded),
        "INIT_COMPLETE",
        negotiated_version=0xFFFFFFFF,
        max_mdl_chain_length=34,
        status=1,
    )


def test_nvsp_ndis_config_and_version():
    config = nvsp.encode_send_ndis_config(1514, nvsp.NDIS_CONFIG_CAP_IEEE8021Q | nvsp.NDIS_CONFIG_CAP_SRIOV)
    assert_bytes(config, spec_hex("7d 00 00 00 ea 05 00 00 00 00 00 00 0c 00 00 00 | 00 × 24"), "NDIS config")
    assert_fields(nvsp.decode_nvsp(config), "NDIS config", type=125, mtu=1514, capabilities=0x0C)
    version = nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30)
    assert_bytes(version, spec_hex("64 00 00 00 06 00 00 00 1e 00 00 00 | 00 × 28"), "NDIS version")
    assert_fields(nvsp.decode_nvsp(version), "NDIS version", ndis_major=6, ndis_minor=30)


def test_nvsp_receive_buffer_and_completion():
    request = nvsp.encode_send_receive_buffer(0x1000, nvsp.RECEIVE_BUFFER_ID)
    assert_bytes(request, spec_hex("65 00 00 00 00 10 00 00 fe ca 00 00 | 00 × 28"), "SEND_RECEIVE_BUFFER")
    assert_fields(nvsp.decode_nvsp(request), "SEND_RECEIVE_BUFFER", gpadl_handle=0x1000, id=0xCAFE)

    expected = spec_hex("66 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 0e 07 00 00 4e 46 00 00 44 fa ef 01")
    complete = nvsp.encode_send_receive_buffer_complete(
        nvsp.NVSP_STATUS_SUCCESS, sub_allocation_size=1806, num_sub_allocations=17998
    )
    assert_bytes(complete, expected, "SEND_RECEIVE_BUFFER_COMPLETE")
    assert_fields(
        nvsp.decode_nvsp(complete),
        "SEND_RECEIVE_BUFFER_COMPLETE",
        status=1,
        num_sections=1,
        section_offset=0,
        sub_allocation_size=1806,
        num_sub_allocations=17998,
        section_end_offset=32504388,
    )


def test_nvsp_send_buffer_and_completion():
    request = nvsp.encode_send_send_buffer(0x1001, nvsp.SEND_BUFFER_ID_DPDK)
    assert_bytes(request, spec_hex("68 00 00 00 01 10 00 00 ce fa 00 00 | 00 × 28"), "SEND_SEND_BUFFER")
    assert_fields(nvsp.decode_nvsp(request), "SEND_SEND_BUFFER", gpadl_handle=0x1001, id=0xFACE)
    complete = nvsp.encode_send_send_buffer_complete(nvsp.NVSP_STATUS_SUCCESS, 6144)
    assert_bytes(
        complete, spec_hex("69 00 00 00 01 00 00 00 00 18 00 00 | 00 × 16"), "SEND_SEND_BUFFER_COMPLETE"
    )
    assert_fields(nvsp.decode_nvsp(complete), "SEND_SEND_BUFFER_COMPLETE", status=1, section_size=6144)


def test_nvsp_send_rndis_packet_data_and_control():
    data = nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA, 5, 296)
    assert_bytes(data, spec_hex("6b 00 00 00 00 00 00 00 05 00 00 00 28 01 00 00 | 00 × 24"), "107 data")
    assert_fields(
        nvsp.decode_nvsp(data),
        "107 data",
        channel_type=0,
        send_buffer_section_index=5,
        send_buffer_section_size=296,
    )
    control = nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
    assert_bytes(
        control, spec_hex("6b 00 00 00 01 00 00 00 ff ff ff ff 00 00 00 00 | 00 × 24"), "107 control"
    )
    assert_fields(
        nvsp.decode_nvsp(control),
        "107 control",
        channel_type=1,
        send_buffer_section_index=0xFFFFFFFF,
        send_buffer_section_size=0,
    )


def test_nvsp_rndis_packet_complete_both_forms():
    dpdk_form = nvsp.encode_send_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS)
    assert_bytes(dpdk_form, spec_hex("6c 00 00 00 01 00 00 00 | 00 × 32"), "108 (40 bytes)")
    linux_form = nvsp.encode_send_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS, size=8)
    assert_bytes(linux_form, spec_hex("6c 00 00 00 01 00 00 00"), "108 (8 bytes)")
    for form in (dpdk_form, linux_form):
        assert_fields(nvsp.decode_nvsp(form), f"108 of {len(form)} bytes", type=108, status=1)


def test_nvsp_subchannel_switch_revoke():
    subchannel = nvsp.encode_subchannel_request(3)
    assert_bytes(subchannel, spec_hex("85 00 00 00 01 00 00 00 03 00 00 00 | 00 × 28"), "subchannel request")
    assert_fields(nvsp.decode_nvsp(subchannel), "subchannel request", operation=1, num_subchannels=3)
    switch = nvsp.encode_switch_data_path(nvsp.DATA_PATH_VF)
    assert_bytes(switch, spec_hex("81 00 00 00 01 00 00 00 | 00 × 32"), "switch data path")
    assert_fields(nvsp.decode_nvsp(switch), "switch data path", active_data_path=1)
    revoke = nvsp.encode_revoke_receive_buffer(0xCAFE)
    assert_bytes(revoke, spec_hex("67 00 00 00 fe ca 00 00 | 00 × 32"), "revoke receive buffer")
    assert_fields(nvsp.decode_nvsp(revoke), "revoke receive buffer", type=103, id=0xCAFE)


def test_nvsp_vf_association_host_size():
    encoded = nvsp.encode_send_vf_association(True, 7, size=nvsp.host_message_size(nvsp.NVSP_VERSION_5))
    assert_bytes(encoded, spec_hex("80 00 00 00 01 00 00 00 07 00 00 00 | 00 × 16"), "VF association")
    assert_fields(nvsp.decode_nvsp(encoded), "VF association", allocated=1, serial=7)


def test_nvsp_send_indirection_table_openvmm():
    expected = spec_hex(
        "86 00 00 00 10 00 00 00 0c 00 00 00" + " 00 00 00 00 01 00 00 00 02 00 00 00 03 00 00 00" * 4
    )
    encoded = nvsp.encode_send_indirection_table([i % 4 for i in range(16)])
    assert len(expected) == 76
    assert_bytes(encoded, expected, "send indirection table")
    decoded = nvsp.decode_nvsp(encoded)
    assert_fields(
        decoded, "send indirection table", count=16, offset=12, entries=tuple(i % 4 for i in range(16))
    )


# --- 8.2 VMBus wrappers ----------------------------------------------------------------------

XFER_PACKET = """
    07 00 04 00 08 00 01 00 14 00 00 00 00 00 00 00
    fe ca 00 00 01 00 00 00 0e 07 00 00 18 8d 00 00
    6b 00 00 00 00 00 00 00 ff ff ff ff 00 00 00 00
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""


def test_transfer_page_packet_slot_20():
    nvsp_message = nvsp.encode_send_rndis_packet(
        nvsp.RNDIS_CHANNEL_TYPE_DATA, size=nvsp.NVSP_HOST_MESSAGE_SIZE_V1
    )
    packet = vmbus.encode_transfer_page_packet(0xCAFE, [(1806, 20 * 1806)], nvsp_message, 20)
    assert_bytes(packet, spec_hex(XFER_PACKET), "transfer-page packet")
    decoded = vmbus.decode_channel_packet(packet)
    assert (decoded.type, decoded.data_offset8, decoded.length8, decoded.flags, decoded.transaction_id) == (
        7,
        4,
        8,
        1,
        20,
    ), f"descriptor decoded as {decoded}"
    assert decoded.transfer_page_set_id == 0xCAFE, f"set id {decoded.transfer_page_set_id:#x}"
    assert decoded.ranges == (vmbus.TransferPageRange(1806, 36120),), f"ranges {decoded.ranges}"
    assert_fields(
        nvsp.decode_nvsp(decoded.payload), "payload", type=107, send_buffer_section_index=0xFFFFFFFF
    )


def test_receive_completion_packet():
    expected = spec_hex("0b 00 02 00 07 00 00 00 14 00 00 00 00 00 00 00 6c 00 00 00 01 00 00 00 | 00 × 32")
    packet = vmbus.encode_completion_packet(nvsp.encode_send_rndis_packet_complete(), 20)
    assert_bytes(packet, expected, "receive completion")
    decoded = vmbus.decode_channel_packet(packet)
    assert (decoded.type, decoded.flags, decoded.transaction_id) == (0xB, 0, 20), f"decoded {decoded}"
    assert_fields(nvsp.decode_nvsp(decoded.payload), "completion payload", type=108, status=1)


def test_gpa_direct_packet_one_page_range():
    expected = spec_hex(
        """
        09 00 05 00 0a 00 01 00 00 00 00 00 00 00 00 00
        00 00 00 00 01 00 00 00 18 00 00 00 10 00 00 00
        45 23 01 00 00 00 00 00
        6b 00 00 00 01 00 00 00 ff ff ff ff 00 00 00 00 | 00 × 24
        """
    )
    control = nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
    packet = vmbus.encode_gpa_direct_packet([(24, 0x10, [0x12345])], control, 0)
    assert_bytes(packet, expected, "GPA-direct packet")
    decoded = vmbus.decode_channel_packet(packet)
    assert (decoded.type, decoded.data_offset8, decoded.length8, decoded.flags) == (9, 5, 10, 1), f"{decoded}"
    assert decoded.gpa_ranges == (vmbus.GpaRange(24, 0x10, (0x12345,)),), f"ranges {decoded.gpa_ranges}"
    assert_bytes(decoded.payload, control, "GPA-direct payload")


# --- 8.3 RNDIS control -----------------------------------------------------------------------


def test_rndis_initialize_and_completion():
    request = rndis.encode_initialize(1)
    assert_bytes(
        request,
        spec_hex("02 00 00 00 18 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 00 40 00 00"),
        "INITIALIZE",
    )
    assert_fields(
        rndis.decode_rndis(request),
        "INITIALIZE",
        request_id=1,
        major_version=1,
        minor_version=0,
        max_transfer_size=0x4000,
    )
    expected = spec_hex(
        """
        02 00 00 80 34 00 00 00 01 00 00 00 00 00 00 00
        01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00
        08 00 00 00 ff ff ff ef 03 00 00 00 00 00 00 00
        00 00 00 00
        """
    )
    complete = rndis.encode_initialize_complete(1)
    assert_bytes(complete, expected, "INITIALIZE_CMPLT")
    assert_fields(
        rndis.decode_rndis(complete),
        "INITIALIZE_CMPLT",
        length=52,
        request_id=1,
        status=0,
        device_flags=1,
        medium=0,
        max_packets_per_message=8,
        max_transfer_size=0xEFFFFFFF,
        packet_alignment_factor=3,
    )


def test_rndis_query_permanent_address_and_completion():
    query = rndis.encode_query(2, ndis.OID_802_3_PERMANENT_ADDRESS)
    assert_bytes(
        query,
        spec_hex("04 00 00 00 1c 00 00 00 02 00 00 00 01 01 01 01 00 00 00 00 14 00 00 00 00 00 00 00"),
        "QUERY permanent address",
    )
    assert_fields(
        rndis.decode_rndis(query), "QUERY", request_id=2, oid=0x01010101, info_buffer_offset=20, info=b""
    )
    mac = bytes.fromhex("00155d010203")
    complete = rndis.encode_query_complete(2, rndis.RNDIS_STATUS_SUCCESS, mac)
    assert_bytes(
        complete,
        spec_hex("04 00 00 80 1e 00 00 00 02 00 00 00 00 00 00 00 06 00 00 00 10 00 00 00 00 15 5d 01 02 03"),
        "QUERY_CMPLT",
    )
    assert_fields(rndis.decode_rndis(complete), "QUERY_CMPLT", request_id=2, status=0, info=mac)


def test_rndis_set_packet_filter_and_completion():
    value = ndis.NDIS_PACKET_FILTER_DEFAULT.to_bytes(4, "little")
    request = rndis.encode_set(3, ndis.OID_GEN_CURRENT_PACKET_FILTER, value)
    assert_bytes(
        request,
        spec_hex(
            "05 00 00 00 20 00 00 00 03 00 00 00 0e 01 01 00 04 00 00 00 14 00 00 00 00 00 00 00 0d 00 00 00"
        ),
        "SET packet filter",
    )
    assert_fields(rndis.decode_rndis(request), "SET", request_id=3, oid=0x0001010E, info=value)
    complete = rndis.encode_set_complete(3)
    assert_bytes(complete, spec_hex("05 00 00 80 10 00 00 00 03 00 00 00 00 00 00 00"), "SET_CMPLT")
    assert_fields(rndis.decode_rndis(complete), "SET_CMPLT", request_id=3, status=0)


def test_rndis_halt_keepalive():
    cases = [
        (rndis.encode_halt(4), "03 00 00 00 0c 00 00 00 04 00 00 00", 4),
        (rndis.encode_keepalive(5), "08 00 00 00 0c 00 00 00 05 00 00 00", 5),
        (rndis.encode_keepalive_complete(5), "08 00 00 80 10 00 00 00 05 00 00 00 00 00 00 00", 5),
    ]
    for encoded, expected, request_id in cases:
        assert_bytes(encoded, spec_hex(expected), expected[:11])
        assert_fields(rndis.decode_rndis(encoded), expected[:11], request_id=request_id)


def test_rndis_indicate_status():
    disconnect = rndis.encode_indicate_status(rndis.RNDIS_STATUS_MEDIA_DISCONNECT)
    assert_bytes(
        disconnect,
        spec_hex("07 00 00 00 14 00 00 00 0c 00 01 40 00 00 00 00 00 00 00 00"),
        "media disconnect",
    )
    assert_fields(rndis.decode_rndis(disconnect), "media disconnect", status=0x4001000C, status_buffer=b"")
    speed = (100_000_000).to_bytes(4, "little")  # 10 Gbit/s in 100 bit/s units
    link = rndis.encode_indicate_status(rndis.RNDIS_STATUS_LINK_SPEED_CHANGE, speed)
    assert_bytes(
        link,
        spec_hex("07 00 00 00 18 00 00 00 13 00 01 40 04 00 00 00 0c 00 00 00 00 e1 f5 05"),
        "link speed change",
    )
    assert_fields(rndis.decode_rndis(link), "link speed", status=0x40010013, status_buffer=speed)


def test_rndis_reset_round_trip():
    # No spec vector; pins the layout of 4.3 (RESET 12 bytes, RESET_CMPLT status at 8).
    assert_bytes(rndis.encode_reset(), spec_hex("06 00 00 00 0c 00 00 00 00 00 00 00"), "RESET")
    complete = rndis.encode_reset_complete(rndis.RNDIS_STATUS_SUCCESS, 1)
    assert_bytes(complete, spec_hex("06 00 00 80 10 00 00 00 00 00 00 00 01 00 00 00"), "RESET_CMPLT")
    assert_fields(rndis.decode_rndis(complete), "RESET_CMPLT", status=0, addressing_reset=1)


def test_rndis_query_hardware_capabilities():
    input_object = ndis.encode_offload_capabilities(ndis.OFFLOAD_CAPABILITIES_REVISION_3)
    assert_bytes(input_object, spec_hex("a7 03 9c 00 | 00 × 152"), "offload capabilities query input")
    query = rndis.encode_query(7, ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, input_object)
    assert_bytes(
        query[:28],
        spec_hex("04 00 00 00 b8 00 00 00 07 00 00 00 0d 02 01 fc 9c 00 00 00 14 00 00 00 00 00 00 00"),
        "QUERY hardware capabilities header",
    )
    assert_bytes(query[28:], input_object, "QUERY hardware capabilities input")
    decoded = rndis.decode_rndis(query)
    assert_fields(decoded, "QUERY hwcaps", oid=0xFC01020D, info_buffer_length=156, info=input_object)


def test_rss_capabilities_query_input():
    assert_bytes(ndis.encode_rss_capabilities(), spec_hex("88 02 12 00 | 00 × 14"), "RSS capabilities input")


def test_rndis_set_rss_parameters_592_bytes():
    hash_information = (
        ndis.NDIS_HASH_FUNCTION_TOEPLITZ
        | ndis.NDIS_HASH_IPV4
        | ndis.NDIS_HASH_TCP_IPV4
        | ndis.NDIS_HASH_IPV6
        | ndis.NDIS_HASH_TCP_IPV6
    )
    table = [i % 4 for i in range(128)]
    rss_object = ndis.encode_rss_parameters(hash_information, table, ndis.TOEPLITZ_KEY_DPDK)
    expected_object = (
        spec_hex(
            "89 02 28 00 00 00 00 00 01 17 00 00 00 02 00 00"
            "28 00 00 00 28 00 00 00 28 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
        )
        + b"".join((i % 4).to_bytes(4, "little") for i in range(128))
        + spec_hex(
            "2c c6 81 d1 5b db f4 f7 fc a2 83 19 db 1a 3e 94 6b 9e 38 d9"
            "2c 9c 03 d1 ad 99 44 a7 d9 56 3d 59 06 3c 25 f3 fc 1f dc 2a"
        )
    )
    assert len(expected_object) == 592
    assert_bytes(rss_object, expected_object, "RSS parameters object")
    request = rndis.encode_set(6, ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, rss_object)
    assert_bytes(
        request[:28],
        spec_hex("05 00 00 00 6c 02 00 00 06 00 00 00 04 02 01 00 50 02 00 00 14 00 00 00 00 00 00 00"),
        "SET RSS header",
    )
    decoded = ndis.decode_rss_parameters(rndis.decode_rndis(request).info)
    assert_fields(
        decoded,
        "RSS parameters",
        header_type=0x89,
        header_revision=2,
        header_size=40,
        hash_information=0x1701,
        indirection_table_size=512,
        indirection_table_offset=40,
        hash_secret_key_size=40,
        hash_secret_key_offset=552,
        indirection_table=tuple(table),
        hash_secret_key=ndis.TOEPLITZ_KEY_DPDK,
    )


def test_offload_parameters_dpdk_and_linux_policies():
    dpdk = ndis.encode_offload_parameters(
        3,
        tcp4_checksum=ndis.OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED,
        tcp6_checksum=ndis.OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED,
    )
    assert_bytes(dpdk, spec_hex("80 03 1c 00 00 02 00 02 00 00 00 00 00 00 00 00 | 00 × 12"), "DPDK offload")
    linux = ndis.encode_offload_parameters(
        3,
        ipv4_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_DISABLED,
        tcp4_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
        udp4_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
        tcp6_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
        udp6_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED,
        lso_v2_ipv4=ndis.OFFLOAD_LSO_ENABLED,
        lso_v2_ipv6=ndis.OFFLOAD_LSO_ENABLED,
    )
    assert_bytes(
        linux, spec_hex("80 03 1c 00 01 04 04 04 04 00 00 02 02 00 00 00 | 00 × 12"), "Linux offload"
    )
    assert_fields(ndis.decode_offload_parameters(dpdk), "DPDK offload", tcp4_checksum=2, udp4_checksum=0)
    assert_fields(
        ndis.decode_offload_parameters(linux),
        "Linux offload",
        ipv4_checksum=1,
        udp6_checksum=4,
        lso_v2_ipv4=2,
        lso_v2_ipv6=2,
        lso_v1=0,
    )


# --- 8.4 RNDIS data --------------------------------------------------------------------------

FRAME = spec_hex(
    """
    00 15 5d 00 00 01 00 15 5d 00 00 02 08 00 45 00
    00 28 00 00 40 00 40 06 00 00 c6 12 00 02 c6 12
    00 01 30 39 00 50 00 00 00 01 00 00 00 00 50 02
    ff ff 00 00 00 00
    """
)


def test_packet_msg_with_three_ppis_in_dpdk_order():
    vlan = rndis.encode_vlan_ppi_value(100, priority=5, dei=0)
    checksum = rndis.encode_checksum_tx_request(ipv4=True, ip_header=True, tcp=True, transport_offset=34)
    assert vlan == 0x645, f"VLAN PPI value expected 0x645, seen {vlan:#x}"
    assert checksum == 0x00220015, f"checksum PPI value expected 0x00220015, seen {checksum:#010x}"
    ppis = [
        rndis.Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 0),
        rndis.Ppi.u32(rndis.PPI_TYPE_IEEE_8021Q, vlan),
        rndis.Ppi.u32(rndis.PPI_TYPE_CHECKSUM_INFO, checksum),
    ]
    message = rndis.encode_packet_msg(FRAME, ppis)
    expected = (
        spec_hex(
            """
            01 00 00 00 92 00 00 00 54 00 00 00 36 00 00 00
            00 00 00 00 00 00 00 00 00 00 00 00 24 00 00 00
            30 00 00 00 00 00 00 00 00 00 00 00 10 00 00 00
            08 00 00 00 0c 00 00 00 00 00 00 00 10 00 00 00
            06 00 00 00 0c 00 00 00 45 06 00 00 10 00 00 00
            00 00 00 00 0c 00 00 00 15 00 22 00
            """
        )
        + FRAME
    )
    assert_bytes(message, expected, "PACKET_MSG with 3 PPIs")
    decoded = rndis.decode_rndis(message)
    assert_fields(
        decoded.header,
        "PACKET_MSG",
        length=146,
        data_offset=84,
        data_length=54,
        per_packet_info_offset=36,
        per_packet_info_length=48,
    )
    assert decoded.ppis == tuple(ppis), f"PPIs expected {ppis}, decoded {decoded.ppis}"
    assert_bytes(decoded.frame, FRAME, "decoded frame")
    assert decoded.data_start == 92, f"frame expected at absolute 92, seen {decoded.data_start}"
    assert rndis.vlan_ppi_to_tci(decoded.ppi(rndis.PPI_TYPE_IEEE_8021Q).value) == (5 << 13) | 100


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (rndis.encode_lso_v2(1448, 34, ipv6=False), 0x422005A8),
        (rndis.encode_lso_v2(1448, 54, ipv6=True), 0xC36005A8),
        (rndis.encode_checksum_tx_request(ipv6=True, udp=True, transport_offset=54), 0x0036000A),
    ],
    ids=["lso-v2-ipv4", "lso-v2-ipv6", "udp6-checksum"],
)
def test_other_ppi_values(value, expected):
    assert value == expected, f"PPI value expected {expected:#010x}, seen {value:#010x}"


def test_lso_and_checksum_values_decode_back():
    assert rndis.decode_lso_v2(0xC36005A8) == rndis.LsoV2(1448, 54, True)
    assert rndis.decode_checksum_tx_request(0x0036000A) == rndis.ChecksumTxRequest(
        ipv4=False, ipv6=True, tcp=False, udp=True, ip_header=False, transport_offset=54
    )


def test_two_frames_aggregated_with_8_byte_alignment():
    hash_only = [rndis.Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 0)]
    first = rndis.encode_packet_msg(FRAME, hash_only)
    second = rndis.encode_packet_msg(FRAME, hash_only)
    assert len(first) == 114, f"single message expected 114 bytes, seen {len(first)}"
    section = rndis.aggregate_packet_msgs([first, second], 8)
    assert len(section) == 234, f"section byte count expected 234, seen {len(section)}"
    assert_bytes(section[:16], spec_hex("01 00 00 00 78 00 00 00 34 00 00 00 36 00 00 00"), "@0")
    assert_bytes(section[114:120], bytes(6), "padding after the first frame")
    assert_bytes(section[120:136], spec_hex("01 00 00 00 72 00 00 00 34 00 00 00 36 00 00 00"), "@120")
    assert_bytes(rndis.encode_packet_msg(FRAME, hash_only, align=8), section[:120], "encode with align=8")
    # Walk the section as a host does: by each message's length, until the byte count is used up.
    at, frames = 0, []
    while at < len(section):
        message = rndis.decode_packet_msg(section, at)
        frames.append(message.frame)
        at += message.length
    assert frames == [FRAME, FRAME], f"expected two frames back, decoded {len(frames)}"


def test_receive_slot_header_as_openvmm_writes_it():
    expected_header = spec_hex(
        """
        01 00 00 00 0e 07 00 00 f8 00 00 00 3c 00 00 00
        00 00 00 00 00 00 00 00 00 00 00 00 24 00 00 00
        10 00 00 00 00 00 00 00 00 00 00 00 10 00 00 00
        00 00 00 00 0c 00 00 00 28 00 00 00
        """
    )
    frame = bytes(range(60))
    slot = bytearray(1806)
    slot[: len(expected_header)] = expected_header
    slot[256:316] = frame
    decoded = rndis.decode_packet_msg(slot, limit=1806)
    assert_fields(decoded.header, "slot header", length=1806, data_offset=248, data_length=60)
    assert decoded.data_start == 256, f"frame expected at slot offset 256, seen {decoded.data_start}"
    assert_bytes(decoded.frame, frame, "slot frame")
    checksum = decoded.ppi(rndis.PPI_TYPE_CHECKSUM_INFO).value
    assert checksum == rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_TCP_SUCCEEDED, f"seen {checksum:#x}"
