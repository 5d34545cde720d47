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
from llvmlite import ir as lir
from numba import config, njit, types
from numba.core import ir_utils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

__all__ = ["ArrayTable", "register_aliasing_call", "table_array"]


if config.DISABLE_JIT:

    def table_array(table, slot, dtype):
        address, length = int(table[2 * slot]), int(table[2 * slot + 1])
        ctype = np.ctypeslib.as_ctypes_type(np.dtype(dtype))
        if length == 0:
            return np.empty(0, dtype=dtype)
        return np.ctypeslib.as_array(ctypes.cast(address, ctypes.POINTER(ctype)), shape=(length,))

else:

    @intrinsic
    def _table_view(typingctx, table, slot, dtype):
        """Pair ``slot`` of ``table`` as an array struct built in place: no call returns it, so
        it also compiles in kernels without numba's runtime (``_nrt=False``, no refcounting)."""
        element = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type
        array_type = types.Array(element, 1, "C")
        signature = array_type(table, slot, dtype)

        def codegen(context, builder, sig, args):
            pairs = context.make_array(sig.args[0])(context, builder, args[0])
            index = builder.mul(
                context.cast(builder, args[1], sig.args[1], types.intp), lir.Constant(lir.IntType(64), 2)
            )
            address = builder.load(builder.gep(pairs.data, [index]))
            length = builder.load(
                builder.gep(pairs.data, [builder.add(index, lir.Constant(lir.IntType(64), 1))])
            )
            view = context.make_array(array_type)(context, builder)
            itemsize = context.get_constant(
                types.intp, context.get_abi_sizeof(context.get_data_type(element))
            )
            populate_array(
                view,
                data=builder.inttoptr(address, view.data.type),
                shape=[length],
                strides=[itemsize],
                itemsize=itemsize,
                meminfo=None,
            )
            return view._getvalue()

        return signature, codegen

    @njit(nogil=True, inline="always", _nrt=False)
    def table_array(table, slot, dtype):
        """Pair ``slot`` of ``table`` as a 1-D array of ``dtype`` (a numpy scalar type)."""
        return _table_view(table, slot, dtype)


def _aliases_its_arguments(lhs, args, alias_map, arg_aliases):
    for arg in args:
        ir_utils._add_alias(lhs, arg.name, alias_map, arg_aliases)


def register_aliasing_call(name: str, module: str) -> None:
    """Tell numba's dead-code elimination that the array a call returns aliases its arguments.

    numba assumes an array returned by a call it does not know is fresh memory, and after
    inlining it removes stores into such an array when nothing reads it afterwards. An array
    from ``table_array`` (or a tuple of them) is shared memory: every store matters. (Without
    this, writes of a kernel that inlines another function were silently dropped.)
    """
    ir_utils.alias_func_extensions[(name, module)] = _aliases_its_arguments


# After inlining, table_array is this call: the view aliases the table, so stores through it are
# never taken for stores to fresh memory.
register_aliasing_call("_table_view", __name__)
register_aliasing_call("table_array", __name__)


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
