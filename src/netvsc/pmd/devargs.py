"""Device arguments of the NetVSC port (layer 5, pmd; spec/pmd.md section 6, vmbus.md 5.2).

One table of keys, one parser, as DPDK's netvsc has: ``latency``, ``rx_copybreak``,
``tx_copybreak``, ``rx_extmbuf_enable`` and ``numa_aware`` (every key current DPDK netvsc
accepts). Values are unsigned integers written as C's ``strtoul(value, &end, 0)`` reads them:
decimal, ``0x`` hexadecimal, or octal with a leading ``0``, and the whole value must be the
number.

Where this parser is stricter than DPDK, on purpose (DESIGN.md section 7.1):

- DPDK truncates values to 32 bits without a word and accepts ``-1`` (strtoul negates it into a
  huge value); here every value is range-checked and a sign is refused.
- DPDK accepts a ``latency`` of 6554 µs or more and then ignores it at channel open with only a
  log line; here it is refused when the devargs are parsed, so the user learns of it.
- A key given twice is refused instead of the last one silently winning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from netvsc.errors import ConfigError

__all__ = ["DEVARG_RANGES", "NetvscDevargs", "parse_devargs", "parse_unsigned", "split_device_spec"]

UINT32_MAX = 0xFFFFFFFF
# The monitor page stores the latency as a u16 in 100 ns units (spec/vmbus.md 5.2): 6553 µs is
# the largest value DPDK's rte_vmbus_set_latency does not reject.
LATENCY_US_MAX = (0xFFFF * 100 - 1) // 1000

# key -> (minimum, maximum). Everything DPDK keeps in a uint32 may use the whole uint32 range.
DEVARG_RANGES: dict[str, tuple[int, int]] = {
    "latency": (0, LATENCY_US_MAX),
    "rx_copybreak": (0, UINT32_MAX),
    "tx_copybreak": (0, UINT32_MAX),
    "rx_extmbuf_enable": (0, UINT32_MAX),
    "numa_aware": (0, UINT32_MAX),
}

# What strtoul with base 0 takes as a whole number: 0x/0X + hex digits, 0 + octal digits, or
# decimal without a leading zero. "0x" alone, "08" and "1e3" leave characters behind: refused.
_UNSIGNED = re.compile(r"0[xX](?P<hex>[0-9a-fA-F]+)|(?P<oct>0[0-7]*)|(?P<dec>[1-9][0-9]*)")


def _accepted(key: str) -> str:
    low, high = DEVARG_RANGES[key]
    unit = " microseconds" if key == "latency" else ""
    return f"an unsigned integer {low}..{high}{unit} (decimal, 0x hex or 0 octal)"


def parse_unsigned(key: str, text: str) -> int:
    """``text`` read as strtoul with base 0 reads it, whole; ConfigError naming ``key`` otherwise."""
    match = _UNSIGNED.fullmatch(text)
    if match is None:
        detail = "empty value" if text == "" else "not an unsigned number"
        raise ConfigError(key, text, _accepted(key), detail)
    if match.group("hex") is not None:
        return int(match.group("hex"), 16)
    if match.group("oct") is not None:
        return int(match.group("oct"), 8)
    return int(match.group("dec"), 10)


@dataclass(frozen=True)
class NetvscDevargs:
    """The parsed device arguments, with DPDK's defaults (pmd.md 1.1 step 6)."""

    latency_us: int = 50  # monitor latency of every opened channel (devarg ``latency``)
    rx_copybreak: int = 256  # with rx_extmbuf_enable: longer frames are delivered zero-copy
    tx_copybreak: int = 512  # frames up to this length are copied into the chimney
    rx_extmbuf_enable: int = 0  # non-zero: zero-copy external-buffer receive
    numa_aware: int = 0  # non-zero: allocate on the device's NUMA node

    @property
    def latency_units(self) -> int:
        """The latency as the monitor page stores it, in 100 ns units."""
        return self.latency_us * 10

    @property
    def rx_extmbuf(self) -> bool:
        return self.rx_extmbuf_enable != 0

    @property
    def numa(self) -> bool:
        return self.numa_aware != 0

    def as_dict(self) -> dict[str, int]:
        """Keyed by devarg name (``latency``, not ``latency_us``)."""
        return {_KEY_OF_FIELD[f.name]: getattr(self, f.name) for f in fields(self)}

    def to_text(self) -> str:
        """The ``key=value,...`` form that ``parse_devargs`` reads back to an equal object."""
        return ",".join(f"{key}={value}" for key, value in self.as_dict().items())


_FIELD_OF_KEY = {"latency": "latency_us"} | {key: key for key in DEVARG_RANGES if key != "latency"}
_KEY_OF_FIELD = {name: key for key, name in _FIELD_OF_KEY.items()}
_KNOWN_KEYS = ", ".join(DEVARG_RANGES)


def _items(text: str) -> list[tuple[str, str]]:
    items = []
    for item in text.split(","):
        item = item.strip()
        if not item:  # "latency=100," : an empty item is nothing, as DPDK's kvargs tokenizer skips it
            continue
        key, sep, value = item.partition("=")
        if not sep:
            # A bare key has no value to parse: the same refusal as "key=".
            if key.strip() in DEVARG_RANGES:
                raise ConfigError(key.strip(), "", _accepted(key.strip()), "no value given (key=value)")
            raise ConfigError("devargs", item, f"key=value pairs with keys {_KNOWN_KEYS}")
        items.append((key.strip(), value.strip()))
    return items


def parse_devargs(text: str | Mapping[str, object] | NetvscDevargs | None) -> NetvscDevargs:
    """Parse ``"latency=100,tx_copybreak=0x100"`` (or a mapping of the same keys) into devargs.

    ``None`` or an empty string gives the defaults. Mapping values may be strings (parsed as
    above) or non-negative ints. Unknown keys, keys given twice, empty or non-numeric values
    and values out of range raise ``ConfigError`` naming the key, the value and the range.
    """
    if text is None:
        return NetvscDevargs()
    if isinstance(text, NetvscDevargs):
        return text
    if isinstance(text, str):
        pairs: list[tuple[str, object]] = list(_items(text))
    elif isinstance(text, Mapping):
        pairs = list(text.items())
    else:
        raise ConfigError("devargs", text, "a 'key=value,...' string, a mapping or None")
    values: dict[str, int] = {}
    for key, raw in pairs:
        if key not in DEVARG_RANGES:
            raise ConfigError("devargs key", key, _KNOWN_KEYS, f"unknown key in {key}={raw}")
        if key in values:
            raise ConfigError(key, raw, "each key at most once", "key given twice")
        if isinstance(raw, str):
            value = parse_unsigned(key, raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise ConfigError(key, raw, _accepted(key), "not an unsigned number")
        low, high = DEVARG_RANGES[key]
        if not low <= value <= high:
            raise ConfigError(key, raw, _accepted(key), "out of range")
        values[key] = value
    return NetvscDevargs(**{_FIELD_OF_KEY[key]: value for key, value in values.items()})


def split_device_spec(spec: str) -> tuple[str, str]:
    """``"<guid>,latency=100"`` (DPDK's allow-list form) → ``("<guid>", "latency=100")``."""
    device, _, devargs = spec.partition(",")
    if not device.strip():
        raise ConfigError(
            "device", spec, "a device GUID or interface name, optionally followed by ,key=value"
        )
    return device.strip(), devargs
