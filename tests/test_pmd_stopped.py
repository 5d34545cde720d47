"""A stopped NetVSC port drains every channel it owns (pmd#30): data frames the host delivered
while no one read them are dropped, counted, and their receive sections completed, so the host
gets all its receive slots back. Against the emulated host with the loopback backend."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from netvsc.errors import ConfigError
from netvsc.ethdev import api
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from pmd_support import GpaSender, module_host, netvsp, read_frames, wait_for

QUEUES = 4
FRAMES = 120


host = module_host("stopped", "--queues", "8", "--backend", "loopback")




def held_slots(host) -> dict[int, int]:
    """Receive slots the host has handed to the guest and not had back, per channel."""
    counters = netvsp(host)
    return {
        int(key.rsplit("ch", 1)[1]): value
        for key, value in counters.items()
        if key.startswith("rx_slots_outstanding_ch")
    }


def flows(mac: bytes, count: int, seed: int):
    """``count`` UDP frames to the port, each its own flow, so RSS spreads them over the queues."""
    rng = random.Random(seed)
    for index in range(count):
        src = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        dst = f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        udp = UDP(sport=rng.randrange(1024, 65535), dport=rng.randrange(1, 65535))
        yield bytes(Ether(src="02:00:00:00:00:01", dst=mac.hex(":")) / IP(src=src, dst=dst, id=index) / udp)


def test_stop_drains_every_channel_and_gives_the_host_its_slots_back(ports, host):
    """pmd#30: frames delivered on all queues of a started port that no data path reads hold the
    host's receive slots; stop drops them on every channel (not only the primary), counts the
    drops, and completes their sections: the host's outstanding slots return to zero."""
    port = ports.open()
    port.configure(QUEUES, QUEUES, rss=api.RssConf(b"", 0))
    port.start()
    # The test is a data path that does not read: nothing polls the queues while started.
    port.worker.background_poll = False
    sender = GpaSender(port, slots=FRAMES)
    try:
        for slot, frame in enumerate(flows(port.mac_address, FRAMES, seed=30)):
            sender.send(frame, slot)
        wait_for(
            lambda: sum(held_slots(host).values()) >= FRAMES, f"{FRAMES} frames held by the guest", timeout=20
        )
    finally:
        sender.close()
    held = held_slots(host)
    busy = [channel for channel, count in held.items() if count > 0]
    assert len(busy) >= 3, f"RSS spread the frames over the queues: slots held per channel {held}"
    assert any(channel > 0 for channel in busy), "subchannels hold slots too"
    assert port.counters().get("data_frames_dropped", 0) == 0, "nothing is dropped while started"

    port.stop()
    wait_for(
        lambda: sum(held_slots(host).values()) == 0,
        "the host's outstanding receive slots back to zero after stop",
        timeout=5,
    )
    assert port.counters()["data_frames_dropped"] == FRAMES, "every frame was dropped once, and counted"
    assert netvsp(host).get("rx_completions_unknown", 0) == 0, "each section completed on its own channel"


def test_a_started_port_leaves_its_queues_to_the_data_path(ports, host):
    """pmd#30, the other side: once started again, the control worker no longer drains the
    subchannels, so the frames reach whoever polls the queues (here the test, as rx_burst will)."""
    port = ports.open()
    port.configure(QUEUES, QUEUES, rss=api.RssConf(b"", 0))
    port.start()
    port.stop()
    port.start()
    port.worker.background_poll = False
    sender = GpaSender(port, slots=32)
    received: list[bytes] = []
    try:
        for slot, frame in enumerate(flows(port.mac_address, 32, seed=31)):
            sender.send(frame, slot)

        def read_all() -> int:
            for channel_index in range(len(port.channels)):
                received.extend(read_frames(port, channel_index))
            return len(received)

        wait_for(lambda: read_all() >= 32, "all 32 frames read from the queues", timeout=20)
    finally:
        sender.close()
    assert len(received) == 32
    assert port.counters().get("data_frames_dropped", 0) == 0


def test_bursts_refuse_a_queue_the_port_lacks_and_return_nothing_while_stopped(ports, host):
    """A started port refuses a burst on a queue it does not have (a negative one included: it
    is not counted from the end), naming the queue; a stopped port's bursts return 0."""
    port = ports.open()
    port.configure(2, 2)
    pool = Mempool(64, root=host.root)
    try:
        port.rx_queue_setup(0, 64, mempool=pool)
        port.rx_queue_setup(1, 64, mempool=pool)
        batch = PacketBatch(4, pool)
        port.start()
        for queue in (-1, 2, "0"):
            with pytest.raises(ConfigError, match="rx queue") as caught:
                port.rx_burst(queue, batch)
            assert caught.value.value == queue
            with pytest.raises(ConfigError, match="tx queue"):
                port.tx_burst(queue, batch)
        assert port.rx_burst(1, batch) == 0 and batch.count == 0
        port.stop()
        batch.count = 1
        assert port.rx_burst(0, batch) == 0 and batch.count == 0
        assert port.tx_burst(0, batch) == 0
    finally:
        port.close()
        pool.close()
