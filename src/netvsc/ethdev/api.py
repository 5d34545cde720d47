"""The Port API (layer 6, ethdev): offload and RSS flags, value types, the ``Port`` protocol.

Every port type (the NetVSC port of ``pmd/``, and the AF_PACKET, TAP and failsafe ports of
``ethdev/``) implements ``Port``; applications such as ``netvsc info`` and testpmd are written
against it alone. The flags keep DPDK's names and bit values (``RTE_ETH_RX_OFFLOAD_*``,
``RTE_ETH_TX_OFFLOAD_*``, ``RTE_ETH_RSS_*``) so that a DPDK user reads them unchanged and a
capability mask printed by DPDK means the same here. This module imports nothing heavy: ``pmd/``
imports it, never the other way round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "DescLimits",
    "DevInfo",
    "LinkStatus",
    "Port",
    "PortStats",
    "QueueStats",
    "RssConf",
    "STATS_QUEUE_COUNT",
    "flag_names",
    "merge_desc_limits",
    "merge_vf_dev_info",
    "rss_type_names",
    "rx_offload_names",
    "tx_offload_names",
]

# ---------------------------------------------------------------------------------------------
# Receive offloads (DPDK RTE_ETH_RX_OFFLOAD_*, same bits)
# ---------------------------------------------------------------------------------------------
RX_OFFLOAD_VLAN_STRIP = 1 << 0
RX_OFFLOAD_IPV4_CKSUM = 1 << 1
RX_OFFLOAD_UDP_CKSUM = 1 << 2
RX_OFFLOAD_TCP_CKSUM = 1 << 3
RX_OFFLOAD_TCP_LRO = 1 << 4
RX_OFFLOAD_QINQ_STRIP = 1 << 5
RX_OFFLOAD_OUTER_IPV4_CKSUM = 1 << 6
RX_OFFLOAD_MACSEC_STRIP = 1 << 7
RX_OFFLOAD_VLAN_FILTER = 1 << 9
RX_OFFLOAD_VLAN_EXTEND = 1 << 10
RX_OFFLOAD_SCATTER = 1 << 13
RX_OFFLOAD_TIMESTAMP = 1 << 14
RX_OFFLOAD_SECURITY = 1 << 15
RX_OFFLOAD_KEEP_CRC = 1 << 16
RX_OFFLOAD_SCTP_CKSUM = 1 << 17
RX_OFFLOAD_OUTER_UDP_CKSUM = 1 << 18
RX_OFFLOAD_RSS_HASH = 1 << 19
RX_OFFLOAD_BUFFER_SPLIT = 1 << 20
RX_OFFLOAD_LRO = RX_OFFLOAD_TCP_LRO  # the short name the issue and testpmd use
RX_OFFLOAD_CHECKSUM = RX_OFFLOAD_IPV4_CKSUM | RX_OFFLOAD_UDP_CKSUM | RX_OFFLOAD_TCP_CKSUM
RX_OFFLOAD_VLAN = (
    RX_OFFLOAD_VLAN_STRIP | RX_OFFLOAD_VLAN_FILTER | RX_OFFLOAD_VLAN_EXTEND | RX_OFFLOAD_QINQ_STRIP
)

# ---------------------------------------------------------------------------------------------
# Transmit offloads (DPDK RTE_ETH_TX_OFFLOAD_*, same bits)
# ---------------------------------------------------------------------------------------------
TX_OFFLOAD_VLAN_INSERT = 1 << 0
TX_OFFLOAD_IPV4_CKSUM = 1 << 1
TX_OFFLOAD_UDP_CKSUM = 1 << 2
TX_OFFLOAD_TCP_CKSUM = 1 << 3
TX_OFFLOAD_SCTP_CKSUM = 1 << 4
TX_OFFLOAD_TCP_TSO = 1 << 5
TX_OFFLOAD_UDP_TSO = 1 << 6
TX_OFFLOAD_OUTER_IPV4_CKSUM = 1 << 7
TX_OFFLOAD_QINQ_INSERT = 1 << 8
TX_OFFLOAD_MT_LOCKFREE = 1 << 14
TX_OFFLOAD_MULTI_SEGS = 1 << 15
TX_OFFLOAD_MBUF_FAST_FREE = 1 << 16

# ---------------------------------------------------------------------------------------------
# RSS hash types (DPDK RTE_ETH_RSS_*, same bits)
# ---------------------------------------------------------------------------------------------
RSS_IPV4 = 1 << 2
RSS_FRAG_IPV4 = 1 << 3
RSS_NONFRAG_IPV4_TCP = 1 << 4
RSS_NONFRAG_IPV4_UDP = 1 << 5
RSS_NONFRAG_IPV4_SCTP = 1 << 6
RSS_NONFRAG_IPV4_OTHER = 1 << 7
RSS_IPV6 = 1 << 8
RSS_FRAG_IPV6 = 1 << 9
RSS_NONFRAG_IPV6_TCP = 1 << 10
RSS_NONFRAG_IPV6_UDP = 1 << 11
RSS_NONFRAG_IPV6_SCTP = 1 << 12
RSS_NONFRAG_IPV6_OTHER = 1 << 13
RSS_L2_PAYLOAD = 1 << 14
RSS_IPV6_EX = 1 << 15
RSS_IPV6_TCP_EX = 1 << 16
RSS_IPV6_UDP_EX = 1 << 17

# Groups, as DPDK defines them (RTE_ETH_RSS_IP / _TCP / _UDP)
RSS_IP = (
    RSS_IPV4
    | RSS_FRAG_IPV4
    | RSS_NONFRAG_IPV4_OTHER
    | RSS_IPV6
    | RSS_FRAG_IPV6
    | RSS_NONFRAG_IPV6_OTHER
    | RSS_IPV6_EX
)
RSS_TCP = RSS_NONFRAG_IPV4_TCP | RSS_NONFRAG_IPV6_TCP | RSS_IPV6_TCP_EX
RSS_UDP = RSS_NONFRAG_IPV4_UDP | RSS_NONFRAG_IPV6_UDP | RSS_IPV6_UDP_EX
# Linux ``rx-flow-hash`` semantics per protocol: hash on addresses only (L3) or addresses and
# ports (L4). The L3-only set is what NDIS calls IPv4 / IPv6 / IPv6-EX hashing.
RSS_L3_ONLY = RSS_IPV4 | RSS_IPV6 | RSS_IPV6_EX
RSS_L4 = RSS_TCP | RSS_UDP
RSS_L3_L4 = RSS_L3_ONLY | RSS_L4

# Per-queue basic statistics cover the first 16 queues (DPDK RTE_ETHDEV_QUEUE_STAT_CNTRS).
STATS_QUEUE_COUNT = 16


def flag_names(bits: int, prefix: str) -> list[str]:
    """Names (without ``prefix``) of the single-bit constants ``<prefix><NAME>`` set in ``bits``.

    Lowest bit first; an alias defined after its canonical name (``RX_OFFLOAD_LRO``) and the
    multi-bit groups are left out; bits without a name appear as ``0x...``.
    """
    by_bit: dict[int, str] = {}
    for name, value in globals().items():  # definition order: canonical names come first
        if name.startswith(prefix) and isinstance(value, int) and value > 0 and not value & (value - 1):
            by_bit.setdefault(value, name[len(prefix) :])
    names = []
    bit = 1
    while bit <= bits:
        if bits & bit:
            names.append(by_bit.get(bit, hex(bit)))
        bit <<= 1
    return names


def rx_offload_names(bits: int) -> list[str]:
    return flag_names(bits, "RX_OFFLOAD_")


def tx_offload_names(bits: int) -> list[str]:
    return flag_names(bits, "TX_OFFLOAD_")


def rss_type_names(bits: int) -> list[str]:
    return flag_names(bits, "RSS_")


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescLimits:
    """Descriptor-count limits of a queue (DPDK ``rte_eth_desc_lim``)."""

    nb_min: int
    nb_max: int
    nb_align: int
    nb_seg_max: int = 65535  # segments of one packet
    nb_mtu_seg_max: int = 65535  # segments of one MTU-sized (non-TSO) packet


@dataclass(frozen=True)
class DevInfo:
    """What a port can do (pmd.md 1.2); the NetVSC port fills it from the host's answers."""

    driver_name: str
    max_rx_queues: int
    max_tx_queues: int
    min_rx_bufsize: int
    max_rx_pktlen: int
    max_mac_addrs: int
    rx_offload_capa: int
    tx_offload_capa: int
    flow_type_rss_offloads: int
    hash_key_size: int
    reta_size: int
    rx_desc_lim: DescLimits
    tx_desc_lim: DescLimits
    min_mtu: int
    max_mtu: int
    speed_capa_mbps: int
    nvs_version: int  # negotiated NVSP version (0 for port types without one)
    ndis_version: int  # negotiated NDIS version as (major << 16) | minor (0 without one)
    device: str = ""  # instance GUID, interface name or other identity of the device
    rx_queue_offload_capa: int = 0  # offloads settable per queue (none for NetVSC)
    tx_queue_offload_capa: int = 0
    vf_attached: bool = False  # capabilities are merged with an attached VF's (pmd.md 1.2)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def merge_desc_limits(synthetic: DescLimits, vf: DescLimits) -> DescLimits:
    """Limits both devices accept: max = min, min = max, alignment = max, segment maxima = min.

    DPDK pitfall avoided: its merge copies the VF's segment maximum into the per-MTU segment
    maximum; here each field is merged with its own counterpart.
    """
    return DescLimits(
        nb_min=max(synthetic.nb_min, vf.nb_min),
        nb_max=min(synthetic.nb_max, vf.nb_max),
        nb_align=max(synthetic.nb_align, vf.nb_align),
        nb_seg_max=min(synthetic.nb_seg_max, vf.nb_seg_max),
        nb_mtu_seg_max=min(synthetic.nb_mtu_seg_max, vf.nb_mtu_seg_max),
    )


def merge_vf_dev_info(synthetic: DevInfo, vf: DevInfo) -> DevInfo:
    """dev_info of a port with an attached VF (pmd.md 1.2, pmd#14): what both paths can do.

    Speed capability is the VF's; queue maxima the minimum; offload capabilities and RSS flow
    types the intersection; min RX buffer size and max RX packet length the larger of the two;
    descriptor limits as ``merge_desc_limits``. Versions and identity stay the synthetic port's.
    """
    return dataclasses.replace(
        synthetic,
        max_rx_queues=min(synthetic.max_rx_queues, vf.max_rx_queues),
        max_tx_queues=min(synthetic.max_tx_queues, vf.max_tx_queues),
        min_rx_bufsize=max(synthetic.min_rx_bufsize, vf.min_rx_bufsize),
        max_rx_pktlen=max(synthetic.max_rx_pktlen, vf.max_rx_pktlen),
        rx_offload_capa=synthetic.rx_offload_capa & vf.rx_offload_capa,
        tx_offload_capa=synthetic.tx_offload_capa & vf.tx_offload_capa,
        rx_queue_offload_capa=synthetic.rx_queue_offload_capa & vf.rx_queue_offload_capa,
        tx_queue_offload_capa=synthetic.tx_queue_offload_capa & vf.tx_queue_offload_capa,
        flow_type_rss_offloads=synthetic.flow_type_rss_offloads & vf.flow_type_rss_offloads,
        rx_desc_lim=merge_desc_limits(synthetic.rx_desc_lim, vf.rx_desc_lim),
        tx_desc_lim=merge_desc_limits(synthetic.tx_desc_lim, vf.tx_desc_lim),
        speed_capa_mbps=vf.speed_capa_mbps,
        vf_attached=True,
    )


@dataclass(frozen=True)
class LinkStatus:
    """Link state as ``link_update`` reports it (pmd.md 1.9)."""

    up: bool
    speed_mbps: int
    full_duplex: bool = True
    autoneg: bool = False


@dataclass(frozen=True)
class RssConf:
    """RSS configuration: the Toeplitz key and the ``RSS_*`` hash types in effect or requested."""

    key: bytes
    hash_types: int


@dataclass
class QueueStats:
    """Basic counters of one queue, as ``PortStats.rx_queue``/``tx_queue`` return them."""

    packets: int = 0
    bytes: int = 0
    errors: int = 0


def _queue_array() -> list[int]:
    return [0] * STATS_QUEUE_COUNT


@dataclass
class PortStats:
    """Basic port statistics (pmd.md 1.10): totals, and per-queue counters of the first 16 queues."""

    ipackets: int = 0
    opackets: int = 0
    ibytes: int = 0
    obytes: int = 0
    imissed: int = 0
    ierrors: int = 0
    oerrors: int = 0
    rx_nombuf: int = 0
    q_ipackets: list[int] = field(default_factory=_queue_array)
    q_opackets: list[int] = field(default_factory=_queue_array)
    q_ibytes: list[int] = field(default_factory=_queue_array)
    q_obytes: list[int] = field(default_factory=_queue_array)
    q_errors: list[int] = field(default_factory=_queue_array)  # receive errors per queue

    def rx_queue(self, queue: int) -> QueueStats:
        return QueueStats(self.q_ipackets[queue], self.q_ibytes[queue], self.q_errors[queue])

    def tx_queue(self, queue: int) -> QueueStats:
        return QueueStats(self.q_opackets[queue], self.q_obytes[queue], 0)

    def __add__(self, other: PortStats) -> PortStats:
        """Element-wise sum (the synthetic port's counters plus an attached VF's, pmd#43)."""
        summed = {}
        for name, mine in asdict(self).items():
            theirs = getattr(other, name)
            summed[name] = (
                [a + b for a, b in zip(mine, theirs, strict=True)]
                if isinstance(mine, list)
                else (mine + theirs)
            )
        return PortStats(**summed)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


LinkCallback = Callable[[LinkStatus], None]


@runtime_checkable
class Port(Protocol):
    """The operations every port type offers (DPDK's ethdev ops, in Python form).

    Bad arguments raise ``ConfigError`` (a ``ValueError``) naming the parameter, the value and
    what is accepted; an operation the port type cannot do raises ``NotSupportedError`` (a
    ``NotImplementedError``) naming the operation and why; a device or host that fails raises
    ``DeviceError`` or ``ProtocolError``.
    """

    @property
    def mac_address(self) -> bytes:
        """The port's 6-byte MAC address."""
        ...

    @property
    def mtu(self) -> int:
        """The IP MTU in effect (frame length minus 14-byte Ethernet header, no FCS)."""
        ...

    def dev_info(self) -> DevInfo: ...

    def configure(
        self,
        nb_rxq: int,
        nb_txq: int,
        *,
        rss: RssConf | None = None,
        rx_offloads: int = 0,
        tx_offloads: int = 0,
    ) -> None:
        """Set the queue counts, RSS (None = no RSS) and the port offloads; port must be stopped."""
        ...

    def rx_queue_setup(self, queue: int, nb_desc: int, **kw: object) -> None: ...

    def tx_queue_setup(self, queue: int, nb_desc: int, *, tx_free_thresh: int | None = None) -> None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None:
        """Release everything the port holds; calling it again does nothing."""
        ...

    def reset(self) -> None:
        """Stop and bring the port back to its just-opened state (where the port type can)."""
        ...

    def mac_addr_set(self, mac: bytes) -> None:
        """Change the port's MAC address."""
        ...

    def vlan_filter_set(self, vlan_id: int, on: bool = True) -> None:
        """Accept (``on``) or refuse frames of VLAN ``vlan_id``."""
        ...

    def flow_ctrl_set(self, conf: object) -> None:
        """Set link flow control (pause frames)."""
        ...

    def rx_queue_start(self, queue: int) -> None: ...

    def rx_queue_stop(self, queue: int) -> None: ...

    def tx_queue_start(self, queue: int) -> None: ...

    def tx_queue_stop(self, queue: int) -> None: ...

    def promiscuous_enable(self) -> None: ...

    def promiscuous_disable(self) -> None: ...

    def allmulticast_enable(self) -> None: ...

    def allmulticast_disable(self) -> None: ...

    def set_mc_addr_list(self, addrs: Sequence[bytes]) -> None: ...

    def set_mtu(self, mtu: int) -> None: ...

    def link_update(self, wait: bool = False) -> LinkStatus: ...

    def on_link_change(self, callback: LinkCallback | None) -> None:
        """Call ``callback(LinkStatus)`` after each link change (the stored link already refreshed)."""
        ...

    def rss_hash_update(self, conf: RssConf) -> None: ...

    def rss_hash_conf_get(self) -> RssConf: ...

    def reta_update(self, entries: Sequence[int], mask: Sequence[bool] | None = None) -> None: ...

    def reta_query(self) -> list[int]: ...

    def stats(self) -> PortStats: ...

    def stats_reset(self) -> None: ...

    def xstats(self) -> list[tuple[str, int]]: ...

    def xstats_reset(self) -> None: ...
