"""End to end: the host's side of the ring signalling contract (spec/host.md 8), with the real NetVSP.

The guest here is a poll-mode one: it reads the host's interrupt count from ``netvsc host ctl
counters`` (``interrupts_sent``: every host-to-guest signal) instead of waiting on its irq fd.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest

from host_process import HostProcess
from miniguest import MiniGuest
from netvsc.vmbus.ring import RingView
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import RING_INTERRUPT_MASK, RING_PENDING_SEND_SIZE

SMALL_SIZES = ("--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M")
FRAME = bytes.fromhex("02155d00000102155d0000ff88b5") + bytes(50)


@pytest.fixture
def served_guest(tmp_path):
    host = HostProcess(tmp_path / "root", *SMALL_SIZES, "--backend", "null")
    guest = None
    try:
        host.wait_ready()
        guest = MiniGuest(host.root)
        yield host, guest
    finally:
        if guest is not None:
            with contextlib.suppress(Exception):
                guest.close()
        host.stop()


def interrupts(host: HostProcess) -> int:
    return host.counters()["host"]["interrupts_sent"]


def test_no_signal_while_guest_masked_and_one_per_empty_transition(served_guest):
    """host#60: no interrupt while the guest's RX mask is 1; unmasked, one per empty->non-empty batch."""
    host, guest = served_guest
    channel = guest.channels[0]
    channel.rx.mask_interrupts()  # a poll-mode guest
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    assert interrupts(host) == 0, "the host interrupted a guest whose RX mask is 1"
    guest.poll()
    assert not channel.rx.unmask_interrupts()  # drained and unmasked
    # Two transmits in one signal: two completions written, the first into an empty ring.
    message = rndis.encode_packet_msg(FRAME)
    for section, tid in ((0, 1000), (1, 1001)):
        start = section * guest.section_size
        guest.dev.send_buffer[start : start + len(message)] = np.frombuffer(message, dtype=np.uint8)
        channel.send_inband(
            nvsp.encode_send_rndis_packet(0, section, len(message)),
            tid,
            completion_requested=True,
            defer_signal=True,
        )
    assert channel.flush_signal()
    completion_bytes = 2 * (16 + nvsp.NVSP_HOST_MESSAGE_SIZE_V61 + 8)
    deadline = time.monotonic() + 10
    while channel.rx.avail_read() < completion_bytes:  # look without reading: the ring stays non-empty
        assert time.monotonic() < deadline, "two completions did not arrive"
        time.sleep(0.001)
    assert interrupts(host) == 1
    guest.wait(lambda: 1000 in guest.completions and 1001 in guest.completions, "both completions")


def test_signal_when_guest_pending_send_size_is_crossed(served_guest):
    """host#61: with the RX mask at 1, the only interrupt answers the guest's pending-send-size request."""
    host, guest = served_guest
    guest.channels[0].rx.mask_interrupts()
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    guest.poll()
    channel = guest.channels[0]
    tx_header = RingView(guest.dev.rings[: guest.dev.rings.shape[0] // 2]).header

    def burst() -> list[int]:
        # No section and no GPA range: malformed, completed with FAILURE; only the reads matter here.
        tids = []
        for _ in range(8):
            tids.append(guest.next_tid())
            channel.send_inband(
                nvsp.encode_send_rndis_packet(0, nvsp.SEND_SECTION_INDEX_NONE, 0),
                tids[-1],
                completion_requested=True,
                defer_signal=True,
            )
        return tids

    # Without a pending-send-size request: consumed, completed, and no interrupt at all.
    tids = burst()
    channel.flush_signal()
    guest.wait(lambda: all(t in guest.completions for t in tids), "completions of the first burst")
    assert interrupts(host) == 0
    # With one: the guest asks to be told when more than what is free now becomes free.
    tids = burst()
    tx_header[RING_PENDING_SEND_SIZE] = channel.tx.avail_write() + 64
    channel.flush_signal()
    guest.wait(lambda: all(t in guest.completions for t in tids), "completions of the second burst")
    guest.wait(lambda: interrupts(host) == 1, "the pending-send-size interrupt")


def test_host_leaves_mask_clear_and_misses_no_write(served_guest):
    """host#62: 150 transmits following the signalling rules are all completed; idle, the TX mask is 0."""
    host, guest = served_guest
    guest.setup(nvsp.NVSP_VERSION_61)
    guest.rndis_init()
    tids = [guest.send_frame_section(FRAME, section=section) for section in range(150)]
    guest.wait(
        lambda: all(t in guest.completions for t in tids), "a completion for every transmit", timeout=30
    )
    tx_header = RingView(guest.dev.rings[: guest.dev.rings.shape[0] // 2]).header
    assert tx_header[RING_INTERRUPT_MASK] == 0
    assert host.counters()["netvsp"].get("fail_stopped_channels", 0) == 0
