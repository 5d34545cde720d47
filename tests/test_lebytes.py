"""fastpath/lebytes.py: the copy the RX path uses for short frames out of the receive buffer."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config, njit

from netvsc.fastpath.lebytes import copy_by_aligned_words


@njit(cache=False)
def _copy(dst, dst_start, src, src_start, nbytes):
    copy_by_aligned_words(dst, dst_start, src, src_start, nbytes)


def test_copy_by_aligned_words_copies_exactly_the_range_at_every_skew_and_length():
    """Every source skew (0-7 within a word, and across the next word), every length up to
    ten words and odd destination offsets: the bytes land where a slice copy puts them and no
    byte of the destination outside the range changes."""
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, 256, dtype=np.uint8)
    src[::5] = 0xFF  # words with the top bit set: a sign-extending shift would leak into others
    for src_start in range(16):
        for nbytes in range(81):
            for dst_start in (0, 1, 8, 13):
                dst = np.full(128, 0xA5, dtype=np.uint8)
                _copy(dst, dst_start, src, src_start, nbytes)
                expected = np.full(128, 0xA5, dtype=np.uint8)
                expected[dst_start : dst_start + nbytes] = src[src_start : src_start + nbytes]
                assert np.array_equal(dst, expected), (src_start, nbytes, dst_start)


def test_copy_by_aligned_words_reads_no_word_past_the_aligned_end():
    """A frame ending at the end of the buffer (its length a multiple of 8, as a receive buffer
    is): every tail and skew copies without reading past the array. Under NUMBA_BOUNDSCHECK=1 or
    interpreted, a load beyond it would raise IndexError."""
    src = np.arange(64, dtype=np.uint8)
    for src_start in range(40, 64):
        nbytes = 64 - src_start
        dst = np.zeros(32, dtype=np.uint8)
        _copy(dst, 0, src, src_start, nbytes)
        assert np.array_equal(dst[:nbytes], src[src_start:])
        assert not dst[nbytes:].any()


@pytest.mark.skipif(not config.BOUNDSCHECK and not config.DISABLE_JIT, reason="needs checked loads")
def test_copy_by_aligned_words_refuses_a_range_outside_the_source():
    """Checked runs: a source range running past the array is an IndexError, not a read."""
    src = np.zeros(20, dtype=np.uint8)  # the aligned span of [18, 22) ends at 24, past the end
    with pytest.raises(IndexError):
        _copy(np.zeros(8, dtype=np.uint8), 0, src, 18, 4)
