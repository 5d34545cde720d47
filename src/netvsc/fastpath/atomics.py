"""Memory fences and 32-bit atomics for shared memory, callable from numba kernels and from Python.

Ring buffers shared with another process (the host) need two things numpy does not
have: a full fence between a store and a later load (spec/vmbus.md 3.11, the two
"full fence required" rows) and atomic read-modify-write on 32-bit words
(monitor-page and interrupt-page bits, CAS on a shared write index). They are
emitted here as LLVM instructions through numba intrinsics, so a kernel pays
one instruction, not a call.

With ``NUMBA_DISABLE_JIT=1`` the same names are Python functions that call the same
instructions compiled once with llvmlite, so the interpreted mode stays correct against
a peer in another process (it is slow, and meant for tests).
"""

from __future__ import annotations

import numpy as np
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic, register_jitable

__all__ = [
    "atomic_cas_u32",
    "atomic_load_u32",
    "atomic_or_u32",
    "atomic_store_release_u32",
    "atomic_store_u32",
    "atomic_xchg_u32",
    "compiler_barrier",
    "copy_bytes",
    "full_fence",
    "load_u64_le",
    "prefetch_read",
    "prefetch_write",
]


def _element_pointer(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [index], wraparound=False)


def _check_u32_array(arr):
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint32 and arr.ndim == 1):
        raise TypeError("atomics need a 1-D uint32 array")

def _address_of(arr: np.ndarray, index: int) -> int:
    """Address of the uint32 ``arr[index]``, bounds-checked (the interpreted path)."""
    if arr.dtype != np.uint32 or arr.ndim != 1:
        raise TypeError("atomics need a 1-D uint32 array")
    if not 0 <= index < arr.shape[0]:
        raise IndexError(f"atomic on word {index} of {arr.shape[0]}")
    return int(arr.ctypes.data) + int(index) * int(arr.strides[0])


class _NativeAtomics:
    """The atomics as native functions, for the interpreted (NUMBA_DISABLE_JIT) mode."""

    _IR = """
    define i32 @or32(ptr %p, i32 %v) {
      %old = atomicrmw or ptr %p, i32 %v seq_cst
      ret i32 %old
    }
    define i32 @xchg32(ptr %p, i32 %v) {
      %old = atomicrmw xchg ptr %p, i32 %v seq_cst
      ret i32 %old
    }
    define i32 @cas32(ptr %p, i32 %expected, i32 %new) {
      %pair = cmpxchg ptr %p, i32 %expected, i32 %new seq_cst seq_cst
      %old = extractvalue { i32, i1 } %pair, 0
      ret i32 %old
    }
    define i32 @load32(ptr %p) {
      %v = load atomic i32, ptr %p seq_cst, align 4
      ret i32 %v
    }
    define void @store32(ptr %p, i32 %v) {
      store atomic i32 %v, ptr %p seq_cst, align 4
      ret void
    }
    define void @fence() {
      fence seq_cst
      ret void
    }
    """

    def __init__(self) -> None:
        import ctypes

        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly(self._IR)
        module.verify()
        target_machine = llvm.Target.from_default_triple().create_target_machine()
        self._engine = llvm.create_mcjit_compiler(module, target_machine)
        self._engine.finalize_object()
        u32, ptr = ctypes.c_uint32, ctypes.c_void_p

        def function(name: str, restype, *argtypes):
            return ctypes.CFUNCTYPE(restype, *argtypes)(self._engine.get_function_address(name))

        self.or32 = function("or32", u32, ptr, u32)
        self.xchg32 = function("xchg32", u32, ptr, u32)
        self.cas32 = function("cas32", u32, ptr, u32, u32)
        self.load32 = function("load32", u32, ptr)
        self.store32 = function("store32", None, ptr, u32)
        self.fence = function("fence", None)



@intrinsic
def _fence(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _compiler_barrier(typingctx):
    def codegen(context, builder, signature, args):
        # A single-thread fence orders memory operations for the compiler only
        # (no instruction is emitted on x86-64).
        builder.fence("seq_cst", "singlethread")
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _atomic_or(typingctx, arr, index, value):
    _check_u32_array(arr)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.uint32)
        return builder.atomic_rmw("or", ptr, val, "seq_cst")

    return types.uint32(arr, index, value), codegen


@intrinsic
def _atomic_xchg(typingctx, arr, index, value):
    _check_u32_array(arr)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], types.uint32)
        return builder.atomic_rmw("xchg", ptr, val, "seq_cst")

    return types.uint32(arr, index, value), codegen


@intrinsic
def _atomic_cas(typingctx, arr, index, expected, new):
    _check_u32_array(arr)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        exp = context.cast(builder, args[2], signature.args[2], types.uint32)
        nv = context.cast(builder, args[3], signature.args[3], types.uint32)
        pair = builder.cmpxchg(ptr, exp, nv, "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)

    return types.uint32(arr, index, expected, new), codegen


@intrinsic
def _atomic_load(typingctx, arr, index):
    _check_u32_array(arr)

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 4)

    return types.uint32(arr, index), codegen


def _store_intrinsic(ordering: str):
    """An atomic 32-bit store with LLVM ordering ``ordering``."""

    @intrinsic
    def store(typingctx, arr, index, value):
        _check_u32_array(arr)

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            val = context.cast(builder, args[2], signature.args[2], types.uint32)
            builder.store_atomic(val, ptr, ordering, 4)
            return context.get_dummy_value()

        return types.void(arr, index, value), codegen

    return store


_atomic_store = _store_intrinsic("seq_cst")
# Release ordering is enough to give up a lock (earlier accesses stay before it); on x86 it is a
# plain store, where seq_cst costs a locked exchange.
_atomic_store_release = _store_intrinsic("release")


@intrinsic
def _copy_bytes(typingctx, dst, dst_start, src, src_start, nbytes):
    for arr in (dst, src):
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1):
            raise TypeError("copy_bytes needs 1-D uint8 arrays")

    def codegen(context, builder, signature, args):
        dst_ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        src_ptr = _element_pointer(context, builder, signature.args[2], args[2], args[3])
        count = context.cast(builder, args[4], signature.args[4], types.intp)
        cgutils.raw_memcpy(builder, dst_ptr, src_ptr, count, 1)
        return context.get_dummy_value()

    return types.void(dst, dst_start, src, src_start, nbytes), codegen


@intrinsic
def _load_u64_le(typingctx, arr, index):
    if not (isinstance(arr, types.Array) and arr.dtype == types.uint8 and arr.ndim == 1):
        raise TypeError("load_u64_le needs a 1-D uint8 array")

    def codegen(context, builder, signature, args):
        ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        word = builder.bitcast(ptr, cgutils.ir.IntType(64).as_pointer())
        return builder.load(word, align=1)  # unaligned: any byte offset

    return types.uint64(arr, index), codegen


def _prefetch_intrinsic(name: str, rw: int):
    """An intrinsic hinting that ``arr[index]`` will soon be read (rw 0) or written (rw 1); the
    line is kept in every cache level (locality 3), data cache."""

    @intrinsic
    def prefetch(typingctx, arr, index):
        if not (isinstance(arr, types.Array) and arr.ndim == 1):
            raise TypeError(f"{name} needs a 1-D array")

        def codegen(context, builder, signature, args):
            ptr = _element_pointer(context, builder, signature.args[0], args[0], args[1])
            byte_pointer = builder.bitcast(ptr, cgutils.ir.IntType(8).as_pointer())
            i32 = cgutils.ir.IntType(32)
            function_type = cgutils.ir.FunctionType(cgutils.ir.VoidType(), [byte_pointer.type, i32, i32, i32])
            function = cgutils.get_or_insert_function(builder.module, function_type, "llvm.prefetch.p0")
            builder.call(function, [byte_pointer, i32(rw), i32(3), i32(1)])
            return context.get_dummy_value()

        return types.void(arr, index), codegen

    return prefetch


_prefetch_read = _prefetch_intrinsic("prefetch_read", 0)
_prefetch_write = _prefetch_intrinsic("prefetch_write", 1)


if config.DISABLE_JIT:
    # The interpreter has no atomics of its own, and this mode runs against a real peer in
    # another process (the emulated host): a non-atomic read-modify-write of a monitor word
    # loses signals. So the same LLVM instructions are compiled once with llvmlite (which
    # NUMBA_DISABLE_JIT does not affect) and called through ctypes.
    _native = _NativeAtomics()

    def full_fence() -> None:
        """Full memory fence (store-load ordering)."""
        _native.fence()

    def compiler_barrier() -> None:
        """Stop the compiler from moving memory operations across this point."""

    def atomic_or_u32(arr: np.ndarray, index: int, value: int) -> int:
        """Atomically OR ``value`` into ``arr[index]``; returns the previous value."""
        return _native.or32(_address_of(arr, index), int(value) & 0xFFFFFFFF)

    def atomic_xchg_u32(arr: np.ndarray, index: int, value: int) -> int:
        """Atomically replace ``arr[index]`` with ``value``; returns the previous value."""
        return _native.xchg32(_address_of(arr, index), int(value) & 0xFFFFFFFF)

    def atomic_cas_u32(arr: np.ndarray, index: int, expected: int, new: int) -> int:
        """Compare-and-swap ``arr[index]``; returns the value found (== expected on success)."""
        return _native.cas32(_address_of(arr, index), int(expected) & 0xFFFFFFFF, int(new) & 0xFFFFFFFF)

    def atomic_load_u32(arr: np.ndarray, index: int) -> int:
        """Sequentially consistent 32-bit load."""
        return _native.load32(_address_of(arr, index))

    def atomic_store_u32(arr: np.ndarray, index: int, value: int) -> None:
        """Sequentially consistent 32-bit store."""
        _native.store32(_address_of(arr, index), int(value) & 0xFFFFFFFF)

    def atomic_store_release_u32(arr: np.ndarray, index: int, value: int) -> None:
        """32-bit store with release ordering (the native store is stronger, seq_cst)."""
        _native.store32(_address_of(arr, index), int(value) & 0xFFFFFFFF)

    def copy_bytes(dst: np.ndarray, dst_start: int, src: np.ndarray, src_start: int, nbytes: int) -> None:
        """``dst[dst_start:dst_start+nbytes] = src[src_start:src_start+nbytes]`` (no overlap)."""
        dst[dst_start : dst_start + nbytes] = src[src_start : src_start + nbytes]

    def prefetch_write(arr: np.ndarray, index: int) -> None:
        """A hint that ``arr[index]`` will be written soon (nothing to do when interpreted)."""

    def prefetch_read(arr: np.ndarray, index: int) -> None:
        """A hint that ``arr[index]`` will be read soon (nothing to do when interpreted)."""

    def load_u64_le(arr: np.ndarray, index: int) -> np.uint64:
        """The little-endian 64-bit word at ``arr[index:index+8]`` (any alignment)."""
        if index < 0 or index + 8 > arr.shape[0]:
            raise IndexError("load_u64_le: word outside the array")
        return np.uint64(int.from_bytes(arr[index : index + 8].tobytes(), "little"))

elif config.BOUNDSCHECK:
    # A checked copy, so that a bad range raises IndexError in bounds-checked test runs instead
    # of being copied blindly by memcpy. A loop, not a slice assignment: slices need numba's
    # runtime, which the data-path kernels are compiled without (_nrt=False).

    @register_jitable(inline="always")
    def copy_bytes(dst, dst_start, src, src_start, nbytes):
        """``dst[dst_start:dst_start+nbytes] = src[src_start:src_start+nbytes]`` (no overlap)."""
        if (
            nbytes < 0
            or dst_start < 0
            or src_start < 0
            or dst_start + nbytes > dst.shape[0]
            or (src_start + nbytes > src.shape[0])
        ):
            raise IndexError("copy_bytes: range outside an array")
        for k in range(nbytes):
            dst[dst_start + k] = src[src_start + k]

    @register_jitable(inline="always")
    def prefetch_write(arr, index):
        """A hint that ``arr[index]`` will be written soon; an index outside ``arr`` is ignored
        (a prefetch never faults, but the address must still be computed from a valid one)."""
        if 0 <= index < arr.shape[0]:
            _prefetch_write(arr, index)

    @register_jitable(inline="always")
    def prefetch_read(arr, index):
        """A hint that ``arr[index]`` will be read soon; an index outside ``arr`` is ignored."""
        if 0 <= index < arr.shape[0]:
            _prefetch_read(arr, index)

    @register_jitable(inline="always")
    def load_u64_le(arr, index):
        """The little-endian 64-bit word at ``arr[index:index+8]`` (any alignment), checked."""
        if index < 0 or index + 8 > arr.shape[0]:
            raise IndexError("load_u64_le: word outside the array")
        return _load_u64_le(arr, index)


if not config.DISABLE_JIT:

    @register_jitable(inline="always")
    def full_fence() -> None:
        """Full memory fence (store-load ordering)."""
        _fence()

    @register_jitable(inline="always")
    def compiler_barrier() -> None:
        """Stop the compiler from moving memory operations across this point."""
        _compiler_barrier()

    @register_jitable(inline="always")
    def atomic_or_u32(arr, index, value):
        """Atomically OR ``value`` into ``arr[index]``; returns the previous value."""
        return _atomic_or(arr, index, value)

    @register_jitable(inline="always")
    def atomic_xchg_u32(arr, index, value):
        """Atomically replace ``arr[index]`` with ``value``; returns the previous value."""
        return _atomic_xchg(arr, index, value)

    @register_jitable(inline="always")
    def atomic_cas_u32(arr, index, expected, new):
        """Compare-and-swap ``arr[index]``; returns the value found (== expected on success)."""
        return _atomic_cas(arr, index, expected, new)

    @register_jitable(inline="always")
    def atomic_load_u32(arr, index):
        """Sequentially consistent 32-bit load."""
        return _atomic_load(arr, index)

    @register_jitable(inline="always")
    def atomic_store_u32(arr, index, value):
        """Sequentially consistent 32-bit store."""
        _atomic_store(arr, index, value)

    @register_jitable(inline="always")
    def atomic_store_release_u32(arr, index, value):
        """32-bit store with release ordering: what unlocking a spin lock needs."""
        _atomic_store_release(arr, index, value)

    if not config.BOUNDSCHECK:

        @register_jitable(inline="always")
        def copy_bytes(dst, dst_start, src, src_start, nbytes):
            """``dst[dst_start:dst_start+nbytes] = src[src_start:src_start+nbytes]`` as one memcpy
            (numba copies slices byte by byte). The caller has checked both ranges."""
            _copy_bytes(dst, dst_start, src, src_start, nbytes)

        @register_jitable(inline="always")
        def load_u64_le(arr, index):
            """The little-endian 64-bit word at ``arr[index:index+8]`` (any alignment) as one
            load. The caller has checked the range."""
            return _load_u64_le(arr, index)

        @register_jitable(inline="always")
        def prefetch_write(arr, index):
            """A hint that ``arr[index]`` will be written soon; an index outside ``arr`` is
            ignored."""
            if 0 <= index < arr.shape[0]:
                _prefetch_write(arr, index)

        @register_jitable(inline="always")
        def prefetch_read(arr, index):
            """A hint that ``arr[index]`` will be read soon; an index outside ``arr`` is ignored."""
            if 0 <= index < arr.shape[0]:
                _prefetch_read(arr, index)
