"""PPI payload values (spec/nvsp-rndis.md 4.7): VLAN TCI <-> 802.1Q info over every TCI, checksum
and LSO values both ways, hash information bits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netvsc.wire import ndis, rndis


def spec_formula(tci: int) -> int:
    # spec/nvsp-rndis.md 4.7 and 8.5, written out independently of the code under test.
    return (tci >> 13) | (((tci >> 12) & 1) << 3) | ((tci & 0xFFF) << 4)


def test_vlan_tci_to_ppi_and_back_for_every_tci():
    wrong = []
    for tci in range(0x10000):
        ppi = rndis.vlan_tci_to_ppi(tci)
        back = rndis.vlan_ppi_to_tci(ppi)
        if ppi != spec_formula(tci) or back != tci:
            wrong.append((tci, ppi, back))
    assert not wrong, f"{len(wrong)} TCIs wrong, first (tci, ppi, back): {wrong[:5]}"


def test_vlan_ppi_to_tci_and_back_for_every_16_bit_value():
    wrong = [
        value for value in range(0x10000) if rndis.vlan_tci_to_ppi(rndis.vlan_ppi_to_tci(value)) != value
    ]
    assert not wrong, f"{len(wrong)} PPI values do not survive the round trip, first: {wrong[:5]}"


def test_vlan_ppi_fields_land_in_the_spec_bits():
    value = rndis.encode_vlan_ppi_value(0xABC, priority=6, dei=1)
    assert value == 0xABC << 4 | 1 << 3 | 6, f"seen {value:#x}"
    tci = rndis.vlan_ppi_to_tci(value)
    assert (tci >> 13, (tci >> 12) & 1, tci & 0xFFF) == (6, 1, 0xABC), f"TCI {tci:#06x}"


def test_vlan_ppi_reserved_bits_ignored():
    assert rndis.vlan_ppi_to_tci(0xFFFF0000 | 0x645) == rndis.vlan_ppi_to_tci(0x645)


@given(
    ipv4=st.booleans(),
    ipv6=st.booleans(),
    tcp=st.booleans(),
    udp=st.booleans(),
    ip_header=st.booleans(),
    transport_offset=st.integers(0, 0x3FF),
)
def test_checksum_request_round_trip(ipv4, ipv6, tcp, udp, ip_header, transport_offset):
    value = rndis.encode_checksum_tx_request(
        ipv4=ipv4, ipv6=ipv6, tcp=tcp, udp=udp, ip_header=ip_header, transport_offset=transport_offset
    )
    assert value & ~(0x1F | 0x03FF0000) == 0, f"reserved bits set in {value:#010x}"
    back = rndis.decode_checksum_tx_request(value)
    expected = rndis.ChecksumTxRequest(ipv4, ipv6, tcp, udp, ip_header, transport_offset)
    assert back == expected, f"expected {expected}, decoded {back}"


@given(mss=st.integers(1, 0xFFFFF), offset=st.integers(0, 0x3FF), ipv6=st.booleans())
def test_lso_v2_round_trip(mss, offset, ipv6):
    value = rndis.encode_lso_v2(mss, offset, ipv6=ipv6)
    assert value & 0x40000000, f"LSO v2 type bit missing in {value:#010x}"
    assert bool(value & 0x80000000) == ipv6, f"IP version bit wrong in {value:#010x}"
    assert rndis.decode_lso_v2(value) == rndis.LsoV2(mss, offset, ipv6)


def test_receive_checksum_bits_match_spec():
    bits = [
        rndis.CHECKSUM_RX_TCP_FAILED,
        rndis.CHECKSUM_RX_UDP_FAILED,
        rndis.CHECKSUM_RX_IP_FAILED,
        rndis.CHECKSUM_RX_TCP_SUCCEEDED,
        rndis.CHECKSUM_RX_UDP_SUCCEEDED,
        rndis.CHECKSUM_RX_IP_SUCCEEDED,
        rndis.CHECKSUM_RX_LOOPBACK,
        rndis.CHECKSUM_RX_TCP_VALUE_INVALID,
        rndis.CHECKSUM_RX_IP_VALUE_INVALID,
    ]
    assert bits == [1 << n for n in range(9)], [hex(b) for b in bits]


def test_ppi_types_match_spec():
    types = {
        "checksum": rndis.PPI_TYPE_CHECKSUM_INFO,
        "lso": rndis.PPI_TYPE_LSO,
        "802.1q": rndis.PPI_TYPE_IEEE_8021Q,
        "hash value": rndis.PPI_TYPE_HASH_VALUE,
        "hash info": rndis.PPI_TYPE_HASH_INFO,
        "packet id": rndis.PPI_TYPE_PACKET_ID,
    }
    expected = {
        "checksum": 0,
        "lso": 2,
        "802.1q": 6,
        "hash value": 8,
        "hash info": 9,
        "packet id": 0x80000001,
    }
    assert types == expected


def test_hash_information_bits():
    assert ndis.RSS_HASH_INFORMATION_LINUX == 0x00001701, hex(ndis.RSS_HASH_INFORMATION_LINUX)
    udp = ndis.NDIS_HASH_UDP_IPV4 | ndis.NDIS_HASH_UDP_IPV6 | ndis.NDIS_HASH_UDP_IPV6_EX
    assert udp == 0x1C000, hex(udp)
    all_types = udp | 0x3F00
    assert all_types & ndis.NDIS_HASH_TYPE_MASK == all_types
    assert ndis.NDIS_HASH_FUNCTION_TOEPLITZ & ndis.NDIS_HASH_FUNCTION_MASK == 1


def test_packet_filter_values_used_by_guests():
    assert ndis.NDIS_PACKET_FILTER_DEFAULT == 0x0D
    promiscuous_off_allmulti = ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST
    assert promiscuous_off_allmulti == 0x09
    assert ndis.NDIS_PACKET_TYPE_PROMISCUOUS == 0x20
