"""The ring drain (host/ringservice.py): sends and receive completions a batch at a time, and
every other packet left to the NVSP session engine, with the same outcome packet for packet.

Uses the in-process guest of test_host_nic (host-role Channels over arrays, a loopback backend,
a fake clock), and real guest memory regions for the GPA-direct sends the drain reads itself.
"""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from netvsc.errors import ProtocolError
from netvsc.host.guestmem import GuestMemory
from netvsc.host.ringservice import GpaRegions
from netvsc.vmbus.guestmem import GuestMemoryRegion
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire import vmbus as vw
from test_host_nic import MAC, PEER, Guest, frame


class RegionsAndArray:
    """Real guest-memory regions (what the drain reads), with the test's array memory behind
    them for the control messages of bring-up."""

    def __init__(self, regions: GuestMemory, array_memory) -> None:
        self.regions = regions
        self.array_memory = array_memory
        self.array = array_memory.array

    def view(self, gpa: int, length: int) -> np.ndarray:
        return self.regions.view(gpa, length)

    def read(self, gpa: int, length: int) -> np.ndarray:
        try:
            return self.regions.read(gpa, length)
        except ProtocolError:
            return self.array_memory.read(gpa, length)


def ready_guest(regions: GuestMemory | None = None) -> Guest:
    """A guest through bring-up and INITIALIZE, receiving frames to its MAC."""
    guest = Guest()
    if regions is not None:
        guest.resources.guest_memory = RegionsAndArray(regions, guest.resources.guest_memory)
    guest.bring_up()
    guest.initialize()
    guest.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, ndis.NDIS_PACKET_TYPE_DIRECTED.to_bytes(4, "little"))
    return guest


def tcp_frame(payload: int) -> bytes:
    """An IPv4/TCP frame from the guest's MAC, as an LSO send carries it (total length 0)."""
    packet = Ether(src=MAC, dst=PEER) / IP(src="198.18.0.1", dst="198.18.0.2") / TCP() / Raw(b"p" * payload)
    raw = bytearray(bytes(packet))
    raw[16:18] = b"\0\0"
    return bytes(raw)


def _mixed_ring(guest) -> list[int]:
    """Write, without servicing, the packets of a busy guest: aggregated sends, a control
    message, a malformed send, a GPA send the engine must read (the test memory has no
    regions), an LSO send, a receive completion. Returns the ids of the sends, in ring order."""
    guest.nic.backend.pending.append(frame(MAC, PEER, 80))
    guest.nic.poll_backend()
    (received,) = [p for p in guest.packets() if p[0] == vw.PACKET_TYPE_XFER_PAGES]
    good = [rndis.encode_packet_msg(frame(PEER, MAC, 60 + i)) for i in range(8)]
    broken = bytearray(good[0])
    broken[12:16] = bytes(4)  # data_length 0: FAILURE (host#29)
    lso_ppi = rndis.Ppi.u32(rndis.PPI_TYPE_LSO, rndis.encode_lso_v2(100, 34, ipv6=False))
    lso = rndis.encode_packet_msg(tcp_frame(250), [lso_ppi])
    send = guest.send
    guest.send = lambda payload, **kw: send(payload, service=False, **kw)
    try:
        tids = [guest.send_rndis_section(good, section=0)]
        tids.append(guest.send_rndis_gpa(rndis.encode_keepalive(guest.rid()), service=False))
        tids.append(guest.send_rndis_section([bytes(broken)], section=1))
        guest.channel().send_completion(nvsp.encode_send_rndis_packet_complete(1), received[2])
        gpa_send = rndis.encode_packet_msg(frame(PEER, MAC, 900))
        tids.append(guest.send_rndis_gpa(gpa_send, channel_type=0, service=False))
        tids.append(guest.send_rndis_section([lso], section=2))
        tids.append(guest.send_rndis_section(good[:3], section=3))
    finally:
        guest.send = send
    return tids


def _outcome(guest) -> tuple:
    """What the guest and the backend saw: (completion id, NVSP status) in order, control
    responses, frames on the wire."""
    completions, responses = [], []
    for packet in guest.packets():
        if packet[0] == vw.PACKET_TYPE_COMPLETION:
            completions.append((packet[2], nvsp.decode_nvsp(packet[4]).status))
        elif packet[0] == vw.PACKET_TYPE_XFER_PAGES:
            responses.append(guest.take_xfer(packet)[2])
    return completions, responses, list(guest.backend.sent)


def test_drain_and_engine_agree_packet_for_packet(monkeypatch):
    """host#21 host#28 host#29 host#31 host#36: a ring mixing sends, control, a malformed send,
    a GPA send, an LSO send and a receive completion gives, with the drain, exactly what the
    session engine alone gives: completions in ring order with their statuses, the response,
    the frames, the counters."""
    runs = {}
    for use_drain in (True, False):
        guest = ready_guest()
        if not use_drain:
            monkeypatch.setattr(guest.nic, "_drain_allowed", lambda index: False)
        tids = _mixed_ring(guest)
        guest.nic.service(0)
        outcome = _outcome(guest)  # completes the keepalive's response too
        outstanding = guest.nic._rx_path.slots.outstanding(0)
        runs[use_drain] = (tids, outcome, guest.nic.counters(), outstanding)
    tids, (completions, responses, sent), counters, outstanding = runs[True]
    assert [tid for tid, _ in completions] == tids, "one completion per send, in ring order"
    assert [status for _, status in completions] == [1, 1, 2, 1, 1, 1]
    assert len(responses) == 1, "the keepalive was answered"
    assert len(sent) == 8 + 1 + 3 + 3, "the LSO send went out as 3 segments"
    assert outstanding == 0, "the receive completion freed its slot"
    engine_tids, engine_outcome, engine_counters, engine_outstanding = runs[False]
    assert (completions, responses, sent) == engine_outcome and outstanding == engine_outstanding
    counted = (
        "tx_packets",
        "tx_frames",
        "tx_malformed",
        "packets_received",
        "nvsp_RndisPacket",
        "nvsp_RndisPacketCompletion",
        "rx_completions",
    )
    assert {k: counters.get(k) for k in counted} == {k: engine_counters.get(k) for k in counted}


def test_receive_completions_release_slots_in_the_drain():
    """host#21 host#22 host#23: completions read by the drain free their slots; an unknown id is
    counted and frees nothing."""
    guest = ready_guest()
    guest.nic.backend.pending += [frame(MAC, PEER, 64 + i) for i in range(5)]
    guest.nic.poll_backend()
    (packet,) = [p for p in guest.packets() if p[0] == vw.PACKET_TYPE_XFER_PAGES]
    slots = guest.nic._rx_path.slots
    assert slots.outstanding(0) == 5
    complete = nvsp.encode_send_rndis_packet_complete(1)
    guest.channel().send_completion(complete, 12345)  # never sent
    guest.channel().send_completion(complete, packet[2])
    guest.channel().send_completion(complete, packet[2])  # a duplicate
    guest.nic.service(0)
    counters = guest.nic.counters()
    assert slots.outstanding(0) == 0
    assert counters["rx_completions"] == 2 + 1, "the 2 control responses of bring-up, then this one"
    assert counters["unknown_receive_completions"] == 2 and counters["rx_completions_unknown"] == 2


def test_service_budget_keeps_the_ring_masked_until_it_is_empty():
    """host#62 with a budget: a call stops after its budget with the mask still set and the
    channel listed as unfinished; later calls finish the ring, then unmask."""
    guest = ready_guest()
    guest.nic.service_budget = 16
    message = rndis.encode_packet_msg(frame(PEER, MAC))
    send = guest.send
    guest.send = lambda payload, **kw: send(payload, service=False, **kw)
    tids = [guest.send_rndis_section([message] * 8, section=i) for i in range(12)]
    guest.send = send
    calls = 0
    while True:
        guest.nic.service(0)
        calls += 1
        if 0 not in guest.nic.unfinished:
            break
        assert guest.channel().tx_view.interrupt_mask == 1, "still draining: masked"
    assert calls > 1
    assert guest.channel().tx_view.interrupt_mask == 0
    assert [p[2] for p in guest.packets()] == tids
    assert len(guest.backend.sent) == 96


def test_gpa_sends_from_guest_memory_regions_are_read_by_the_drain(tmp_path):
    """host#30 (DESIGN.md §3): a GPA-direct send in a guest-memory region is taken by the drain
    once the region is learnt; one outside every region is left to the engine, which refuses
    it with a FAILURE completion (host.md 3.2: pages must exist)."""
    guest = ready_guest(GuestMemory(tmp_path / "guest-mem"))
    region = GuestMemoryRegion(1 << 16, tmp_path)
    try:
        data = frame(PEER, MAC, 1400)
        header = rndis.encode_packet_msg(data)[: rndis.RNDIS_PACKET_HEADER_SIZE]
        region.array[:44] = np.frombuffer(header, np.uint8)
        region.array[4096 - 100 : 4096 - 100 + len(data)] = np.frombuffer(data, np.uint8)  # two pages
        ranges = [region.page_range(0, 44), region.page_range(4096 - 100, len(data))]
        for tid in (7, 8):
            packet = vw.encode_gpa_direct_packet(ranges, nvsp.encode_send_rndis_packet(0), tid)
            guest.channel().send_raw(np.frombuffer(packet, np.uint8).copy())
        outside = vw.encode_gpa_direct_packet([(44, 0, [0x7777])], nvsp.encode_send_rndis_packet(0), 9)
        guest.channel().send_raw(np.frombuffer(outside, np.uint8).copy())
        guest.nic.service(0)
        completions = [(p[2], nvsp.decode_nvsp(p[4]).status) for p in guest.packets()]
        assert completions == [(7, 1), (8, 1), (9, 2)]
        assert guest.backend.sent == [data, data]
        regions = guest.nic._ring_drain.regions
        assert list(regions.bases) == [region.base_gpa], "the region was learnt once"
    finally:
        region.close()


def test_gpa_regions_find_pages_by_base():
    """The region table: a page is found in the region that holds it, never across its end."""
    memory = _Regions({0x10000: 8192, 0x40000: 4096})
    table = GpaRegions(memory)
    assert table.learn(0x11000) and table.learn(0x40010)
    assert not table.learn(0x20000)
    assert list(table.bases) == [0x10000, 0x40000] and list(table.sizes) == [8192, 4096]
    assert table.learn(0x10000), "a page of a known region"
    assert len(table.arrays) == 2


class _Regions:
    """``view`` as GuestMemory gives it: a slice of the region's array."""

    def __init__(self, regions: dict[int, int]) -> None:
        self.arrays = {base: np.zeros(size, dtype=np.uint8) for base, size in regions.items()}

    def view(self, gpa: int, length: int) -> np.ndarray:
        for base, array in self.arrays.items():
            if base <= gpa and gpa + length <= base + array.shape[0]:
                return array[gpa - base : gpa - base + length]
        raise ProtocolError(f"{gpa:#x} not in a region")
