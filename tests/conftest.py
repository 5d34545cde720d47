"""Suite-wide pytest rules.

Tests marked ``root`` need root (network namespaces, TAP, veth, real sysfs
writes). Outside CI they skip with a reason when not root; with ``CI=true`` any
skip of such a test is turned into a failure, so CI cannot go green by not
running them.

Tests marked ``dpdk`` run DPDK's ``dpdk-testpmd`` (``.ci/run`` installs it). They need no root;
they skip, saying why, when it is not installed, and with ``CI=true`` a missing testpmd is a
failure instead (a skip for another stated reason stays a skip).
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"

# Fixtures shared by test modules: ``ports`` (PMD tests; each module makes its own ``host``)
# and ``rig`` (DPDK tests).
pytest_plugins = ["pmd_support", "dpdk_support"]

DPDK_MISSING = (
    "dpdk-testpmd not installed (apt-get install dpdk dpdk-dev librte-net-netvsc23, DPDK 22.11)"
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        if IN_CI:
            pytest.fail("test needs root and CI=true: a root test may not be skipped in CI")
        pytest.skip("needs root")
    testpmd = os.environ.get("NETVSC_DPDK_TESTPMD") or "dpdk-testpmd"
    if item.get_closest_marker("dpdk") is not None and shutil.which(testpmd) is None:
        if IN_CI:
            pytest.fail(f"CI=true and {DPDK_MISSING}: a dpdk test may not be skipped in CI")
        pytest.skip(DPDK_MISSING)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and item.get_closest_marker("root") is not None:
        report.outcome = "failed"
        report.longrepr = f"root test skipped while CI=true: {report.longrepr}"
