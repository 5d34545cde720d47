"""The uio preload library: unmodified uio_hv_generic users against the emulated host.

Layer 7 tooling (beside ``host/``). ``uioshim.c`` is compiled on demand by ``build`` with the
system C compiler; ``preload_environment`` gives the variables to run a program under it.
``testpmd_queue_state.c`` works around a DPDK 22.11 testpmd/netvsc defect (see its header).
"""

from netvsc.preload.build import (
    DEVICES_ENV,
    LIBRARY_ENV,
    ROOT_ENV,
    SOURCE_NAME,
    TESTPMD_QUEUE_STATE_SOURCE,
    build_library,
    build_testpmd_queue_state_library,
    cache_directory,
    preload_environment,
)

__all__ = [
    "DEVICES_ENV",
    "LIBRARY_ENV",
    "ROOT_ENV",
    "SOURCE_NAME",
    "TESTPMD_QUEUE_STATE_SOURCE",
    "build_library",
    "build_testpmd_queue_state_library",
    "cache_directory",
    "preload_environment",
]
