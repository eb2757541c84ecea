"""Weight matrices in memory backed by transparent huge pages (Linux), for decode's weight stream.

Decode reads every weight once per token from memory. With 4 KiB pages that stream takes a TLB
miss every 4 KiB, which costs most in a virtual machine (two-level page walks); with 2 MiB pages
the AVX2 products of one row read 36 GB/s instead of 31 on the 2-core development VM (int8 and
wide rows alike, 2 threads). Where transparent huge pages are in `madvise` mode (the default of
many distributions) memory gets them only if it is advised before its pages are first touched,
so a weight is copied into a fresh anonymous mapping, 2 MiB-aligned and advised. Only the bytes
change place: the copy has the same values, shape and dtype. Anywhere this is not possible (not
Linux, a tensor below one huge page, a kernel that refuses the advice), the tensor stays as it is.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 1 << 21


def huge_page_copy(t: torch.Tensor) -> torch.Tensor:
    """`t` (a CPU tensor) as a contiguous tensor whose whole 2 MiB pages are advised for huge
    pages: a copy where that applies, else `t` made contiguous."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    nbytes = t.numel() * t.element_size()
    if t.device.type != "cpu" or advice is None or nbytes < HUGE_PAGE:
        return t.contiguous()
    # Anonymous mappings start page-aligned and untouched; one huge page more leaves room to
    # start the tensor on a 2 MiB boundary. Only whole huge pages inside the tensor are advised,
    # so the tail and the unused head stay small pages (and untouched, out of the RSS).
    area = mmap.mmap(-1, nbytes + HUGE_PAGE)
    raw = torch.frombuffer(area, dtype=torch.uint8)  # keeps `area` alive as long as any view
    start = -raw.data_ptr() % HUGE_PAGE
    try:
        area.madvise(advice, start, nbytes // HUGE_PAGE * HUGE_PAGE)
    except OSError:
        return t.contiguous()
    out = raw[start : start + nbytes].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out
