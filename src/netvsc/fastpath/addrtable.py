"""Many arrays passed to a kernel as one: an int64 table of (address, length) pairs.

Layer 3 (fastpath). numba unboxes every array argument on each call (about 100 ns apiece), so a
burst kernel that needs a queue's two rings, the receive and send buffers, the mempool's metadata
arrays and its own state would spend microseconds just being called. Instead the Python side
builds an ``ArrayTable`` once per queue (keeping the arrays alive) and the kernel gets one int64
array; ``table_array(table, slot, dtype)`` turns pair ``slot`` back into a 1-D array view, which
costs a few instructions and is bounds-checked like any array under NUMBA_BOUNDSCHECK=1.

With NUMBA_DISABLE_JIT=1 the same function builds the view through ctypes, so the kernels run
unchanged as plain Python.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import carray, config, njit, types
from numba.extending import intrinsic

__all__ = ["ArrayTable", "table_array"]


if config.DISABLE_JIT:

    def table_array(table, slot, dtype):
        address, length = int(table[2 * slot]), int(table[2 * slot + 1])
        ctype = np.ctypeslib.as_ctypes_type(np.dtype(dtype))
        if length == 0:
            return np.empty(0, dtype=dtype)
        return np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctype)), shape=(length,))

else:

    @intrinsic
    def _pointer(typingctx, address, dtype):
        element = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
        signature = types.CPointer(element)(address, dtype)

        def codegen(context, builder, sig, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(element)))

        return signature, codegen

    @njit(nogil=True, inline="always")
    def table_array(table, slot, dtype):
        """Pair ``slot`` of ``table`` as a 1-D array of ``dtype`` (a numpy scalar type)."""
        return carray(_pointer(table[2 * slot], dtype), table[2 * slot + 1])


class ArrayTable:
    """``slots`` 1-D contiguous arrays by address; holds a reference to each so none is freed."""

    def __init__(self, slots: int) -> None:
        self.table = np.zeros(2 * slots, dtype=np.int64)
        self._arrays: list[np.ndarray | None] = [None] * slots

    def set(self, slot: int, array: np.ndarray) -> None:
        if array.ndim != 1 or not array.flags.c_contiguous:
            raise ValueError(f"table slot {slot}: a 1-D contiguous array is needed, got shape {array.shape}")
        self._arrays[slot] = array
        self.table[2 * slot] = array.ctypes.data if array.size else 0
        self.table[2 * slot + 1] = array.shape[0]

    def get(self, slot: int) -> np.ndarray | None:
        return self._arrays[slot]

    def clear(self) -> None:
        self.table[:] = 0
        self._arrays = [None] * len(self._arrays)
