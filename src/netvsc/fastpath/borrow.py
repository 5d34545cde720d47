"""Arrays without reference counting, for the inside of a kernel.

Layer 3 (fastpath). numba gives every array passed from Python a reference count (an NRT
"meminfo"), and every helper call that takes the array and is not folded into its caller
increments and decrements it with two atomic instructions. A per-frame helper that reads a few
header fields (``read_be16``, a checksum over 20 bytes) then costs more in atomics than in work:
on the receive path of the emulated host they were three quarters of the per-frame time.

``borrowed(array)`` returns the same array (data, shape, strides) with no meminfo: its reference
operations are null checks. A kernel calls it on its arguments at entry; the Python caller holds
the arrays for the duration of the call, so nothing can free them meanwhile, and a borrowed view
must never outlive the call (never stored, never returned). Bounds checking is unchanged
(``NUMBA_BOUNDSCHECK=1`` checks a borrowed array as any other). With ``NUMBA_DISABLE_JIT=1`` it
returns its argument.
"""

from __future__ import annotations

from numba import config, types
from numba.extending import intrinsic

__all__ = ["borrowed"]


if config.DISABLE_JIT:

    def borrowed(array):
        """``array`` itself (the interpreter counts no references)."""
        return array

else:

    @intrinsic
    def borrowed(typingctx, array):
        """``array`` without its reference count, valid for the rest of the kernel call."""
        if not isinstance(array, types.Array):
            raise TypeError("borrowed() takes an array")

        def codegen(context, builder, signature, args):
            array_type = signature.args[0]
            source = context.make_array(array_type)(context, builder, args[0])
            view = context.make_array(array_type)(context, builder)
            context.populate_array(
                view,
                data=source.data,
                shape=source.shape,
                strides=source.strides,
                itemsize=source.itemsize,
                meminfo=None,
            )
            return view._getvalue()

        return array(array), codegen
