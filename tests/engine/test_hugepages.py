"""hugepages: big tensors in their own 2 MiB-aligned mappings, the same values as torch's."""

from __future__ import annotations

import mmap
import sys

import pytest
import torch

from verinfer.engine import hugepages
from verinfer.engine.hugepages import HUGE_PAGE


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="huge-page advice is Linux's")
def test_big_tensors_start_on_a_huge_page_and_hold_their_values() -> None:
    rows = 3 * HUGE_PAGE // 1000 + 1
    t = hugepages.empty((rows, 1000), torch.int8)
    assert t.data_ptr() % HUGE_PAGE == 0 and t.shape == (rows, 1000) and t.dtype == torch.int8
    assert t.is_contiguous()
    values = torch.randint(-128, 128, (rows, 1000), dtype=torch.int8)
    t.copy_(values)
    assert torch.equal(t, values)
    wide = hugepages.empty((HUGE_PAGE,), torch.int64)
    assert wide.data_ptr() % HUGE_PAGE == 0 and wide.numel() == HUGE_PAGE


def test_cat_rows_equals_torch_cat() -> None:
    parts = [torch.randint(-128, 128, (n, 4096), dtype=torch.int8) for n in (256, 64, 700)]
    joined = hugepages.cat_rows(parts)
    assert torch.equal(joined, torch.cat(parts)) and joined.is_contiguous()
    assert joined.data_ptr() % HUGE_PAGE == 0 or not hasattr(mmap, "MADV_HUGEPAGE")


def test_small_tensors_are_ordinary() -> None:
    small = hugepages.empty((10, 10), torch.int64)
    assert small.shape == (10, 10) and small.dtype == torch.int64
    assert torch.equal(hugepages.cat_rows([torch.ones(2, 3), torch.zeros(1, 3)]),
                       torch.tensor([[1.0] * 3, [1.0] * 3, [0.0] * 3]))
