"""DPDK's netvsc PMD as the peer of a benchmark: its receive rate through the emulated host.

Layer 8 (apps). ``run_dpdk_peer`` starts an emulated host (``netvsc host``, a process of its own)
with two NICs on its vswitch, one ``dpdk-testpmd`` per NIC (``netvsc.apps.dpdk_testpmd``): the
sender in ``txonly`` mode, the receiver in ``rxonly``, one queue each, fixed-size UDP frames. After
a warm-up it counts what the receiver received during ``seconds`` and returns the rate in Mpps
with the counts of both testpmd processes and of the host. ``netvsc bench --peer dpdk`` calls it.
Everything it starts is stopped, and the host's root removed, before it returns or raises.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netvsc.apps.dpdk_testpmd import DpdkTestpmd
from netvsc.errors import ConfigError, DeviceError, NetvscError
from netvsc.host.control import request

__all__ = ["DpdkPeerResult", "run_dpdk_peer"]

HOST_READY_TIMEOUT_S = 60.0
HOST_STOP_TIMEOUT_S = 15.0
WARMUP_S = 0.5
FRAME_SIZE_MIN = 64  # testpmd's txonly: Ethernet + IPv4 + UDP headers, without FCS
FRAME_SIZE_MAX = 1514
# Map sizes for the benchmark host: DPDK's defaults fit, the memory stays modest.
HOST_SIZES = (
    "--ring-size", "2M", "--recv-buffer-size", "16M", "--send-buffer-size", "8M",
    "--subchannel-ring-size", "1M",
)  # fmt: skip


@dataclass
class DpdkPeerResult:
    """What one run measured. ``mpps`` is the receiver's rate over ``seconds``."""

    mpps: float
    seconds: float
    frame_size: int
    rx_packets: int  # received by the receiving testpmd during the measured window
    sender: dict[str, int] = field(default_factory=dict)  # testpmd port stats at the end
    receiver: dict[str, int] = field(default_factory=dict)
    host: list[dict] = field(default_factory=list)  # `netvsc host ctl counters` of both NICs

    def to_json(self) -> dict:
        return asdict(self)


def _start_host(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "netvsc", "host", "--root", str(root), *HOST_SIZES,
         "--devices", "2", "--backend", "vswitch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + HOST_READY_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise DeviceError(f"netvsc host exited with {proc.returncode}: {proc.stderr.read().strip()}")
        with contextlib.suppress(NetvscError, OSError):
            request(root, "ping", timeout=1.0)
            return proc
        if time.monotonic() > deadline:
            raise DeviceError(f"netvsc host not ready within {HOST_READY_TIMEOUT_S:g} s")
        time.sleep(0.02)


def _stop_host(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(HOST_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stderr is not None:
        proc.stderr.close()


def run_dpdk_peer(
    seconds: float = 5.0,
    *,
    frame_size: int = FRAME_SIZE_MIN,
    sender_lcores: str = "0,1",
    receiver_lcores: str = "0,1",
    workdir: str | None = None,
) -> DpdkPeerResult:
    """DPDK testpmd ``txonly`` on NIC 0 to ``rxonly`` on NIC 1 through the host's vswitch.

    ``seconds`` of measurement (after a ``WARMUP_S`` warm-up), ``frame_size``-byte frames, one
    queue per port. ``*_lcores`` are testpmd's ``-l`` lists (main lcore first, then the
    forwarding one). Raises ``DeviceError`` when testpmd or the host cannot run.
    """
    if not 0 < seconds <= 3600:
        raise ConfigError("seconds", seconds, "more than 0, at most 3600")
    if not FRAME_SIZE_MIN <= frame_size <= FRAME_SIZE_MAX:
        raise ConfigError("frame_size", frame_size, f"{FRAME_SIZE_MIN}..{FRAME_SIZE_MAX} bytes")
    base = Path(tempfile.mkdtemp(prefix="netvsc-dpdk-peer-", dir=workdir))
    root = base / "root"
    host = None
    testpmds: list[DpdkTestpmd] = []
    try:
        host = _start_host(root)
        guids = [nic["guid"] for nic in request(root, "status")["nics"]]
        receiver = DpdkTestpmd(root, [guids[1]], lcores=receiver_lcores)
        testpmds.append(receiver)
        receiver.start()
        sender = DpdkTestpmd(root, [guids[0]], lcores=sender_lcores)
        testpmds.append(sender)
        sender.start()
        receiver.command("set fwd rxonly")
        receiver.command("start")
        sender.command("set fwd txonly")
        sender.command(f"set txpkts {frame_size}")
        sender.command("start")
        time.sleep(WARMUP_S)  # a measurement window, not a wait for a condition
        first = receiver.port_stats(0)["RX-packets"]
        started = time.monotonic()
        time.sleep(seconds)
        last = receiver.port_stats(0)["RX-packets"]
        elapsed = time.monotonic() - started
        sender.command("stop")
        receiver.command("stop")
        counters = request(root, "counters")["nics"]
        received = last - first
        return DpdkPeerResult(
            mpps=received / elapsed / 1e6,
            seconds=elapsed,
            frame_size=frame_size,
            rx_packets=received,
            sender=sender.port_stats(0),
            receiver=receiver.port_stats(0),
            host=counters,
        )
    finally:
        for testpmd in reversed(testpmds):
            with contextlib.suppress(Exception):
                testpmd.close()
        if host is not None:
            _stop_host(host)
        shutil.rmtree(base, ignore_errors=True)
