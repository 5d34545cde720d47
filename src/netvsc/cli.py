"""The ``netvsc`` command: one click group, one sub-command per application module."""

from __future__ import annotations

import logging

import click

from netvsc import __version__
from netvsc.apps.bench import bench
from netvsc.apps.devbind import devbind
from netvsc.apps.host import host
from netvsc.apps.info import info
from netvsc.apps.testpmd import testpmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netvsc")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Userspace poll-mode driver for the Hyper-V / Azure synthetic NIC (NetVSC)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


cli.add_command(devbind)
cli.add_command(bench)
cli.add_command(host)
cli.add_command(info)
cli.add_command(testpmd)


def main() -> None:
    cli()
