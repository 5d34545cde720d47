"""RSS of the NetVSC port: default key and indirection table, hash types, NDIS hash bits.

Layer 5 (pmd). Pure functions and one small state record, no I/O.

- Key: DPDK netvsc's default (``wire.ndis.TOEPLITZ_KEY_DPDK``, the mlx5 key), so the VF and the
  synthetic path put a flow on the same queue (pmd#20).
- Indirection table: 128 entries, entry i = i mod nb_rxq: RX queues only, never channels that
  exist for extra TX queues (pmd#19).
- Hash types per protocol at L3 or L4, the semantics of Linux's ``ethtool -N rx-flow-hash``
  (``sd`` = addresses = L3, ``sdfn`` = addresses and ports = L4); the default is L4 for TCP and UDP.
  Azure's advice for UDP: hash UDP at L3 (``flow_hash={"udp4": "l3", "udp6": "l3"}``) so that the
  fragments of a datagram, which carry no ports, and its first fragment, which does, land on the
  same queue; with L4 a fragmented datagram is split across queues and cannot be reassembled in
  one place. TCP does not fragment in practice and keeps L4.
- Mapping to NDIS hash bits: IPv4/IPv6/IPv6-EX address hashing, TCP over each; UDP over IPv4/IPv6
  only when the host's RSS capabilities advertise it (else UDP falls back to L3, as on Hyper-V).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from netvsc.errors import ConfigError
from netvsc.ethdev.api import (
    RSS_IPV4,
    RSS_IPV6,
    RSS_IPV6_EX,
    RSS_IPV6_TCP_EX,
    RSS_IPV6_UDP_EX,
    RSS_NONFRAG_IPV4_TCP,
    RSS_NONFRAG_IPV4_UDP,
    RSS_NONFRAG_IPV6_TCP,
    RSS_NONFRAG_IPV6_UDP,
)
from netvsc.wire import ndis

__all__ = [
    "DEFAULT_KEY",
    "KEY_SIZE",
    "RETA_SIZE",
    "RssState",
    "default_reta",
    "flow_types_from_capabilities",
    "hash_types_for_flow_hash",
    "hash_types_from_ndis",
    "ndis_hash_information",
    "validate_reta_update",
]

DEFAULT_KEY = ndis.TOEPLITZ_KEY_DPDK
KEY_SIZE = ndis.RSS_HASH_KEY_SIZE  # 40
RETA_SIZE = ndis.RSS_INDIRECTION_TABLE_ENTRIES  # 128

ALL_RSS_TYPES = (
    RSS_IPV4
    | RSS_NONFRAG_IPV4_TCP
    | RSS_NONFRAG_IPV4_UDP
    | RSS_IPV6
    | RSS_NONFRAG_IPV6_TCP
    | RSS_NONFRAG_IPV6_UDP
    | RSS_IPV6_EX
    | RSS_IPV6_TCP_EX
    | RSS_IPV6_UDP_EX
)

# RSS type -> (NDIS hash bit, host capability it needs, 0 = always there with RSS)
_NDIS_OF_TYPE = {
    RSS_IPV4: (ndis.NDIS_HASH_IPV4, 0),
    RSS_NONFRAG_IPV4_TCP: (ndis.NDIS_HASH_TCP_IPV4, ndis.RSS_CAP_TCP_IPV4),
    RSS_NONFRAG_IPV4_UDP: (ndis.NDIS_HASH_UDP_IPV4, ndis.RSS_CAP_UDP_IPV4),
    RSS_IPV6: (ndis.NDIS_HASH_IPV6, ndis.RSS_CAP_TCP_IPV6),
    RSS_NONFRAG_IPV6_TCP: (ndis.NDIS_HASH_TCP_IPV6, ndis.RSS_CAP_TCP_IPV6),
    RSS_NONFRAG_IPV6_UDP: (ndis.NDIS_HASH_UDP_IPV6, ndis.RSS_CAP_UDP_IPV6),
    RSS_IPV6_EX: (ndis.NDIS_HASH_IPV6_EX, ndis.RSS_CAP_TCP_IPV6_EX),
    RSS_IPV6_TCP_EX: (ndis.NDIS_HASH_TCP_IPV6_EX, ndis.RSS_CAP_TCP_IPV6_EX),
    RSS_IPV6_UDP_EX: (ndis.NDIS_HASH_UDP_IPV6_EX, ndis.RSS_CAP_UDP_IPV6_EX),
}

# rx-flow-hash protocols: (L3 types, extra L4 types)
_FLOW_HASH = {
    "tcp4": (RSS_IPV4, RSS_NONFRAG_IPV4_TCP),
    "udp4": (RSS_IPV4, RSS_NONFRAG_IPV4_UDP),
    "tcp6": (RSS_IPV6 | RSS_IPV6_EX, RSS_NONFRAG_IPV6_TCP | RSS_IPV6_TCP_EX),
    "udp6": (RSS_IPV6 | RSS_IPV6_EX, RSS_NONFRAG_IPV6_UDP | RSS_IPV6_UDP_EX),
}
FLOW_HASH_LEVELS = ("l3", "l4")


def default_reta(nb_rx_queues: int) -> list[int]:
    """Entry i = i mod nb_rx_queues (pmd#19)."""
    if nb_rx_queues < 1:
        raise ConfigError("nb_rx_queues", nb_rx_queues, "at least 1")
    return [i % nb_rx_queues for i in range(RETA_SIZE)]


def hash_types_for_flow_hash(flow_hash: Mapping[str, str] | None = None) -> int:
    """RSS types for per-protocol L3/L4 choices (default L4 for every protocol not named)."""
    choices = {name: "l4" for name in _FLOW_HASH}
    for name, level in (flow_hash or {}).items():
        if name not in _FLOW_HASH:
            raise ConfigError("flow_hash protocol", name, ", ".join(_FLOW_HASH))
        if level not in FLOW_HASH_LEVELS:
            raise ConfigError(f"flow_hash[{name}]", level, "'l3' (addresses) or 'l4' (addresses and ports)")
        choices[name] = level
    types = 0
    for name, level in choices.items():
        l3, l4 = _FLOW_HASH[name]
        types |= l3 | (l4 if level == "l4" else 0)
    return types


def flow_types_from_capabilities(capabilities_flags: int, nvs_version: int, nvs_v5: int) -> int:
    """RSS flow types the port reports (pmd#13), empty below NVSP 5: the IPv4 capability gives
    IPv4, IPv4-TCP and IPv4-UDP (UDP hashed at L3 where the host has no UDP capability), IPv6
    gives IPv6 and IPv6-TCP (and IPv6-UDP with the host's UDP capability), IPv6-EX gives IPv6-EX
    and IPv6-TCP-EX."""
    if nvs_version < nvs_v5:
        return 0
    types = 0
    if capabilities_flags & ndis.RSS_CAP_TCP_IPV4:
        types |= RSS_IPV4 | RSS_NONFRAG_IPV4_TCP | RSS_NONFRAG_IPV4_UDP
    if capabilities_flags & ndis.RSS_CAP_TCP_IPV6:
        types |= RSS_IPV6 | RSS_NONFRAG_IPV6_TCP
        if capabilities_flags & ndis.RSS_CAP_UDP_IPV6:
            types |= RSS_NONFRAG_IPV6_UDP
    if capabilities_flags & ndis.RSS_CAP_TCP_IPV6_EX:
        types |= RSS_IPV6_EX | RSS_IPV6_TCP_EX
    return types


def ndis_hash_information(hash_types: int, capabilities_flags: int) -> int:
    """Toeplitz plus the NDIS hash bits for ``hash_types`` the host can do.

    A UDP type the host cannot hash on ports degrades to the L3 type of its family.
    """
    bits = ndis.NDIS_HASH_FUNCTION_TOEPLITZ
    for rss_type, (ndis_bit, needed) in _NDIS_OF_TYPE.items():
        if not hash_types & rss_type:
            continue
        if needed and not capabilities_flags & needed:
            if rss_type == RSS_NONFRAG_IPV4_UDP:
                bits |= ndis.NDIS_HASH_IPV4
            elif rss_type in (RSS_NONFRAG_IPV6_UDP, RSS_IPV6_UDP_EX):
                bits |= ndis.NDIS_HASH_IPV6
            continue
        bits |= ndis_bit
    return bits


def hash_types_from_ndis(bits: int) -> int:
    types = 0
    for rss_type, (ndis_bit, _) in _NDIS_OF_TYPE.items():
        if bits & ndis_bit:
            types |= rss_type
    return types


def validate_key(key: bytes | None) -> bytes:
    if key is None:
        return DEFAULT_KEY
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise ConfigError("rss key length", len(key), f"exactly {KEY_SIZE} bytes")
    return key


def validate_hash_types(hash_types: int, supported: int) -> int:
    unsupported = hash_types & ~supported
    if hash_types < 0 or unsupported:
        raise ConfigError(
            "rss hash types",
            hex(hash_types),
            f"a subset of {supported:#x}",
            f"unsupported bits {unsupported:#x}",
        )
    return hash_types


def validate_reta_update(
    current: Sequence[int], entries: Sequence[int], mask: Sequence[bool] | None, nb_rx_queues: int
) -> list[int]:
    """The new table, checked in full before anything changes (pmd#51; DPDK pitfall avoided:
    entries written before an invalid one were kept)."""
    if len(entries) != RETA_SIZE:
        raise ConfigError("reta size", len(entries), f"exactly {RETA_SIZE}")
    if mask is not None and len(mask) != RETA_SIZE:
        raise ConfigError("reta mask size", len(mask), f"exactly {RETA_SIZE}")
    table = list(current)
    for index, entry in enumerate(entries):
        if mask is not None and not mask[index]:
            continue
        if not isinstance(entry, int) or not 0 <= entry < nb_rx_queues:
            raise ConfigError(f"reta[{index}]", entry, f"an RX queue 0..{nb_rx_queues - 1}")
        table[index] = entry
    return table


@dataclass
class RssState:
    """The RSS parameters in effect (or to be sent)."""

    key: bytes = DEFAULT_KEY
    hash_types: int = 0
    table: list[int] = field(default_factory=lambda: default_reta(1))
    enabled: bool = False
