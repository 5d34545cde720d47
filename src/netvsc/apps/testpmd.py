"""``netvsc testpmd``: DPDK testpmd's forwarding modes over NetVSC ports, from the command line.

Layer 8 (apps). Opens the ports (devices given with ``--ports``; else every usable device of
``--root`` / ``$NETVSC_SYSFS_ROOT``, or of the real ``/sys``; and when there is none, an emulated
host of its own with two NICs on a vswitch under a temporary root, removed on exit, DESIGN.md
section 4), configures them as testpmd does at start-up (spec/pmd.md 10.2), runs the forwarding
engine (``apps.forwarding``) for ``--duration`` seconds or until Ctrl-C, shows a live rich table
per port and queue (pps, Mbit/s, drops) every ``--stats-period`` seconds, and prints a final
summary: per port RX/TX packets, bytes, drops, errors and rates, whether every mbuf came back to
the mempool after stop, and how much resident memory grew after the warm-up. ``--json`` prints
that summary as one JSON document on stdout instead (the live table then goes to stderr, when it
is a terminal).

Ctrl-C or SIGTERM while forwarding stops it and still prints the summary; ports are closed and
the embedded host is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from netvsc.apps import forwarding as fw
from netvsc.apps import fwd_kernels as fk
from netvsc.errors import ConfigError, NetvscError
from netvsc.ethdev import api

__all__ = ["testpmd"]

DEFAULT_MBUF_SIZE = 2176  # DPDK's RTE_MBUF_DEFAULT_BUF_SIZE: 2048 bytes of data + 128 headroom
MBUFS_MIN = 8192
TX_FIRST_BURSTS = 8  # bursts per forwarding stream when the embedded host is the only source
STATS_QUEUES = api.STATS_QUEUE_COUNT


def _mac_text(mac: bytes) -> str:
    return mac.hex(":")


def _parse_mac(text: str) -> bytes:
    parts = text.strip().replace("-", ":").split(":")
    try:
        if len(parts) != 6 or any(len(p) != 2 for p in parts):
            raise ValueError(text)
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ConfigError("eth-peer", text, "PORT,MAC with a MAC such as 02:00:00:00:00:01") from None


def _parse_devices(values: Sequence[str]) -> list[str]:
    """``--ports`` values: ``DEV``, ``DEV1,DEV2``, or one ``DEV,key=value,...`` (devargs of DEV)."""
    devices = []
    for value in values:
        if "=" in value:
            devices.append(value.strip())
        else:
            devices.extend(part.strip() for part in value.split(",") if part.strip())
    return devices


def _parse_modes(text: str, nb_ports: int) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        if mode not in fw.MODES:
            raise ConfigError(
                "forward-mode", mode, ", ".join(fw.MODES) + " (or one per port, comma separated)"
            )
    if len(modes) == 1:
        return modes * nb_ports
    if len(modes) != nb_ports:
        raise ConfigError("forward-mode", text, f"one mode, or one per port ({nb_ports} ports)")
    return modes


@dataclass
class _Snapshot:
    when: float
    stats: list[api.PortStats]
    dropped: dict[tuple[int, int], int]


class _Display:
    """The live table: one row per port and queue, then one per port."""

    def __init__(
        self, engine: fw.Forwarding, ports: Sequence, nb_queues: int, console: Console | None
    ) -> None:
        self.engine = engine
        self.ports = ports
        self.nb_queues = min(nb_queues, STATS_QUEUES)
        self.console = console
        self.live: Live | None = None
        self.last: _Snapshot | None = None

    def snapshot(self) -> _Snapshot:
        dropped: dict[tuple[int, int], int] = {}
        for stream in self.engine.streams:
            if stream.tx_port is not None:
                key = (stream.tx_port, stream.tx_queue)
                dropped[key] = dropped.get(key, 0) + stream.dropped
        return _Snapshot(time.perf_counter(), [port.stats() for port in self.ports], dropped)

    def start(self) -> None:
        self.last = self.snapshot()
        if self.console is not None and self.console.is_terminal:
            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def update(self, elapsed: float) -> None:
        now = self.snapshot()
        last, self.last = self.last, now
        if self.console is None or last is None:
            return
        seconds = max(now.when - last.when, 1e-9)
        rows = []
        for index, (new, old) in enumerate(zip(now.stats, last.stats, strict=True)):
            for queue in range(self.nb_queues):
                rows.append(
                    (
                        str(index),
                        str(queue),
                        (new.q_ipackets[queue] - old.q_ipackets[queue]) / seconds,
                        (new.q_ibytes[queue] - old.q_ibytes[queue]) * 8 / seconds / 1e6,
                        (new.q_opackets[queue] - old.q_opackets[queue]) / seconds,
                        (new.q_obytes[queue] - old.q_obytes[queue]) * 8 / seconds / 1e6,
                        now.dropped.get((index, queue), 0),
                    )
                )
            port_dropped = sum(v for (p, _q), v in now.dropped.items() if p == index)
            rows.append(
                (
                    str(index),
                    "all",
                    (new.ipackets - old.ipackets) / seconds,
                    (new.ibytes - old.ibytes) * 8 / seconds / 1e6,
                    (new.opackets - old.opackets) / seconds,
                    (new.obytes - old.obytes) * 8 / seconds / 1e6,
                    port_dropped + new.imissed + new.rx_nombuf,
                )
            )
        if self.live is not None:
            table = Table(title=f"netvsc testpmd: {elapsed:6.1f} s", title_justify="left")
            for heading in ("port", "queue", "RX pps", "RX Mbit/s", "TX pps", "TX Mbit/s", "drops"):
                table.add_column(heading, justify="right")
            for port, queue, rx_pps, rx_mbps, tx_pps, tx_mbps, drops in rows:
                style = "bold" if queue == "all" else None
                table.add_row(
                    port,
                    queue,
                    f"{rx_pps:,.0f}",
                    f"{rx_mbps:,.1f}",
                    f"{tx_pps:,.0f}",
                    f"{tx_mbps:,.1f}",
                    f"{drops:,}",
                    style=style,
                )
            self.live.update(table, refresh=True)
        else:
            for port, queue, rx_pps, rx_mbps, tx_pps, tx_mbps, drops in rows:
                if queue != "all":
                    continue
                self.console.print(
                    f"{elapsed:7.1f} s  port {port}: RX {rx_pps:>12,.0f} pps {rx_mbps:>9,.1f} Mbit/s  "
                    f"TX {tx_pps:>12,.0f} pps {tx_mbps:>9,.1f} Mbit/s  drops {drops:,}",
                    highlight=False,
                    soft_wrap=True,
                )


def _summary(
    engine: fw.Forwarding,
    ports: Sequence,
    devices: Sequence[str],
    first: _Snapshot,
    final: list[api.PortStats],
    settings: dict[str, object],
    mempool: dict[str, object],
    warmup: float,
) -> dict[str, object]:
    seconds = max(engine.elapsed, 1e-9)
    records = []
    for index in range(len(ports)):
        stats, start = final[index], first.stats[index]
        dropped = sum(s.dropped for s in engine.streams if s.tx_port == index)
        queues = []
        for queue in range(min(max(settings["rxq"], settings["txq"]), STATS_QUEUES)):
            queues.append(
                {
                    "queue": queue,
                    "rx_packets": stats.q_ipackets[queue],
                    "rx_bytes": stats.q_ibytes[queue],
                    "tx_packets": stats.q_opackets[queue],
                    "tx_bytes": stats.q_obytes[queue],
                    "rx_errors": stats.q_errors[queue],
                }
            )
        records.append(
            {
                "port": index,
                "device": devices[index],
                "mac": _mac_text(engine.macs[index]),
                "peer": _mac_text(engine.peers[index]),
                "rx_packets": stats.ipackets,
                "rx_bytes": stats.ibytes,
                "rx_missed": stats.imissed,
                "rx_nombuf": stats.rx_nombuf,
                "rx_errors": stats.ierrors,
                "tx_packets": stats.opackets,
                "tx_bytes": stats.obytes,
                "tx_errors": stats.oerrors,
                "fwd_dropped": dropped,
                "drops": dropped + stats.imissed + stats.rx_nombuf,
                "rx_pps": round((stats.ipackets - start.ipackets) / seconds),
                "tx_pps": round((stats.opackets - start.opackets) / seconds),
                "rx_mbps": round((stats.ibytes - start.ibytes) * 8 / seconds / 1e6, 3),
                "tx_mbps": round((stats.obytes - start.obytes) * 8 / seconds / 1e6, 3),
                "queues": queues,
            }
        )
    warm, end = engine.rss_warm_kib or 0, engine.rss_end_kib or 0
    totals = {
        key: sum(record[key] for record in records)
        for key in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "drops", "rx_errors", "tx_errors")
    }
    totals["rx_pps"] = sum(record["rx_pps"] for record in records)
    totals["tx_pps"] = sum(record["tx_pps"] for record in records)
    return {
        **settings,
        "seconds": round(engine.elapsed, 3),
        "ports": records,
        "totals": totals,
        "streams": [stream.as_dict() for stream in engine.streams],
        "mempool": mempool,
        "memory": {
            "warmup_s": warmup,
            "rss_after_warmup_kib": warm,
            "rss_end_kib": end,
            "growth_kib": end - warm,
        },
    }


def _print_summary(record: dict[str, object], console: Console) -> None:
    ports = record["ports"]
    table = Table(
        title=f"forward statistics: {record['forward_mode']}, {record['seconds']} s", title_justify="left"
    )
    table.add_column("")
    for port in ports:
        table.add_column(f"port {port['port']}", justify="right")
    table.add_column("total", justify="right")
    rows = (
        ("RX-packets", "rx_packets"),
        ("RX-bytes", "rx_bytes"),
        ("RX-missed", "rx_missed"),
        ("RX-nombuf", "rx_nombuf"),
        ("RX-errors", "rx_errors"),
        ("TX-packets", "tx_packets"),
        ("TX-bytes", "tx_bytes"),
        ("TX-errors", "tx_errors"),
        ("TX-dropped", "fwd_dropped"),
        ("RX pps", "rx_pps"),
        ("TX pps", "tx_pps"),
        ("RX Mbit/s", "rx_mbps"),
        ("TX Mbit/s", "tx_mbps"),
    )
    for heading, key in rows:
        values = [port[key] for port in ports]
        total = round(sum(values), 3)
        table.add_row(heading, *(f"{value:,}" for value in [*values, total]))
    console.print(table)
    for stream in record["streams"]:
        for extra in ("csum", "icmpecho"):
            if extra in stream:
                details = ", ".join(f"{k} {v:,}" for k, v in stream[extra].items())
                console.print(f"{extra} on port {stream['rx_port']}: {details}", highlight=False)
    pool = record["mempool"]
    verdict = "yes" if pool["full_after_stop"] else "NO"
    console.print(
        f"mempool: {pool['available_after_stop']:,} of {pool['size']:,} mbufs free after stop "
        f"(all returned: {verdict})",
        highlight=False,
    )
    memory = record["memory"]
    console.print(
        f"resident memory: {memory['rss_after_warmup_kib']:,} KiB after the {memory['warmup_s']} s "
        f"warm-up, {memory['rss_end_kib']:,} KiB at the end (growth {memory['growth_kib']:+,} KiB)",
        highlight=False,
    )


def _discover(root: str | None) -> list[str]:
    """Every usable device, in uio order (the order the devices were bound or offered)."""
    from netvsc.pmd.probe import probe

    def uio_number(device) -> int:
        digits = device.uio.removeprefix("uio")
        return int(digits) if digits.isdigit() else 1 << 30

    return [device.guid for device in sorted(probe(root), key=uio_number)]


def _run(options: dict[str, object]) -> dict[str, object]:
    """Open, configure, forward, stop, summarise; everything opened is closed on the way out."""
    from netvsc.apps.embedded import EmbeddedHost
    from netvsc.ethdev.mempool import Mempool
    from netvsc.pmd.devargs import parse_devargs, split_device_spec
    from netvsc.pmd.port import NetvscPort

    as_json = bool(options["as_json"])
    console = Console(stderr=as_json)
    root = options["root"] or os.environ.get("NETVSC_SYSFS_ROOT") or None
    devices = _parse_devices(options["ports"])
    parse_devargs(options["devargs"])  # a bad devarg fails before anything starts
    for device in devices:
        name, spec = split_device_spec(device)
        if spec and options["devargs"]:
            raise click.UsageError("give device arguments either after DEV or with --devargs, not both")
        parse_devargs(spec or None)
    with contextlib.ExitStack() as stack:
        host = None
        if not devices:
            devices = _discover(root)
            if not devices and root is None:
                if not as_json:
                    console.print("no NetVSC device: starting an emulated host with two ports on a vswitch")
                host = EmbeddedHost(options["host_devices"], options["host_backend"])
                stack.callback(host.stop)
                host.start()
                root = str(host.root)
                devices = host.guids
            if not devices:
                raise ConfigError("ports", "none", f"a usable NetVSC device under {root}")
        ports = []

        def close_ports() -> None:
            for port in ports:
                with contextlib.suppress(Exception):
                    port.close()

        stack.callback(close_ports)
        for device in devices:
            name, spec = split_device_spec(device)
            ports.append(NetvscPort.open(name, spec or options["devargs"], root=root))
        nb_ports = len(ports)
        rxq, txq, rxd, txd, burst = (options[k] for k in ("rxq", "txq", "rxd", "txd", "burst"))
        modes = _parse_modes(options["forward_mode"], nb_ports)
        mbufs = options["mbufs"] or max(MBUFS_MIN, nb_ports * (rxq * (rxd + burst) + txq * (txd + burst)) * 2)
        pool = Mempool(mbufs, options["mbuf_size"], root=root, name="testpmd")
        # The pool outlives the ports (a port's control worker reads its queues until it is
        # closed): ports close first, and again harmlessly later (close is idempotent).
        stack.callback(pool.close)
        stack.callback(close_ports)
        checksum = "csum" in modes
        tx_offloads = fw.configure_ports(
            ports, pool, rxq, txq, rxd, txd, checksum_offloads=checksum, promiscuous=not options["no_promisc"]
        )
        peers = fw.default_peers([bytes(port.mac_address) for port in ports])
        for text in options["eth_peer"]:
            index_text, _, mac_text = text.partition(",")
            if not index_text.strip().isdigit() or not 0 <= int(index_text) < nb_ports:
                raise ConfigError("eth-peer", text, f"PORT,MAC with PORT in 0..{nb_ports - 1}")
            peers[int(index_text)] = _parse_mac(mac_text)
        config = fw.ForwardConfig(
            burst=burst,
            txpkts=options["txpkts"],
            tx_retry=options["tx_retry"],
            flows=options["flows"],
            csum_hw=(fk.CSUM_HW_IP | fk.CSUM_HW_L4) if options["csum"] == "hw" else 0,
        )
        streams = fw.paired_streams(modes, nb_ports, rxq, txq)
        engine = fw.Forwarding(ports, pool, streams, config, peers=peers, tx_offloads=tx_offloads)
        engine.warm_up()
        tx_first = options["tx_first"]
        if tx_first is None:
            tx_first = TX_FIRST_BURSTS if host is not None and options["host_backend"] == "vswitch" else 0
        if tx_first:
            engine.tx_first(tx_first)
        display = _Display(
            engine, ports, max(rxq, txq), console if (not as_json or console.is_terminal) else None
        )
        period = options["stats_period"]

        previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

        def stop_forwarding(signum, frame) -> None:
            engine.request_stop()

        display.start()
        first = display.last
        signal.signal(signal.SIGINT, stop_forwarding)
        signal.signal(signal.SIGTERM, stop_forwarding)
        try:
            engine.run(
                options["duration"],
                stats_period=period if period > 0 else None,
                on_stats=display.update,
                warmup=options["warmup"],
            )
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
            display.stop()
        for port in ports:
            port.stop()
        final = [port.stats() for port in ports]
        available = pool.available()
        mempool = {
            "size": pool.n,
            "data_room": pool.data_room,
            "available_after_stop": available,
            "parked_after_stop": pool.parked(),
            "full_after_stop": available == pool.n,
        }
        settings = {
            "command": "testpmd",
            "forward_mode": options["forward_mode"],
            "modes": modes,
            "embedded_host": host is not None,
            "root": None if host is not None else root,
            "burst": burst,
            "rxq": rxq,
            "txq": txq,
            "rxd": rxd,
            "txd": txd,
            "txpkts": config.txpkts,
            "tx_first_bursts": tx_first,
            "devargs": options["devargs"],
            "mbufs": pool.n,
        }
        return _summary(engine, ports, devices, first, final, settings, mempool, options["warmup"])


@click.command("testpmd")
@click.option(
    "--ports",
    "--devices",
    "ports",
    multiple=True,
    help="Devices to forward between: GUIDs or interface names, comma separated or repeated; "
    "DEV,key=value,... gives one device its own devargs. Default: every usable device, or an "
    "emulated host with two ports on a vswitch when there is none.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="An existing emulated host's root (default $NETVSC_SYSFS_ROOT, else the real /sys).",
)
@click.option(
    "--forward-mode",
    default="io",
    show_default=True,
    help=f"One of {', '.join(fw.MODES)}; or one per port, comma separated (txonly,rxonly).",
)
@click.option("--rxq", type=click.IntRange(1, 64), default=1, show_default=True, help="RX queues per port.")
@click.option("--txq", type=click.IntRange(1, 64), default=1, show_default=True, help="TX queues per port.")
@click.option(
    "--burst", type=click.IntRange(1, 1024), default=32, show_default=True, help="Packets per burst."
)
@click.option(
    "--rxd", type=click.IntRange(1, 65535), default=512, show_default=True, help="RX descriptors per queue."
)
@click.option(
    "--txd", type=click.IntRange(1, 4096), default=512, show_default=True, help="TX descriptors per queue."
)
@click.option(
    "--devargs", default=None, help="Device arguments of every port, e.g. rx_extmbuf_enable=1,latency=20."
)
@click.option(
    "--txpkts",
    type=click.IntRange(60, 65536),
    default=64,
    show_default=True,
    help="Frame size (bytes, without FCS) of txonly, flowgen and tx-first frames.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds to forward (default: until Ctrl-C).",
)
@click.option(
    "--stats-period",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Seconds between live statistics (0: none).",
)
@click.option(
    "--mbufs", type=click.IntRange(min=64), default=None, help="Mbufs in the pool (default: from the queues)."
)
@click.option(
    "--mbuf-size",
    type=click.IntRange(128, 65536),
    default=DEFAULT_MBUF_SIZE,
    show_default=True,
    help="Bytes per mbuf, 128 of them headroom (a multiple of 64).",
)
@click.option(
    "--eth-peer",
    multiple=True,
    help="PORT,MAC: destination MAC of frames leaving PORT in mac, csum, txonly and flowgen modes "
    "(default: the paired port's MAC).",
)
@click.option(
    "--tx-first",
    type=click.IntRange(min=0),
    default=None,
    help="Bursts of generated frames each forwarding stream sends before forwarding "
    f"(default {TX_FIRST_BURSTS} on the embedded vswitch host, which has no other traffic, else 0).",
)
@click.option(
    "--tx-retry",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Extra tx_burst attempts for packets a burst left behind before they are dropped.",
)
@click.option(
    "--flows", type=click.IntRange(1, 1 << 24), default=1024, show_default=True, help="flowgen flows."
)
@click.option(
    "--csum",
    type=click.Choice(["hw", "sw"]),
    default="hw",
    show_default=True,
    help="csum mode: request checksums from the port (offload flags) or compute them in software.",
)
@click.option(
    "--no-promisc", is_flag=True, help="Leave the ports' packet filter as started (not promiscuous)."
)
@click.option(
    "--warmup",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds after which resident memory is sampled for the growth figure.",
)
@click.option(
    "--host-devices",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="NICs of the embedded host (only when no device is found).",
)
@click.option(
    "--host-backend",
    default="vswitch",
    show_default=True,
    help="Backend of the embedded host (see `netvsc host --help`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout.")
def testpmd(**options: object) -> None:
    """Forward packets between NetVSC ports in one of DPDK testpmd's modes, with live statistics.

    \b
    Examples:
      netvsc testpmd --duration 5                      # emulated host, io forwarding
      netvsc testpmd --forward-mode txonly,rxonly --duration 10 --txpkts 1500
      netvsc testpmd --ports eth1,eth2 --forward-mode macswap   # on Azure, after devbind
    """
    as_json = bool(options["as_json"])
    try:
        record = _run(options)
    except KeyboardInterrupt:
        raise click.ClickException("interrupted before forwarding started") from None
    except NetvscError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        _print_summary(record, Console())
    sys.stdout.flush()
