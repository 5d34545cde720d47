"""Per-queue counters, basic statistics and xstats of the NetVSC port (layer 5, pmd; pmd.md 1.10-1.11).

``QueueCounters`` holds the counters of all RX (or all TX) queues of a port in one int64 numpy
array, one row per queue and one column per counter, so the data-path kernels update a row in
place without a Python object per packet. The numba helpers below are the one place where the
size bins and the multicast/broadcast rule live (pmd#47).

Counter meanings (pmd.md 1.11): RX counts at delivery to the staging ring; TX counts size bins
and multicast/broadcast when a packet is accepted (copied to the chimney or handed to the host)
and good_packets/good_bytes when the host's completion comes back.

Differences from DPDK, on purpose (DESIGN.md section 7.1):

- DPDK's two names with a space, "ring full" and "channel full", are spelled ``ring_full`` and
  ``channel_full`` (the issue asks for it; tools split xstats names on spaces).
- The generic per-queue ``rx_qN_errors`` name is not emitted a second time beside the driver's
  own ``rx_qN_errors`` (DPDK pitfall: the name appears twice, the generic one always 0).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from netvsc.ethdev.api import STATS_QUEUE_COUNT, PortStats

__all__ = [
    "COUNTER_NAMES",
    "NB_COUNTERS",
    "XSTATS_NAMES",
    "QueueCounters",
    "count_accepted",
    "count_completed",
    "count_delivered",
    "count_rx_ring_full",
    "generic_xstats",
    "port_stats",
    "port_xstats",
    "size_bin",
    "xstats",
    "xstats_names",
]

# Column of each counter in a queue's row. The first 15 are the driver xstats of pmd#45, in
# DPDK's order; NOMBUF and IMISSED feed the basic stats only.
GOOD_PACKETS = 0
GOOD_BYTES = 1
ERRORS = 2
RING_FULL = 3
CHANNEL_FULL = 4
MULTICAST_PACKETS = 5
BROADCAST_PACKETS = 6
UNDERSIZE_PACKETS = 7
SIZE_64_PACKETS = 8
SIZE_65_127_PACKETS = 9
SIZE_128_255_PACKETS = 10
SIZE_256_511_PACKETS = 11
SIZE_512_1023_PACKETS = 12
SIZE_1024_1518_PACKETS = 13
SIZE_1519_MAX_PACKETS = 14
NOMBUF = 15
IMISSED = 16
NB_COUNTERS = 17

XSTATS_NAMES = (
    "good_packets",
    "good_bytes",
    "errors",
    "ring_full",
    "channel_full",
    "multicast_packets",
    "broadcast_packets",
    "undersize_packets",
    "size_64_packets",
    "size_65_127_packets",
    "size_128_255_packets",
    "size_256_511_packets",
    "size_512_1023_packets",
    "size_1024_1518_packets",
    "size_1519_max_packets",
)
COUNTER_NAMES = XSTATS_NAMES + ("nombuf", "imissed")


@njit(nogil=True, cache=True)
def size_bin(length):
    """The column of the size bin of a frame of ``length`` bytes (pmd#47)."""
    if length < 64:
        return UNDERSIZE_PACKETS
    if length == 64:
        return SIZE_64_PACKETS
    if length <= 127:
        return SIZE_65_127_PACKETS
    if length <= 255:
        return SIZE_128_255_PACKETS
    if length <= 511:
        return SIZE_256_511_PACKETS
    if length <= 1023:
        return SIZE_512_1023_PACKETS
    if length <= 1518:
        return SIZE_1024_1518_PACKETS
    return SIZE_1519_MAX_PACKETS


@njit(nogil=True, cache=True)
def count_accepted(row, frame, offset, length):
    """Size bin and multicast/broadcast of the frame at ``frame[offset:offset + length]``.

    ``row`` is one queue's counter row. The destination MAC is read only when the frame holds
    one and lies inside ``frame`` (a short or out-of-range frame is binned, not classified).
    Broadcast (all ones) is counted as broadcast only, never also as multicast.
    """
    row[size_bin(length)] += 1
    if length < 6 or offset < 0 or offset + 6 > frame.shape[0]:
        return
    if frame[offset] & 1:  # group bit of the destination address
        broadcast = True
        for i in range(6):
            if frame[offset + i] != 0xFF:
                broadcast = False
                break
        if broadcast:
            row[BROADCAST_PACKETS] += 1
        else:
            row[MULTICAST_PACKETS] += 1


@njit(nogil=True, cache=True)
def count_completed(row, packets, nbytes):
    """``packets`` packets of ``nbytes`` bytes in all completed (TX) or delivered (RX)."""
    row[GOOD_PACKETS] += packets
    row[GOOD_BYTES] += nbytes


@njit(nogil=True, cache=True)
def count_delivered(row, frame, offset, length):
    """An RX frame handed to the staging ring: good counters, size bin, multicast/broadcast."""
    row[GOOD_PACKETS] += 1
    row[GOOD_BYTES] += length
    count_accepted(row, frame, offset, length)


@njit(nogil=True, cache=True)
def count_rx_ring_full(row):
    """An RX frame dropped because the staging ring was full: xstat ring_full and basic imissed."""
    row[RING_FULL] += 1
    row[IMISSED] += 1


class QueueCounters:
    """Counters of ``nb_queues`` queues of one direction: ``values[queue, column]`` (int64).

    ``row(queue)`` is the view a kernel updates; ``reset`` zeroes in place so views handed out
    earlier stay valid. Each counter is also readable by name: ``counters.good_packets`` is the
    column over all queues.
    """

    def __init__(self, nb_queues: int) -> None:
        if isinstance(nb_queues, bool) or not isinstance(nb_queues, int) or nb_queues < 0:
            raise ValueError(f"nb_queues must be a non-negative int, got {nb_queues!r}")
        self.values = np.zeros((nb_queues, NB_COUNTERS), dtype=np.int64)

    @property
    def nb_queues(self) -> int:
        return self.values.shape[0]

    def row(self, queue: int) -> np.ndarray:
        return self.values[queue]

    def reset(self) -> None:
        self.values[:] = 0

    def resize(self, nb_queues: int) -> None:
        """Change the queue count (after a reconfigure); counters of kept queues survive."""
        new = np.zeros((nb_queues, NB_COUNTERS), dtype=np.int64)
        kept = min(nb_queues, self.nb_queues)
        new[:kept] = self.values[:kept]
        self.values = new

    def total(self, column: int) -> int:
        return int(self.values[:, column].sum())

    def __getattr__(self, name: str) -> np.ndarray:
        if name in _COLUMN_OF:
            return self.values[:, _COLUMN_OF[name]]
        raise AttributeError(name)


_COLUMN_OF = {name: column for column, name in enumerate(COUNTER_NAMES)}


def xstats_names(nb_rxq: int, nb_txq: int) -> list[str]:
    """Driver xstats names (pmd#45): ``tx_qN_<name>`` for each TX queue, then ``rx_qN_<name>``."""
    names = [f"tx_q{queue}_{name}" for queue in range(nb_txq) for name in XSTATS_NAMES]
    names += [f"rx_q{queue}_{name}" for queue in range(nb_rxq) for name in XSTATS_NAMES]
    return names


def xstats(rx: QueueCounters, tx: QueueCounters) -> list[tuple[str, int]]:
    """Driver xstats (name, value), in ``xstats_names`` order; every queue, no 16-queue cap."""
    names = xstats_names(rx.nb_queues, tx.nb_queues)
    values = np.concatenate(
        [tx.values[:, : len(XSTATS_NAMES)].reshape(-1), rx.values[:, : len(XSTATS_NAMES)].reshape(-1)]
    )
    return [(name, int(value)) for name, value in zip(names, values, strict=True)]


def port_stats(rx: QueueCounters, tx: QueueCounters, vf: PortStats | None = None) -> PortStats:
    """Basic stats (pmd#43-44): sums over the queues, per-queue values for the first 16 queues.

    ipackets/ibytes = RX good, opackets/obytes = TX completed good, ierrors/oerrors = errors,
    imissed = RX staging-ring-full drops, rx_nombuf = RX buffer allocation failures. An attached
    VF's stats are added in (the synthetic port reports the sum of both paths).
    """
    stats = PortStats(
        ipackets=rx.total(GOOD_PACKETS),
        opackets=tx.total(GOOD_PACKETS),
        ibytes=rx.total(GOOD_BYTES),
        obytes=tx.total(GOOD_BYTES),
        imissed=rx.total(IMISSED),
        ierrors=rx.total(ERRORS),
        oerrors=tx.total(ERRORS),
        rx_nombuf=rx.total(NOMBUF),
    )
    for queue in range(min(rx.nb_queues, STATS_QUEUE_COUNT)):
        stats.q_ipackets[queue] = int(rx.values[queue, GOOD_PACKETS])
        stats.q_ibytes[queue] = int(rx.values[queue, GOOD_BYTES])
        stats.q_errors[queue] = int(rx.values[queue, ERRORS])
    for queue in range(min(tx.nb_queues, STATS_QUEUE_COUNT)):
        stats.q_opackets[queue] = int(tx.values[queue, GOOD_PACKETS])
        stats.q_obytes[queue] = int(tx.values[queue, GOOD_BYTES])
    return stats + vf if vf is not None else stats


def generic_xstats(stats: PortStats, nb_rxq: int, nb_txq: int) -> list[tuple[str, int]]:
    """The ethdev layer's xstats from basic stats (pmd.md 1.11 items 1-2), first 16 queues.

    ``rx_qN_errors`` is left out here: the driver list carries it (DPDK pitfall: emitted twice).
    """
    pairs = [
        ("rx_good_packets", stats.ipackets),
        ("tx_good_packets", stats.opackets),
        ("rx_good_bytes", stats.ibytes),
        ("tx_good_bytes", stats.obytes),
        ("rx_missed_errors", stats.imissed),
        ("rx_errors", stats.ierrors),
        ("tx_errors", stats.oerrors),
        ("rx_mbuf_allocation_errors", stats.rx_nombuf),
    ]
    for queue in range(min(nb_rxq, STATS_QUEUE_COUNT)):
        pairs += [
            (f"rx_q{queue}_packets", stats.q_ipackets[queue]),
            (f"rx_q{queue}_bytes", stats.q_ibytes[queue]),
        ]
    for queue in range(min(nb_txq, STATS_QUEUE_COUNT)):
        pairs += [
            (f"tx_q{queue}_packets", stats.q_opackets[queue]),
            (f"tx_q{queue}_bytes", stats.q_obytes[queue]),
        ]
    return pairs


def port_xstats(
    rx: QueueCounters,
    tx: QueueCounters,
    vf: PortStats | None = None,
    vf_xstats: list[tuple[str, int]] | None = None,
) -> list[tuple[str, int]]:
    """The full xstats list of a port: generic names, driver names, then the VF's with ``vf_`` (pmd#46).

    ``vf`` (the VF's basic stats) is added into the generic totals; ``vf_xstats`` (the VF's own
    list) is appended after the synthetic entries, so the position of an entry (its id) in the
    synthetic part does not depend on whether a VF is attached.
    """
    pairs = generic_xstats(port_stats(rx, tx, vf), rx.nb_queues, tx.nb_queues) + xstats(rx, tx)
    if vf_xstats:
        pairs += [(f"vf_{name}", int(value)) for name, value in vf_xstats]
    return pairs
