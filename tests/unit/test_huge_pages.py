"""Huge-page backing of the KV cache: range arithmetic, the kernel's answer, the outcome."""

from __future__ import annotations

from pathlib import Path

import torch

from pdserve.kv_transfer import huge_pages
from pdserve.kv_transfer.huge_pages import HUGE_PAGE, aligned_range, merged_ranges, thp_mode


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
    import ctypes

    def refuse(*_: object) -> int:
        ctypes.set_errno(22)
        return -1

    monkeypatch.setattr(huge_pages, "_madvise", lambda: refuse)
    outcome = huge_pages.advise([(0, 4 * HUGE_PAGE)])
    assert (outcome.advised, outcome.collapsed) == (False, False)
    assert outcome.errors == ["madvise(MADV_HUGEPAGE): Invalid argument",
                              "madvise(MADV_COLLAPSE): Invalid argument"]


def test_a_kv_sized_tensor_lands_on_huge_pages() -> None:
    cache = torch.zeros(64 * 2**20, dtype=torch.uint8)
    outcome = huge_pages.back_tensors([cache.view(2, -1)[0], cache.view(2, -1)[1]])
    if thp_mode() in (None, "never"):  # a kernel without THP: refused, and said so
        assert not outcome.collapsed and outcome.errors
        return
    assert outcome.collapsed, outcome.errors
    assert outcome.regions == 1 and outcome.bytes >= 62 * 2**20
    assert _huge_bytes(cache.data_ptr(), cache.numel()) >= outcome.bytes


def _huge_bytes(start: int, length: int) -> int:
    """AnonHugePages of the mappings overlapping [start, start+length) (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo < start + length and hi > start
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total
