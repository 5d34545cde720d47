"""Suite-wide pytest rules.

Tests marked ``root`` need root (network namespaces, TAP, veth, real sysfs
writes). Outside CI they skip with a reason when not root; with ``CI=true`` any
skip of such a test is turned into a failure, so CI cannot go green by not
running them.
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"

# Fixtures shared by the PMD test modules (``ports``; each module makes its own ``host``).
pytest_plugins = ["pmd_support"]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        if IN_CI:
            pytest.fail("test needs root and CI=true: a root test may not be skipped in CI")
        pytest.skip("needs root")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("root") is not None:
        report.outcome = "failed"
        report.longrepr = f"root test skipped while CI=true: {report.longrepr}"
