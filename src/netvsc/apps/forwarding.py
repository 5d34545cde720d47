"""The forwarding engine of ``netvsc testpmd`` (and of ``netvsc bench``): streams, modes, the loop.

Layer 8 (apps). The shape is DPDK testpmd's (spec/pmd.md 10): a *stream* receives on one
(port, queue) and transmits on another; in the default "paired" topology the stream of port i
transmits on port i ^ 1 (a port without a pair transmits on itself), queue q to queue q. The
forwarding mode says what a stream does with a burst:

=========  ==================================================================================
io         forward unchanged
mac        source MAC := the TX port's, destination := the TX port's peer (``--eth-peer``)
macswap    exchange source and destination MAC
rxonly     receive and free
txonly     send generated UDP/IPv4 frames (198.18.0.1 -> 198.18.0.2, port 9 -> 9), never receive
flowgen    free what arrives, send generated frames over ``flows`` destinations and source ports
csum       as mac, then ask the TX port for the IPv4/TCP/UDP checksums (or compute them in
           software), counting packets received with a bad checksum
icmpecho   answer ARP requests and ICMP echo requests, drop everything else; replies leave by
           the port the request came in on (DPDK sends them to the paired port, which is only
           useful with its "loop" topology)
=========  ==================================================================================

The loop is Python per burst, never per packet: ``port.rx_burst``, one kernel call of
``apps.fwd_kernels`` for the mode's work, ``port.tx_burst``. Packets the TX port does not take
are offered again ``tx_retry`` times (DPDK's "retry" modes), then freed and counted as dropped.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from netvsc.apps import fwd_kernels as fk
from netvsc.errors import ConfigError
from netvsc.ethdev import api
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool

__all__ = [
    "MODES",
    "ForwardConfig",
    "Forwarding",
    "Stream",
    "configure_ports",
    "default_peers",
    "paired_streams",
    "resident_kib",
    "udp_frame",
]

MODES = ("io", "mac", "macswap", "rxonly", "txonly", "flowgen", "csum", "icmpecho")
RECEIVING_MODES = frozenset(MODES) - {"txonly"}
SENDING_MODES = frozenset(MODES) - {"rxonly"}
GENERATING_MODES = frozenset({"txonly", "flowgen"})
# Modes that only forward what arrives: with no other traffic source, ``tx_first`` primes them.
FORWARDING_MODES = frozenset({"io", "mac", "macswap", "csum"})

MIN_FRAME = 60  # Ethernet without FCS
UDP_HEADERS = 14 + 20 + 8


def resident_kib() -> int:
    """Resident memory of this process in KiB (``VmRSS`` of ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ipv4(text: str, parameter: str) -> bytes:
    parts = text.split(".")
    try:
        if len(parts) != 4 or not all(0 <= int(p) <= 255 for p in parts):
            raise ValueError(text)
    except ValueError:
        raise ConfigError(parameter, text, "an IPv4 address such as 198.18.0.1") from None
    return bytes(int(p) for p in parts)


def udp_frame(
    length: int,
    destination: bytes,
    source: bytes,
    ip_source: str = "198.18.0.1",
    ip_destination: str = "198.18.0.2",
    udp_source: int = 9,
    udp_destination: int = 9,
) -> np.ndarray:
    """A UDP/IPv4 frame of ``length`` bytes (no FCS), as DPDK's txonly builds it: IPv4 header
    checksum filled, UDP checksum 0 (none, which IPv4 allows), zero payload."""
    if length < UDP_HEADERS:
        raise ConfigError("txpkts", length, f"{UDP_HEADERS} or more bytes (Ethernet + IPv4 + UDP)")
    ip_length = length - 14
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            ip_length,
            0,
            0,
            64,
            17,
            0,
            _ipv4(ip_source, "ip source"),
            _ipv4(ip_destination, "ip destination"),
        )
    )
    total = sum(struct.unpack("!10H", bytes(header)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    header[10:12] = struct.pack("!H", ~total & 0xFFFF)
    udp = struct.pack("!HHHH", udp_source & 0xFFFF, udp_destination & 0xFFFF, ip_length - 20, 0)
    frame = bytes(destination) + bytes(source) + b"\x08\x00" + bytes(header) + udp
    return np.frombuffer(frame + bytes(length - len(frame)), dtype=np.uint8).copy()


def default_peers(macs: Sequence[bytes]) -> list[bytes]:
    """Each port's peer address: the MAC of its paired port (i ^ 1), or, for a port without a
    pair, DPDK's default 02:00:00:00:00:<port>."""
    peers = []
    for index in range(len(macs)):
        pair = index ^ 1
        peers.append(bytes(macs[pair]) if pair < len(macs) else bytes([2, 0, 0, 0, 0, index & 0xFF]))
    return peers


@dataclass
class ForwardConfig:
    """What every stream shares (testpmd's global settings)."""

    burst: int = 32
    txpkts: int = 64  # frame length of txonly/flowgen/tx_first frames, without FCS
    tx_retry: int = 0  # extra tx_burst attempts for the packets a burst left (0: free them)
    flows: int = 1024  # flowgen
    csum_hw: int = fk.CSUM_HW_IP | fk.CSUM_HW_L4  # csum: the checksums asked of the port
    ip_source: str = "198.18.0.1"
    ip_destination: str = "198.18.0.2"
    udp_source: int = 9
    udp_destination: int = 9

    def validate(self, pool: Mempool) -> None:
        if not 1 <= self.burst <= 1024:
            raise ConfigError("burst", self.burst, "1..1024")
        room = pool.segment_room
        if not max(MIN_FRAME, UDP_HEADERS) <= self.txpkts <= room:
            raise ConfigError(
                "txpkts",
                self.txpkts,
                f"{max(MIN_FRAME, UDP_HEADERS)}..{room} (one mbuf: --mbuf-size minus the headroom)",
            )
        if self.tx_retry < 0:
            raise ConfigError("tx_retry", self.tx_retry, "0 or more")
        if not 1 <= self.flows <= 1 << 24:
            raise ConfigError("flows", self.flows, f"1..{1 << 24}")


@dataclass
class Stream:
    """One forwarding stream and its counters (testpmd's "forward statistics")."""

    mode: str
    rx_port: int | None  # index into the engine's ports; None: receives nothing
    rx_queue: int
    tx_port: int | None  # None: transmits nothing
    tx_queue: int
    rx_packets: int = 0
    tx_packets: int = 0
    dropped: int = 0  # packets the TX port did not take, freed
    alloc_failures: int = 0  # generated bursts skipped for want of mbufs
    mode_counters: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def as_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "mode": self.mode,
            "rx_port": self.rx_port,
            "rx_queue": self.rx_queue if self.rx_port is not None else None,
            "tx_port": self.tx_port,
            "tx_queue": self.tx_queue if self.tx_port is not None else None,
            "rx_packets": self.rx_packets,
            "tx_packets": self.tx_packets,
            "dropped": self.dropped,
            "alloc_failures": self.alloc_failures,
        }
        if self.mode == "csum":
            names = ("rx_bad_ip_checksum", "rx_bad_l4_checksum", "ipv4", "ipv6", "udp", "tcp", "other")
            record["csum"] = dict(zip(names, self.mode_counters.tolist(), strict=True))
        elif self.mode == "icmpecho":
            names = ("arp_replies", "echo_replies", "dropped")
            record["icmpecho"] = dict(zip(names, self.mode_counters.tolist(), strict=True))
        return record


def paired_streams(modes: Sequence[str], nb_ports: int, nb_rxq: int, nb_txq: int) -> list[Stream]:
    """DPDK's paired topology: for port i and queue q, a stream from (i, q) to (i ^ 1, q);
    ``modes[i]`` is port i's mode (one per port). icmpecho answers on the receiving port.
    With more TX than RX queues, the extra queues get generating streams only."""
    if len(modes) != nb_ports:
        raise ConfigError("forward modes", list(modes), f"one mode, or one per port ({nb_ports})")
    streams = []
    for port in range(nb_ports):
        mode = modes[port]
        if mode not in MODES:
            raise ConfigError("forward mode", mode, ", ".join(MODES))
        pair = port ^ 1 if port ^ 1 < nb_ports else port
        # txonly has nothing to forward: port i's frames leave port i (with every port in txonly,
        # as DPDK runs it, the same ports send); icmpecho answers where the request came in.
        tx_port = port if mode in ("icmpecho", "txonly") else pair
        for queue in range(max(nb_rxq, nb_txq)):
            receives = mode in RECEIVING_MODES and queue < nb_rxq
            sends = mode in SENDING_MODES and (queue < nb_rxq or mode in GENERATING_MODES)
            if not receives and not sends:
                continue
            streams.append(
                Stream(
                    mode,
                    port if receives else None,
                    queue if receives else 0,
                    tx_port if sends else None,
                    queue % nb_txq,
                )
            )
    return streams


def configure_ports(
    ports: Sequence,
    pool: Mempool,
    nb_rxq: int,
    nb_txq: int,
    rxd: int,
    txd: int,
    *,
    checksum_offloads: bool = False,
    promiscuous: bool = True,
) -> list[int]:
    """configure, queue setup and start of every port as testpmd does at start-up (spec/pmd.md
    10.2): RSS over the IP types the port offers when there is more than one RX queue, every
    port promiscuous; with ``checksum_offloads`` (csum mode) the receive checksum flags and the
    transmit checksum offloads the port can do. Returns each port's TX offloads."""
    applied = []
    for port in ports:
        info = port.dev_info()
        rss = None
        if nb_rxq > 1 and info.flow_type_rss_offloads:
            rss = api.RssConf(b"", info.flow_type_rss_offloads)
        rx_offloads = tx_offloads = 0
        if checksum_offloads:
            rx_offloads = api.RX_OFFLOAD_CHECKSUM & info.rx_offload_capa
            wanted_tx = api.TX_OFFLOAD_IPV4_CKSUM | api.TX_OFFLOAD_UDP_CKSUM | api.TX_OFFLOAD_TCP_CKSUM
            tx_offloads = wanted_tx & info.tx_offload_capa
        port.configure(nb_rxq, nb_txq, rss=rss, rx_offloads=rx_offloads, tx_offloads=tx_offloads)
        for queue in range(nb_rxq):
            port.rx_queue_setup(queue, rxd, mempool=pool)
        for queue in range(nb_txq):
            port.tx_queue_setup(queue, txd)
        port.start()
        if promiscuous:
            port.promiscuous_enable()
        applied.append(tx_offloads)
    return applied


class Forwarding:
    """Streams over ``ports`` (started, with RX queues on ``pool``); ``run`` forwards."""

    def __init__(
        self,
        ports: Sequence,
        pool: Mempool,
        streams: Sequence[Stream],
        config: ForwardConfig | None = None,
        *,
        peers: Sequence[bytes] | None = None,
        tx_offloads: Sequence[int] | None = None,
    ) -> None:
        self.ports = list(ports)
        self.pool = pool
        self.streams = list(streams)
        self.config = config or ForwardConfig()
        self.config.validate(pool)
        self.macs = [bytes(port.mac_address) for port in self.ports]
        self.peers = [bytes(p) for p in (peers or default_peers(self.macs))]
        if len(self.peers) != len(self.ports):
            raise ConfigError("peers", len(self.peers), f"one per port ({len(self.ports)})")
        self.tx_offloads = list(tx_offloads) if tx_offloads is not None else [0] * len(self.ports)
        self.stop_requested = False
        self.elapsed = 0.0
        self.rounds = 0
        self.rss_warm_kib: int | None = None
        self.rss_end_kib: int | None = None
        self._steps = [self._make_step(stream) for stream in self.streams]

    # -- templates ---------------------------------------------------------------------------

    def template(self, tx_port: int, length: int | None = None) -> np.ndarray:
        c = self.config
        return udp_frame(
            c.txpkts if length is None else length,
            self.peers[tx_port],
            self.macs[tx_port],
            c.ip_source,
            c.ip_destination,
            c.udp_source,
            c.udp_destination,
        )

    # -- one burst of one stream -------------------------------------------------------------

    def _sender(self, stream: Stream, batch: PacketBatch) -> Callable[[], int]:
        """send(): ``tx_burst`` the batch, retry, free and count what is left; returns sent."""
        tx_burst = self.ports[stream.tx_port].tx_burst
        queue = stream.tx_queue
        retries = self.config.tx_retry
        ptab = self.pool.table.table
        indices = batch.indices
        free_burst = fk.entry("free_burst")

        def send() -> int:
            sent = tx_burst(queue, batch)
            if batch.count:
                attempts = retries
                while batch.count and attempts:
                    sent += tx_burst(queue, batch)
                    attempts -= 1
                if batch.count:
                    stream.dropped += batch.count
                    free_burst(ptab, indices, batch.count)
                    batch.count = 0
            stream.tx_packets += sent
            return sent

        return send

    def _make_step(self, stream: Stream) -> Callable[[], int]:
        c = self.config
        pool = self.pool
        ptab = pool.table.table
        burst = c.burst
        batch = PacketBatch(burst, pool)
        indices = batch.indices
        mode = stream.mode
        rx_burst = self.ports[stream.rx_port].rx_burst if stream.rx_port is not None else None
        rx_queue = stream.rx_queue
        send = self._sender(stream, batch) if stream.tx_port is not None else None

        if mode == "rxonly":
            free_burst = fk.entry("free_burst")

            def step() -> int:
                n = rx_burst(rx_queue, batch)
                if n:
                    stream.rx_packets += n
                    free_burst(ptab, indices, n)
                    batch.count = 0
                return n

            return step

        if mode in ("io", "mac", "macswap", "csum"):
            work = self._forward_work(stream, indices)

            def step() -> int:
                n = rx_burst(rx_queue, batch)
                if n:
                    stream.rx_packets += n
                    if work is not None:
                        work(n)
                    send()
                return n

            return step

        if mode == "icmpecho":
            stream.mode_counters = np.zeros(fk.ECHO_COUNTERS, dtype=np.int64)
            counters = stream.mode_counters
            mac = np.frombuffer(self.macs[stream.tx_port], dtype=np.uint8).copy()
            parse = np.zeros(fk.PARSE_FIELDS, dtype=np.int64)
            icmp_echo = fk.entry("icmp_echo")

            def step() -> int:
                n = rx_burst(rx_queue, batch)
                if n:
                    stream.rx_packets += n
                    kept = icmp_echo(ptab, indices, n, mac, counters, parse)
                    batch.count = kept
                    if kept:
                        send()
                return n

            return step

        template = self.template(stream.tx_port)
        length = c.txpkts
        if mode == "txonly":
            build_frames = fk.entry("build_frames")

            def step() -> int:
                made = build_frames(ptab, indices, burst, template, length)
                if not made:
                    stream.alloc_failures += 1
                    return 0
                batch.count = made
                batch.mempool = pool
                return send()

            return step

        if mode == "flowgen":
            state = np.zeros(fk.FLOW_STATE_WORDS, dtype=np.int64)
            state[fk.FLOW_COUNT] = c.flows
            rx_batch = PacketBatch(burst, pool)
            rx_indices = rx_batch.indices
            free_burst = fk.entry("free_burst")
            build_flows = fk.entry("build_flows")

            def step() -> int:
                if rx_burst is not None:
                    n = rx_burst(rx_queue, rx_batch)
                    if n:
                        stream.rx_packets += n
                        free_burst(ptab, rx_indices, n)
                        rx_batch.count = 0
                made = build_flows(ptab, indices, burst, template, length, state)
                if not made:
                    stream.alloc_failures += 1
                    return 0
                batch.count = made
                batch.mempool = pool
                return send()

            return step

        raise ConfigError("forward mode", mode, ", ".join(MODES))

    def _forward_work(self, stream: Stream, indices: np.ndarray) -> Callable[[int], None] | None:
        """The mode's kernel call on ``indices[:n]`` of a received burst (None for io)."""
        ptab = self.pool.table.table
        if stream.mode == "io":
            return None
        if stream.mode == "macswap":
            swap_macs = fk.entry("swap_macs")
            return lambda n: swap_macs(ptab, indices, n)
        destination = np.frombuffer(self.peers[stream.tx_port], dtype=np.uint8).copy()
        source = np.frombuffer(self.macs[stream.tx_port], dtype=np.uint8).copy()
        if stream.mode == "mac":
            set_macs = fk.entry("set_macs")
            return lambda n: set_macs(ptab, indices, n, destination, source)
        # csum: ask the port only for what it can do; compute the rest here.
        offloads = self.tx_offloads[stream.tx_port]
        hw = 0
        if self.config.csum_hw & fk.CSUM_HW_IP and offloads & api.TX_OFFLOAD_IPV4_CKSUM:
            hw |= fk.CSUM_HW_IP
        l4 = api.TX_OFFLOAD_UDP_CKSUM | api.TX_OFFLOAD_TCP_CKSUM
        if self.config.csum_hw & fk.CSUM_HW_L4 and offloads & l4 == l4:
            hw |= fk.CSUM_HW_L4
        stream.mode_counters = np.zeros(fk.CSUM_COUNTERS, dtype=np.int64)
        counters = stream.mode_counters
        parse = np.zeros(fk.PARSE_FIELDS, dtype=np.int64)
        csum_prepare = fk.entry("csum_prepare")
        return lambda n: csum_prepare(ptab, indices, n, destination, source, hw, counters, parse)

    # -- running ---------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One round of every stream: numba compiles (or loads from its cache) the kernels of
        the driver and of the modes now, not inside the measured time. Packets it moves count."""
        for step in self._steps:
            step()

    def tx_first(self, bursts: int) -> int:
        """Send ``bursts`` bursts of generated frames on the TX port of every forwarding stream
        (testpmd's ``start tx_first``), so a loop of forwarding ports has traffic; returns sent."""
        total = 0
        c = self.config
        for stream in self.streams:
            if stream.mode not in FORWARDING_MODES or stream.tx_port is None:
                continue
            port = self.ports[stream.tx_port]
            template = self.template(stream.tx_port)
            batch = PacketBatch(c.burst, self.pool)
            for _ in range(bursts):
                made = fk.build_frames(self.pool.table.table, batch.indices, c.burst, template, c.txpkts)
                if not made:
                    break
                batch.count = made
                sent = port.tx_burst(stream.tx_queue, batch)
                attempts = 1000
                while batch.count and attempts:
                    sent += port.tx_burst(stream.tx_queue, batch)
                    attempts -= 1
                if batch.count:
                    fk.free_burst(self.pool.table.table, batch.indices, batch.count)
                    batch.count = 0
                total += sent
        return total

    def run(
        self,
        duration: float | None = None,
        *,
        stats_period: float | None = None,
        on_stats: Callable[[float], None] | None = None,
        warmup: float = 1.0,
    ) -> float:
        """Forward until ``duration`` seconds passed (None: until ``stop_requested``), calling
        ``on_stats(elapsed)`` every ``stats_period`` seconds. Resident memory is sampled after
        ``warmup`` seconds and at the end. Returns the seconds forwarded."""
        steps = self._steps
        clock = time.perf_counter
        start = clock()
        end = start + duration if duration else math.inf
        period = stats_period if stats_period and on_stats is not None else math.inf
        next_stats = start + period
        warm_at = start + warmup
        self.rss_warm_kib = None
        now = start
        rounds = 0
        try:
            while not self.stop_requested and now < end:
                for step in steps:
                    step()
                rounds += 1
                now = clock()
                if now >= next_stats:
                    next_stats += period
                    if next_stats <= now:
                        next_stats = now + period
                    on_stats(now - start)
                if self.rss_warm_kib is None and now >= warm_at:
                    self.rss_warm_kib = resident_kib()
        finally:
            self.elapsed = clock() - start
            self.rounds += rounds
            self.rss_end_kib = resident_kib()
            if self.rss_warm_kib is None:
                self.rss_warm_kib = self.rss_end_kib
        return self.elapsed

    def request_stop(self) -> None:
        self.stop_requested = True

    # -- results -------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        return {
            "rx_packets": sum(s.rx_packets for s in self.streams),
            "tx_packets": sum(s.tx_packets for s in self.streams),
            "dropped": sum(s.dropped for s in self.streams),
            "alloc_failures": sum(s.alloc_failures for s in self.streams),
        }
