"""The shared-memory primitives behave as atomics and emit real fences."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from numba import config, njit

from netvsc.fastpath.atomics import (
    atomic_cas_u32,
    atomic_load_u32,
    atomic_or_u32,
    atomic_store_u32,
    atomic_xchg_u32,
    full_fence,
)


@njit(cache=False)
def _exercise(words):
    previous_or = atomic_or_u32(words, 0, 0x6)
    cas_hit = atomic_cas_u32(words, 1, 0, 9)
    cas_miss = atomic_cas_u32(words, 1, 0, 11)
    previous_xchg = atomic_xchg_u32(words, 2, 5)
    atomic_store_u32(words, 3, 0xFFFFFFFF)
    full_fence()
    return previous_or, cas_hit, cas_miss, previous_xchg, atomic_load_u32(words, 3)


def test_atomic_operations_return_previous_values_and_update_memory():
    words = np.array([0x1, 0, 2, 0], dtype=np.uint32)
    result = _exercise(words)
    assert result == (0x1, 0, 9, 2, 0xFFFFFFFF), f"returned {result}"
    assert words.tolist() == [0x7, 9, 5, 0xFFFFFFFF], f"memory is {words.tolist()}"


@njit(cache=False)
def _publish_then_load(words):
    words[0] = 1
    full_fence()
    return words[1]


@pytest.mark.skipif(config.DISABLE_JIT, reason="inspects generated machine code")
@pytest.mark.skipif(platform.machine() != "x86_64", reason="checks x86-64 instructions")
def test_full_fence_is_a_locked_instruction_on_x86():
    words = np.zeros(2, dtype=np.uint32)
    _publish_then_load(words)
    asm = next(iter(_publish_then_load.inspect_asm().values()))
    lines = [line for line in asm.splitlines() if "lock" in line or "mfence" in line]
    assert lines, "no locked instruction or mfence between the store and the load"


@njit(cache=False)
def _cas_increments(words, times):
    done = 0
    while done < times:
        old = atomic_load_u32(words, 0)
        if atomic_cas_u32(words, 0, old, old + 1) == old:
            done += 1
    return done


def _increment_in_child(path, times):
    shared = np.memmap(path, dtype=np.uint32, mode="r+", shape=(16,))
    _cas_increments(shared, times)
    shared.flush()


def test_cas_is_atomic_across_processes(tmp_path):
    """Two processes incrementing one shared word by CAS lose no increment: the atomics are real
    in every mode, including NUMBA_DISABLE_JIT where they run through llvmlite."""
    import multiprocessing

    path = tmp_path / "word"
    path.write_bytes(bytes(64))
    shared = np.memmap(path, dtype=np.uint32, mode="r+", shape=(16,))
    times = 20_000
    child = multiprocessing.get_context("fork").Process(target=_increment_in_child, args=(path, times))
    child.start()
    try:
        _cas_increments(shared, times)
        child.join(120)
        assert child.exitcode == 0, f"child exit code {child.exitcode}"
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    assert int(shared[0]) == 2 * times, f"counter {int(shared[0])}, expected {2 * times}"
