"""Back the KV cache with transparent huge pages, so NIXL moves it at memory speed on CPU.

On one host NIXL's UCX backend reads a peer's KV with cross-memory attach (`process_vm_readv`,
512 KiB per call), and the kernel pins and walks the source's pages for every call. On the 4 KiB
pages torch allocates, that ran at 2.0–3.6 GB/s here; on 2 MiB pages the same calls ran at
4.6–5.4 GB/s (memcpy: 5.9–7.2). Most hosts run THP in `madvise` mode, so torch's buffers never
get huge pages unless asked: the KV cache tensors are advised `MADV_HUGEPAGE` (future faults,
khugepaged) and `MADV_COLLAPSE`d (Linux ≥ 6.1: the pages already there are merged now, ~1 s
per GiB, once at start-up). Where the kernel refuses (THP `never`, older kernel) the cache
stays on small pages and the outcome says why: the transfer still works, only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE_PAGE = 2 * 2**20
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass
class HugePageOutcome:
    """What backing a set of buffers with huge pages achieved (read by tests and benchmarks)."""

    regions: int = 0
    bytes: int = 0  # huge-page-aligned bytes advised
    advised: bool = False  # MADV_HUGEPAGE took
    collapsed: bool = False  # MADV_COLLAPSE took: the pages are huge now
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's THP mode (`always`, `madvise`, `never`), or None where it has none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def aligned_range(start: int, length: int, page: int = HUGE_PAGE) -> tuple[int, int] | None:
    """The huge-page-aligned part of `[start, start + length)`: (address, length) or None."""
    first = -(-start // page) * page
    last = (start + length) // page * page
    return (first, last - first) if last > first else None


def merged_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Distinct (address, length) ranges, overlapping or touching ones merged."""
    out: list[tuple[int, int]] = []
    for start, length in sorted(r for r in ranges if r[1] > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_len, start + length - prev_start))
        else:
            out.append((start, length))
    return out


def _madvise() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    call = libc.madvise
    call.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    call.restype = ctypes.c_int
    return call


def advise(ranges: Iterable[tuple[int, int]]) -> HugePageOutcome:
    """Advise and collapse the huge-page-aligned part of each (address, length) range."""
    outcome = HugePageOutcome()
    aligned = [a for r in merged_ranges(ranges) if (a := aligned_range(*r)) is not None]
    outcome.regions = len(aligned)
    outcome.bytes = sum(length for _, length in aligned)
    if not aligned:
        outcome.errors.append("no 2 MiB-aligned range to advise")
        return outcome
    madvise = _madvise()
    results = {MADV_HUGEPAGE: True, MADV_COLLAPSE: True}
    for advice, name in ((MADV_HUGEPAGE, "MADV_HUGEPAGE"), (MADV_COLLAPSE, "MADV_COLLAPSE")):
        for start, length in aligned:
            if madvise(start, length, advice) != 0:
                results[advice] = False
                outcome.errors.append(f"madvise({name}): {os.strerror(ctypes.get_errno())}")
                break
    outcome.advised, outcome.collapsed = results[MADV_HUGEPAGE], results[MADV_COLLAPSE]
    return outcome


def tensor_ranges(tensors: Iterable[Any]) -> list[tuple[int, int]]:
    """(address, length) of the storage under each torch tensor (views share one)."""
    return [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors]


def back_tensors(tensors: Iterable[Any]) -> HugePageOutcome:
    """Back the storages of CPU `tensors` with huge pages (GPU tensors: nothing to do)."""
    cpu = [t for t in tensors if getattr(t, "device", None) is not None and t.device.type == "cpu"]
    if not cpu:
        return HugePageOutcome(errors=["no CPU tensors"])
    return advise(tensor_ranges(cpu))
