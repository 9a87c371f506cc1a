"""Suite-wide rule: integration tests never pass silently by being skipped or deselected."""

from __future__ import annotations

import pytest

_dropped: list[str] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _dropped.extend(i.nodeid for i in items if i.get_closest_marker("integration"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and "integration" in report.keywords:
        _dropped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _dropped and exitstatus == 0:
        print(f"\nFAILED: {len(_dropped)} integration test(s) skipped or deselected:")
        for nodeid in _dropped:
            print(f"  {nodeid}")
        session.exitstatus = 1
