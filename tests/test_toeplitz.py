"""Toeplitz hash against Microsoft's published RSS verification vectors, and table == bitwise."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netvsc.fastpath.toeplitz import toeplitz_hash, toeplitz_hash_bitwise, toeplitz_table
from rss_reference import MS_KEY as MS_KEY_BYTES
from rss_reference import MS_VECTORS

MS_KEY = np.frombuffer(MS_KEY_BYTES, dtype=np.uint8)


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
