"""The emulated host's receive path: slot accounting, transfer-page packets as a guest reads
them, the packet filter, drops, control messages and receive faults."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from netvsc.errors import ConfigError, ProtocolError
from netvsc.host.frames import FrameBatch
from netvsc.host.rss import RssState
from netvsc.host.rxpath import MAX_RANGES_PER_PACKET, ReceivePath, ReceiveSlots
from netvsc.vmbus.channel import Channel
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire.vmbus import PACKET_FLAG_COMPLETION_REQUESTED, PACKET_TYPE_XFER_PAGES

OWN_MAC = "02:00:00:00:00:0a"
PEER_MAC = "02:00:00:00:00:0b"
OTHER_MAC = "02:00:00:00:00:0c"
SET_ID = nvsp.RECEIVE_BUFFER_ID
SLOT = 1806  # OpenVMM's slot size for MTU 1500
ALL_TYPES = ndis.RSS_HASH_INFORMATION_LINUX
FILTER_DEFAULT = ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class Host:
    """A receive path with ``queues`` channel pairs (host side, guest side) over test memory."""

    def __init__(self, queues=1, buffer_size=1 << 20, slot_size=SLOT, ring_half=16 * 4096, message_size=28):
        self.recv = np.zeros(buffer_size, dtype=np.uint8)
        self.slots = ReceiveSlots(buffer_size, slot_size)
        self.slots.set_active_queues(range(queues))
        self.path = ReceivePath(self.recv, self.slots, SET_ID, message_size)
        self.host_channels, self.guest_channels = [], []
        for relid in range(queues):
            area = np.zeros(2 * ring_half, dtype=np.uint8)
            self.host_channels.append(Channel(area, lambda: None, relid, role="host"))
            self.guest_channels.append(Channel(area, lambda: None, relid))

    def deliver(self, frames, *, packet_filter=FILTER_DEFAULT, rss=None, vlans=None):
        batch = FrameBatch(max(1, len(frames)), 2048)
        for n, frame in enumerate(frames):
            batch.append(frame, vlan_tci=-1 if vlans is None else vlans[n])
        return self.path.deliver(
            batch, self.host_channels, mac=mac_bytes(OWN_MAC), packet_filter=packet_filter, rss=rss
        )

    def packets(self, channel=0):
        """Every transfer-page packet the guest finds on ``channel``, parsed."""
        found = []
        while (packet := self.guest_channels[channel].recv()) is not None:
            packet_type, flags, transaction_id, extension, payload = packet
            set_id, _reserved, count = struct.unpack_from("<HHI", extension)
            ranges = [struct.unpack_from("<II", extension, 8 + 8 * i) for i in range(count)]
            assert len(extension) == 8 + 8 * count
            found.append(
                dict(
                    type=packet_type,
                    flags=flags,
                    tid=transaction_id,
                    set_id=set_id,
                    ranges=ranges,
                    payload=payload,
                )
            )
        return found

    def message(self, byte_count, byte_offset):
        return rndis.decode_rndis(
            self.recv[byte_offset : byte_offset + byte_count].tobytes(), limit=byte_count
        )


def frame_to(dst=OWN_MAC, size=100, **ip):
    packet = (
        Ether(src=PEER_MAC, dst=dst) / IP(src="198.18.0.2", dst="198.18.0.1", **ip) / UDP(sport=9, dport=9)
    )
    return bytes(packet / Raw(b"d" * max(0, size - len(packet))))


# -- slots ----------------------------------------------------------------------------------


def test_slot_split_between_active_queues():
    """host.md 2.3: control slots 0-15, then (count-16)/n data slots per queue, remainder last."""
    slots = ReceiveSlots(100 * 100, 100)
    slots.set_active_queues([0, 1, 2])
    assert slots.slot_count == 100
    taken = {q: [] for q in range(3)}
    for q in range(3):
        while (slot := slots.take_data(q)) is not None:
            taken[q].append(slot)
    assert (
        taken[0] == list(range(16, 44))
        and taken[1] == list(range(44, 72))
        and taken[2] == list(range(72, 100))
    )
    assert slots.take_data(3) is None, "a queue outside the table has no slots"
    controls = [slots.take_control() for _ in range(16)]
    assert controls == list(range(16)) and slots.take_control() is None


def test_slots_come_back_only_through_their_completion():
    """host#21, host#22, host#23: no reuse before the completion; any order; unknown ids and the
    wrong channel release nothing; a repeated completion is not a second release."""
    slots = ReceiveSlots(40 * 100, 100)
    first = [slots.take_data(0) for _ in range(10)]
    second = [slots.take_data(0) for _ in range(14)]
    assert slots.take_data(0) is None
    tid_first = slots.mark_outstanding(1, first)
    tid_second = slots.mark_outstanding(1, second)
    assert (tid_first, tid_second) == (16, 26)
    assert slots.outstanding(1) == 24
    assert not slots.release(0, tid_second), "completion on the wrong channel"
    assert not slots.release(1, 17), "not the first slot of a packet"
    assert not slots.release(1, 9999)
    assert slots.take_data(0) is None
    assert slots.release(1, tid_second), "completions in any order"
    assert not slots.release(1, tid_second), "a duplicate completion"
    assert slots.outstanding(1) == 10
    again = [slots.take_data(0) for _ in range(14)]
    assert sorted(again) == sorted(second) and slots.take_data(0) is None


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["take", "send", "complete", "bogus", "requeue"]),
            st.integers(0, 2),
            st.integers(0, 60),
        ),
        max_size=120,
    )
)
def test_a_slot_is_never_handed_out_twice_while_outstanding(ops):
    """host#13, host#21, host#23: under any mix of operations a slot is held by one owner only,
    and transaction ids are below the slot count and unique per channel while outstanding."""
    slots = ReceiveSlots(60 * 100, 100)
    slots.set_active_queues([0, 1])
    held: set[int] = set()
    taken: list[int] = []
    sent: dict[tuple[int, int], list[int]] = {}
    for op, channel, number in ops:
        if op == "take":
            slot = slots.take_data(channel % 2)
            if slot is not None:
                assert slot not in held, f"slot {slot} handed out twice"
                held.add(slot)
                taken.append(slot)
        elif op == "send" and taken:
            batch, taken[:] = list(taken[: 1 + number % 5]), taken[1 + number % 5 :]
            tid = slots.mark_outstanding(channel, batch)
            assert 0 <= tid < slots.slot_count and (channel, tid) not in sent
            sent[(channel, tid)] = batch
        elif op == "complete" and sent:
            key = sorted(sent)[number % len(sent)]
            assert slots.release(*key)
            held.difference_update(sent.pop(key))
        elif op == "bogus":
            expected = (channel, number) in sent
            assert slots.release(channel, number) == expected
            if expected:
                held.difference_update(sent.pop((channel, number)))
        elif op == "requeue":
            slots.set_active_queues([0, 1, 2] if number % 2 else [1])
    for channel in range(3):
        assert slots.outstanding(channel) == sum(len(b) for (c, _), b in sent.items() if c == channel)


def test_bad_slot_parameters_are_refused():
    with pytest.raises(ConfigError):
        ReceiveSlots(1000, 10)
    with pytest.raises(ConfigError):
        ReceiveSlots(100, 1806)
    with pytest.raises(ConfigError):
        ReceiveSlots(10_000, 100).set_active_queues([])


# -- transfer-page packets ----------------------------------------------------------------------


@pytest.mark.parametrize("message_size", [28, 40])
def test_data_packet_layout_is_what_a_guest_expects(message_size):
    """host#12, host#13, host#14, host#15, host#17, host#19: type 7 with flags 1, set id echoed,
    NVSP 107 data payload padded to the negotiated size, OpenVMM's slot layout, checksum PPI."""
    host = Host(message_size=message_size)
    frame = frame_to()
    assert host.deliver([frame]) == 1
    (packet,) = host.packets()
    assert packet["type"] == PACKET_TYPE_XFER_PAGES and packet["flags"] == PACKET_FLAG_COMPLETION_REQUESTED
    assert packet["set_id"] == SET_ID
    assert packet["payload"][:message_size] == nvsp.encode_send_rndis_packet(0, size=message_size)
    assert len(packet["payload"]) == (message_size + 7) // 8 * 8
    assert 16 <= packet["tid"] < host.slots.slot_count
    ((byte_count, byte_offset),) = packet["ranges"]
    assert byte_count == SLOT and byte_offset == packet["tid"] * SLOT
    assert byte_count > 0 and byte_offset + byte_count <= host.recv.shape[0]
    message = host.message(byte_count, byte_offset)
    assert message.length == SLOT and message.header.data_offset == 248
    assert message.data_start == 256 and message.frame == frame
    assert message.header.per_packet_info_offset == 36 and message.header.per_packet_info_length == 16
    checksum = message.ppi(rndis.PPI_TYPE_CHECKSUM_INFO)
    assert checksum.value == rndis.CHECKSUM_RX_IP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED
    assert message.ppi(rndis.PPI_TYPE_HASH_VALUE) is None, "no hash PPIs without RSS"
    assert host.slots.outstanding(0) == 1


def test_tagged_frame_arrives_untagged_with_a_vlan_ppi():
    """host#18: the tag is stripped into PPI type 6 with priority, DEI and id."""
    host = Host()
    inner = IP(src="198.18.0.2", dst="198.18.0.1") / UDP() / Raw(b"v" * 40)
    tagged = bytes(Ether(src=PEER_MAC, dst=OWN_MAC) / Dot1Q(prio=5, dei=1, vlan=300) / inner)
    host.deliver([tagged])
    ((byte_count, byte_offset),) = host.packets()[0]["ranges"]
    message = host.message(byte_count, byte_offset)
    assert message.frame == bytes(Ether(src=PEER_MAC, dst=OWN_MAC) / inner)
    vlan = message.ppi(rndis.PPI_TYPE_IEEE_8021Q).value
    assert vlan == rndis.encode_vlan_ppi_value(300, priority=5, dei=1)


def test_rss_frames_carry_hash_ppis_and_land_on_table_channel():
    """host#20: with RSS each frame has PPI 8 and 9 and arrives on table[hash & 127]."""
    host = Host(queues=4)
    rss = RssState(ndis.TOEPLITZ_KEY_DPDK, [0, 1, 2, 3], ALL_TYPES)
    frames = [
        bytes(
            Ether(src=PEER_MAC, dst=OWN_MAC)
            / IP(src="198.18.0.2", dst="198.18.0.1")
            / TCP(sport=1000 + n, dport=80)
        )
        for n in range(64)
    ]
    assert host.deliver(frames, rss=rss) == 64
    seen = 0
    for channel in range(4):
        for packet in host.packets(channel):
            for byte_count, byte_offset in packet["ranges"]:
                message = host.message(byte_count, byte_offset)
                hash_value = message.ppi(rndis.PPI_TYPE_HASH_VALUE).value
                info = message.ppi(rndis.PPI_TYPE_HASH_INFO).value
                assert info == ndis.NDIS_HASH_FUNCTION_TOEPLITZ | ndis.NDIS_HASH_TCP_IPV4
                assert rss.table[hash_value & 127] == channel
                seen += 1
    assert seen == 64
    assert all(host.slots.outstanding(c) > 0 for c in range(4)), "64 flows should reach all 4 channels"


def test_batches_hold_at_most_375_ranges():
    """host#16: 400 frames go out as one packet of 375 ranges and one of 25."""
    host = Host(buffer_size=1 << 20, ring_half=32 * 4096)
    assert host.deliver([frame_to()] * 400) == 400
    packets = host.packets()
    assert [len(p["ranges"]) for p in packets] == [MAX_RANGES_PER_PACKET, 25]
    assert len({p["tid"] for p in packets}) == 2


def test_no_free_slot_drops_frames_and_a_completion_frees_them():
    """host#24, host#21, host#22: with every data slot outstanding further frames are dropped
    and counted (not queued); completing one packet makes its slots usable again."""
    host = Host(buffer_size=40 * SLOT)  # 24 data slots
    assert host.deliver([frame_to()] * 20) == 20
    assert host.deliver([frame_to()] * 10) == 4
    assert host.path.counters["rx_dropped_no_slot"] == 6
    assert host.deliver([frame_to()]) == 0
    assert host.path.counters["rx_dropped_no_slot"] == 7
    first, second = host.packets()
    assert not host.path.complete(0, 12345), "unknown id is not a release"
    assert host.path.complete(0, second["tid"])
    assert not host.path.complete(0, second["tid"]), "duplicate"
    assert host.deliver([frame_to()] * 5) == 4
    (third,) = host.packets()
    assert sorted(o // SLOT for _, o in third["ranges"]) == sorted(o // SLOT for _, o in second["ranges"])
    assert host.path.complete(0, first["tid"])


def test_ring_full_drops_the_whole_packet_and_frees_its_slots():
    """host.md 2.6: a packet that does not fit the guest's ring is dropped whole, slots back."""
    host = Host(ring_half=2 * 4096)
    delivered = 0
    for _ in range(200):
        delivered += host.deliver([frame_to()] * 8)
        if host.path.counters["rx_dropped_ring_full"]:
            break
    assert host.path.counters["rx_dropped_ring_full"] == 8
    assert host.slots.outstanding(0) == delivered, "dropped frames hold no slot"


# -- packet filter --------------------------------------------------------------------------------

BROADCAST = "ff:ff:ff:ff:ff:ff"
MULTICAST = "01:00:5e:00:00:fb"


@pytest.mark.parametrize(
    ("packet_filter", "delivered"),
    [
        (0, set()),
        (ndis.NDIS_PACKET_TYPE_DIRECTED, {OWN_MAC}),
        (FILTER_DEFAULT, {OWN_MAC, BROADCAST}),
        (FILTER_DEFAULT | ndis.NDIS_PACKET_TYPE_ALL_MULTICAST, {OWN_MAC, BROADCAST, MULTICAST}),
        (ndis.NDIS_PACKET_TYPE_MULTICAST, set()),  # the multicast list is always empty
        (ndis.NDIS_PACKET_TYPE_PROMISCUOUS, {OWN_MAC, BROADCAST, MULTICAST, OTHER_MAC}),
    ],
    ids=["zero", "directed", "directed+broadcast", "all-multicast", "multicast-list", "promiscuous"],
)
def test_packet_filter(packet_filter, delivered):
    """host#25, host#26, host#27: filter 0 delivers nothing; directed, broadcast, all-multicast
    and promiscuous deliver exactly their classes."""
    host = Host()
    destinations = [OWN_MAC, BROADCAST, MULTICAST, OTHER_MAC]
    count = host.deliver([frame_to(dst) for dst in destinations], packet_filter=packet_filter)
    got = set()
    for packet in host.packets():
        for byte_count, byte_offset in packet["ranges"]:
            got.add(Ether(host.message(byte_count, byte_offset).frame).dst)
    assert got == delivered and count == len(delivered)
    assert host.path.counters["rx_dropped_filter"] == 4 - len(delivered)


# -- sizes ------------------------------------------------------------------------------------


def test_linux_sized_slots_pack_full_frames_within_the_range():
    """host#15, host#17 with 1728-byte slots: a 1514-byte frame does not fit at offset 256, so
    the message is packed; it still lies within its range with a valid layout."""
    host = Host(slot_size=1728)
    frame = frame_to(size=1514)
    assert host.deliver([frame, frame_to(size=60)]) == 2
    ranges = host.packets()[0]["ranges"]
    big = host.message(*ranges[0])
    assert big.frame == frame and big.length <= ranges[0][0] <= 1728
    small = host.message(*ranges[1])
    assert small.header.data_offset == 248 and ranges[1][0] == 1728


def test_frames_larger_than_a_slot_are_dropped_and_counted():
    host = Host(slot_size=512)
    assert host.deliver([frame_to(size=1000)]) == 0
    assert host.path.counters["rx_dropped_too_big"] == 1
    assert host.slots.outstanding(0) == 0


# -- control --------------------------------------------------------------------------------------


def test_control_messages_use_reserved_slots_with_their_real_length():
    """host#36 (host side): channel_type 1, slot id 0-15, byte_count = message length; with the
    16 control slots outstanding the caller is told to keep the message."""
    host = Host()
    message = rndis.encode_keepalive_complete(77)
    for _ in range(16):
        assert host.path.send_control(host.host_channels[0], 0, message)
    assert not host.path.send_control(host.host_channels[0], 0, message)
    packets = host.packets()
    assert sorted(p["tid"] for p in packets) == list(range(16))
    for packet in packets:
        assert packet["payload"][:28] == nvsp.encode_send_rndis_packet(1, size=28)
        ((byte_count, byte_offset),) = packet["ranges"]
        assert byte_count == len(message) and byte_offset == packet["tid"] * SLOT
        assert host.recv[byte_offset : byte_offset + byte_count].tobytes() == message
    assert host.path.complete(0, 3)
    assert host.path.send_control(host.host_channels[0], 0, message)
    assert host.packets()[0]["tid"] == 3


# -- faults ----------------------------------------------------------------------------------------


def test_fault_straddle_page_places_the_header_across_a_page_boundary():
    """Issue item 8: the next RNDIS header crosses a 4 KiB page of the receive buffer and stays
    a valid message inside its range."""
    host = Host()
    host.path.arm_fault("straddle_page")
    frame = frame_to()
    host.deliver([frame])
    ((byte_count, byte_offset),) = host.packets()[0]["ranges"]
    assert byte_offset // 4096 != (byte_offset + 43) // 4096, "header does not straddle a page"
    assert host.message(byte_count, byte_offset).frame == frame
    assert "straddle_page" not in host.path.armed_faults
    host.deliver([frame])
    ((byte_count, _),) = host.packets()[0]["ranges"]
    assert byte_count == SLOT, "the fault applies once"


def test_fault_corruptions_break_exactly_the_next_packet():
    host = Host()
    host.path.arm_fault("corrupt_xfer_packet")
    host.deliver([frame_to()])
    ((_count, offset),) = host.packets()[0]["ranges"]
    assert offset >= host.recv.shape[0], "range must point outside the buffer"
    host.path.arm_fault("corrupt_rndis_header")
    host.deliver([frame_to()])
    ((byte_count, byte_offset),) = host.packets()[0]["ranges"]
    with pytest.raises(Exception, match="exceeds its range|past"):
        host.message(byte_count, byte_offset)
    host.deliver([frame_to()])
    ((byte_count, byte_offset),) = host.packets()[0]["ranges"]
    host.message(byte_count, byte_offset)
    with pytest.raises(ConfigError):
        host.path.arm_fault("melt")


@settings(max_examples=80, deadline=None)
@given(
    frames=st.lists(st.binary(min_size=0, max_size=1600), min_size=1, max_size=12),
    tag_first=st.booleans(),
    rss_on=st.booleans(),
)
def test_arbitrary_backend_frames_are_delivered_well_formed_or_dropped(frames, tag_first, rss_on):
    """host#14, host#15, host#17: whatever a backend hands over (runts, garbage, tags), every
    delivered range is inside the buffer and holds one valid RNDIS message; the rest is counted."""
    host = Host(queues=2)
    if tag_first:
        frames[0] = bytes(Ether(src=PEER_MAC, dst=OWN_MAC) / Dot1Q(vlan=3)) + frames[0]
    rss = RssState(ndis.TOEPLITZ_KEY_DPDK, [0, 1], ALL_TYPES) if rss_on else None
    delivered = host.deliver(frames, packet_filter=ndis.NDIS_PACKET_TYPE_PROMISCUOUS, rss=rss)
    seen = 0
    for channel in range(2):
        for packet in host.packets(channel):
            for byte_count, byte_offset in packet["ranges"]:
                assert byte_count > 0 and byte_offset + byte_count <= host.recv.shape[0]
                message = host.message(byte_count, byte_offset)
                assert len(message.frame) >= 14
                seen += 1
    counters = host.path.counters
    dropped = counters["rx_dropped_runt"] + counters["rx_dropped_too_big"] + counters["rx_dropped_no_slot"]
    assert seen == delivered and delivered + dropped == len(frames)


def test_ring_low_water_asks_the_guest_for_a_signal():
    """host.md 2.6 and 8 (the host as the writer): below 2 KiB free the host stops pulling and sets the
    guest's pending-send-size to max(2 KiB, ring/4); once the guest reads, the request goes."""
    host = Host(ring_half=4 * 4096)
    channel = host.host_channels[0]
    assert host.path.ring_has_room(channel)
    while channel.tx.avail_write() > 2048:
        host.deliver([frame_to()] * 4)
    assert not host.path.ring_has_room(channel)
    assert channel.tx_view.pending_send_size == 3 * 4096 // 4
    for packet in host.packets():
        host.path.complete(0, packet["tid"])
    assert host.path.ring_has_room(channel)
    assert channel.tx_view.pending_send_size == 0


def test_a_guest_that_corrupts_its_ring_gets_a_protocol_error_and_no_slot_leaks():
    """host.md 1.6: corrupt ring indices are the caller's fail-stop; the slots taken for the
    packet go back, so nothing is lost if the channel is reopened."""
    host = Host()
    free_before = host.slots.free_data(0)
    host.host_channels[0].tx_view.header[1] = 13  # read index not a multiple of 8
    with pytest.raises(ProtocolError):
        host.deliver([frame_to()] * 3)
    assert host.slots.free_data(0) == free_before and host.slots.outstanding(0) == 0
