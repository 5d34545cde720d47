"""``netvsc devbind``: show NetVSC devices and bind them to uio_hv_generic or hv_netvsc.

Layer 8 (apps). A shell over ``netvsc.vmbus.devbind``: parses options, prints tables or JSON,
and turns every ``NetvscError`` into one clean error line and a non-zero exit.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from netvsc.errors import NetvscError
from netvsc.vmbus import devbind as binding
from netvsc.vmbus.sysfs import ROOT_ENV, sysfs_root


def _status_table(rows: list[dict[str, object]], root_text: str) -> Table:
    table = Table(
        title=f"VMBus network devices under {root_text}",
        caption=None if rows else "none found (sys/bus/vmbus/devices has no synthetic NIC)",
    )
    for heading in ("UUID", "netdev", "driver", "uio", "channels", "relid", "monitor"):
        table.add_column(heading)
    for row in rows:
        netdev = row["netdev"] or (f"({row['netdev_recorded']})" if row["netdev_recorded"] else "-")
        monitor = "none" if row["monitor_id"] == 255 else str(row["monitor_id"])
        table.add_row(
            str(row["guid"]),
            str(netdev),
            str(row["driver"] or "-"),
            str(row["uio"] or "-"),
            str(row["channel_count"]),
            str(row["relid"]),
            monitor,
        )
    return table


def _report(result: binding.BindResult) -> None:
    name = f"{result.guid} ({result.netdev})" if result.netdev else result.guid
    target = result.requested or "no driver"
    if not result.changed:
        click.echo(f"{name}: already bound to {target}")
    elif result.verified:
        click.echo(f"{name}: {result.driver_before or 'no driver'} -> {target}")
    else:
        click.echo(
            f"{name}: wrote {len(result.writes)} sysfs files, but the device is bound to "
            f"{result.driver_after or 'no driver'} (asked for {target}); check dmesg",
            err=True,
        )
        raise SystemExit(1)


@click.command("devbind")
@click.option("--status", "show_status", is_flag=True, help="List VMBus network devices (the default).")
@click.option("--json", "as_json", is_flag=True, help="With --status: print JSON instead of a table.")
@click.option(
    "--bind",
    "bind_driver",
    type=click.Choice(binding.DRIVERS),
    metavar="DRIVER",
    help="Bind DEV to DRIVER: uio_hv_generic (for this PMD) or hv_netvsc (back to the kernel).",
)
@click.option("--unbind", "do_unbind", is_flag=True, help="Unbind DEV from its driver.")
@click.option("--force", is_flag=True, help="Rebind even the interface that carries the default route.")
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    default=None,
    help=f"Directory standing for / (an emulated host's root); default ${ROOT_ENV} or /.",
)
@click.argument("devices", nargs=-1, metavar="[DEV]...")
def devbind(
    show_status: bool,
    as_json: bool,
    bind_driver: str | None,
    do_unbind: bool,
    force: bool,
    root: str | None,
    devices: tuple[str, ...],
) -> None:
    """Show or change which driver owns VMBus NICs. DEV is an instance GUID or an interface name."""
    if bind_driver and do_unbind:
        raise click.UsageError("--bind and --unbind exclude each other")
    if (bind_driver or do_unbind) and not devices:
        raise click.UsageError("name the device(s): a GUID or an interface name such as eth1")
    if devices and not (bind_driver or do_unbind):
        raise click.UsageError("DEV given without --bind DRIVER or --unbind")
    try:
        if bind_driver or do_unbind:
            for dev in devices:
                if bind_driver:
                    _report(binding.bind(dev, bind_driver, force=force, root=root))
                else:
                    _report(binding.unbind(dev, force=force, root=root))
        if show_status or not (bind_driver or do_unbind):
            rows = binding.device_status(root)
            if as_json:
                click.echo(json.dumps(rows, indent=2))
            else:
                Console().print(_status_table(rows, str(sysfs_root(root))))
    except NetvscError as exc:
        # One line, no traceback: these are refusals the user can act on.
        raise click.ClickException(str(exc)) from None
