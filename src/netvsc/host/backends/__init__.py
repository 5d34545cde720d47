"""Backends of the emulated host: where frames go to and come from (OpenVMM net_backend shape).

``Backend`` is the interface; ``create_backend(spec, nic_index=..., vswitch=...)`` builds one
for one NIC from a command-line spec (``SPEC_FORMS`` lists them, for ``--help``):

- ``loopback``: every transmit comes back as a receive;
- ``null``: drops transmits, never receives;
- ``vswitch``: a port on the host's learning switch (the server passes its ``VSwitch``);
- ``tap:IFNAME[@NETNS]``: a TAP device, in network namespace NETNS when given;
- ``pcap:IN[,OUT][,loop[=N]]``: replay IN as receives, record transmits to OUT;
- ``gen[:rate=PPS,size=N|MIN-MAX|imix,count=N,dst=MAC]``: generated UDP traffic.

One spec serves every NIC of the host, so names that must differ per NIC take the NIC's
index: ``{nic}`` in IFNAME or OUT is replaced by it; without ``{nic}``, NICs after the first
get the index appended (``tap:nv`` gives nv, nv1, nv2...; ``out.pcapng`` gives out.pcapng,
out-nic1.pcapng...).
"""

from __future__ import annotations

import os

from netvsc.errors import ConfigError
from netvsc.host.backends.base import Backend, BackendOffloads

__all__ = ["Backend", "BackendOffloads", "SPEC_FORMS", "create_backend", "per_nic_name"]

SPEC_FORMS = (
    "loopback | null | vswitch | tap:IFNAME[@NETNS] | pcap:IN[,OUT][,loop[=N]] | "
    "gen[:rate=PPS,size=N|MIN-MAX|imix,count=N,dst=MAC]"
)


def per_nic_name(name: str, nic_index: int, *, path: bool = False) -> str:
    """``name`` for NIC ``nic_index``: ``{nic}`` replaced, or the index appended after NIC 0."""
    if "{nic}" in name:
        return name.replace("{nic}", str(nic_index))
    if nic_index == 0:
        return name
    if path:
        root, extension = os.path.splitext(name)
        return f"{root}-nic{nic_index}{extension}"
    return f"{name}{nic_index}"


def _fail(spec: str, detail: str = "") -> ConfigError:
    return ConfigError("backend", spec, SPEC_FORMS, detail)


def _options(spec: str, text: str, allowed: tuple[str, ...]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in allowed or (not sep and key != "loop"):
            raise _fail(spec, f"unknown option {item!r}; options are {', '.join(allowed)}")
        if key in options:
            raise _fail(spec, f"option {key!r} given twice")
        options[key] = value.strip()
    return options


def _number(spec: str, key: str, value: str, kind=int):
    try:
        number = kind(value)
    except ValueError:
        raise _fail(spec, f"{key}={value!r} is not a number") from None
    if number < 0:
        raise _fail(spec, f"{key}={value!r} is negative")
    return number


def create_backend(spec: str, *, nic_index: int, vswitch=None) -> Backend:
    """Build the backend of NIC ``nic_index`` from ``spec`` (see the module docstring).

    Raises ``ConfigError`` naming ``backend``, the spec and the accepted forms for a spec
    that does not parse; opening a device can raise ``DeviceError``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(spec, "empty")
    if nic_index < 0:
        raise ConfigError("nic_index", nic_index, "0 or more")
    kind, sep, argument = spec.strip().partition(":")
    if kind == "loopback" and not sep:
        from netvsc.host.backends.loopback import LoopbackBackend

        return LoopbackBackend()
    if kind == "null" and not sep:
        from netvsc.host.backends.null import NullBackend

        return NullBackend()
    if kind == "vswitch" and not sep:
        if vswitch is None:
            raise _fail(spec, "vswitch needs the host's VSwitch (passed by the server)")
        return vswitch.attach(nic_index)
    if kind == "tap":
        ifname, at, netns = argument.partition("@")
        if not ifname or (at and not netns):
            raise _fail(spec, "tap needs an interface name, and a namespace name after '@'")
        from netvsc.host.backends.tap import TapBackend, validate_ifname

        ifname = validate_ifname(per_nic_name(ifname, nic_index), spec)
        return TapBackend(ifname, netns or None)
    if kind == "pcap":
        items = argument.split(",")
        in_path = items[0]
        out_path = None
        rest = items[1:]
        if rest and "=" not in rest[0] and rest[0] != "loop":
            out_path = rest[0]
            rest = rest[1:]
        options = _options(spec, ",".join(rest), ("loop",))
        if not in_path and not out_path:
            raise _fail(spec, "pcap needs an input file, an output file, or both")
        loop = 1
        if "loop" in options:
            loop = _number(spec, "loop", options["loop"]) if options["loop"] else 0
        from netvsc.host.backends.pcap import PcapBackend

        out_path = per_nic_name(out_path, nic_index, path=True) if out_path else None
        try:
            return PcapBackend(in_path or None, out_path, loop=loop, nic_index=nic_index)
        except ConfigError as exc:
            if exc.parameter == "backend":
                raise
            raise _fail(spec, str(exc)) from exc
    if kind == "gen":
        options = _options(spec, argument, ("rate", "size", "count", "dst"))
        from netvsc.host.backends.gen import GenBackend, parse_mac

        kwargs: dict = {"nic_index": nic_index}
        if "rate" in options:
            kwargs["rate"] = _number(spec, "rate", options["rate"], float)
        if "count" in options:
            kwargs["count"] = _number(spec, "count", options["count"])
        if "size" in options:
            kwargs["size"] = options["size"]
        try:
            if "dst" in options:
                kwargs["dst"] = parse_mac(options["dst"])
            return GenBackend(**kwargs)
        except ConfigError as exc:
            raise _fail(spec, str(exc)) from exc
    raise _fail(spec)
