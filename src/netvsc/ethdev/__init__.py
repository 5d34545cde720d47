"""The generic Port API (layer 6, ethdev): what every port type offers an application.

``ethdev.api`` holds the value types and the ``Port`` protocol; it sits below ``pmd/`` (the
NetVSC port imports it), while the other port types of this package (AF_PACKET, TAP, failsafe)
sit beside ``pmd/``. Importing this package loads nothing heavy.
"""

__all__ = ["Mempool", "MempoolExhausted", "PacketBatch"]

_LAZY = {
    "Mempool": "netvsc.ethdev.mempool",
    "MempoolExhausted": "netvsc.ethdev.mempool",
    "PacketBatch": "netvsc.ethdev.batch",
}


def __getattr__(name: str):
    # Lazy, so that ``import netvsc.ethdev`` (done by pmd/ and apps for ``api``) stays light:
    # the mempool pulls in numba.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
