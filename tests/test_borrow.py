"""fastpath.borrow: a borrowed array is the same memory, without its reference count."""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

from netvsc.fastpath.borrow import borrowed


@njit(cache=True)
def _fill_through_borrowed(array, value):
    view = borrowed(array)
    for index in range(view.shape[0]):
        view[index] = value + index
    return view.shape[0]


def test_writes_through_a_borrowed_array_land_in_the_original_and_leave_its_count():
    array = np.zeros(16, dtype=np.int64)
    references = sys.getrefcount(array)
    for _ in range(100):
        assert _fill_through_borrowed(array, 5) == 16
    assert list(array) == [5 + i for i in range(16)]
    assert sys.getrefcount(array) == references, "no reference taken or leaked"
