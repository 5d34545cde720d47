"""Little-endian integers at any byte offset of a uint8 array, as single loads and stores.

Layer 3 (fastpath). Wire formats put u16/u32/u64 fields at offsets a kernel computes, in buffers
shared with the host. Assembling a u32 from four indexed bytes costs four loads, four shifts and
numba's negative-index handling on each byte, which stops LLVM from merging them: it showed as a
large share of a packet's receive cost. Here each access is one unaligned load or store.
``copy_by_aligned_words`` copies a short range out of such a buffer by aligned words only.

Callers check offsets against the buffer before use (numba does not). Under NUMBA_BOUNDSCHECK=1
every access is checked and raises IndexError; with NUMBA_DISABLE_JIT=1 these are plain Python.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir as lir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

from netvsc.fastpath.atomics import compiler_barrier

__all__ = ["copy_by_aligned_words", "load_u16", "load_u32", "load_u64", "store_u16", "store_u32", "store_u64"]


def _byte_pointer(context, builder, arrty, arr, index, bits):
    ary = context.make_array(arrty)(context, builder, arr)
    ptr = cgutils.get_item_pointer(context, builder, arrty, ary, [index], wraparound=False)
    return builder.bitcast(ptr, lir.IntType(bits).as_pointer())


def _check_bytes(arr, what):
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1):
        raise TypeError(f"{what} needs a 1-D uint8 array")


def _load_intrinsic(bits: int):
    @intrinsic
    def load(typingctx, arr, index):
        _check_bytes(arr, f"load_u{bits}")

        def codegen(context, builder, signature, args):
            ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1], bits)
            value = builder.load(ptr, align=1)
            return value if bits == 64 else builder.zext(value, lir.IntType(64))

        return types.int64(arr, index), codegen

    return load


def _store_intrinsic(bits: int):
    @intrinsic
    def store(typingctx, arr, index, value):
        _check_bytes(arr, f"store_u{bits}")

        def codegen(context, builder, signature, args):
            ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1], bits)
            word = context.cast(builder, args[2], signature.args[2], types.int64)
            if bits < 64:
                word = builder.trunc(word, lir.IntType(bits))
            builder.store(word, ptr, align=1)
            return context.get_dummy_value()

        return types.void(arr, index, value), codegen

    return store


if config.DISABLE_JIT:

    def _load(arr: np.ndarray, index: int, size: int) -> int:
        if index < 0 or index + size > arr.shape[0]:
            raise IndexError(f"load_u{size * 8}: bytes {index}..{index + size} outside {arr.shape[0]}")
        return int.from_bytes(arr[index : index + size].tobytes(), "little", signed=size == 8)

    def _store(arr: np.ndarray, index: int, value: int, size: int) -> None:
        if index < 0 or index + size > arr.shape[0]:
            raise IndexError(f"store_u{size * 8}: bytes {index}..{index + size} outside {arr.shape[0]}")
        arr[index : index + size] = np.frombuffer(
            (int(value) & ((1 << (size * 8)) - 1)).to_bytes(size, "little"), dtype=np.uint8
        )

    def load_u16(arr, index):
        return _load(arr, index, 2)

    def load_u32(arr, index):
        return _load(arr, index, 4)

    def load_u64(arr, index):
        """The 64-bit word as a signed int64 (as the JIT's), bit for bit."""
        return _load(arr, index, 8)

    def store_u16(arr, index, value):
        _store(arr, index, value, 2)

    def store_u32(arr, index, value):
        _store(arr, index, value, 4)

    def store_u64(arr, index, value):
        _store(arr, index, value, 8)

else:
    _load16, _load32, _load64 = (_load_intrinsic(bits) for bits in (16, 32, 64))
    _store16, _store32, _store64 = (_store_intrinsic(bits) for bits in (16, 32, 64))

    if config.BOUNDSCHECK:

        @register_jitable(inline="always")
        def _check(arr, index, size):
            if index < 0 or index + size > arr.shape[0]:
                raise IndexError("lebytes: access outside the array")

    else:

        @register_jitable(inline="always")
        def _check(arr, index, size):
            pass

    @register_jitable(inline="always")
    def load_u16(arr, index):
        _check(arr, index, 2)
        return _load16(arr, index)

    @register_jitable(inline="always")
    def load_u32(arr, index):
        _check(arr, index, 4)
        return _load32(arr, index)

    @register_jitable(inline="always")
    def load_u64(arr, index):
        """The 64-bit word as an int64, bit for bit."""
        _check(arr, index, 8)
        return _load64(arr, index)

    @register_jitable(inline="always")
    def store_u16(arr, index, value):
        _check(arr, index, 2)
        _store16(arr, index, value)

    @register_jitable(inline="always")
    def store_u32(arr, index, value):
        _check(arr, index, 4)
        _store32(arr, index, value)

    @register_jitable(inline="always")
    def store_u64(arr, index, value):
        _check(arr, index, 8)
        _store64(arr, index, value)


@register_jitable
def copy_by_aligned_words(dst, dst_start, src, src_start, nbytes):
    """``dst[dst_start:dst_start+nbytes] = src[src_start:src_start+nbytes]``, reading ``src`` only
    by 8-byte words at multiples of 8 (each word shifted into place), so that no load crosses a
    cache line.

    For short copies out of memory another core wrote (a frame in the receive buffer). There a
    load that straddles two lines not yet in this core's L1, as memcpy's unaligned vector loads
    mostly do for a 64-byte frame, stalled ~70 ns on the machine measured (AMD EPYC, KVM); word
    loads did not: RX copy mode went from 177 to 113 ns per frame. Long copies are better left
    to memcpy. The barrier in each loop keeps LLVM from turning the word loads back into vectors.

    Reads the whole words around the range: the caller checks that ``src[src_start & ~7 :
    (src_start + nbytes + 7) & ~7]`` and ``dst[dst_start:dst_start+nbytes]`` are inside the arrays.
    """
    skew = src_start & 7
    at = src_start - skew
    words = max(nbytes, 0) >> 3
    tail = max(nbytes, 0) & 7
    last = 0
    if skew == 0:
        for k in range(words):
            store_u64(dst, dst_start + 8 * k, load_u64(src, at + 8 * k))
            compiler_barrier()
        if tail:
            last = load_u64(src, at + 8 * words)
    elif nbytes > 0:
        down = 8 * skew
        up = 64 - down
        keep = (1 << up) - 1  # >> of an int64 copies the sign bit: mask it off
        low = load_u64(src, at)
        for k in range(words):
            high = load_u64(src, at + 8 * k + 8)
            store_u64(dst, dst_start + 8 * k, ((low >> down) & keep) | (high << up))
            low = high
            compiler_barrier()
        last = (low >> down) & keep
        if tail > 8 - skew:  # the tail runs into the next word
            last |= load_u64(src, at + 8 * words + 8) << up
    for k in range(tail):
        dst[dst_start + 8 * words + k] = (last >> (8 * k)) & 0xFF
