"""Helpers for the DPDK tests (tests/test_dpdk_*.py): an emulated host and DPDK's own testpmd.

``DpdkRig`` starts ``netvsc host`` processes and ``dpdk-testpmd`` processes (through the uio
preload library, ``netvsc.apps.dpdk_testpmd``) and stops all of them in ``close``, testpmd
first, whatever the test did. Waits poll a condition up to a deadline; none sleeps for a fixed time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from host_process import HostProcess
from netvsc.apps.dpdk_testpmd import DpdkTestpmd

# Big enough for DPDK's defaults (512 descriptors, 2 MiB subchannel rings), small for CI memory.
DPDK_HOST_SIZES = (
    "--ring-size", "1M", "--recv-buffer-size", "4M", "--send-buffer-size", "2M",
    "--subchannel-ring-size", "512K",
)  # fmt: skip

# Host counters that must stay 0 while DPDK behaves (group, name).
HOST_ERROR_COUNTERS = (
    ("host", "service_errors"),
    ("host", "backend_errors"),
    ("host", "irq_bad_writes"),
    ("netvsp", "fail_stopped_channels"),
    ("netvsp", "fail_stops"),
    ("netvsp", "tx_malformed"),
    ("netvsp", "tx_too_many_gpa_ranges"),
    ("netvsp", "unknown_receive_completions"),
    ("netvsp", "control_on_subchannel"),
    ("netvsp", "control_queue_overflow"),
    ("netvsp", "init_rejected"),
    ("netvsp", "oid_not_supported"),
    ("guest_memory", "refused"),
    ("guest_memory", "process_faults"),
)


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.02):
    """``predicate()``'s first truthy value; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def host_errors(counters: dict) -> dict[str, int]:
    """The error counters of one NIC that are not 0, as ``group.name: value``."""
    found = {}
    for group, name in HOST_ERROR_COUNTERS:
        value = counters.get(group, {}).get(name, 0)
        if value:
            found[f"{group}.{name}"] = value
    return found


def netvsp(host: HostProcess, nic: int = 0) -> dict[str, int]:
    return host.counters(nic)["netvsp"]


class DpdkRig:
    """Hosts and testpmd processes of one test; ``close`` stops every one of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.hosts: list[HostProcess] = []
        self.testpmds: list[DpdkTestpmd] = []

    def host(self, *args: str, devices: int = 1, backend: str = "loopback") -> HostProcess:
        root = self.tmp_path / f"root{len(self.hosts)}"
        host = HostProcess(root, *DPDK_HOST_SIZES, "--devices", str(devices), "--backend", backend, *args)
        self.hosts.append(host)
        host.wait_ready(timeout=30)
        return host

    @staticmethod
    def guid(host: HostProcess, nic: int = 0) -> str:
        return host.ctl("status")["nics"][nic]["guid"]

    @staticmethod
    def mac(host: HostProcess, nic: int = 0) -> str:
        return host.ctl("status")["nics"][nic]["mac"]

    def testpmd(
        self, host: HostProcess, nics: Sequence[int] = (0,), app_args: Sequence[str] = (), **options
    ) -> DpdkTestpmd:
        testpmd = DpdkTestpmd(host.root, [self.guid(host, nic) for nic in nics], app_args=app_args, **options)
        self.testpmds.append(testpmd)
        return testpmd.start()

    def close(self) -> None:
        for testpmd in self.testpmds:
            with contextlib.suppress(Exception):
                testpmd.close()
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()


@pytest.fixture
def rig(tmp_path):
    started = DpdkRig(tmp_path)
    try:
        yield started
    finally:
        started.close()


def forward_stats(stop_output: str) -> dict[str, int]:
    """The accumulated ``RX-packets``/``TX-packets``/``TX-dropped`` ... that ``stop`` prints."""
    from netvsc.apps.dpdk_testpmd import parse_counters

    block = stop_output.split("Accumulated forward statistics")[-1]
    return parse_counters(block.split("\n\n")[0] if "\n\n" in block else block)
