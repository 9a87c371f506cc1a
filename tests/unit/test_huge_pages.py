"""Huge-page backing of the KV cache: range arithmetic, the kernel's answer, the outcome."""

from __future__ import annotations

import ctypes
import errno
import platform
from pathlib import Path

import torch

from pdserve.kv_transfer import huge_pages
from pdserve.kv_transfer.huge_pages import (
    HUGE_PAGE,
    aligned_range,
    huge_bytes_in,
    merged_ranges,
    thp_mode,
)


def test_only_whole_huge_pages_inside_a_range_are_advised() -> None:
    assert aligned_range(1, 3 * HUGE_PAGE) == (HUGE_PAGE, 2 * HUGE_PAGE)
    assert aligned_range(0, 2 * HUGE_PAGE) == (0, 2 * HUGE_PAGE)
    assert aligned_range(1, HUGE_PAGE) is None  # no whole huge page inside


def test_views_of_one_storage_are_advised_once() -> None:
    assert merged_ranges([(10, 5), (0, 10), (12, 1), (40, 0), (30, 2)]) == [(0, 15), (30, 2)]


def test_thp_mode_reads_the_bracketed_choice(tmp_path: Path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert thp_mode(str(setting)) == "madvise"
    assert thp_mode(str(tmp_path / "absent")) is None


def test_a_buffer_too_small_for_a_huge_page_says_so() -> None:
    outcome = huge_pages.back_tensors([torch.ones(4096, dtype=torch.uint8)])
    assert not outcome.collapsed and outcome.errors


def test_a_refusing_kernel_leaves_small_pages_and_names_the_call(monkeypatch) -> None:
    monkeypatch.setattr(huge_pages, "_madvise", lambda: _kernel(refuse=lambda *_: True))
    outcome = huge_pages.advise([(0, 4 * HUGE_PAGE), (8 * HUGE_PAGE, 2 * HUGE_PAGE)])
    assert (outcome.advised, outcome.collapsed, outcome.collapsed_bytes) == (False, False, 0)
    assert outcome.errors == ["madvise(MADV_HUGEPAGE): Invalid argument",
                              "madvise(MADV_COLLAPSE): Invalid argument"]


def test_one_refused_region_leaves_the_others_collapsed(monkeypatch) -> None:
    monkeypatch.setattr(huge_pages, "_madvise", lambda: _kernel(
        refuse=lambda start, advice: start == 0 and advice == huge_pages.MADV_COLLAPSE))
    outcome = huge_pages.advise([(0, 4 * HUGE_PAGE), (8 * HUGE_PAGE, 2 * HUGE_PAGE)])
    assert outcome.advised and not outcome.collapsed  # one huge page short
    assert outcome.ranges == [(HUGE_PAGE, 3 * HUGE_PAGE), (8 * HUGE_PAGE, 2 * HUGE_PAGE)]
    assert outcome.collapsed_bytes == 5 * HUGE_PAGE


def test_no_free_huge_page_leaves_only_that_page_small(monkeypatch) -> None:
    """Fragmented memory: the kernel has no 2 MiB page for one of them (ENOMEM, retried)."""
    calls: list[int] = []

    def madvise(start: int, length: int, advice: int) -> int:
        if advice == huge_pages.MADV_COLLAPSE:
            calls.append(start)
            if start == 2 * HUGE_PAGE:
                ctypes.set_errno(errno.ENOMEM)
                return -1
        return 0

    monkeypatch.setattr(huge_pages, "_madvise", lambda: madvise)
    outcome = huge_pages.advise([(0, 4 * HUGE_PAGE)])
    assert outcome.collapsed_bytes == 3 * HUGE_PAGE and not outcome.collapsed
    assert outcome.ranges == [(0, 2 * HUGE_PAGE), (3 * HUGE_PAGE, HUGE_PAGE)]
    assert outcome.errors == ["madvise(MADV_COLLAPSE): Cannot allocate memory"]
    assert calls.count(2 * HUGE_PAGE) == 3  # tried, then retried twice


def test_a_busy_collapse_is_retried(monkeypatch) -> None:
    busy = [errno.EAGAIN, errno.EAGAIN]  # twice busy, then done
    calls: list[int] = []

    def madvise(start: int, length: int, advice: int) -> int:
        calls.append(advice)
        if advice == huge_pages.MADV_COLLAPSE and busy:
            ctypes.set_errno(busy.pop())
            return -1
        return 0

    monkeypatch.setattr(huge_pages, "_madvise", lambda: madvise)
    outcome = huge_pages.advise([(0, HUGE_PAGE)])
    assert outcome.collapsed and not outcome.errors
    assert calls.count(huge_pages.MADV_COLLAPSE) == 3


def _kernel(refuse):  # noqa: ANN001, ANN202 (a stand-in madvise)
    def madvise(start: int, length: int, advice: int) -> int:
        if refuse(start, advice):
            ctypes.set_errno(errno.EINVAL)
            return -1
        return 0
    return madvise


def collapse_expected() -> bool:
    """MADV_COLLAPSE needs THP in the kernel and Linux >= 6.1; the sysfs mode does not matter."""
    release = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    return Path("/sys/kernel/mm/transparent_hugepage").is_dir() and release >= (6, 1)


def test_a_kv_sized_tensor_lands_on_huge_pages() -> None:
    cache = huge_pages.aligned_buffer(64 * 2**20, fill=0)
    outcome = huge_pages.back_tensors([cache.view(2, -1)[0], cache.view(2, -1)[1]])
    if not collapse_expected():  # the kernel cannot: refused, and said so
        assert not outcome.collapsed and outcome.errors
        return
    assert outcome.regions == 1 and outcome.advised, outcome.errors
    assert huge_bytes_in(outcome.ranges) >= outcome.collapsed_bytes  # the kernel agrees
    if not outcome.collapsed:
        # Fragmented memory (CI, after the integration tests: 30 of 33 huge pages): the kernel
        # had no free 2 MiB page for some of them. Those stay small; the rest collapsed.
        assert outcome.errors == ["madvise(MADV_COLLAPSE): Cannot allocate memory"]
        assert outcome.collapsed_bytes >= outcome.bytes // 2, outcome
        return
    assert outcome.collapsed_bytes >= 64 * 2**20


def test_small_pages_stay_small() -> None:
    """Marked `nh` (no huge pages) for the kernel, so even THP `always` leaves it small."""
    buffer = huge_pages.small_pages(huge_pages.aligned_buffer(8 * 2**20, fill=1))
    flags = _vm_flags(buffer.data_ptr())
    assert "nh" in flags and "hg" not in flags, flags
    assert huge_bytes_in([(buffer.data_ptr(), buffer.numel())]) == 0


def _vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping holding `address`."""
    return next((fields.get("VmFlags", "").split() for lo, hi, fields in huge_pages.mappings()
                 if lo <= address < hi), [])
