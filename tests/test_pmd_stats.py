"""Per-queue counters, basic stats and xstats of the NetVSC port (spec/pmd.md 1.10-1.11).

Expectations are computed by hand from the frames fed in, never by the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from netvsc.ethdev.api import PortStats
from netvsc.pmd import stats
from netvsc.pmd.stats import (
    XSTATS_NAMES,
    QueueCounters,
    count_accepted,
    count_completed,
    count_delivered,
    count_rx_ring_full,
    port_stats,
    port_xstats,
    size_bin,
    xstats,
    xstats_names,
)

BROADCAST = bytes([0xFF] * 6)
MULTICAST = bytes.fromhex("01005e000001")  # IPv4 multicast group MAC
IPV6_MULTICAST = bytes.fromhex("333300000001")
UNICAST = bytes.fromhex("0215 5d00 0001".replace(" ", ""))
ALMOST_BROADCAST = bytes.fromhex("ffffffffff fe".replace(" ", ""))  # group bit set, not all ones


def frame(dst: bytes, length: int) -> np.ndarray:
    data = np.zeros(max(length, 0), dtype=np.uint8)
    data[: min(6, length)] = np.frombuffer(dst, dtype=np.uint8)[: min(6, length)]
    return data


def test_xstats_names_and_order():
    """pmd#45: the 15 names per queue, TX queues first then RX, ring_full/channel_full with underscores."""
    assert XSTATS_NAMES == (
        "good_packets", "good_bytes", "errors", "ring_full", "channel_full", "multicast_packets",
        "broadcast_packets", "undersize_packets", "size_64_packets", "size_65_127_packets",
        "size_128_255_packets", "size_256_511_packets", "size_512_1023_packets",
        "size_1024_1518_packets", "size_1519_max_packets",
    )  # fmt: skip
    names = xstats_names(nb_rxq=2, nb_txq=3)
    assert len(names) == 15 * 5
    assert names[0] == "tx_q0_good_packets"
    assert names[15 * 2 + 14] == "tx_q2_size_1519_max_packets"
    assert names[15 * 3] == "rx_q0_good_packets"
    assert names[-1] == "rx_q1_size_1519_max_packets"
    assert "tx_q1_ring_full" in names and "rx_q0_channel_full" in names
    assert not any(" " in name for name in names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("length", "column"),
    [
        (0, stats.UNDERSIZE_PACKETS),
        (63, stats.UNDERSIZE_PACKETS),
        (64, stats.SIZE_64_PACKETS),
        (65, stats.SIZE_65_127_PACKETS),
        (127, stats.SIZE_65_127_PACKETS),
        (128, stats.SIZE_128_255_PACKETS),
        (255, stats.SIZE_128_255_PACKETS),
        (256, stats.SIZE_256_511_PACKETS),
        (511, stats.SIZE_256_511_PACKETS),
        (512, stats.SIZE_512_1023_PACKETS),
        (1023, stats.SIZE_512_1023_PACKETS),
        (1024, stats.SIZE_1024_1518_PACKETS),
        (1518, stats.SIZE_1024_1518_PACKETS),
        (1519, stats.SIZE_1519_MAX_PACKETS),
        (9000, stats.SIZE_1519_MAX_PACKETS),
    ],
)
def test_size_bin_edges(length, column):
    """pmd#47: <64, 64, 65-127, 128-255, 256-511, 512-1023, 1024-1518, >=1519."""
    assert size_bin(length) == column


def test_broadcast_is_not_multicast():
    """pmd#47: all-ones counts as broadcast only; other group addresses as multicast; unicast as neither."""
    counters = QueueCounters(1)
    row = counters.row(0)
    for dst in (BROADCAST, BROADCAST, MULTICAST, IPV6_MULTICAST, ALMOST_BROADCAST, UNICAST):
        data = frame(dst, 64)
        count_accepted(row, data, 0, 64)
    assert counters.broadcast_packets[0] == 2
    assert counters.multicast_packets[0] == 3
    assert counters.size_64_packets[0] == 6
    assert counters.good_packets[0] == 0, (
        "acceptance alone does not count good packets (TX counts on completion)"
    )


def test_destination_read_at_offset_and_never_out_of_range():
    """pmd#47: the MAC is read at the offset; a frame under 6 bytes or past the buffer is only binned."""
    counters = QueueCounters(1)
    row = counters.row(0)
    buffer = np.zeros(100, dtype=np.uint8)
    buffer[40:46] = np.frombuffer(BROADCAST, dtype=np.uint8)
    count_accepted(row, buffer, 40, 60)
    count_accepted(row, buffer, 0, 3)  # too short for a MAC
    count_accepted(row, buffer, 97, 64)  # MAC would run past the buffer
    assert counters.broadcast_packets[0] == 1
    assert counters.multicast_packets[0] == 0
    assert counters.undersize_packets[0] == 2
    assert counters.size_64_packets[0] == 1


def test_rx_delivery_and_drops_hand_computed():
    """pmd#43, pmd#45, pmd#47: two RX queues, known frames, every counter checked."""
    rx = QueueCounters(2)
    q0, q1 = rx.row(0), rx.row(1)
    # queue 0: 60-byte broadcast, 1000-byte unicast, 1600-byte multicast
    for dst, length in ((BROADCAST, 60), (UNICAST, 1000), (MULTICAST, 1600)):
        count_delivered(q0, frame(dst, length), 0, length)
    # queue 1: 128-byte unicast, two ring-full drops, one error, one nombuf
    count_delivered(q1, frame(UNICAST, 128), 0, 128)
    count_rx_ring_full(q1)
    count_rx_ring_full(q1)
    q1[stats.ERRORS] += 1
    q1[stats.NOMBUF] += 1
    tx = QueueCounters(1)
    count_accepted(tx.row(0), frame(UNICAST, 200), 0, 200)
    count_completed(tx.row(0), 1, 200)
    tx.row(0)[stats.ERRORS] += 1
    tx.row(0)[stats.CHANNEL_FULL] += 1

    basic = port_stats(rx, tx)
    assert (basic.ipackets, basic.ibytes) == (4, 60 + 1000 + 1600 + 128)
    assert (basic.opackets, basic.obytes) == (1, 200)
    assert (basic.imissed, basic.ierrors, basic.oerrors, basic.rx_nombuf) == (2, 1, 1, 1)
    assert basic.q_ipackets[:3] == [3, 1, 0]
    assert basic.q_ibytes[:2] == [2660, 128]
    assert basic.q_errors[:2] == [0, 1]
    assert basic.rx_queue(1).packets == 1 and basic.tx_queue(0).bytes == 200

    values = dict(xstats(rx, tx))
    assert values["rx_q0_good_packets"] == 3
    assert values["rx_q0_good_bytes"] == 2660
    assert values["rx_q0_broadcast_packets"] == 1
    assert values["rx_q0_multicast_packets"] == 1
    assert values["rx_q0_undersize_packets"] == 1
    assert values["rx_q0_size_512_1023_packets"] == 1
    assert values["rx_q0_size_1519_max_packets"] == 1
    assert values["rx_q1_size_128_255_packets"] == 1
    assert values["rx_q1_ring_full"] == 2
    assert values["rx_q1_errors"] == 1
    assert values["tx_q0_size_128_255_packets"] == 1
    assert values["tx_q0_channel_full"] == 1
    assert values["tx_q0_errors"] == 1
    assert list(values) == xstats_names(2, 1)


def test_basic_per_queue_stats_cover_the_first_16_queues_and_xstats_all():
    """pmd#44, pmd#45: 20 queues: per-queue basic stats stop at 16, totals and driver xstats do not."""
    rx = QueueCounters(20)
    tx = QueueCounters(20)
    for queue in range(20):
        count_completed(rx.row(queue), queue + 1, 100 * (queue + 1))
        count_completed(tx.row(queue), 2, 10)
    basic = port_stats(rx, tx)
    assert len(basic.q_ipackets) == 16
    assert basic.q_ipackets == [queue + 1 for queue in range(16)]
    assert basic.q_opackets == [2] * 16
    assert basic.ipackets == sum(range(1, 21)) == 210
    assert basic.opackets == 40
    names = dict(xstats(rx, tx))
    assert names["rx_q19_good_packets"] == 20
    assert names["tx_q19_good_bytes"] == 10


def test_vf_counters_are_added():
    """pmd#43: the port's basic stats are the synthetic counters plus the VF's."""
    rx, tx = QueueCounters(1), QueueCounters(1)
    count_completed(rx.row(0), 5, 500)
    vf = PortStats(ipackets=10, ibytes=1000, imissed=3, rx_nombuf=2)
    vf.q_ipackets[0] = 10
    total = port_stats(rx, tx, vf)
    assert (total.ipackets, total.ibytes, total.imissed, total.rx_nombuf) == (15, 1500, 3, 2)
    assert total.q_ipackets[0] == 15


def test_generic_xstats_come_first_without_a_duplicate_rx_errors():
    """pmd#45: generic names, then the driver's; rx_qN_errors appears once (DPDK pitfall: twice)."""
    rx, tx = QueueCounters(2), QueueCounters(1)
    count_completed(rx.row(1), 1, 64)
    pairs = port_xstats(rx, tx)
    names = [name for name, _ in pairs]
    assert names[:8] == [
        "rx_good_packets", "tx_good_packets", "rx_good_bytes", "tx_good_bytes",
        "rx_missed_errors", "rx_errors", "tx_errors", "rx_mbuf_allocation_errors",
    ]  # fmt: skip
    assert names[8:14] == [
        "rx_q0_packets",
        "rx_q0_bytes",
        "rx_q1_packets",
        "rx_q1_bytes",
        "tx_q0_packets",
        "tx_q0_bytes",
    ]
    assert names[14:] == xstats_names(2, 1)
    assert len(set(names)) == len(names)
    assert dict(pairs)["rx_q1_packets"] == 1 and dict(pairs)["rx_good_bytes"] == 64


def test_reset_zeroes_in_place():
    """pmd#48: reset zeroes every counter; a row view held by a kernel keeps counting into the array."""
    rx = QueueCounters(2)
    row = rx.row(1)
    count_delivered(row, frame(BROADCAST, 70), 0, 70)
    count_rx_ring_full(row)
    assert rx.values.any()
    rx.reset()
    assert not rx.values.any()
    assert port_stats(rx, QueueCounters(0)) == PortStats()
    assert all(value == 0 for _, value in xstats(rx, QueueCounters(0)))
    count_completed(row, 1, 70)
    assert rx.good_packets[1] == 1, "the view handed out before the reset still updates the counters"


def test_resize_keeps_counters_of_kept_queues():
    """pmd#48: a reconfigure to fewer or more queues keeps what the surviving queues counted."""
    rx = QueueCounters(3)
    count_completed(rx.row(0), 7, 7)
    rx.resize(1)
    assert rx.nb_queues == 1 and rx.good_packets[0] == 7
    rx.resize(4)
    assert rx.nb_queues == 4 and list(rx.good_packets) == [7, 0, 0, 0]
    with pytest.raises(AttributeError):
        _ = rx.no_such_counter
    with pytest.raises(ValueError, match="nb_queues"):
        QueueCounters(-1)


def test_vf_xstats_are_appended_with_a_prefix():
    """pmd#46: VF xstats follow the synthetic ones, prefixed vf_, their ids continuing after them."""
    rx, tx = QueueCounters(1), QueueCounters(1)
    synthetic = port_xstats(rx, tx)
    vf_pairs = [("rx_good_packets", 9), ("rx_q0_bytes", 900)]
    combined = port_xstats(rx, tx, vf_xstats=vf_pairs)
    assert combined[: len(synthetic)] == synthetic
    assert combined[len(synthetic) :] == [("vf_rx_good_packets", 9), ("vf_rx_q0_bytes", 900)]
