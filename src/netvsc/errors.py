"""The exception hierarchy of the netvsc package (every layer raises these).

- ``NetvscError``: root of everything the package raises on purpose.
- ``ConfigError``: bad user input (devargs, queue counts, MTU, device names,
  command-line values). Also a ``ValueError``; the message names the parameter,
  the value and what is accepted.
- ``ProtocolError``: a peer (host or guest) broke the wire protocol: truncated
  or inconsistent bytes, bad ring indices, unknown ids. Counted and logged by
  whoever catches it, never a crash.
- ``DeviceError``: the device or the system around it is not usable (missing
  sysfs files, missing maps, kernel module not loaded, permissions).
- ``NotSupportedError``: an operation the port type cannot do at all (DPDK's
  -ENOTSUP); also a ``NotImplementedError``, the Port API's word for it.
"""

from __future__ import annotations


class NetvscError(Exception):
    """Root of every exception the netvsc package raises on purpose."""


class ConfigError(NetvscError, ValueError):
    """Bad user input: names the parameter, the value and what is accepted."""

    def __init__(self, parameter: str, value: object, accepted: str, detail: str = "") -> None:
        self.parameter = parameter
        self.value = value
        self.accepted = accepted
        msg = f"invalid {parameter}={value!r}: accepted {accepted}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ProtocolError(NetvscError):
    """A peer sent bytes that break the protocol (truncated, inconsistent, out of range)."""


class DeviceError(NetvscError):
    """The device, its sysfs entries, its maps or the kernel around it cannot be used."""


class RingFullError(NetvscError):
    """Not enough free space in a ring for a packet (a normal back-pressure condition)."""


class NotSupportedError(NetvscError, NotImplementedError):
    """An operation this port type cannot do (DPDK's -ENOTSUP): names the operation and why."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation} is not supported: {reason}")
