"""``netvsc info DEV``: open a NetVSC port and print what it negotiated and can do.

Layer 8 (apps). Opens ``pmd.port.NetvscPort.open(DEV, devargs)``, reads dev_info, the link,
the offload capabilities, the RSS configuration, the negotiated NVS/NDIS versions and the
xstats through the Port API, closes the port, and prints rich tables or one JSON document.
Every ``NetvscError`` (unknown device, bad devargs, a host that does not answer) is one error
line and a non-zero exit. Without DEV it lists the usable devices (``netvsc.probe()``).

``collect(port)`` holds the reading, separate from the printing, so it works on any object
that implements ``ethdev.api.Port``.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import click
from rich.console import Console
from rich.table import Table

from netvsc.errors import ConfigError, NetvscError
from netvsc.ethdev import api
from netvsc.pmd.devargs import NetvscDevargs, parse_devargs, split_device_spec
from netvsc.pmd.probe import probe
from netvsc.vmbus.sysfs import sysfs_root
from netvsc.wire import ndis, nvsp

__all__ = ["collect", "info", "reta_summary"]


_NVS_VERSION_NAMES = {
    nvsp.NVSP_VERSION_1: "1",
    nvsp.NVSP_VERSION_2: "2",
    nvsp.NVSP_VERSION_4: "4",
    nvsp.NVSP_VERSION_5: "5",
    nvsp.NVSP_VERSION_6: "6",
    nvsp.NVSP_VERSION_61: "6.1",
}


def _version_text(version: int, kind: str) -> str:
    """NVSP versions by their documented names (2 is 0x30002); NDIS as major.minor (6.30 = 0x6001e)."""
    if version <= 0:
        return "-"
    if kind == "nvs":
        return _NVS_VERSION_NAMES.get(version, hex(version))
    return f"{version >> 16}.{version & 0xFFFF}"


def reta_summary(reta: list[int]) -> dict[str, object]:
    """Size, entries per queue, and whether the table is the default round robin."""
    per_queue = Counter(reta)
    queues = sorted(per_queue)
    round_robin = bool(queues) and all(entry == i % len(queues) for i, entry in enumerate(reta))
    return {
        "size": len(reta),
        "entries_per_queue": {str(queue): per_queue[queue] for queue in queues},
        "round_robin": round_robin,
    }


def _optional(call, unavailable: dict[str, str], what: str):
    """The result of a Port call a port may refuse in its present state, else None.

    NotImplementedError (the port type cannot) and ConfigError (not in this state, e.g. RSS
    on a port not configured for it) are reasons, recorded in ``unavailable``, not failures.
    """
    try:
        return call()
    except (NotImplementedError, ConfigError) as exc:
        unavailable[what] = str(exc) or type(exc).__name__
        return None


def collect(port: api.Port) -> dict[str, object]:
    """Everything ``netvsc info`` shows, as plain JSON-able values."""
    dev_info = port.dev_info()
    link = port.link_update()
    unavailable: dict[str, str] = {}
    rss = _optional(port.rss_hash_conf_get, unavailable, "rss")
    reta = _optional(port.reta_query, unavailable, "reta")
    mac = port.mac_address
    record: dict[str, object] = {
        "device": dev_info.device,
        "driver": dev_info.driver_name,
        "mac_address": ":".join(f"{b:02x}" for b in mac),
        "mtu": port.mtu,
        "nvs_version": _version_text(dev_info.nvs_version, "nvs"),
        "nvs_version_raw": dev_info.nvs_version,
        "ndis_version": _version_text(dev_info.ndis_version, "ndis"),
        "ndis_version_raw": dev_info.ndis_version,
        "link": {
            "up": link.up,
            "speed_mbps": link.speed_mbps,
            "full_duplex": link.full_duplex,
            "autoneg": link.autoneg,
        },
        "dev_info": dev_info.as_dict(),
        "rx_offloads": api.rx_offload_names(dev_info.rx_offload_capa),
        "tx_offloads": api.tx_offload_names(dev_info.tx_offload_capa),
        "rss_flow_types": api.rss_type_names(dev_info.flow_type_rss_offloads),
        "rss": None
        if rss is None
        else {"key": rss.key.hex(), "hash_types": api.rss_type_names(rss.hash_types)},
        "reta": None if reta is None else reta_summary(list(reta)),
        "xstats": dict(port.xstats()),
        "unavailable": unavailable,
    }
    extra = getattr(port, "counters", None)
    if callable(extra):
        record["control_counters"] = dict(extra())
    return record


def _key_value_table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, str(value))
    return table


# dev_info fields the other tables already show (versions in the header, masks as offloads)
_SHOWN_ELSEWHERE = frozenset(
    ("rx_offload_capa", "tx_offload_capa", "flow_type_rss_offloads", "device", "driver_name", "nvs_version",
     "ndis_version")
)  # fmt: skip


def _print_tables(record: dict[str, object], console: Console) -> None:
    dev_info = record["dev_info"]
    link = record["link"]
    console.print(
        _key_value_table(
            f"NetVSC port {record['device']}",
            [
                ("driver", record["driver"]),
                ("MAC address", record["mac_address"]),
                ("MTU", record["mtu"]),
                ("NVS version", f"{record['nvs_version']} (0x{record['nvs_version_raw']:x})"),
                ("NDIS version", f"{record['ndis_version']} (0x{record['ndis_version_raw']:x})"),
                (
                    "link",
                    f"{'up' if link['up'] else 'down'}, {link['speed_mbps']} Mbps, "
                    f"{'full' if link['full_duplex'] else 'half'} duplex",
                ),
            ],
        )
    )
    rows = [
        (
            name,
            f"{value['nb_min']}..{value['nb_max']} align {value['nb_align']}"
            if isinstance(value, dict)
            else value,
        )
        for name, value in dev_info.items()
        if name not in _SHOWN_ELSEWHERE
    ]
    console.print(_key_value_table("device information", rows))
    offloads = Table(title="offload capabilities")
    offloads.add_column("direction", style="bold")
    offloads.add_column("mask")
    offloads.add_column("offloads")
    offloads.add_row("RX", hex(dev_info["rx_offload_capa"]), " ".join(record["rx_offloads"]) or "-")
    offloads.add_row("TX", hex(dev_info["tx_offload_capa"]), " ".join(record["tx_offloads"]) or "-")
    offloads.add_row(
        "RSS types", hex(dev_info["flow_type_rss_offloads"]), " ".join(record["rss_flow_types"]) or "-"
    )
    console.print(offloads)
    rss = record["rss"]
    reta = record["reta"]
    rss_rows: list[tuple[str, object]] = []
    if rss is None:
        rss_rows.append(("RSS", "not available: " + record["unavailable"].get("rss", "not supported")))
    else:
        rss_rows += [("key", rss["key"]), ("hash types", " ".join(rss["hash_types"]) or "none (RSS off)")]
    if reta is None:
        rss_rows.append(("RETA", "not available: " + record["unavailable"].get("reta", "not supported")))
    else:
        spread = ", ".join(f"q{queue}: {count}" for queue, count in reta["entries_per_queue"].items())
        layout = "round robin" if reta["round_robin"] else "custom"
        rss_rows.append(("RETA", f"{reta['size']} entries, {layout} ({spread})"))
    console.print(_key_value_table("RSS", rss_rows))
    xstats = Table(title="extended statistics")
    xstats.add_column("name")
    xstats.add_column("value", justify="right")
    for name, value in record["xstats"].items():
        xstats.add_row(name, str(value))
    console.print(xstats)
    counters = record.get("control_counters")
    if counters:
        console.print(_key_value_table("control path counters", sorted(counters.items())))


def _open_port(device: str, devargs: NetvscDevargs, root: str | None, timeout: float) -> api.Port:
    from netvsc.pmd.port import NetvscPort  # the driver is loaded only when a port is opened

    return NetvscPort.open(device, devargs, root=root, control_timeout=timeout)


@click.command("info")
@click.argument("device", metavar="[DEV]", required=False)
@click.option("--devargs", default=None, help="Device arguments, e.g. latency=100,tx_copybreak=256.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory standing for / (an emulated host's root); default $NETVSC_SYSFS_ROOT or /.",
)
@click.option(
    "--queues",
    type=click.IntRange(min=1),
    default=None,
    help="Configure this many RX/TX queues with RSS (default key, every hash type the port offers) "
    "before reading, so RSS and RETA show values in effect. Default: leave the port unconfigured.",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0.001),
    help="Control request deadline (s).",
)
def info(
    device: str | None,
    devargs: str | None,
    as_json: bool,
    root: str | None,
    queues: int | None,
    timeout: float,
) -> None:
    """Open DEV (instance GUID or interface name, optionally GUID,key=value,...) and show it.

    Without DEV, list the devices this driver can open (netvsc.probe()).
    """
    if device is None:
        _print_probe(root, as_json)
        return
    try:
        name, spec_devargs = split_device_spec(device)
        if spec_devargs and devargs:
            raise click.UsageError("give device arguments either after DEV or with --devargs, not both")
        # Parsed before the device is touched, so a bad devarg fails fast and alone.
        parsed = parse_devargs(devargs or spec_devargs or None)
        port = _open_port(name, parsed, root, timeout)
        try:
            if queues is not None:
                flow_types = port.dev_info().flow_type_rss_offloads
                rss = api.RssConf(key=ndis.TOEPLITZ_KEY_DPDK, hash_types=flow_types) if flow_types else None
                port.configure(queues, queues, rss=rss)
            record = collect(port)
        finally:
            port.close()
    except NetvscError as exc:
        # One line, no traceback: unknown device, bad devargs, a host that does not answer.
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(record, indent=2))
    else:
        _print_tables(record, Console(width=max(100, _terminal_width())))


def _print_probe(root: str | None, as_json: bool) -> None:
    try:
        devices = probe(root)
    except NetvscError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([device.as_dict() for device in devices], indent=2))
        return
    table = Table(
        title=f"usable NetVSC devices under {sysfs_root(root)}",
        caption=None if devices else "none: bind one with `netvsc devbind --bind uio_hv_generic DEV`",
    )
    table.add_column("GUID", no_wrap=True)
    for heading in ("netdev", "uio", "channels", "monitor", "relid", "kind"):
        table.add_column(heading)
    for device in devices:
        netdev = device.netdev or "-"
        table.add_row(
            device.guid,
            f"({netdev})" if device.netdev_recorded else netdev,
            device.uio,
            str(device.channel_count),
            str(device.monitor_id) if device.has_monitor else "none",
            str(device.relid),
            "emulated" if device.emulated else "real",
        )
    Console(width=max(100, _terminal_width())).print(table)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 100
