"""Calling a compiled kernel without numba's dispatcher, for the per-burst calls.

Layer 3 (fastpath). A call through a numba dispatcher types every argument and picks an overload
before it runs the machine code: 100-250 ns per call, several times what a small burst kernel
does with a few packets. ``compiled(kernel, signature)`` compiles (or loads from the cache) the
one overload a caller needs and returns its entry point, which only unboxes the arguments.

The entry point still refuses an argument of another type or dtype (TypeError), but it does not
check an array's layout: callers pass C-contiguous arrays, which every array a burst takes is
(tables, batch indices and buffers are all allocated here). With NUMBA_DISABLE_JIT=1 the kernel
is a plain Python function and is returned as it is.
"""

from __future__ import annotations

from collections.abc import Callable

from numba import config

__all__ = ["compiled"]


def compiled(kernel, signature: str) -> Callable:
    """The entry point of ``kernel`` compiled for ``signature`` (compiled now if need be)."""
    if config.DISABLE_JIT:
        return kernel
    return kernel.compile(signature)
