"""Internet checksum kernels agree with scapy's independent computation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from netvsc.fastpath.checksum import (
    fold_checksum,
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum_ipv4,
    pseudo_header_sum_ipv6,
)

# Explicit MACs: scapy resolves a missing destination MAC by sending ARP requests.
SRC_MAC, DST_MAC = "02:00:00:00:00:02", "02:00:00:00:00:01"


def test_rfc1071_example_words():
    # RFC 1071 section 3: the sum of 0001 f203 f4f5 f6f7 folds to ddf2, checksum 220d.
    data = np.frombuffer(bytes.fromhex("0001f203f4f5f6f7"), dtype=np.uint8)
    assert int(internet_checksum(data, 0, len(data))) == 0x220D


def test_odd_length_pads_with_zero():
    data = np.frombuffer(b"\x01\x02\x03", dtype=np.uint8)
    assert int(ones_complement_sum(data, 0, 3)) == 0x0102 + 0x0300


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=0, max_size=300), ihl_options=st.sampled_from([b"", b"\x01\x01\x01\x00"]))
def test_ipv4_header_tcp_and_udp_checksums_equal_scapy(payload, ihl_options):
    for l4 in (TCP(sport=12345, dport=80, flags="PA"), UDP(sport=5000, dport=53)):
        ip = IP(src="198.18.0.2", dst="198.18.0.1", options=ihl_options)
        pkt = Ether(src=SRC_MAC, dst=DST_MAC) / ip / l4 / payload
        reference = Ether(bytes(pkt))  # scapy fills every checksum
        frame = np.frombuffer(bytes(pkt), dtype=np.uint8).copy()
        ip_offset = 14
        ihl = (frame[ip_offset] & 0xF) * 4
        l4_offset = ip_offset + ihl
        csum_field = l4_offset + (16 if isinstance(l4, TCP) else 6)
        frame[ip_offset + 10 : ip_offset + 12] = 0
        frame[csum_field : csum_field + 2] = 0
        assert int(internet_checksum(frame, ip_offset, ihl)) == reference[IP].chksum
        l4_length = len(frame) - l4_offset
        proto = 6 if isinstance(l4, TCP) else 17
        total = pseudo_header_sum_ipv4(frame, ip_offset, proto, l4_length) + ones_complement_sum(
            frame, l4_offset, l4_length
        )
        expected = reference[TCP].chksum if isinstance(l4, TCP) else reference[UDP].chksum
        assert int(fold_checksum(total)) == expected


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(min_size=0, max_size=300))
def test_ipv6_tcp_checksum_equals_scapy(payload):
    ip = IPv6(src="2001:db8::2", dst="2001:db8::1")
    pkt = Ether(src=SRC_MAC, dst=DST_MAC) / ip / TCP(sport=1, dport=2) / payload
    reference = Ether(bytes(pkt))
    frame = np.frombuffer(bytes(pkt), dtype=np.uint8).copy()
    l4_offset = 14 + 40
    frame[l4_offset + 16 : l4_offset + 18] = 0
    l4_length = len(frame) - l4_offset
    total = pseudo_header_sum_ipv6(frame, 14, 6, l4_length) + ones_complement_sum(frame, l4_offset, l4_length)
    assert int(fold_checksum(total)) == reference[TCP].chksum


def _reference_sum(data: bytes) -> int:
    """RFC 1071 by the book: big-endian words, an odd byte padded with zero, folded."""
    padded = data + b"\0" * (len(data) & 1)
    total = sum(int.from_bytes(padded[i : i + 2], "big") for i in range(0, len(padded), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=2100), offset=st.integers(0, 15))
def test_word_at_a_time_sum_equals_the_rfc_sum_at_any_offset_and_length(data, offset):
    """The sum taken eight bytes at a time (any alignment, any tail) folds to the RFC 1071 value."""
    buffer = np.zeros(offset + len(data) + 8, dtype=np.uint8)
    buffer[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
    value = int(ones_complement_sum(buffer, offset, len(data)))
    assert value == _reference_sum(data), "folded to 16 bits, 0 only for an all-zero range"
    assert int(fold_checksum(value)) == 0xFFFF ^ _reference_sum(data)
