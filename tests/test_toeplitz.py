"""Toeplitz hash against Microsoft's published RSS verification vectors, and table == bitwise."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netvsc.fastpath.toeplitz import toeplitz_hash, toeplitz_hash_bitwise, toeplitz_table

# Key and vectors of "Verifying the RSS Hash Calculation" (Windows driver docs):
# (destination, destination port, source, source port, hash of addresses, hash with ports).
MS_KEY = np.frombuffer(
    bytes.fromhex(
        "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
    ),
    dtype=np.uint8,
)
MS_VECTORS = [
    ("161.142.100.80", 1766, "66.9.149.187", 2794, 0x323E8FC2, 0x51CCC178),
    ("65.69.140.83", 4739, "199.92.111.2", 14230, 0xD718262A, 0xC626B0EA),
    ("12.22.207.184", 38024, "24.19.198.95", 12898, 0xD2D0A5DE, 0x5C2B394A),
    ("209.142.163.6", 2217, "38.27.205.30", 48228, 0x82989176, 0xAFC7327F),
    ("202.188.127.2", 1303, "153.39.163.191", 44251, 0x5D1809C5, 0x10E828A2),
    ("3ffe:2501:200:3::1", 1766, "3ffe:2501:200:1fff::7", 2794, 0x2CC18CD5, 0x40207D3D),
    ("ff02::1", 4739, "3ffe:501:8::260:97ff:fe40:efab", 14230, 0x0F0C461C, 0xDDE51BBF),
    ("fe80::200:f8ff:fe21:67cf", 38024, "3ffe:1900:4545:3:200:f8ff:fe21:67cf", 44251, 0x4B61E985, 0x02D1FEEF),
]


def _rss_input(dst, dport, src, sport, with_ports):
    data = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    if with_ports:
        data += sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return np.frombuffer(data, dtype=np.uint8)


@pytest.mark.parametrize("vector", MS_VECTORS, ids=lambda v: f"{v[2]}->{v[0]}")
@pytest.mark.parametrize("with_ports", [False, True], ids=["addresses", "with-ports"])
def test_hash_matches_microsoft_verification_vectors(vector, with_ports):
    dst, dport, src, sport, expected_l3, expected_l4 = vector
    data = _rss_input(dst, dport, src, sport, with_ports)
    expected = expected_l4 if with_ports else expected_l3
    table = toeplitz_table(MS_KEY)
    bitwise = int(toeplitz_hash_bitwise(MS_KEY, data, len(data)))
    tabled = int(toeplitz_hash(table, data, 0, len(data)))
    assert bitwise == expected, f"bitwise hash {bitwise:#010x}, expected {expected:#010x}"
    assert tabled == expected, f"table hash {tabled:#010x}, expected {expected:#010x}"


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=40, max_size=40), data=st.binary(min_size=0, max_size=36))
def test_table_form_equals_bitwise_definition_for_any_key(key, data):
    key_arr = np.frombuffer(key, dtype=np.uint8)
    data_arr = np.frombuffer(data, dtype=np.uint8)
    table = toeplitz_table(key_arr)
    assert toeplitz_hash(table, data_arr, 0, len(data_arr)) == toeplitz_hash_bitwise(
        key_arr, data_arr, len(data_arr)
    )
