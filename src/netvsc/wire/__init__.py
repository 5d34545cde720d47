"""Wire formats of VMBus, NVSP, RNDIS and NDIS (layer 1: byte layouts and constants, no I/O).

Modules: ``vmbus`` (ring header, monitor page, channel packets), ``nvsp`` (NVSP messages),
``rndis`` (RNDIS messages and per-packet info), ``ndis`` (OIDs, NDIS objects, offload and RSS).
Every structure is a ``Struct`` (``_struct``) registered in ``STRUCTURES`` by name.
"""

from netvsc.wire import ndis, nvsp, rndis, vmbus
from netvsc.wire._struct import REGISTRY as STRUCTURES
from netvsc.wire._struct import Record, Struct

__all__ = ["STRUCTURES", "Record", "Struct", "ndis", "nvsp", "rndis", "vmbus"]
