"""hugepages.huge_page_copy: the same tensor (values, shape, dtype), on a 2 MiB boundary when big."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from verinfer.engine.hugepages import HUGE_PAGE, huge_page_copy


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="huge-page advice is Linux's")
def test_big_tensor_is_copied_to_a_huge_page_boundary() -> None:
    weight = torch.randint(-128, 128, (3 * HUGE_PAGE // 1000 + 1, 1000), dtype=torch.int8)
    copy = huge_page_copy(weight)
    assert copy.data_ptr() % HUGE_PAGE == 0 and copy.data_ptr() != weight.data_ptr()
    assert copy.dtype == weight.dtype and copy.shape == weight.shape and copy.is_contiguous()
    assert torch.equal(copy, weight)
    del weight
    copy[0, 0] = 5  # writable, and alive without the original
    assert int(copy[0, 0]) == 5


def test_small_or_strided_tensors_stay_plain() -> None:
    small = torch.arange(100, dtype=torch.int64)
    assert huge_page_copy(small) is small
    strided = torch.arange(HUGE_PAGE * 2, dtype=torch.int16).view(2, -1).t()
    copy = huge_page_copy(strided)
    assert copy.is_contiguous() and torch.equal(copy, strided)
