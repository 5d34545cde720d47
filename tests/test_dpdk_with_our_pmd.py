"""This package's PMD and DPDK's netvsc PMD at the two ends of the host's vswitch.

Our port (NIC 0) sends frames of many sizes and contents to DPDK's port (NIC 1); testpmd in
``macswap`` mode sends each one back with the Ethernet addresses swapped and nothing else
changed. What our port receives must be, byte for byte, what it sent with the two MACs
exchanged: the frames crossed intact from our TX path through DPDK's RX path, and from DPDK's TX
path through our RX path.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from dpdk_support import host_errors, netvsp, wait_until
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd.port import NetvscPort

pytestmark = pytest.mark.dpdk

FRAMES = 64


def frames_for(destination: bytes, source: bytes) -> list[bytes]:
    """Frames from 60 to 1514 bytes, each with its own payload pattern and index."""
    frames = []
    for index in range(FRAMES):
        length = 60 + (index * 1454) // (FRAMES - 1)
        body = bytes((index * 7 + position * 13) & 0xFF for position in range(length - 16))
        frames.append(destination + source + b"\x88\xb5" + index.to_bytes(2, "big") + body)
    return frames


def swapped(frame: bytes) -> bytes:
    return frame[6:12] + frame[0:6] + frame[12:]


def test_frames_cross_byte_identical_between_our_pmd_and_dpdk(rig):
    if not hasattr(NetvscPort, "rx_burst"):
        pytest.skip("our data path not yet available (NetvscPort has no rx_burst)")
    host = rig.host(devices=2, backend="vswitch")
    testpmd = rig.testpmd(host, nics=[1])
    testpmd.command("set fwd macswap")
    testpmd.command("start")
    dpdk_mac = bytes.fromhex(rig.mac(host, 1).replace(":", ""))
    port = NetvscPort.open(rig.guid(host, 0), root=host.root)
    pool = Mempool(1024, root=host.root)
    try:
        port.configure(1, 1)
        port.rx_queue_setup(0, 256, mempool=pool)
        port.tx_queue_setup(0, 256)
        port.start()
        sent_frames = frames_for(dpdk_mac, port.mac_address)
        batch = PacketBatch.from_frames(pool, sent_frames)
        deadline = time.monotonic() + 30
        sent = 0
        while batch.count and time.monotonic() < deadline:
            sent += port.tx_burst(0, batch)
        assert sent == FRAMES, f"our port took {sent} of {FRAMES} frames"
        received: list[bytes] = []
        rx = PacketBatch(64)

        def collect() -> bool:
            count = port.rx_burst(0, rx)
            received.extend(rx.bytes(i) for i in range(count))
            rx.free_all()
            return len(received) >= FRAMES

        wait_until(collect, f"{FRAMES} frames back from DPDK", timeout=30, interval=0.001)
        assert sorted(received) == sorted(swapped(frame) for frame in sent_frames)
        forwarded = testpmd.port_stats(0)
        assert forwarded["RX-packets"] == FRAMES and forwarded["RX-errors"] == 0
        port.stop()
    finally:
        with contextlib.suppress(Exception):
            port.close()
    testpmd.command("stop")
    assert host_errors(host.counters(0)) == {} and host_errors(host.counters(1)) == {}
    assert netvsp(host, 1)["rx_frames_delivered"] == FRAMES
