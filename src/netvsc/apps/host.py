"""``netvsc host``: run the emulated Hyper-V host, and ``netvsc host ctl``: drive a running one.

Layer 8 (apps). Parses options into ``netvsc.host.server.HostOptions``, runs the server until
SIGINT/SIGTERM, and turns every ``NetvscError`` into one error line and a non-zero exit. The
control commands talk JSON lines to ``ROOT/run/netvsc-host.sock`` (``netvsc.host.control``).

For tests, the environment variable ``NETVSC_HOST_NIC_MODULE`` names a module that replaces
``netvsc.host.nic`` (it must provide ``NicConfig`` and ``NetVsp``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import click

from netvsc.errors import ConfigError, NetvscError
from netvsc.host.control import request
from netvsc.host.tree import DEFAULT_SIZES, MapSizes
from netvsc.wire import nvsp

__all__ = ["host"]

NIC_MODULE_ENV = "NETVSC_HOST_NIC_MODULE"

_VERSION_NAMES = {
    "1": nvsp.NVSP_VERSION_1,
    "2": nvsp.NVSP_VERSION_2,
    "4": nvsp.NVSP_VERSION_4,
    "5": nvsp.NVSP_VERSION_5,
    "6": nvsp.NVSP_VERSION_6,
    "6.1": nvsp.NVSP_VERSION_61,
}
_MAC = re.compile(r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}")
_SIZE = re.compile(r"(\d+)([kKmMgG]?)")

BACKENDS_HELP = """\b
Backends (--backend SPEC, one instance per NIC):
  loopback              every transmitted frame comes back as a receive
  null                  drops transmits, receives nothing
  tap:IFNAME[@NETNS]    a Linux TAP device, in namespace NETNS if given (virtio-net header:
                        checksum and GSO metadata cross it)
  vswitch               a learning switch joining this host's NICs
  pcap:IN[,OUT][,loop[=N]]  replay IN to the guest, record transmits to OUT
  gen[:rate=PPS,size=N|MIN-MAX|imix,count=N,dst=MAC]  generated UDP traffic (benchmarks)
  With several NICs, {nic} in IFNAME or OUT is replaced by the NIC index (else it is appended).
"""

CTL_HELP = """\b
Control commands (netvsc host ctl --root DIR COMMAND):
  link up|down [--nic K]          link state, sent to the guest as status indications
  link speed BPS [--nic K]        link speed, sent as a LINK_SPEED_CHANGE indication
  mtu N [--nic K]                 the host's MTU
  vf offer SERIAL NETDEV [--nic K]  offer a VF (serial number, netdev that plays it; for a
                                  veth end the host carries the VF's frames through the peer)
  vf revoke [--nic K]             revoke the VF
  rescind [--device] [--nic K]    rescind the subchannels, or the whole device
  fault NAME [VALUE] [--arg K=V] [--nic K]   inject a fault:
      drop_completions N            the next N data completions are never sent
      delay_completions S           data completions go out S seconds late
      reorder_completions N         hold N completions, release them newest first
      delay_control S|never         RNDIS responses and indications wait
      subchannel_grant N            grant at most N subchannels
      inject indirection_table|unknown   an unsolicited NVSP message before the next reply
      corrupt transfer_page|rndis_header|straddle_page   damage the next data packet
      stall CHANNEL [--arg on=false]     stop (or resume) servicing a ring
      clear                         forget every fault
  counters [--json] [--nic K]     counters of the host, NetVSP and backend
  status                          devices, GUIDs, MACs, open state
  shutdown                        stop the host (as SIGTERM)
"""


def parse_mac(text: str) -> bytes:
    if not _MAC.fullmatch(text.strip()):
        raise ConfigError("mac", text, "six hex bytes such as 02:15:5d:00:00:01")
    return bytes(int(part, 16) for part in re.split("[:-]", text.strip()))


def parse_versions(text: str) -> tuple[int, ...]:
    versions = []
    for item in text.split(","):
        item = item.strip()
        if item in _VERSION_NAMES:
            versions.append(_VERSION_NAMES[item])
        elif item.lower().startswith("0x") and int(item, 16) in _VERSION_NAMES.values():
            versions.append(int(item, 16))
        else:
            raise ConfigError(
                "nvsp-versions", item, "a comma list of 1, 2, 4, 5, 6, 6.1 (or their 0x values)"
            )
    return tuple(sorted(set(versions), reverse=True))


def parse_size(text: str, parameter: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ConfigError(parameter, text, "a byte count, optionally with K, M or G")
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2).lower()]


def _fail(exc: Exception) -> None:
    click.echo(f"netvsc host: error: {exc}", err=True)
    sys.exit(1)


@click.group(
    invoke_without_command=True,
    epilog=BACKENDS_HELP + "\n" + CTL_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to build the emulated sys/ and dev/ tree in (guests use NETVSC_SYSFS_ROOT=DIR).",
)
@click.option("--devices", default=1, show_default=True, help="Number of synthetic NICs (1-64).")
@click.option(
    "--queues",
    default=64,
    show_default=True,
    help="Channels per NIC the host grants at most (primary + subchannels, 1-64).",
)
@click.option(
    "--mac",
    "macs",
    multiple=True,
    help="MAC of each NIC, once per device in order (default: 02:15:5d:00:00:<index+1>).",
)
@click.option("--mtu", default=1500, show_default=True, help="IP MTU of the NICs (the frame adds 14).")
@click.option("--backend", default="loopback", show_default=True, help="Where frames go; see Backends below.")
@click.option(
    "--no-monitor",
    is_flag=True,
    help="Offer channels without monitor ids: guests signal through the interrupt page and irq fd.",
)
@click.option(
    "--nvsp-versions",
    default=None,
    help="NVSP versions the host accepts, comma list of 1,2,4,5,6,6.1 (default: all).",
)
@click.option(
    "--pcap-out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write every frame crossing the host to this pcapng file.",
)
@click.option(
    "--link-change-delay",
    type=float,
    default=None,
    help="Minimum seconds between link indications (default 5, as OpenVMM).",
)
@click.option(
    "--vf-offer-delay",
    type=float,
    default=None,
    help="Seconds between the VF association and the VF device (default 1).",
)
@click.option("--ring-size", default=None, help="Primary channel map size, both rings (default 4M).")
@click.option("--subchannel-ring-size", default=None, help="Subchannel ring file size (default 4M).")
@click.option("--recv-buffer-size", default=None, help="Receive buffer map size (default 31M).")
@click.option("--send-buffer-size", default=None, help="Send buffer map size (default 16M).")
@click.option(
    "--idle-scan-us",
    default=1000,
    show_default=True,
    help="Monitor-page scan period once idle for 0.2 s (0: always scan at the guest's latency).",
)
@click.pass_context
def host(
    ctx: click.Context,
    root: Path | None,
    devices: int,
    queues: int,
    macs: tuple[str, ...],
    mtu: int,
    backend: str,
    no_monitor: bool,
    nvsp_versions: str | None,
    pcap_out: str | None,
    link_change_delay: float | None,
    vf_offer_delay: float | None,
    ring_size: str | None,
    subchannel_ring_size: str | None,
    recv_buffer_size: str | None,
    send_buffer_size: str | None,
    idle_scan_us: int,
) -> None:
    """Run the emulated Hyper-V host: NetVSC devices served through uio files under --root.

    The host builds ROOT/sys/bus/vmbus/devices/<guid> and ROOT/dev/uioN for each NIC, serves
    NVSP/RNDIS on their channels, and removes everything on SIGINT or SIGTERM. Drive a running
    host with `netvsc host ctl --root DIR ...`.
    """
    if ctx.invoked_subcommand is not None:
        return
    if root is None:
        raise click.UsageError("--root DIR is required to run the host")
    from netvsc.host.server import HostOptions, HostServer

    try:
        sizes = MapSizes(
            rings=parse_size(ring_size, "ring-size") if ring_size else DEFAULT_SIZES.rings,
            recv_buffer=parse_size(recv_buffer_size, "recv-buffer-size")
            if recv_buffer_size
            else DEFAULT_SIZES.recv_buffer,
            send_buffer=parse_size(send_buffer_size, "send-buffer-size")
            if send_buffer_size
            else DEFAULT_SIZES.send_buffer,
            subchannel_ring=parse_size(subchannel_ring_size, "subchannel-ring-size")
            if subchannel_ring_size
            else DEFAULT_SIZES.subchannel_ring,
        )
        if idle_scan_us < 0:
            raise ConfigError("idle-scan-us", idle_scan_us, "0 or more microseconds")
        options = HostOptions(
            root=root,
            devices=devices,
            queues=queues,
            macs=[parse_mac(m) for m in macs] or None,
            mtu=mtu,
            backend=backend,
            monitor=not no_monitor,
            nvsp_versions=parse_versions(nvsp_versions) if nvsp_versions else None,
            pcap_out=pcap_out,
            link_change_delay_s=link_change_delay,
            vf_offer_delay_s=vf_offer_delay,
            sizes=sizes,
            idle_scan_s=idle_scan_us / 1e6,
            nic_module=os.environ.get(NIC_MODULE_ENV) or "netvsc.host.nic",
        )
        server = HostServer(options)
    except (NetvscError, ValueError, OSError) as exc:
        _fail(exc)
        return
    try:
        guids = " ".join(nic.device.guid for nic in server.nics)
        click.echo(f"netvsc host: ready, root {server.tree.root}, {len(server.nics)} device(s): {guids}")
        sys.stdout.flush()
        server.serve_forever()
    finally:
        server.close()


@host.group(epilog=CTL_HELP)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Root directory of the running host.",
)
@click.pass_context
def ctl(ctx: click.Context, root: Path) -> None:
    """Send a control command to a running host (JSON over ROOT/run/netvsc-host.sock)."""
    ctx.obj = root


def _call(ctx: click.Context, command: str, **args: object) -> dict:
    try:
        return request(ctx.obj, command, **{k: v for k, v in args.items() if v is not None})
    except (NetvscError, ValueError, OSError) as exc:
        _fail(exc)
        raise AssertionError("unreachable") from None


_nic_option = click.option("--nic", type=int, default=None, help="NIC index (default: every NIC).")


@ctl.command()
@click.argument("state", type=click.Choice(["up", "down", "speed"]))
@click.argument("speed_bps", type=click.IntRange(1, 2**32 * 100 - 1), required=False)
@_nic_option
@click.pass_context
def link(ctx: click.Context, state: str, speed_bps: int | None, nic: int | None) -> None:
    """Set the link up or down (the guest gets MEDIA_CONNECT / MEDIA_DISCONNECT), or its speed
    in bit/s (`link speed 25000000000`: the guest gets LINK_SPEED_CHANGE)."""
    if state == "speed":
        if speed_bps is None:
            raise click.UsageError("link speed needs SPEED_BPS (bit/s)")
        click.echo(json.dumps(_call(ctx, "link", speed_bps=speed_bps, nic=nic)))
    else:
        if speed_bps is not None:
            raise click.UsageError(f"link {state} takes no speed")
        click.echo(json.dumps(_call(ctx, "link", up=state == "up", nic=nic)))


@ctl.command()
@click.argument("mtu", type=int)
@_nic_option
@click.pass_context
def mtu(ctx: click.Context, mtu: int, nic: int | None) -> None:
    """Change the host's MTU."""
    click.echo(json.dumps(_call(ctx, "mtu", mtu=mtu, nic=nic)))


@ctl.group()
def vf() -> None:
    """Offer or revoke a VF (accelerated networking)."""


@vf.command("offer")
@click.argument("serial", type=int)
@click.argument("netdev")
@_nic_option
@click.pass_context
def vf_offer(ctx: click.Context, serial: int, netdev: str, nic: int | None) -> None:
    """Offer a VF with SERIAL, played by the kernel netdev NETDEV."""
    click.echo(json.dumps(_call(ctx, "vf_offer", serial=serial, netdev=netdev, nic=nic)))


@vf.command("revoke")
@_nic_option
@click.pass_context
def vf_revoke(ctx: click.Context, nic: int | None) -> None:
    """Revoke the VF."""
    click.echo(json.dumps(_call(ctx, "vf_revoke", nic=nic)))


@ctl.command()
@click.option("--device", is_flag=True, help="Remove the whole device (primary too), as a hot-unplug.")
@_nic_option
@click.pass_context
def rescind(ctx: click.Context, device: bool, nic: int | None) -> None:
    """Rescind the NIC's subchannels, or with --device the whole device (subchannels first,
    then the primary; the guest's open uio connection is hung up and the tree entries vanish)."""
    click.echo(json.dumps(_call(ctx, "rescind", device=device, nic=nic)))


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


@ctl.command(epilog=CTL_HELP)
@click.argument("name")
@click.argument("value", required=False)
@click.option(
    "--arg", "extra", multiple=True, help="Extra KEY=VALUE for the fault (VALUE as JSON if it parses)."
)
@_nic_option
@click.pass_context
def fault(ctx: click.Context, name: str, value: str | None, extra: tuple[str, ...], nic: int | None) -> None:
    """Inject fault NAME with VALUE (JSON if it parses, else text), e.g. `fault drop_completions 3`."""
    args: dict[str, object] = {}
    for item in extra:
        key, sep, text = item.partition("=")
        if not sep or not key:
            _fail(ConfigError("arg", item, "KEY=VALUE"))
        args[key] = _json_or_text(text)
    parsed = _json_or_text(value) if value is not None else None
    click.echo(json.dumps(_call(ctx, "fault", name=name, value=parsed, nic=nic, **args)))


@ctl.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (default: one line per counter).")
@_nic_option
@click.pass_context
def counters(ctx: click.Context, as_json: bool, nic: int | None) -> None:
    """Counters of the host loop, the NetVSP and the backend, per NIC."""
    result = _call(ctx, "counters", nic=nic)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for entry in result["nics"]:
        for group, values in entry.items():
            if isinstance(values, dict):
                for name, value in values.items():
                    click.echo(f"nic{entry['index']}.{group}.{name} {value}")


@ctl.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """Devices, GUIDs, MACs and whether a guest has them open."""
    click.echo(json.dumps(_call(ctx, "status"), indent=2))


@ctl.command()
@click.pass_context
def shutdown(ctx: click.Context) -> None:
    """Stop the host; it removes its tree as on SIGTERM."""
    click.echo(json.dumps(_call(ctx, "shutdown")))


@host.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Root directory of the running host.",
)
@click.option("--debug", is_flag=True, help="Also set UIOSHIM_DEBUG=1 (one stderr line per redirected call).")
@click.option(
    "--export", "as_export", is_flag=True, help="Print `export NAME=VALUE` lines for a shell to eval."
)
@click.option(
    "--device",
    "devices",
    multiple=True,
    help="Instance GUID of a device the program may use (repeatable; default: all of them). "
    "The others look unbound from uio_hv_generic (DPDK 22.11 ignores -a and takes every one).",
)
@click.option(
    "--testpmd-queue-state",
    is_flag=True,
    help="Also preload the DPDK 22.11 testpmd companion (netvsc queues reported as started; "
    "without it 22.11's testpmd forwards nothing on netvsc ports). Needs dpdk-dev.",
)
def preload(
    root: Path, debug: bool, as_export: bool, devices: tuple[str, ...], testpmd_queue_state: bool
) -> None:
    """Print the environment that runs an unmodified program (dpdk-testpmd, or this package with
    NETVSC_SYSFS_ROOT unset) against the host at --root, through the uio preload library.

    \b
    Example:
      env $(netvsc host preload --root /tmp/hv) dpdk-testpmd --no-huge --iova-mode=va -- -i
    The library (compiled on first use into ~/.cache/netvsc) maps /sys/bus/vmbus and /dev/uioN
    onto the root; see src/netvsc/preload/uioshim.c.
    """
    from netvsc.preload import build_testpmd_queue_state_library, preload_environment

    try:
        companions = [build_testpmd_queue_state_library()] if testpmd_queue_state else []
        environment = preload_environment(
            root, also_preload=companions, devices=list(devices) or None, debug=debug
        )
    except (NetvscError, ValueError, OSError) as exc:
        _fail(exc)
        return
    if as_export:
        for name, value in environment.items():
            click.echo(f"export {name}={shlex.quote(value)}")
    else:
        click.echo(" ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items()))
