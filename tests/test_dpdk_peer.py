"""``netvsc.apps.dpdk_peer``: DPDK testpmd's receive rate through the emulated host, and the
testpmd output parsers it relies on (those need no DPDK)."""

from __future__ import annotations

import pytest

from netvsc.apps.dpdk_peer import run_dpdk_peer
from netvsc.apps.dpdk_testpmd import parse_counters, parse_fields
from netvsc.errors import ConfigError

PORT_STATS = """
  ######################## NIC statistics for port 0  ########################
  RX-packets: 4122232    RX-missed: 12         RX-bytes:  263822848
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 0          TX-errors: 0          TX-bytes:  0
"""


def test_stats_and_info_blocks_are_parsed():
    assert parse_counters(PORT_STATS) == {
        "RX-packets": 4122232,
        "RX-missed": 12,
        "RX-bytes": 263822848,
        "RX-errors": 0,
        "RX-nombuf": 0,
        "TX-packets": 0,
        "TX-errors": 0,
        "TX-bytes": 0,
    }
    info = parse_fields("MAC address: 02:15:5D:00:00:01\nLink status: up\nMTU: 1500\n")
    assert info == {"MAC address": "02:15:5D:00:00:01", "Link status": "up", "MTU": "1500"}


@pytest.mark.parametrize(("seconds", "frame_size"), [(0, 64), (1, 63), (1, 1515)])
def test_bad_arguments_are_refused_before_anything_starts(seconds, frame_size):
    with pytest.raises(ConfigError):
        run_dpdk_peer(seconds, frame_size=frame_size)


@pytest.mark.dpdk
def test_dpdk_peer_measures_the_receive_rate(tmp_path):
    result = run_dpdk_peer(1.0, workdir=str(tmp_path))
    assert result.rx_packets > 0 and result.mpps > 0
    assert result.mpps == pytest.approx(result.rx_packets / result.seconds / 1e6)
    assert result.frame_size == 64 and result.receiver["RX-bytes"] == 64 * result.receiver["RX-packets"]
    assert [nic["index"] for nic in result.host] == [0, 1]
    assert result.host[0]["netvsp"]["tx_frames"] >= result.sender["TX-packets"] > 0
    assert result.host[1]["netvsp"]["rx_frames_delivered"] >= result.receiver["RX-packets"]
    assert list(tmp_path.iterdir()) == [], "the run removed its root"
    assert set(result.to_json()) >= {"mpps", "seconds", "rx_packets", "sender", "receiver", "host"}
