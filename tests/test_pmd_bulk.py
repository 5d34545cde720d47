"""Issue 5's bulk check: 1,000,000 frames of random sizes from 64 to 9,000 bytes, sent by one port
over 4 queues through the emulated host's vswitch to a second port with 4 RSS queues, all
arrive byte-identical, in copy mode and in external-buffer mode (rx_extmbuf_enable=1).

Every frame is a function of its sequence number (tests/pmd_traffic.py): the receiver reads the
number, rebuilds the frame and compares every byte of the mbuf chain (or external buffer), and
counts each number once, so a loss, a duplicate or a damaged byte fails the test. The sender
keeps at most WINDOW frames in flight, fewer than the receive slots the host gives one queue:
the host drops what it has no slot for, and this test measures the driver, not that rule.

The slowest test of the suite: about a minute per mode on two cores (it reports its rate).
Under NUMBA_DISABLE_JIT=1 (kernels interpreted, ~1000x slower) it sends 2,000 frames per mode.
NETVSC_BULK_FRAMES overrides the count (for a quicker local run).
"""

from __future__ import annotations

import os

import pytest

from netvsc.ethdev import api
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from pmd_standin import nic_index
from pmd_support import module_host, wait_for
from pmd_traffic import SLOW, Traffic, pump

FRAMES = int(os.environ.get("NETVSC_BULK_FRAMES", 2_000 if SLOW else 1_000_000))
QUEUES = 4
MTU = 9000
WINDOW = 512  # the host gives each of the 4 queues ~850 slots of 9,292 bytes (31 MiB buffer)

host = module_host(
    "bulk",
    "--devices",
    "2",
    "--backend",
    "vswitch",
    "--mtu",
    str(MTU),
    "--queues",
    str(QUEUES),
    "--ring-size",
    "1M",
    "--subchannel-ring-size",
    "1M",
    "--recv-buffer-size",
    "31M",
    "--send-buffer-size",
    "16M",
)


@pytest.mark.parametrize("devargs", ["rx_extmbuf_enable=0", "rx_extmbuf_enable=1"], ids=["copy", "extmbuf"])
def test_a_million_frames_of_random_sizes_arrive_byte_identical(host, ports, devargs):
    """Issue 5: 1,000,000 frames of 64..9,000 bytes over 4 queues arrive once each and
    byte-identical; no error, drop or leak anywhere: every send completed, every receive slot
    completed exactly once (the host's counters), both mempools whole again."""
    sender = ports.open(devargs, index=0, timeout=30)
    receiver = ports.open(devargs, index=1, timeout=30)
    pools = []
    for port in (sender, receiver):
        port.set_mtu(MTU)
        port.configure(QUEUES, QUEUES, rss=api.RssConf(b"", port.dev_info().flow_type_rss_offloads))
        pool = Mempool(16384, 2048, root=host.root)  # 2 KiB buffers: big frames are chains
        pools.append(pool)
        for q in range(QUEUES):
            port.rx_queue_setup(q, 1024, mempool=pool)
            port.tx_queue_setup(q, 1024)
        port.start()
    traffic = Traffic(sender.mac_address, receiver.mac_address, FRAMES, flows=256, min_size=64, max_size=MTU)
    result = pump(
        traffic, sender, pools[0], receiver, pools[1], tx_queues=QUEUES, rx_queues=QUEUES, window=WINDOW
    )
    rate = FRAMES / result["seconds"]
    print(
        f"\n{devargs}: {FRAMES} frames in {result['seconds']:.1f} s ({rate:,.0f} frames/s), "
        f"per queue {result['per_queue']}"
    )
    summary = traffic.summary()
    assert summary == dict(
        good=FRAMES, bad_seq=0, bad_length=0, bad_bytes=0, duplicates=0, first_bad_seq=-1, missing=0
    ), summary
    assert all(count > 0 for count in result["per_queue"]), f"RSS spread the flows: {result['per_queue']}"

    empty = PacketBatch(1)

    def settled() -> bool:
        for q in range(QUEUES):
            sender.tx_done_cleanup(q)
            assert receiver.rx_burst(q, empty) == 0
        return sender._datapath.outstanding_sends() == 0 and _slots(host, receiver) == 0

    wait_for(settled, "every send completed and every receive slot back", timeout=10)
    tx, rx = sender.stats(), receiver.stats()
    assert tx.opackets == FRAMES and tx.oerrors == 0
    assert rx.ipackets == FRAMES and rx.ierrors == 0 and rx.imissed == 0 and rx.rx_nombuf == 0
    for port in (sender, receiver):
        counters = port.datapath_counters()
        bad = {
            k: counters[k]
            for k in (
                "ring_errors",
                "unknown_completions",
                "rx_bad_transfer_packets",
                "rx_bad_ranges",
                "rx_ack_lost",
                "tx_malformed",
                "tx_bad_offload",
            )
        }
        assert not any(bad.values()), bad
    netvsp = host.counters(nic_index(host, receiver))["netvsp"]
    assert netvsp.get("rx_completions_unknown", 0) == 0 and netvsp.get("unknown_receive_completions", 0) == 0
    assert netvsp.get("rx_frames", 0) == FRAMES, "the host delivered each frame once (none dropped)"
    assert pools[0].in_use() == 0 and pools[1].in_use() == 0 and pools[1].parked() == 0


def _slots(host, port) -> int:
    return int(host.counters(nic_index(host, port))["netvsp"].get("rx_slots_outstanding", 0))
