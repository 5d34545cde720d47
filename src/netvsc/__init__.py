"""netvsc: a userspace poll-mode driver for the Hyper-V / Azure synthetic NIC.

Layers (bottom-up, each imports only from those below): ``wire`` (byte
layouts), ``proto`` (session engines, no I/O), ``fastpath`` (numba kernels),
``vmbus`` (device access, rings, signalling), ``pmd`` (the driver), ``ethdev``
(port API), ``host`` (emulated Hyper-V host), ``apps`` and ``cli``.
See ARCHITECTURE.md.
"""

from netvsc.errors import ConfigError, DeviceError, NetvscError, ProtocolError, RingFullError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "NetvscError",
    "ProtocolError",
    "RingFullError",
    "__version__",
    "probe",
]


def __getattr__(name: str):
    # ``netvsc.probe`` is loaded on first use, so ``import netvsc`` stays cheap (no numpy, no sysfs).
    if name == "probe":
        from netvsc.pmd.probe import probe

        return probe
    raise AttributeError(f"module 'netvsc' has no attribute {name!r}")
