"""Large arrays on huge pages are ordinary zero arrays to their users."""

from __future__ import annotations

import copy
import mmap
import pickle

import numpy as np
import pytest

from sb3_rmdp import arrays
from sb3_rmdp.arrays import HUGE_PAGE_BYTES, large_zeros


def _memory_map_of(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_large_zeros_equal_np_zeros(dtype: type) -> None:
    shape = (64, 5, HUGE_PAGE_BYTES // 64)  # a few huge pages, whatever the item size
    array = large_zeros(shape, dtype)
    assert array.shape == shape and array.dtype == np.dtype(dtype)
    assert array.flags.c_contiguous and array.flags.writeable
    assert not array.any()
    array[3, 2, 1] = 7
    array[-1] += 1
    assert array[3, 2, 1] == 7 and (array[-1] == 1).all() and array.sum() == 7 + array[-1].size


def test_large_zeros_map_huge_pages_where_linux_offers_them() -> None:
    large = large_zeros((HUGE_PAGE_BYTES // 4,), np.float32)
    small = large_zeros((HUGE_PAGE_BYTES // 4 - 1,), np.float32)
    assert _memory_map_of(small) is None  # below one huge page: np.zeros
    assert (_memory_map_of(large) is not None) == arrays.huge_pages_available()


def test_large_zeros_fall_back_to_np_zeros(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "huge_pages_available", lambda: False)
    array = large_zeros((HUGE_PAGE_BYTES,), np.float32)
    assert _memory_map_of(array) is None and array.flags.owndata and not array.any()


def test_copies_of_large_zeros_are_ordinary_arrays() -> None:
    array = large_zeros((4, HUGE_PAGE_BYTES // 16), np.float32)
    array[1] = np.arange(array.shape[1])
    for other in (pickle.loads(pickle.dumps(array)), copy.deepcopy(array), array.copy()):
        assert _memory_map_of(other) is None and other.flags.writeable
        np.testing.assert_array_equal(other, array)
