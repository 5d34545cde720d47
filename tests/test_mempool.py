"""The Mempool (ethdev/mempool.py): allocation, refcounts, chains, external buffers, GPAs.

Every pool lives under an emulated root (``tmp_path``), so its region is a ``guest-mem`` file.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from netvsc.errors import ConfigError
from netvsc.ethdev import Mempool, MempoolExhausted
from netvsc.ethdev import mempool as mpmod
from netvsc.ethdev.mempool import (
    mp_alloc_bulk,
    mp_attach_external,
    mp_chain_append,
    mp_drain_external,
    mp_free,
    mp_free_bulk,
    mp_free_deferred,
    mp_gpa_of,
    mp_gpa_ranges,
    mp_refcnt_update,
    mp_release_bulk,
)
from netvsc.host.guestmem import GuestMemory

PAGE = 4096


@pytest.fixture
def pool(tmp_path):
    with Mempool(64, root=tmp_path, name="test") as created:
        yield created


def _alloc(pool: Mempool, count: int) -> np.ndarray:
    out = np.empty(count, dtype=np.int32)
    assert pool.alloc_bulk(out, count) == count, f"expected {count} buffers, {pool.available()} free"
    return out


def _free_stack_is_consistent(pool: Mempool) -> None:
    """Each buffer once: on the free stack (refcount 0), parked, or in use (refcount > 0)."""
    a = pool.arrays
    free = a.free_stack[: pool.available()]
    parked = a.parked[: pool.parked()]
    assert len(set(free.tolist())) == len(free), "a buffer is on the free stack twice"
    assert not set(free.tolist()) & set(parked.tolist()), "a buffer is both free and parked"
    assert np.all(a.refcnt[free] == 0), "a free buffer has references"
    in_use = np.count_nonzero(a.refcnt > 0)
    assert in_use == pool.in_use(), f"in_use() says {pool.in_use()}, refcounts say {in_use}"
    assert pool.available() + pool.parked() + in_use == pool.n


# ---------------------------------------------------------------------------------------------
# Configuration errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"n": 0}, "n"),
        ({"n": -5}, "n"),
        ({"n": True}, "n"),
        ({"n": 4, "data_room": 2000}, "data_room"),
        ({"n": 4, "data_room": 64}, "data_room"),
        ({"n": 4, "data_room": 1 << 17}, "data_room"),
        ({"n": 4, "data_room": 256, "headroom": 256}, "headroom"),
        ({"n": 4, "data_room": 256, "headroom": 4096}, "headroom"),
        ({"n": 4, "headroom": -1}, "headroom"),
    ],
)
def test_bad_configuration_names_the_parameter(tmp_path, kwargs, parameter):
    """n <= 0, a data room not a multiple of 64 or out of range, too much headroom: ConfigError."""
    with pytest.raises(ConfigError) as caught:
        Mempool(root=tmp_path, **kwargs)
    assert caught.value.parameter == parameter
    assert str(kwargs[parameter]) in str(caught.value) and "accepted" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_frame_longer_than_a_chain_is_refused(tmp_path):
    """A frame no chain of the pool can hold is a ConfigError naming the frame length."""
    with Mempool(4, data_room=256, headroom=0, root=tmp_path) as pool:
        assert pool.max_frame_length() == 4 * 256
        with pytest.raises(ConfigError) as caught:
            pool.store_frame(b"\0" * 1025)
        assert caught.value.parameter == "frame length" and caught.value.value == 1025
        with pytest.raises(ConfigError):
            pool.store_frame(b"")
        assert pool.available() == 4


# ---------------------------------------------------------------------------------------------
# Allocation and free
# ---------------------------------------------------------------------------------------------


def test_bulk_alloc_is_all_or_nothing(pool):
    """More than is free: 0 and nothing taken, counted; exactly what is free: all of it."""
    taken = _alloc(pool, 60)
    out = np.full(8, -1, dtype=np.int32)
    assert pool.alloc_bulk(out, 8) == 0
    assert np.all(out == -1) and pool.available() == 4 and pool.alloc_failures == 1
    assert pool.alloc_bulk(out, 4) == 4
    assert pool.available() == 0
    with pytest.raises(MempoolExhausted):
        pool.alloc()
    assert pool.free_bulk(np.concatenate([taken, out[:4]])) == 64
    assert pool.available() == 64 and pool.in_use() == 0


def test_fresh_buffer_is_reset(pool):
    """A buffer comes out with one reference, data at the headroom, no length, flags or chain."""
    index = pool.alloc()
    a = pool.arrays
    a.ol_flags[index] = mpmod.RX_RSS_HASH
    a.rss_hash[index] = 1234
    a.data_len[index] = 99
    pool.free(index)
    again = pool.alloc()
    assert again == index  # a stack: the buffer just freed comes back first (warm in cache)
    assert (a.refcnt[index], a.data_off[index], a.data_len[index], a.pkt_len[index]) == (1, 128, 0, 0)
    assert (a.next_seg[index], a.nb_segs[index], a.ol_flags[index], a.rss_hash[index]) == (-1, 1, 0, 0)
    assert a.ext_owner[index] == -1


def test_double_free_is_counted_and_refused(pool):
    """Freeing a free buffer changes nothing but the counter: it is never handed out twice."""
    index = pool.alloc()
    assert pool.free(index) is True
    assert pool.free(index) is False
    assert pool.double_frees == 1 and pool.available() == 64
    first, second = _alloc(pool, 2)
    assert first != second
    _free_stack_is_consistent(pool)


def test_bad_indices_are_counted_and_refused(pool):
    assert pool.free(-1) is False and pool.free(64) is False
    assert pool.bad_indices == 2 and pool.available() == 64


def test_deferred_free_returns_buffers_only_at_the_bulk_release(pool):
    """mp_free_deferred drops the references at once, so a second free of the same packet is a
    refused double free, but no buffer reaches the free stack before mp_release_bulk, which
    returns each segment whose last reference went, once."""
    single = pool.alloc()
    shared = pool.alloc()
    pool.refcnt_update(shared, +1)
    chain = pool.store_frame(bytes(5120))  # 3 segments
    segments = [int(segment) for segment in pool.segments(chain)]
    released = np.full(8, -1, dtype=np.int32)
    count = 0
    for head in (single, shared, chain):
        count = mp_free_deferred(pool.arrays, head, released, count)
    assert count == 4, "the single buffer and the chain's three segments; the shared one is still held"
    assert pool.available() == 64 - 5 and pool.refcnt(single) == 0 and pool.refcnt(shared) == 1
    assert mp_free_deferred(pool.arrays, single, released, count) == count and pool.double_frees == 1
    mp_release_bulk(pool.arrays, released, count)
    assert pool.available() == 63
    assert sorted(released[:count].tolist()) == sorted([single, *segments])
    _free_stack_is_consistent(pool)


def test_deferred_free_of_a_chain_longer_than_the_room_frees_it_at_once(pool):
    """No room left in the list for every segment: freed the ordinary way, nothing listed."""
    chain = pool.store_frame(bytes(5120))
    released = np.full(2, -1, dtype=np.int32)
    assert mp_free_deferred(pool.arrays, chain, released, 0) == 0
    assert pool.available() == 64 and np.all(released == -1)
    _free_stack_is_consistent(pool)


def test_shared_buffer_is_freed_on_the_second_free_only(pool):
    """Two references: the first free leaves it in use, the second returns it."""
    index = pool.alloc()
    assert pool.refcnt_update(index, +1) == 2
    assert pool.free(index) is True
    assert pool.refcnt(index) == 1 and pool.available() == 63
    assert pool.free(index) is True
    assert pool.refcnt(index) == 0 and pool.available() == 64


def test_refcount_underflow_is_refused(pool):
    """A decrement below zero, or a reference taken on a free buffer, is refused and counted."""
    index = pool.alloc()
    assert pool.refcnt_update(index, -2) == -1
    assert pool.refcnt(index) == 1 and pool.refcnt_errors == 1
    pool.free(index)
    assert pool.refcnt_update(index, +1) == -1  # use after free
    assert pool.refcnt(index) == 0 and pool.refcnt_errors == 2
    _free_stack_is_consistent(pool)


def test_chain_free_frees_every_segment(pool):
    """A 3-segment frame: one free returns all three buffers."""
    head = pool.store_frame(bytes(range(256)) * 20)  # 5120 bytes, 1920 per segment
    segments = pool.segments(head)
    assert len(segments) == 3 and pool.arrays.nb_segs[head] == 3 and pool.arrays.pkt_len[head] == 5120
    assert pool.in_use() == 3
    assert pool.free(head) is True
    assert pool.available() == 64 and np.all(pool.arrays.refcnt[segments] == 0)


def test_shared_chain_needs_two_frees(pool):
    """refcnt_update counts every segment, so a shared chain keeps its tail until the last free."""
    head = pool.store_frame(b"\x01" * 4000)
    tail = pool.segments(head)[1]
    pool.refcnt_update(head, 1)
    assert pool.refcnt(tail) == 2
    pool.free(head)
    assert pool.refcnt(tail) == 1 and pool.in_use() == 3  # 4000 bytes: 3 segments of 1920
    pool.free(head)
    assert pool.available() == 64


def test_chain_append_links_and_sums(pool):
    first, second = _alloc(pool, 2)
    a = pool.arrays
    a.data_len[first] = a.pkt_len[first] = 100
    a.data_len[second] = a.pkt_len[second] = 50
    assert pool.chain_append(first, second)
    assert (a.pkt_len[first], a.nb_segs[first], a.next_seg[first]) == (150, 2, second)
    assert not pool.chain_append(first, first)  # a chain onto itself would loop
    assert not pool.chain_append(first, second)  # already in the chain
    assert pool.free(first) and pool.available() == 64


def test_looping_chain_is_refused_without_corruption(pool):
    """A chain whose last link points back (a bug elsewhere) is refused, not walked forever."""
    first, second = _alloc(pool, 2)
    pool.arrays.next_seg[first] = second
    pool.arrays.next_seg[second] = first
    assert pool.free(first) is False and pool.bad_indices == 1
    assert pool.available() == 62
    pool.arrays.next_seg[second] = -1
    assert pool.free(first) and pool.available() == 64


class _Model:
    """What the pool should hold: head -> (segments, references)."""

    def __init__(self) -> None:
        self.packets: dict[int, tuple[list[int], int]] = {}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(["alloc", "store", "share", "free", "double"]), st.integers(0, 40)),
        max_size=60,
    )
)
def test_alloc_free_invariants(tmp_path_factory, operations):
    """Random allocations, chains, shares and frees: no buffer is ever handed out twice, refused
    frees change nothing, and freeing everything brings every buffer back."""
    with Mempool(32, data_room=256, headroom=64, root=tmp_path_factory.mktemp("root")) as pool:
        model = _Model()
        owned: set[int] = set()
        for operation, amount in operations:
            if operation == "alloc":
                count = amount % 9 + 1
                out = np.empty(count, dtype=np.int32)
                got = pool.alloc_bulk(out, count)
                assert got in (0, count)
                assert (got == 0) == (count > pool.n - len(owned))
                for index in out[:got].tolist():
                    assert index not in owned, f"buffer {index} handed out twice"
                    owned.add(index)
                    model.packets[index] = ([index], 1)
            elif operation == "store":
                length = amount * 17 + 1
                needed = -(-length // pool.segment_room)
                try:
                    head = pool.store_frame(bytes([amount]) * length)
                except MempoolExhausted:
                    assert needed > pool.n - len(owned)
                    continue
                segments = pool.segments(head)
                assert len(segments) == needed and not set(segments) & owned
                owned.update(segments)
                model.packets[head] = (segments, 1)
                assert pool.packet_bytes(head) == bytes([amount]) * length
            elif model.packets:
                head = sorted(model.packets)[amount % len(model.packets)]
                segments, references = model.packets[head]
                if operation == "share":
                    assert pool.refcnt_update(head, 1) == references + 1
                    model.packets[head] = (segments, references + 1)
                elif operation == "free":
                    assert pool.free(head)
                    if references == 1:
                        del model.packets[head]
                        owned.difference_update(segments)
                    else:
                        model.packets[head] = (segments, references - 1)
                else:  # a stale handle: free something that is free
                    free_ones = pool.arrays.free_stack[: pool.available()]
                    if len(free_ones):
                        before = pool.double_frees
                        assert not pool.free(int(free_ones[0]))
                        assert pool.double_frees == before + 1
            assert pool.in_use() == len(owned)
            _free_stack_is_consistent(pool)
        for head, (_segments, references) in list(model.packets.items()):
            for _ in range(references):
                assert pool.free(head)
        assert pool.available() == pool.n, "not every buffer came back"
        _free_stack_is_consistent(pool)


# ---------------------------------------------------------------------------------------------
# External buffers
# ---------------------------------------------------------------------------------------------


def test_external_buffer_callback_fires_once_on_last_free(pool):
    """A receive slot attached to a shared buffer is released once, on the last free only."""
    rxbuf = np.arange(8192, dtype=np.uint8)
    released: list[int] = []
    owner = pool.register_external(rxbuf, released.append)
    index = pool.alloc()
    pool.attach_external(index, owner, ext_id=17, ext_base=4096, data_off=44, data_len=60)
    assert bytes(pool.segment_data(index)) == bytes(rxbuf[4140:4200])
    pool.refcnt_update(index, 1)
    pool.free(index)
    assert released == [] and pool.in_use() == 1
    pool.free(index)
    assert released == [17]
    assert pool.available() == 64 and pool.parked() == 0
    pool.free(index)  # double free: refused, and the callback does not fire again
    assert released == [17] and pool.double_frees == 1
    again = pool.alloc()
    assert pool.arrays.ext_owner[again] == -1  # a reused buffer carries no stale attachment


def test_external_buffer_gpa_ranges_are_refused(pool):
    """Data in external memory has no GPA in this pool: page_ranges says so instead of lying."""
    owner = pool.register_external(np.zeros(4096, dtype=np.uint8))
    index = pool.alloc()
    pool.attach_external(index, owner, 1, 0, 0, 100)
    with pytest.raises(ConfigError):
        pool.page_ranges(index)
    pool.free(index)


def test_kernel_owner_drains_parked_buffers_itself(pool):
    """An owner without a Python callback (the RX kernel) collects (owner, id) with the kernel."""
    owner = pool.register_external(np.zeros(4096, dtype=np.uint8))
    heads = _alloc(pool, 3)
    for slot, index in enumerate(heads.tolist()):
        assert mp_attach_external(pool.arrays, index, owner, 100 + slot, 0)
    assert mp_free_bulk(pool.arrays, heads, 3) == 3
    assert pool.parked() == 3 and pool.available() == 61 and pool.in_use() == 0
    owners = np.empty(2, dtype=np.int32)
    ids = np.empty(2, dtype=np.int64)
    assert mp_drain_external(pool.arrays, owners, ids) == 2
    assert mp_drain_external(pool.arrays, owners[:1], ids[:1]) == 1
    assert pool.parked() == 0 and pool.available() == 64
    _free_stack_is_consistent(pool)


# ---------------------------------------------------------------------------------------------
# Addresses
# ---------------------------------------------------------------------------------------------


def test_gpa_of_lies_in_the_buffer_region(pool):
    """GPA of byte k of buffer i is the region's GPA of offset i * data_room + k."""
    region = pool.region
    for index, offset in ((0, 0), (1, 5), (2, 2047), (63, 1000)):
        assert pool.gpa_of(index, offset) == region.gpa_of(index * 2048 + offset)
    first, last = region.gpa_of(0), region.gpa_of(region.size - 1)
    assert first <= pool.gpa_of(63, 2047) <= last
    with pytest.raises(ConfigError):
        pool.gpa_of(0, 2048)
    with pytest.raises(ConfigError):
        pool.gpa_of(64, 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(1, 30000), headroom=st.sampled_from([0, 64, 100, 128]))
def test_page_ranges_never_cross_4k(tmp_path_factory, length, headroom):
    """Every range stays inside one 4 KiB page, and the ranges cover the frame in order."""
    root = tmp_path_factory.mktemp("root")
    with Mempool(24, data_room=1600 - 1600 % 64, headroom=headroom, root=root) as pool:
        frame = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8).tobytes()
        head = pool.store_frame(frame)
        ranges = pool.page_ranges(head)
        assert sum(count for count, _, _ in ranges) == length
        memory = GuestMemory(root / "guest-mem")
        try:
            gathered = b"".join(
                memory.read_pages(offset, count, pages).tobytes() for count, offset, pages in ranges
            )
        finally:
            memory.close()
        for count, offset, pages in ranges:
            assert len(pages) == 1 and count > 0 and offset + count <= PAGE, "a range crosses 4 KiB"
        assert gathered == frame


def test_host_reads_the_buffers_at_the_reported_gpas(tmp_path):
    """The emulated host, mapping guest-mem on its own, sees a stored frame at the pool's GPAs."""
    with Mempool(16, root=tmp_path) as pool:
        frame = bytes(range(256)) * 8
        head = pool.store_frame(frame)
        start = int(pool.arrays.data_off[head])
        memory = GuestMemory(tmp_path / "guest-mem")
        try:
            seen = memory.read(pool.gpa_of(head, start), int(pool.arrays.data_len[head]))
            assert seen.tobytes() == frame[: pool.segment_room]
            pool.segment_data(head)[:4] = [9, 9, 9, 9]  # shared, not copied
            assert memory.read(pool.gpa_of(head, start), 4).tobytes() == b"\x09" * 4
        finally:
            memory.close()
        pool.free(head)


# ---------------------------------------------------------------------------------------------
# Kernels called from numba give what the methods give
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def _scenario_in_numba(pool, scratch):
    """The same steps as ``_scenario_in_python``, from a numba function (as a burst would)."""
    results = np.zeros(12, dtype=np.int64)
    results[0] = mp_alloc_bulk(pool, scratch, 8)
    results[1] = mp_refcnt_update(pool, scratch[0], 1)
    results[2] = mp_free(pool, scratch[0])
    results[3] = mp_free(pool, scratch[0])
    results[4] = mp_free(pool, scratch[0])  # double free
    results[5] = mp_chain_append(pool, scratch[1], scratch[2])
    results[6] = mp_free_bulk(pool, scratch[1:2], 1)
    results[7] = mp_refcnt_update(pool, scratch[3], -5)  # underflow
    results[8] = np.int64(mp_gpa_of(pool, scratch[4], 100))
    gpas = np.empty(4, dtype=np.uint64)
    lengths = np.empty(4, dtype=np.int64)
    pool.data_len[scratch[4]] = 1900
    results[9] = mp_gpa_ranges(pool, scratch[4], gpas, lengths)
    results[10] = np.int64(gpas[0])
    results[11] = mp_free_bulk(pool, scratch[3:8], 5)
    return results


def _scenario_in_python(pool: Mempool, scratch: np.ndarray) -> np.ndarray:
    results = np.zeros(12, dtype=np.int64)
    results[0] = pool.alloc_bulk(scratch, 8)
    results[1] = pool.refcnt_update(int(scratch[0]), 1)
    results[2] = pool.refcnt_update(int(scratch[0]), -1)
    results[3] = pool.refcnt_update(int(scratch[0]), -1)
    results[4] = pool.refcnt_update(int(scratch[0]), -1)
    results[5] = pool.chain_append(int(scratch[1]), int(scratch[2]))
    results[6] = pool.free_bulk(scratch[1:2])
    results[7] = pool.refcnt_update(int(scratch[3]), -5)
    results[8] = pool.gpa_of(int(scratch[4]), 100)
    pool.arrays.data_len[scratch[4]] = 1900
    ranges = pool.page_ranges(int(scratch[4]))
    results[9] = len(ranges)
    results[10] = (ranges[0][2][0] << 12) + ranges[0][1]
    results[11] = pool.free_bulk(scratch[3:8])
    return results


def test_kernels_from_numba_match_the_methods(tmp_path):
    """Two identical pools, one driven from an njit function, one by the methods: same answers,
    same metadata, same counters (GPAs compared relative to each region's base)."""
    with Mempool(16, root=tmp_path) as by_kernel, Mempool(16, root=tmp_path) as by_method:
        from_kernel = _scenario_in_numba(by_kernel.arrays, np.empty(8, dtype=np.int32))
        from_methods = _scenario_in_python(by_method, np.empty(8, dtype=np.int32))
        for results, pool in ((from_kernel, by_kernel), (from_methods, by_method)):
            results[8] -= pool.region.gpa_of(0)
            results[10] -= pool.region.gpa_of(0)
        assert from_kernel.tolist() == from_methods.tolist()
        for field in by_kernel.arrays._fields:
            if field in ("data", "page_gpas"):
                continue
            assert np.array_equal(getattr(by_kernel.arrays, field), getattr(by_method.arrays, field)), field
        assert by_kernel.available() == 16 and by_kernel.double_frees == 1 and by_kernel.refcnt_errors == 1


def test_bulk_kernels_refuse_out_of_range_counts(pool):
    """A count larger than the output array is refused, not written past its end."""
    out = np.empty(4, dtype=np.int32)
    assert mp_alloc_bulk(pool.arrays, out, 5) == 0
    assert mp_alloc_bulk(pool.arrays, out, 0) == 0
    assert pool.available() == 64
    assert mp_alloc_bulk(pool.arrays, out, 4) == 4
    assert mp_free_bulk(pool.arrays, out, 10) == 4
    assert pool.available() == 64


@pytest.mark.root
def test_real_memory_pool_reports_physical_addresses():
    """Real host path (root "/"): locked or hugepage memory, GPAs from /proc/self/pagemap."""
    with Mempool(64, root="/") as pool:
        assert pool.region.kind in ("hugepage", "locked")
        head = pool.store_frame(b"\x5a" * 5000)
        ranges = pool.page_ranges(head)
        assert sum(count for count, _, _ in ranges) == 5000
        for segment in pool.segments(head):
            start = int(pool.arrays.data_off[segment])
            assert pool.gpa_of(segment, start) == pool.region.gpa_of(segment * pool.data_room + start)
        for count, offset, _pages in ranges:
            assert offset + count <= PAGE
        pool.free(head)
