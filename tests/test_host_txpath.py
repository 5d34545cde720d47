"""The emulated host's transmit parsing: the RNDIS stream from send-buffer sections and GPA
ranges, aggregated PACKET messages, PPIs, and every malformed case ending in status 2."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netvsc.errors import ConfigError
from netvsc.host.frames import TX_CSUM_IP, TX_CSUM_TCP, TX_CSUM_UDP, TX_IPV4, TX_IPV6, TX_LSO, FrameBatch
from netvsc.host.guestmem import GuestMemory
from netvsc.host.txpath import TransmitPath, TxParseResult
from netvsc.vmbus.guestmem import region_file_name
from netvsc.wire import nvsp, rndis
from netvsc.wire.rndis import Ppi

SECTION = 6144
NONE = nvsp.SEND_SECTION_INDEX_NONE
GPA_BASE = 0x1_0000_0000
PAGE = 4096
PAGES = 32


def frame(n=0, size=120):
    packet = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="198.18.0.1", dst="198.18.0.2")
    packet = packet / UDP(sport=1000 + n, dport=7)
    return bytes(packet / Raw(bytes([n & 0xFF]) * max(0, size - len(packet))))


@pytest.fixture
def memory(tmp_path):
    """A real guest-memory region of 32 pages at GPA 4 GiB, as a guest would publish it."""
    path = tmp_path / region_file_name(GPA_BASE, PAGES * PAGE)
    path.write_bytes(bytes(PAGES * PAGE))
    guest_memory = GuestMemory(tmp_path)
    view = np.memmap(path, dtype=np.uint8, mode="r+")
    yield guest_memory, view
    del view
    guest_memory.close()


class Tx:
    def __init__(self, guest_memory=None, sections=16):
        self.send_buffer = np.zeros(SECTION * sections, dtype=np.uint8)
        self.path = TransmitPath(self.send_buffer, SECTION, guest_memory)
        self.batch = FrameBatch(16, 8192)

    def section(self, index, data: bytes):
        self.send_buffer[index * SECTION : index * SECTION + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return self.parse(index, len(data))

    def parse(self, index, size, ranges=()) -> TxParseResult:
        self.batch.clear()
        return self.path.parse(index, size, list(ranges), self.batch)


def put_gpa(view, page, offset, data: bytes):
    """Write ``data`` at page ``page`` + ``offset`` of the region; return its GPA range."""
    start = page * PAGE + offset
    view[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
    pages = (offset + len(data) + PAGE - 1) // PAGE
    return (len(data), offset, [GPA_BASE // PAGE + page + k for k in range(pages)])


def test_one_packet_from_a_section():
    """host#30: data read from section_index x 6144 for section_size bytes."""
    tx = Tx()
    result = tx.section(3, rndis.encode_packet_msg(frame()))
    assert (result.kind, result.status, result.frames) == ("data", 1, 1)
    assert tx.batch.frames() == [frame()]
    assert tx.batch.vlan_tci[0] == -1 and tx.batch.tx_flags[0] == 0


def test_eight_aggregated_packets_are_all_transmitted():
    """host#31: concatenated PACKET messages, each at the previous one's length, all parsed."""
    tx = Tx()
    messages = [rndis.encode_packet_msg(frame(n, 60 + 7 * n)) for n in range(8)]
    result = tx.section(0, rndis.aggregate_packet_msgs(messages, 8))
    assert result.frames == 8 and tx.batch.frames() == [frame(n, 60 + 7 * n) for n in range(8)]


def test_section_followed_by_gpa_ranges_is_one_stream(memory):
    """host#30: Linux's partial copy: header in the section, data in GPA pages (two of them,
    not contiguous), read as one stream."""
    guest_memory, view = memory
    tx = Tx(guest_memory)
    payload = frame(size=3000)
    message = rndis.encode_packet_msg(payload)
    header, data = message[:44], message[44:]
    first = put_gpa(view, 5, 4000, data[:96])
    second = put_gpa(view, 9, 0, data[96:])
    tx.send_buffer[SECTION : SECTION + 44] = np.frombuffer(header, dtype=np.uint8)
    result = tx.parse(1, 44, [first, second])
    assert result.kind == "data" and tx.batch.frames() == [payload]


def test_gpa_only_packet_and_unbacked_memory(memory):
    """GPA-direct packets (section index none); a page outside guest memory fails the packet."""
    guest_memory, view = memory
    tx = Tx(guest_memory)
    message = rndis.encode_packet_msg(frame(size=5000))
    gpa = put_gpa(view, 2, 100, message)
    assert tx.parse(NONE, 0, [gpa]).frames == 1
    bogus = (len(message), 100, [0x5000 + k for k in range(len(gpa[2]))])
    result = tx.parse(NONE, 0, [bogus])
    assert (result.kind, result.status) == ("error", 2) and "not backed" in result.reason


def test_header_split_from_its_ppis_across_ranges_is_refused(memory):
    """host.md 3.2: the RNDIS header and PPIs must lie in the first contiguous range."""
    guest_memory, view = memory
    tx = Tx(guest_memory)
    message = rndis.encode_packet_msg(frame(), [Ppi.u32(rndis.PPI_TYPE_IEEE_8021Q, 0x10)])
    first = put_gpa(view, 0, 0, message[:50])
    second = put_gpa(view, 3, 0, message[50:])
    result = tx.parse(NONE, 0, [first, second])
    assert (result.kind, result.status) == ("error", 2), result


def test_ppis_become_offload_metadata_and_the_hash_value_is_ignored():
    """host#32-#35 (parsing side): checksum, LSOv2 and VLAN PPIs fill the frame metadata; a hash
    value PPI changes nothing."""
    tx = Tx()
    checksum = rndis.encode_checksum_tx_request(
        ipv4=True, tcp=True, udp=True, ip_header=True, transport_offset=34
    )
    lso = rndis.encode_lso_v2(1448, 54, ipv6=True)
    messages = [
        rndis.encode_packet_msg(
            frame(0),
            [Ppi.u32(rndis.PPI_TYPE_CHECKSUM_INFO, checksum), Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 0xDEADBEEF)],
        ),
        rndis.encode_packet_msg(frame(1), [Ppi.u32(rndis.PPI_TYPE_LSO, lso)]),
        rndis.encode_packet_msg(
            frame(2), [Ppi.u32(rndis.PPI_TYPE_IEEE_8021Q, rndis.encode_vlan_ppi_value(42, priority=6, dei=1))]
        ),
        rndis.encode_packet_msg(
            frame(3),
            [Ppi.u32(rndis.PPI_TYPE_CHECKSUM_INFO, rndis.encode_checksum_tx_request(ipv4=True, udp=True))],
        ),
    ]
    result = tx.section(0, rndis.aggregate_packet_msgs(messages, 8))
    assert result.frames == 4
    batch = tx.batch
    assert batch.tx_flags[0] == TX_IPV4 | TX_CSUM_TCP | TX_CSUM_IP and batch.l4_offset[0] == 34, "TCP wins"
    assert batch.tx_flags[1] == TX_LSO | TX_CSUM_TCP | TX_IPV6 and (batch.mss[1], batch.l4_offset[1]) == (
        1448,
        54,
    )
    assert batch.vlan_tci[2] == (6 << 13) | (1 << 12) | 42
    assert batch.tx_flags[3] == TX_IPV4 | TX_CSUM_UDP and batch.l4_offset[3] == 34, (
        "offset 0 means no IP options"
    )
    assert batch.hash_value[:4].tolist() == [0, 0, 0, 0]


def test_control_message_is_handed_over_whole():
    """A non-PACKET first message is control: status 1, the message bytes for the engine."""
    tx = Tx()
    query = rndis.encode_query(5, 0x00010114)
    result = tx.section(0, query + bytes(16))
    assert (result.kind, result.status, result.control_message) == ("control", 1, query)


def test_section_outside_the_send_buffer_is_a_fatal_error():
    """host.md 1.6: a section index past the buffer (or with no buffer) is OpenVMM's fail-stop."""
    tx = Tx(sections=2)
    result = tx.parse(2, 100)
    assert result.kind == "error" and result.fatal
    no_buffer = TransmitPath(None, SECTION, None)
    assert no_buffer.parse(0, 10, [], FrameBatch(1)).fatal


def good_message(**changes) -> bytes:
    """A PACKET_MSG with a checksum PPI, and header fields replaced by ``changes``."""
    message = bytearray(
        rndis.encode_packet_msg(
            frame(),
            [
                Ppi.u32(
                    rndis.PPI_TYPE_CHECKSUM_INFO,
                    rndis.encode_checksum_tx_request(ipv4=True, udp=True, transport_offset=34),
                )
            ],
        )
    )
    for field, value in changes.items():
        struct.pack_into("<I", message, rndis.PACKET_MSG.offset(field), value)
    return bytes(message)


def with_ppi(ppi: bytes) -> bytes:
    data = frame()
    header = rndis.PACKET_MSG.encode(
        type=1,
        length=44 + len(ppi) + len(data),
        data_offset=36 + len(ppi),
        data_length=len(data),
        per_packet_info_offset=36,
        per_packet_info_length=len(ppi),
    )
    return header + ppi + data


MALFORMED = {
    "data_length 0": good_message(data_length=0),
    "data past the end": good_message(data_length=4000),
    "data offset in header": good_message(data_offset=8),
    "oob elements": good_message(num_oob_data_elements=1),
    "oob offset": good_message(oob_data_offset=44),
    "vc_handle": good_message(vc_handle=3),
    "length past stream": good_message(length=5000),
    "length below header": good_message(length=40),
    "ppi past message": good_message(per_packet_info_length=4000),
    "ppi misaligned": good_message(per_packet_info_offset=38),
    "ppi size 0": with_ppi(struct.pack("<III", 0, 0, 12) + bytes(4)),
    "ppi overrun": with_ppi(struct.pack("<III", 32, 0, 12) + bytes(4)),
    "ppi payload offset": with_ppi(struct.pack("<III", 16, 0, 20) + bytes(4)),
    "transport offset too small": with_ppi(
        rndis.encode_ppi(
            0, struct.pack("<I", rndis.encode_checksum_tx_request(ipv4=True, tcp=True, transport_offset=20))
        )
    ),
    "transport offset past data": with_ppi(
        rndis.encode_ppi(
            0, struct.pack("<I", rndis.encode_checksum_tx_request(ipv6=True, tcp=True, transport_offset=900))
        )
    ),
    "lso v1": with_ppi(
        rndis.encode_ppi(2, struct.pack("<I", 1460 | (34 << 20))),
    ),
    "lso mss 0": with_ppi(rndis.encode_ppi(2, struct.pack("<I", (34 << 20) | rndis.LSO_V2_TYPE))),
    "second not packet": rndis.encode_packet_msg(frame(), align=8) + rndis.encode_keepalive(1),
}


@pytest.mark.parametrize("stream", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_data_messages_fail_with_status_2_and_later_packets_still_work(stream):
    """host#29: each malformed RNDIS data message is refused with status 2, nothing is appended,
    and the next packet parses normally."""
    tx = Tx()
    result = tx.section(0, stream)
    assert (result.kind, result.status) == ("error", nvsp.NVSP_STATUS_FAILURE), result
    assert tx.batch.count == 0
    assert tx.section(1, rndis.encode_packet_msg(frame())).frames == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(list(MALFORMED.values()) + [good_message()]),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 300),
)
def test_any_mangled_stream_gives_a_result_never_an_exception(base, flips, cut):
    """host#29: whatever the bytes, parse returns a TxParseResult; when it is not data, control
    or success it is status 2 with nothing appended."""
    stream = bytearray(base)
    for at, value in flips:
        if at < len(stream):
            stream[at] = value
    stream = bytes(stream[: max(1, len(stream) - cut % 64)])
    tx = Tx()
    result = tx.section(0, stream)
    assert isinstance(result, TxParseResult)
    if result.kind == "error":
        assert result.status == 2 and tx.batch.count == 0
    elif result.kind == "data":
        assert result.status == 1 and tx.batch.count == result.frames >= 1
        assert all(0 < n <= 8192 for n in tx.batch.length[: tx.batch.count])
    else:
        assert result.kind == "control" and result.status == 1


def test_too_many_gpa_ranges_and_full_batch(memory):
    """DESIGN.md decision 6: more GPA ranges than the maximum fail; a batch without room for the
    packet's frames is the caller's error, named."""
    guest_memory, view = memory
    tx = Tx(guest_memory)
    one = put_gpa(view, 0, 0, b"x" * 8)
    assert tx.parse(NONE, 0, [one] * 33).status == 2
    tx.batch = FrameBatch(2, 4096)
    tx.batch.append(b"\0" * 60)
    tx.batch.append(b"\0" * 60)
    tx.send_buffer[:200] = 0
    message = rndis.encode_packet_msg(frame())
    tx.send_buffer[: len(message)] = np.frombuffer(message, dtype=np.uint8)
    with pytest.raises(ConfigError, match="batch free frames"):
        tx.path.parse(0, len(message), [], tx.batch)
