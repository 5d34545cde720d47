"""This package's PMD on its production path, against the emulated host.

With ``NETVSC_SYSFS_ROOT`` unset the PMD takes exactly the code path it takes on Azure:
``/sys/bus/vmbus`` for the device, the kernel's ``/dev/uioN`` (``KernelUio``: maps selected by
mmap offset, interrupt control by 4-byte writes), DMA memory on locked or huge pages whose
addresses come from ``/proc/self/pagemap``. The uio preload library maps those onto the host's
root (and makes pagemap say physical == virtual, so the host reads the guest's GPAs in its
memory). The guest program is tests/production_path_guest.py, run in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from host_process import HostProcess
from netvsc.preload import preload_environment
from netvsc.wire import ndis

GUEST_PROGRAM = Path(__file__).with_name("production_path_guest.py")
SIZES = (
    "--ring-size", "1M", "--recv-buffer-size", "4M", "--send-buffer-size", "2M",
    "--subchannel-ring-size", "256K",
)  # fmt: skip


@pytest.fixture
def host(tmp_path):
    started = HostProcess(tmp_path / "root", *SIZES, "--link-change-delay", "0")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def run_guest(host: HostProcess, guid: str) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "NETVSC_SYSFS_ROOT"}
    environment.update(preload_environment(host.root))
    result = subprocess.run(
        [sys.executable, str(GUEST_PROGRAM), guid],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, f"guest failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_port_comes_up_and_passes_traffic_on_the_production_path(host):
    status = host.ctl("status")["nics"][0]
    seen = run_guest(host, status["guid"])
    assert seen["sysfs_root_env"] is None
    assert seen["uio_class"] == "KernelUio" and seen["dev_path"] == "/dev/uio0"
    assert seen["device_dir"] == f"/sys/bus/vmbus/devices/{status['guid']}"
    assert seen["mac"] == status["mac"] and seen["link_up"] is True
    assert seen["nvs_version"] == 0x60001
    # Two queues: the subchannel's ring came from /sys/bus/vmbus/devices/<guid>/channels/<relid>/ring.
    assert seen["channels"] == 2 and seen["subchannel_rings"] == 1
    assert seen["host_filter"] & ndis.NDIS_PACKET_TYPE_PROMISCUOUS
    assert seen["dma_kind"] in ("locked", "hugepage"), "DMA memory of a real VM, not an emulated region"
    assert seen["tx_frames"] == 1 and seen["rx_delivered"] == 1
    counters = host.counters()
    memory = counters["guest_memory"]
    # Every RNDIS request and the data frame were read in the guest process at GPA = its address.
    assert memory["process_reads"] > 10 and memory["process_faults"] == 0 and memory["refused"] == 0
    assert not (host.root / "guest-mem").exists() or not os.listdir(host.root / "guest-mem")
    assert counters["host"]["service_errors"] == 0 and counters["netvsp"].get("tx_malformed", 0) == 0
    assert counters["host"]["channel_closes"] == counters["host"]["channel_opens"] == 1
