"""Weight matrices in memory backed by transparent huge pages (Linux), for decode's weight stream.

Decode reads every weight once per token from memory. With 4 KiB pages that stream takes a TLB
miss every 4 KiB, which costs most in a virtual machine (two-level page walks); with 2 MiB pages
the AVX2 products of one row read 36 GB/s instead of 31 on the 2-core development VM (int8 and
wide rows alike, 2 threads). Where transparent huge pages are in `madvise` mode (the default of
many distributions) memory gets them only if it is advised before its pages are first touched,
so quantized weights are read from their file into fresh anonymous mappings, 2 MiB-aligned and
advised, and the stacked q/k/v and gate/up weights are joined into such mappings. Only where the
bytes lie changes. Anywhere huge pages are not to be had (not Linux, a tensor below one huge
page, a kernel that refuses the advice), these are ordinary tensors.
"""

from __future__ import annotations

import math
import mmap
from collections.abc import Sequence

import torch

HUGE_PAGE = 1 << 21


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialized CPU tensor; one of HUGE_PAGE bytes or more lies in its own anonymous
    mapping (unmapped when the tensor is freed) with its whole 2 MiB pages advised for huge
    pages, starting on a 2 MiB boundary."""
    nbytes = math.prod(shape) * dtype.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None or nbytes < HUGE_PAGE:
        return torch.empty(tuple(shape), dtype=dtype)
    # Private (a shared anonymous mapping is shmem, whose huge pages are a separate setting),
    # untouched, page-aligned; one huge page more leaves room to start on a 2 MiB boundary.
    # Only whole huge pages inside the tensor are advised: its tail stays small pages.
    area = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(area, dtype=torch.uint8)  # keeps `area` alive as long as any view
    start = -raw.data_ptr() % HUGE_PAGE
    try:
        area.madvise(advice, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:
        pass  # refused: plain pages, the same values
    return raw[start : start + nbytes].view(dtype).view(tuple(shape))


def cat_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.cat of 2-D `parts` along rows; on CPU into `empty` (huge pages)."""
    if parts[0].device.type != "cpu":
        return torch.cat(list(parts))
    out = empty((sum(p.shape[0] for p in parts), parts[0].shape[1]), parts[0].dtype)
    return torch.cat(list(parts), out=out)
