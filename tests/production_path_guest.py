"""A guest program for tests/test_pmd_production_path.py: this package's PMD on the code path it
takes on Azure, run under the uio preload library with ``NETVSC_SYSFS_ROOT`` unset.

Usage: ``python production_path_guest.py GUID``; prints one JSON object of what it saw. The host's
root reaches it only as ``UIOSHIM_ROOT`` (for ``netvsc host ctl``), never as a root for the PMD.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from netvsc.ethdev.mempool import Mempool
from netvsc.host.control import request
from netvsc.pmd.port import NetvscPort
from netvsc.vmbus.dma import allocate_dma
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import encode_gpa_direct_packet


def wait_until(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def host_netvsp(root: str) -> dict:
    return request(root, "counters", nic=0)["nics"][0]["netvsp"]


def send_frame_from_dma(port: NetvscPort, frame: bytes):
    """One data frame as a GPA-direct packet from DMA memory (production kind: locked pages).

    Returns the region: it must outlive the host's read of it."""
    message = rndis.encode_packet_msg(frame)
    region = allocate_dma(len(message))
    region.array[: len(message)] = np.frombuffer(message, dtype=np.uint8)
    ranges = region.page_ranges(0, len(message))
    packet = encode_gpa_direct_packet(
        ranges, nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA), 0x5EED
    )
    with port.control.ring_lock:
        port.channels[0].send_raw(np.frombuffer(packet, dtype=np.uint8).copy())
    return region


def main(guid: str) -> dict:
    root = os.environ["UIOSHIM_ROOT"]
    out: dict = {"sysfs_root_env": os.environ.get("NETVSC_SYSFS_ROOT")}
    port = NetvscPort.open(guid)
    try:
        uio = port.dev.uio
        out.update(
            uio_class=type(uio).__name__,
            dev_path=str(uio.dev_path),
            device_dir=str(port.dev.path),
            mac=port.mac_address.hex(":"),
            nvs_version=port.nvs_version,
            link_up=port.link.up,
        )
        port.configure(2, 2)
        out["channels"] = len(port.channels)
        out["subchannel_rings"] = len(port.dev.subchannel_rings)
        pool = Mempool(512)  # its DMA memory is the production kind too
        for queue in range(2):
            port.rx_queue_setup(queue, 128, mempool=pool)
            port.tx_queue_setup(queue, 128)
        port.start()  # the packet filter reaches the host at start (DPDK pitfall avoided)
        port.promiscuous_enable()
        out["host_filter"] = host_netvsp(root)["packet_filter"]
        request(root, "link", up=False)
        wait_until(lambda: not port.link.up, "the link-down indication")
        request(root, "link", up=True)
        wait_until(lambda: port.link.up, "the link-up indication")
        before = host_netvsp(root)
        frame = port.mac_address + bytes.fromhex("02155d0000fe") + b"\x88\xb5" + bytes(range(200))
        region = send_frame_from_dma(port, frame)
        out["dma_kind"] = region.kind
        after = wait_until(
            lambda: (
                (c := host_netvsp(root)).get("rx_frames_delivered", 0) > before.get("rx_frames_delivered", 0)
                and c
            ),
            "the frame to go out and come back through the loopback",
        )
        out["tx_frames"] = after.get("tx_frames", 0) - before.get("tx_frames", 0)
        out["rx_delivered"] = after["rx_frames_delivered"] - before.get("rx_frames_delivered", 0)
        region.close()
        port.stop()
    finally:
        port.close()
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
