"""Back the KV cache with transparent huge pages, so NIXL moves it at memory speed on CPU.

On one host NIXL's UCX backend reads a peer's KV with cross-memory attach (`process_vm_readv`,
512 KiB per call), and the kernel pins and walks the source's pages for every call. On the 4 KiB
pages torch allocates, that ran at 2.0–3.6 GB/s here; on 2 MiB pages the same calls ran at
4.6–5.4 GB/s (memcpy: 5.9–7.2). Most hosts run THP in `madvise` mode, so torch's buffers never
get huge pages unless asked: the KV cache tensors are advised `MADV_HUGEPAGE` (future faults,
khugepaged) and `MADV_COLLAPSE`d (Linux ≥ 6.1: the pages already there are merged now, ~1 s
per GiB, once at start-up; it works whatever the sysfs THP mode). Where the kernel refuses
(no THP support, a kernel before 6.1, memory marked `MADV_NOHUGEPAGE`) or has no free 2 MiB
page left (fragmented memory: ENOMEM, seen once in a full test run on this 24 GiB box) that
part stays on small pages and the outcome says how much: transfers still work, only slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_COLLAPSE = 25
HUGE_PAGE = 2 * 2**20
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass
class HugePageOutcome:
    """What backing a set of buffers with huge pages achieved (read by tests and benchmarks)."""

    regions: int = 0
    bytes: int = 0  # huge-page-aligned bytes advised
    advised: bool = False  # MADV_HUGEPAGE took on every region
    collapsed: bool = False  # MADV_COLLAPSE took on every region: its pages are huge now
    collapsed_bytes: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (address, length) collapsed
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


def advise(ranges: Iterable[tuple[int, int]], retries: int = 2) -> HugePageOutcome:
    """Advise the huge-page-aligned part of each (address, length) range and collapse it one
    huge page at a time: where the kernel has no free 2 MiB page for some of them (ENOMEM,
    fragmented memory) the rest still collapse, and the outcome counts what did. A collapse
    the kernel could not do at once (EAGAIN, ENOMEM) is retried."""
    outcome = HugePageOutcome()
    aligned = [a for r in merged_ranges(ranges) if (a := aligned_range(*r)) is not None]
    outcome.regions = len(aligned)
    outcome.bytes = sum(length for _, length in aligned)
    if not aligned:
        outcome.errors.append("no 2 MiB-aligned range to advise")
        return outcome
    madvise = _madvise()
    advised = 0
    done: list[tuple[int, int]] = []
    for start, length in aligned:
        if _call(madvise, start, length, MADV_HUGEPAGE, "MADV_HUGEPAGE", 0, outcome.errors):
            advised += 1
        for page in range(start, start + length, HUGE_PAGE):
            if _call(madvise, page, HUGE_PAGE, MADV_COLLAPSE, "MADV_COLLAPSE", retries,
                     outcome.errors):
                done.append((page, HUGE_PAGE))
    outcome.ranges = merged_ranges(done)
    outcome.collapsed_bytes = len(done) * HUGE_PAGE
    outcome.advised = advised == len(aligned)
    outcome.collapsed = outcome.collapsed_bytes == outcome.bytes
    return outcome


def _call(madvise: Any, start: int, length: int, advice: int, name: str, retries: int,
          errors: list[str]) -> bool:
    for _ in range(retries + 1):
        if madvise(start, length, advice) == 0:
            return True
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.ENOMEM):
            break
    message = f"madvise({name}): {os.strerror(err)}"
    if message not in errors:
        errors.append(message)
    return False


def tensor_ranges(tensors: Iterable[Any]) -> list[tuple[int, int]]:
    """(address, length) of the storage under each torch tensor (views share one)."""
    return [(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors]


def cpu_tensors(tensors: Iterable[Any]) -> list[Any]:
    """The torch tensors among `tensors` that live in host memory."""
    return [t for t in tensors if hasattr(t, "untyped_storage") and t.device.type == "cpu"]


def back_tensors(tensors: Iterable[Any]) -> HugePageOutcome:
    """Back the storages of CPU `tensors` with huge pages (GPU tensors: nothing to do)."""
    cpu = cpu_tensors(tensors)
    if not cpu:
        return HugePageOutcome(errors=["no CPU tensors"])
    return advise(tensor_ranges(cpu))


def small_pages(tensor: Any) -> Any:
    """Keep `tensor`'s pages small even where THP is `always` (benchmarks' 4 KiB rows)."""
    start, length = tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()
    first = start // 4096 * 4096
    if _madvise()(first, start + length - first, MADV_NOHUGEPAGE) != 0:
        raise OSError(ctypes.get_errno(), "madvise(MADV_NOHUGEPAGE)")
    return tensor


def aligned_buffer(size: int, fill: int) -> Any:
    """A uint8 CPU tensor of `size` bytes starting on a huge-page boundary, pages touched
    (filled with `fill`): every byte of it can be collapsed."""
    import torch

    whole = torch.full((size + 2 * HUGE_PAGE,), fill, dtype=torch.uint8)
    offset = -whole.data_ptr() % HUGE_PAGE
    return whole[offset:offset + size]


def mappings(pid: int | str = "self") -> Iterator[tuple[int, int, dict[str, str]]]:
    """(start, end, fields) of each mapping of `pid` (/proc/<pid>/smaps; fields by name, e.g.
    `AnonHugePages` → "2048 kB", `VmFlags` → "rd wr mr ...")."""
    current: tuple[int, int, dict[str, str]] | None = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head, _, rest = line.partition(" ")
            if "-" in head and not head.endswith(":"):
                if current is not None:
                    yield current
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = (lo, hi, {})
            elif current is not None:
                current[2][head.removesuffix(":")] = rest.strip()
    if current is not None:
        yield current


def huge_bytes_in(ranges: Iterable[tuple[int, int]], pid: int | str = "self") -> int:
    """AnonHugePages of `pid`'s mappings that overlap any of `ranges`: what the kernel says
    is on huge pages there, for tests and reports."""
    wanted = [(int(start), int(start) + int(length)) for start, length in ranges]
    return sum(int(fields.get("AnonHugePages", "0 kB").split()[0]) * 1024
               for lo, hi, fields in mappings(pid)
               if any(lo < end and hi > start for start, end in wanted))
