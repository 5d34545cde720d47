"""Channel: a guest and a host on one channel mapping exchange packets and signal by the rules."""

from __future__ import annotations

import numpy as np
import pytest

from netvsc.errors import ConfigError, ProtocolError, RingFullError
from netvsc.vmbus.channel import Channel, encode_descriptor
from netvsc.wire.vmbus import (
    PACKET_FLAG_COMPLETION_REQUESTED,
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND,
    RING_WRITE_INDEX,
)

HALF = 2 * 4096  # each ring: header page + one data page


class Signals:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def make_pair(half: int = HALF):
    area = np.zeros(2 * half, dtype=np.uint8)
    guest_signals, host_signals = Signals(), Signals()
    guest = Channel(area, guest_signals, relid=3, monitor_id=7)
    host = Channel(area, host_signals, relid=3, role="host")
    return area, guest, guest_signals, host, host_signals


def test_guest_inband_request_reaches_the_host_and_the_completion_comes_back():
    area, guest, guest_signals, host, host_signals = make_pair()
    guest.send_inband(b"\x01\x02\x03", transaction_id=0x1122334455667788, completion_requested=True)
    assert guest_signals.count == 1, "first packet into an empty ring signals the host"
    assert area[:4].view("<u4")[0] == 32, "the guest must write the first half of the mapping"
    packet = host.recv()
    assert packet == (
        PACKET_TYPE_INBAND,
        PACKET_FLAG_COMPLETION_REQUESTED,
        0x1122334455667788,
        b"",
        b"\x01\x02\x03" + bytes(5),
    )
    assert host.recv() is None
    host.send_completion(b"ok", transaction_id=0x1122334455667788)
    assert host_signals.count == 1
    assert guest.recv() == (PACKET_TYPE_COMPLETION, 0, 0x1122334455667788, b"", b"ok" + bytes(6))


def test_deferred_signals_go_out_once_per_burst():
    _, guest, guest_signals, host, _ = make_pair()
    for number in range(5):
        guest.send_inband(bytes(8), number, defer_signal=True)
    assert guest_signals.count == 0
    assert guest.flush_signal()
    assert not guest.flush_signal()
    assert guest_signals.count == 1
    assert [host.recv()[2] for _ in range(5)] == list(range(5))


def test_raw_packet_keeps_its_header_extension():
    _, guest, _, host, _ = make_pair()
    extension = np.arange(8, dtype=np.uint8)  # 24 + 16 * n would be a GPA range list; any 8k bytes do
    payload = b"rndis!"
    tlen8 = (16 + 8 + len(payload) + 7) // 8
    descriptor = encode_descriptor(PACKET_TYPE_GPA_DIRECT, 3, tlen8, PACKET_FLAG_COMPLETION_REQUESTED, 9)
    guest.send_raw(descriptor, extension, payload)
    packet_type, flags, transaction_id, header, body = host.recv()
    assert (packet_type, flags, transaction_id) == (PACKET_TYPE_GPA_DIRECT, 1, 9)
    assert header == extension.tobytes()
    assert body == payload + bytes(2)


def test_full_ring_raises_ring_full_and_writes_nothing():
    area, guest, _, host, _ = make_pair()
    sent = 0
    with pytest.raises(RingFullError):
        while True:
            guest.send_inband(bytes(100), sent)
            sent += 1
    write_index = int(area[:4].view("<u4")[0])
    assert sent == 4096 // 128 - 1
    assert write_index == sent * 128 % 4096
    assert sum(1 for _ in iter(host.recv, None)) == sent


def test_reader_signals_a_blocked_writer_when_it_frees_the_space():
    area, guest, guest_signals, host, host_signals = make_pair()
    host.rx_view.initialize()  # feature bit 0: the host wants pending-send signals
    guest.tx_view.initialize()
    guest = Channel(area, guest_signals, role="guest")
    while True:
        try:
            guest.send_inband(bytes(100), 0)
        except RingFullError:
            break
    assert not guest.tx.request_space(128)
    host.recv()
    assert host_signals.count == 1, "the host freed what the blocked guest asked for: one signal"


def test_host_refuses_a_corrupt_guest_ring():
    area, guest, _, host, _ = make_pair()
    area[:4].view("<u4")[RING_WRITE_INDEX] = 13
    with pytest.raises(ProtocolError, match="peer index"):
        host.recv()
    assert host.rx.protocol_errors == 1


@pytest.mark.parametrize(("size", "role"), [(HALF * 2 + 4096, "guest"), (8192, "guest"), (HALF * 2, "peer")])
def test_bad_area_or_role_is_a_config_error(size, role):
    with pytest.raises(ConfigError):
        Channel(np.zeros(size, dtype=np.uint8), Signals(), role=role)
