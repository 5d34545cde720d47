"""NetVsp driven in-process by a small guest built from wire/ and vmbus.channel (not proto/).

The host side is a real ``NetVsp`` with host-role Channels over numpy arrays and the real data
path (host/rxpath.py, txpath.py, rss.py); guest memory is one array, the backend a loopback
with a hook. Time is a fake clock, so pacing rules are checked without sleeping.
"""

from __future__ import annotations

import numpy as np
import pytest

from netvsc.errors import ConfigError, ProtocolError
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.frames import FrameBatch
from netvsc.host.nic import NetVsp, NicConfig
from netvsc.proto.nvsp import NvspState
from netvsc.vmbus.channel import Channel
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire import vmbus as vw

MAC = bytes.fromhex("020000aa0001")
PEER = bytes.fromhex("020000bb0002")
RING_HALF = 16 * 4096
RECV_SIZE = 64 * 4096  # 145 slots of 1806
SEND_SIZE = 16 * 6144
RECV_GPADL, SEND_GPADL = 0x1000, 0x1001
GUEST_MEM_BASE = 0x100000  # page number of the test's guest memory
HOST_TIDS = (nvsp.VF_ASSOCIATION_TRANSACTION_ID, nvsp.SWITCH_DATA_PATH_TRANSACTION_ID)


# ---------------------------------------------------------------------------------------------
# Stand-ins: guest memory and a loopback backend
# ---------------------------------------------------------------------------------------------


class ArrayMemory:
    """Guest memory: one array whose first page is page number GUEST_MEM_BASE."""

    def __init__(self, pages: int = 64) -> None:
        self.array = np.zeros(pages * 4096, dtype=np.uint8)

    def read(self, gpa: int, length: int) -> np.ndarray:
        start = gpa - GUEST_MEM_BASE * 4096
        if start < 0 or length <= 0 or start + length > self.array.shape[0]:
            raise ProtocolError(f"gpa {gpa:#x} +{length} not backed")
        return self.array[start : start + length].copy()

    def read_pages(self, byte_offset: int, byte_count: int, page_numbers) -> np.ndarray:
        out = bytearray()
        offset = byte_offset
        for page in page_numbers:
            chunk = min(4096 - offset, byte_count - len(out))
            out += self.read(page * 4096 + offset, chunk).tobytes()
            offset = 0
        return np.frombuffer(bytes(out), dtype=np.uint8)


class Loopback(Backend):
    """Frames sent come back as received; ``on_transmit`` lets a test act mid-drain."""

    name = "test-loopback"
    offloads = BackendOffloads()

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []
        self.on_transmit = None

    def transmit(self, batch: FrameBatch) -> int:
        frames = batch.frames()
        self.sent += frames
        self.pending += frames
        if self.on_transmit is not None:
            self.on_transmit()
        return batch.count

    def poll(self, batch: FrameBatch, limit: int) -> int:
        count = 0
        while self.pending and count < limit and not batch.full:
            batch.append(self.pending.pop(0))
            count += 1
        return count


class Resources:
    """NicResources over arrays; remembers the guest side of each channel."""

    def __init__(self, ring_half: int = RING_HALF) -> None:
        self.ring_half = ring_half
        self.recv_buffer = np.zeros(RECV_SIZE, dtype=np.uint8)
        self.send_buffer = np.zeros(SEND_SIZE, dtype=np.uint8)
        self.recv_gpadl, self.send_gpadl = RECV_GPADL, SEND_GPADL
        self.guest_memory = ArrayMemory()
        self.guest_channels: list[Channel] = []
        self.signals = 0
        self.offers: list[tuple[int, int]] = []  # (count, guest RX packets written before the offer)
        self.rescinds = 0
        self._primary = self._pair(0)

    def _pair(self, relid: int) -> Channel:
        area = np.zeros(2 * self.ring_half, dtype=np.uint8)

        def signal() -> None:
            self.signals += 1

        self.guest_channels.append(Channel(area, lambda: None, relid, role="guest"))
        return Channel(area, signal, relid, role="host")

    def primary_channel(self) -> Channel:
        return self._primary

    def offer_subchannels(self, count: int) -> list[Channel]:
        self.offers.append((count, self.guest_channels[0].rx_view.write_index))
        return [self._pair(len(self.guest_channels)) for _ in range(count)]

    def rescind_subchannels(self) -> None:
        self.rescinds += 1
        del self.guest_channels[1:]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------
# The test guest
# ---------------------------------------------------------------------------------------------


class Guest:
    """A minimal guest: sends NVSP/RNDIS through the guest-role Channels and reads what comes back."""

    def __init__(
        self,
        version=nvsp.NVSP_VERSION_61,
        *,
        ring_half: int = RING_HALF,
        config: NicConfig | None = None,
        **config_args,
    ) -> None:
        self.clock = Clock()
        self.resources = Resources(ring_half)
        self.backend = Loopback()
        self.config = config or NicConfig(MAC, **config_args)
        self.nic = NetVsp(self.config, self.resources, self.backend, clock=self.clock)
        self.version = version
        self.next_tid = 1
        self.next_rid = 1
        self.page_cursor = 0

    def channel(self, index: int = 0) -> Channel:
        return self.resources.guest_channels[index]

    def send(self, payload: bytes, *, completion: bool = True, channel: int = 0, service: bool = True) -> int:
        tid = self.next_tid
        self.next_tid += 1
        self.channel(channel).send_inband(payload, tid, completion)
        if service:
            self.nic.service(channel)
        return tid

    def packets(self, channel: int = 0) -> list:
        out = []
        while (packet := self.channel(channel).recv()) is not None:
            out.append(packet)
        return out

    def one(self, channel: int = 0):
        packets = self.packets(channel)
        assert len(packets) == 1, f"expected one packet, got {[(p[0], p[2]) for p in packets]}"
        return packets[0]

    def request(self, payload: bytes, **kw):
        """Send a request and return its completion payload (asserting it is the only packet)."""
        tid = self.send(payload, **kw)
        packet_type, _flags, transaction_id, _ext, body = self.one(kw.get("channel", 0))
        assert (packet_type, transaction_id) == (vw.PACKET_TYPE_COMPLETION, tid)
        return body

    def open_subchannels(self, count: int):
        """SUBCHANNEL request; returns the decoded completion (the send table that follows is read)."""
        tid = self.send(nvsp.encode_subchannel_request(count))
        packets = self.packets()
        assert packets[0][:3] == (vw.PACKET_TYPE_COMPLETION, 0, tid)
        return nvsp.decode_nvsp(packets[0][4], completion=True)

    def bring_up(self, *, capabilities=nvsp.NDIS_CONFIG_CAP_SRIOV, mtu=1514, send_buffer=True):
        body = self.request(nvsp.encode_init(self.version))
        assert nvsp.decode_nvsp(body).status == nvsp.NVSP_STATUS_SUCCESS
        if self.version >= nvsp.NVSP_VERSION_2:
            self.send(nvsp.encode_send_ndis_config(mtu, capabilities), completion=False)
        self.send(nvsp.encode_send_ndis_version(nvsp.ndis_version_for(self.version)), completion=False)
        assert self.packets() == [], "no completion was requested for NDIS config/version"
        recv = nvsp.decode_nvsp(self.request(nvsp.encode_send_receive_buffer(RECV_GPADL)))
        if send_buffer:
            send = nvsp.decode_nvsp(self.request(nvsp.encode_send_send_buffer(SEND_GPADL)))
            return recv, send
        return recv, None

    # -- RNDIS -----------------------------------------------------------------------------------

    def put_in_memory(self, data: bytes) -> tuple[int, int, tuple[int, ...]]:
        """Place ``data`` in guest memory (page aligned); returns a GPA range."""
        pages = (len(data) + 4095) // 4096
        if (self.page_cursor + pages) * 4096 > self.resources.guest_memory.array.shape[0]:
            self.page_cursor = 0
        start = self.page_cursor * 4096
        self.resources.guest_memory.array[start : start + len(data)] = np.frombuffer(data, np.uint8)
        numbers = tuple(GUEST_MEM_BASE + self.page_cursor + i for i in range(pages))
        self.page_cursor += pages
        return (len(data), 0, numbers)

    def send_rndis_gpa(self, message: bytes, *, channel_type=1, channel=0, tid=None, service=True) -> int:
        if tid is None:
            tid = self.next_tid
            self.next_tid += 1
        packet = vw.encode_gpa_direct_packet(
            [self.put_in_memory(message)], nvsp.encode_send_rndis_packet(channel_type), tid
        )
        self.channel(channel).send_raw(np.frombuffer(packet, np.uint8).copy())
        if service:
            self.nic.service(channel)
        return tid

    def send_rndis_section(
        self, messages: list[bytes], section: int = 0, *, channel=0, completion=True
    ) -> int:
        stream = rndis.aggregate_packet_msgs(messages, 8)
        start = section * 6144
        self.resources.send_buffer[start : start + len(stream)] = np.frombuffer(stream, np.uint8)
        return self.send(
            nvsp.encode_send_rndis_packet(0, section, len(stream)), channel=channel, completion=completion
        )

    def control(self, message: bytes):
        """Send an RNDIS control message; returns (VMBus completion body, [RNDIS responses])."""
        tid = self.send_rndis_gpa(message)
        completion, responses = None, []
        for packet in self.packets():
            if packet[0] == vw.PACKET_TYPE_COMPLETION and packet[2] == tid:
                completion = packet[4]
            elif packet[0] == vw.PACKET_TYPE_XFER_PAGES:
                responses.append(self.take_xfer(packet))
            else:
                responses.append(packet)
        return completion, responses

    def take_xfer(self, packet, channel: int = 0, *, complete: bool = True):
        """Decode a transfer-page packet: (channel_type, slot id, [RNDIS messages]); completes it."""
        decoded = decode(packet)
        body = nvsp.decode_nvsp(decoded.payload)
        messages = []
        for count, offset in decoded.ranges:
            assert count > 0 and offset + count <= RECV_SIZE, "host#14"
            messages.append(bytes(self.resources.recv_buffer[offset : offset + count]))
        if complete:
            self.channel(channel).send_completion(
                nvsp.encode_send_rndis_packet_complete(1), decoded.transaction_id
            )
            self.nic.service(channel)
        return body.channel_type, decoded.transaction_id, messages

    def rndis_reply(self, message: bytes):
        completion, responses = self.control(message)
        assert completion is not None and nvsp.decode_nvsp(completion).status == 1, "host#36"
        assert len(responses) == 1, responses
        channel_type, slot, (reply,) = responses[0]
        assert channel_type == 1 and 0 <= slot < 16, "host#36: control slot 0-15, channel_type 1"
        return rndis.decode_rndis(reply)

    def rid(self) -> int:
        self.next_rid += 1
        return self.next_rid

    def initialize(self):
        return self.rndis_reply(rndis.encode_initialize(self.rid()))

    def query(self, oid: int):
        return self.rndis_reply(rndis.encode_query(self.rid(), oid))

    def set(self, oid: int, value: bytes):
        return self.rndis_reply(rndis.encode_set(self.rid(), oid, value))


def decode(packet) -> vw.ChannelPacket:
    packet_type, flags, tid, extension, payload = packet
    header = 16 + len(extension)
    descriptor = vw.PACKET_DESCRIPTOR.encode(
        type=packet_type,
        data_offset8=header // 8,
        length8=(header + len(payload)) // 8,
        flags=flags,
        transaction_id=tid,
    )
    return vw.decode_channel_packet(descriptor + extension + payload)


def frame(dst: bytes = MAC, src: bytes = PEER, size: int = 60) -> bytes:
    return dst + src + b"\x08\x00" + bytes(range(256))[: size - 14]


def flow_frame(port: int) -> bytes:
    """An IPv4/TCP frame to MAC of one flow (ports vary), for RSS spreading."""
    ip = bytes.fromhex("450000280000000040060000") + bytes([198, 18, 0, 1, 198, 18, 1, port & 0xFF])
    tcp = port.to_bytes(2, "big") + b"\x00\x50" + bytes(8) + b"\x50\x00\x20\x00" + bytes(4)
    return MAC + PEER + b"\x08\x00" + ip + tcp


def ready_guest(version=nvsp.NVSP_VERSION_61, **config_args) -> Guest:
    guest = Guest(version, **config_args)
    guest.bring_up()
    guest.initialize()
    return guest


# ---------------------------------------------------------------------------------------------
# Negotiation and set-up
# ---------------------------------------------------------------------------------------------


def test_host_writes_nothing_before_init():
    """host#2: a fresh primary gets nothing until NVSP INIT, even when serviced and ticked."""
    guest = Guest()
    assert guest.nic.service(0) is False
    guest.nic.tick(guest.clock.now + 100)
    guest.nic.poll_backend()
    assert guest.channel().rx_view.write_index == 0


@pytest.mark.parametrize(
    "version",
    [
        nvsp.NVSP_VERSION_2,
        nvsp.NVSP_VERSION_4,
        nvsp.NVSP_VERSION_5,
        nvsp.NVSP_VERSION_6,
        nvsp.NVSP_VERSION_61,
    ],
)
def test_bring_up_for_each_version(version):
    """host#3 host#5 host#7 host#9: INIT_COMPLETE, RECV_BUF and SEND_BUF completions, sized by version."""
    guest = Guest(version)
    tid = guest.send(nvsp.encode_init(version))
    packet_type, _flags, transaction_id, _ext, body = guest.one()
    assert (packet_type, transaction_id) == (vw.PACKET_TYPE_COMPLETION, tid)
    assert len(body) == 32, "INIT_COMPLETE: 28 bytes, padded to 32 in the ring"
    init = nvsp.decode_nvsp(body)
    assert (init.type, init.negotiated_version, init.max_mdl_chain_length, init.status) == (
        2,
        0xFFFFFFFF,
        34,
        1,
    )
    guest.send(nvsp.encode_send_ndis_config(1514, 0), completion=False)
    guest.send(nvsp.encode_send_ndis_version(nvsp.ndis_version_for(version)), completion=False)
    body = guest.request(nvsp.encode_send_receive_buffer(RECV_GPADL))
    expected_size = 40 if version == nvsp.NVSP_VERSION_61 else 32
    assert len(body) == expected_size, "host#5"
    recv = nvsp.decode_nvsp(body)
    slots = RECV_SIZE // 1806
    assert (recv.type, recv.status, recv.num_sections, recv.section_offset) == (102, 1, 1, 0)
    assert (recv.sub_allocation_size, recv.num_sub_allocations, recv.section_end_offset) == (
        1806,
        slots,
        1806 * slots,
    )
    body = guest.request(nvsp.encode_send_send_buffer(SEND_GPADL))
    assert len(body) == expected_size
    send = nvsp.decode_nvsp(body)
    assert (send.type, send.status, send.section_size) == (105, 1, 6144)
    assert guest.nic.session.state is NvspState.READY


def test_unsupported_version_then_supported():
    """host#4: a version outside the configured set gets a non-success status; the next INIT works."""
    guest = Guest(nvsp_versions=(nvsp.NVSP_VERSION_5,))
    assert nvsp.decode_nvsp(guest.request(nvsp.encode_init(nvsp.NVSP_VERSION_61))).status != 1
    assert nvsp.decode_nvsp(guest.request(nvsp.encode_init(0x12345))).status != 1
    assert nvsp.decode_nvsp(guest.request(nvsp.encode_init(nvsp.NVSP_VERSION_5))).status == 1
    assert guest.nic.counters()["init_rejected"] == 2


def test_ndis_config_mtu_rule_and_completion_only_when_requested():
    """host#6: 1514..9216 is stored, anything else becomes 1514; an empty completion only on request."""
    guest = Guest(mtu=9000)
    guest.request(nvsp.encode_init(nvsp.NVSP_VERSION_61))
    body = guest.request(nvsp.encode_send_ndis_config(1000, 0))
    assert body == b"", "requested completion of NDIS_CONFIG has an empty body"
    guest.send(nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30), completion=False)
    assert guest.packets() == []
    guest.request(nvsp.encode_send_receive_buffer(RECV_GPADL))
    guest.request(nvsp.encode_send_send_buffer(SEND_GPADL))
    guest.initialize()
    size = guest.query(ndis.OID_GEN_MAXIMUM_FRAME_SIZE)
    assert int.from_bytes(size.info, "little") == 1500, "mtu 1000 was replaced by 1514"

    big = Guest(mtu=9000)
    big.bring_up(mtu=9014)
    big.initialize()
    assert int.from_bytes(big.query(ndis.OID_GEN_MAXIMUM_FRAME_SIZE).info, "little") == 9000
    assert big.nic.slot_size == 256 + 9014 + 36, "slot size follows the frame size (OpenVMM rule)"


def test_receive_buffer_before_ndis_config_is_a_fail_stop():
    """host#8 host#68: RECV_BUF before NDIS_CONFIG on v2+ never succeeds, and the channel goes silent."""
    guest = Guest()
    guest.request(nvsp.encode_init(nvsp.NVSP_VERSION_61))
    guest.send(nvsp.encode_send_receive_buffer(RECV_GPADL))
    assert guest.packets() == []
    guest.send(nvsp.encode_send_ndis_config(1514, 0))
    assert guest.packets() == [], "fail-stopped: no completions afterwards"
    assert guest.nic.counters()["fail_stops"] == 1


@pytest.mark.parametrize("message", ["ndis_version", "ndis_config", "recv_buf", "send_buf", "init"])
def test_duplicate_setup_messages_are_refused(message):
    """host#10 host#68: a second set-up message is refused by fail-stop; nothing more comes out."""
    guest = Guest()
    guest.bring_up()
    payload = {
        "ndis_version": nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30),
        "ndis_config": nvsp.encode_send_ndis_config(1514, 0),
        "recv_buf": nvsp.encode_send_receive_buffer(RECV_GPADL),
        "send_buf": nvsp.encode_send_send_buffer(SEND_GPADL),
        "init": nvsp.encode_init(nvsp.NVSP_VERSION_61),
    }[message]
    guest.send(payload)
    assert guest.packets() == []
    guest.send_rndis_gpa(rndis.encode_initialize(1))
    assert guest.packets() == [], "a fail-stopped channel answers nothing"
    assert guest.nic.counters()["fail_stopped_channels"] == 1


def test_unknown_gpadl_fail_stops_without_completion():
    """host#68: RECV_BUF naming an unknown GPADL gets no completion (host.md 1.6)."""
    guest = Guest()
    guest.request(nvsp.encode_init(nvsp.NVSP_VERSION_61))
    guest.send(nvsp.encode_send_ndis_config(1514, 0), completion=False)
    guest.send(nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30), completion=False)
    guest.send(nvsp.encode_send_receive_buffer(0x7777))
    assert guest.packets() == []
    assert guest.nic.session.state is NvspState.DEAD


def test_rndis_packet_before_send_buffer_is_the_first_ready_message():
    """host#11: with no SEND_BUF, the RNDIS INITIALIZE is processed in READY."""
    guest = Guest()
    guest.bring_up(send_buffer=False)
    reply = guest.initialize()
    assert reply.status == 0 and guest.nic.session.state is NvspState.READY
    assert guest.nic.counters()["ready_by_rndis_packet"] == 1


# ---------------------------------------------------------------------------------------------
# Transmit
# ---------------------------------------------------------------------------------------------


def test_aggregated_packets_from_a_section_are_sent_then_completed_once():
    """host#28 host#30 host#31: up to 8 messages read from index*6144; one completion after all."""
    guest = ready_guest()
    frames = [frame(PEER, MAC, 60 + i) for i in range(8)]
    tid = guest.send_rndis_section([rndis.encode_packet_msg(f) for f in frames], section=3)
    packets = guest.packets()
    assert [(p[0], p[2]) for p in packets] == [(vw.PACKET_TYPE_COMPLETION, tid)], "exactly one completion"
    body = nvsp.decode_nvsp(packets[0][4])
    assert (body.type, body.status) == (108, 1)
    assert guest.backend.sent == frames


def test_gpa_direct_data_packet_is_transmitted():
    """host#28 host#30: a PACKET_MSG in guest pages, no section, is sent and completed with success."""
    guest = ready_guest()
    data = frame(PEER, MAC, 1000)
    tid = guest.send_rndis_gpa(rndis.encode_packet_msg(data), channel_type=0)
    completion = guest.one()
    assert completion[2] == tid and nvsp.decode_nvsp(completion[4]).status == 1
    assert guest.backend.sent == [data]


@pytest.mark.parametrize("damage", ["data_length 0", "offset past end", "vc_handle", "ppi size 0"])
def test_malformed_data_is_completed_with_failure_and_later_packets_work(damage):
    """host#29: malformed RNDIS data gets {108, 2}; the next packet is processed normally."""
    guest = ready_guest()
    message = bytearray(
        rndis.encode_packet_msg(frame(PEER, MAC), [rndis.Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 5)])
    )
    if damage == "data_length 0":
        message[12:16] = bytes(4)
    elif damage == "offset past end":
        message[8:12] = (5000).to_bytes(4, "little")
    elif damage == "vc_handle":
        message[36:40] = (1).to_bytes(4, "little")
    else:
        message[44:48] = bytes(4)
    tid = guest.send_rndis_section([bytes(message)])
    completion = guest.one()
    assert completion[2] == tid and nvsp.decode_nvsp(completion[4]).status == 2
    assert guest.backend.sent == []
    guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))], section=1)
    assert nvsp.decode_nvsp(guest.one()[4]).status == 1
    assert len(guest.backend.sent) == 1


def test_section_outside_the_send_buffer_fail_stops():
    """host#68: a section index past the send buffer is a fail-stop (host.md 1.6)."""
    guest = ready_guest()
    guest.send(nvsp.encode_send_rndis_packet(0, SEND_SIZE // 6144, 100))
    assert guest.packets() == [] and guest.nic.session.state is NvspState.DEAD


def test_section_bytes_then_gpa_ranges_form_one_stream():
    """host#30: the RNDIS header in a send-buffer section, the frame in guest pages (partial copy)."""
    guest = ready_guest()
    data = frame(PEER, MAC, 300)
    message = rndis.encode_packet_msg(data)
    guest.resources.send_buffer[2 * 6144 : 2 * 6144 + 44] = np.frombuffer(message[:44], np.uint8)
    gpa = guest.put_in_memory(message[44:])
    packet = vw.encode_gpa_direct_packet([gpa], nvsp.encode_send_rndis_packet(0, 2, 44), 91)
    guest.channel().send_raw(np.frombuffer(packet, np.uint8).copy())
    guest.nic.service(0)
    completion = guest.one()
    assert completion[2] == 91 and nvsp.decode_nvsp(completion[4]).status == 1
    assert guest.backend.sent == [data]


def test_too_many_gpa_ranges_fail_the_packet():
    """host#29 (DESIGN.md §7.6): more than 32 GPA ranges gets a FAILURE completion, counted."""
    guest = ready_guest()
    message = rndis.encode_packet_msg(frame(PEER, MAC, 66))
    ranges = [(2, 0, (GUEST_MEM_BASE,))] * 33
    packet = vw.encode_gpa_direct_packet(ranges, nvsp.encode_send_rndis_packet(0), 77)
    guest.put_in_memory(message)
    guest.channel().send_raw(np.frombuffer(packet, np.uint8).copy())
    guest.nic.service(0)
    completion = guest.one()
    assert completion[2] == 77 and nvsp.decode_nvsp(completion[4]).status == 2
    assert guest.nic.counters()["tx_too_many_gpa_ranges"] == 1


# ---------------------------------------------------------------------------------------------
# RNDIS control
# ---------------------------------------------------------------------------------------------


def test_initialize_reply_and_control_transport():
    """host#36 host#37: the VMBus packet completes at once; INITIALIZE_CMPLT has OpenVMM's values."""
    guest = Guest()
    guest.bring_up()
    reply = guest.initialize()
    assert (reply.status, reply.major_version, reply.minor_version, reply.device_flags, reply.medium) == (
        0,
        1,
        0,
        1,
        0,
    )
    assert (reply.max_packets_per_message, reply.max_transfer_size, reply.packet_alignment_factor) == (
        8,
        0xEFFFFFFF,
        3,
    )


def test_second_initialize_halt_and_keepalive():
    """host#38 host#39 host#40: KEEPALIVE answered, HALT silent, a second INITIALIZE fail-stops."""
    guest = ready_guest()
    keepalive = guest.rndis_reply(rndis.encode_keepalive(77))
    assert (keepalive.type, keepalive.request_id, keepalive.status) == (
        rndis.RNDIS_MSG_KEEPALIVE_CMPLT,
        77,
        0,
    )
    completion, responses = guest.control(rndis.encode_halt(78))
    assert nvsp.decode_nvsp(completion).status == 1 and responses == [], "HALT: no RNDIS response"
    completion, responses = guest.control(rndis.encode_initialize(79))
    assert completion is not None and nvsp.decode_nvsp(completion).status == 1, "already completed"
    assert responses == [] and guest.nic.session.state is NvspState.DEAD


def test_reset_returns_to_post_initialize_state():
    """DESIGN.md §7.11 (host#25): RESET succeeds, the filter goes back to 0 and RSS off."""
    guest = ready_guest()
    guest.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, (9).to_bytes(4, "little"))
    reply = guest.rndis_reply(rndis.encode_reset())
    assert reply.type == rndis.RNDIS_MSG_RESET_CMPLT and reply.status == 0
    assert int.from_bytes(guest.query(ndis.OID_GEN_CURRENT_PACKET_FILTER).info, "little") == 0


def test_oid_queries_return_the_documented_values():
    """host#41: info offset 16 and the values of host.md 4.3."""
    guest = ready_guest(max_queues=8)

    def value(oid: int) -> bytes:
        reply = guest.query(oid)
        assert reply.status == 0 and reply.info_buffer_offset == 16, hex(oid)
        return reply.info

    def u32(oid: int) -> int:
        return int.from_bytes(value(oid), "little")

    assert value(ndis.OID_802_3_PERMANENT_ADDRESS) == MAC == value(ndis.OID_802_3_CURRENT_ADDRESS)
    assert u32(ndis.OID_GEN_MAXIMUM_FRAME_SIZE) == 1500
    assert u32(ndis.OID_GEN_LINK_SPEED) == 100_000_000
    assert u32(ndis.OID_GEN_MEDIA_CONNECT_STATUS) == 0
    assert u32(ndis.OID_GEN_VENDOR_ID) == 0x155D
    assert u32(ndis.OID_GEN_MAC_OPTIONS) == 0x24D
    hardware = value(ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES)
    assert len(hardware) == 156
    caps = ndis.decode_offload_capabilities(hardware)
    assert (caps.header_type, caps.header_revision) == (0xA7, 3)
    assert caps.ipv4_tx_flags & 0x014 == 0x014 and caps.ipv6_tx_flags & 0x015 == 0x015
    assert caps.lso_v2_ipv6_options == 0x5 and caps.lso_v2_ipv4_max_size == 0xF53C
    rss = value(ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES)
    assert len(rss) == 18
    decoded = ndis.decode_rss_capabilities(rss)
    assert decoded.number_of_indirection_table_entries == 128 and decoded.number_of_receive_queues == 8
    supported = np.frombuffer(value(ndis.OID_GEN_SUPPORTED_LIST), "<u4")
    assert ndis.OID_GEN_LINK_SPEED in supported and ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS in supported


def test_supported_list_follows_the_ndis_version():
    """host#41 (host.md 4.3): no RSS OIDs before NDIS 6.30; an NDIS major other than 5/6 is BAD_VERSION."""
    old = Guest(nvsp.NVSP_VERSION_4)
    old.bring_up()
    old.initialize()
    listed = np.frombuffer(old.query(ndis.OID_GEN_SUPPORTED_LIST).info, "<u4")
    assert ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES not in listed and ndis.OID_GEN_LINK_SPEED in listed
    odd = Guest()
    odd.request(nvsp.encode_init(nvsp.NVSP_VERSION_61))
    odd.send(nvsp.encode_send_ndis_config(1514, 0), completion=False)
    odd.send(nvsp.encode_send_ndis_version(0x00070000), completion=False)
    odd.request(nvsp.encode_send_receive_buffer(RECV_GPADL))
    odd.initialize()
    assert odd.query(ndis.OID_GEN_SUPPORTED_LIST).status == rndis.RNDIS_STATUS_BAD_VERSION


def test_unknown_oid_and_oid_query_ex_are_not_supported_and_the_channel_keeps_working():
    """host#42 host#68: unknown OIDs return 0xC00000BB; OID_QUERY_EX is refused the same way."""
    guest = ready_guest()
    assert guest.query(0x00FF00FF).status == rndis.RNDIS_STATUS_NOT_SUPPORTED
    assert guest.query(0x00FF00FF).info_buffer_length == 0
    assert guest.set(0x00FF00FF, b"\0" * 4).status == rndis.RNDIS_STATUS_NOT_SUPPORTED
    body = nvsp.decode_nvsp(guest.request(nvsp.encode_oid_query_ex(0x10101)))
    assert (body.type, body.status, body.bytes) == (132, rndis.RNDIS_STATUS_NOT_SUPPORTED, 0)
    assert guest.rndis_reply(rndis.encode_keepalive(5)).status == 0


def test_offload_parameters_set_then_indication_and_lso_v1_refused():
    """host#43 host#44: a valid set succeeds and is followed by TASK_OFFLOAD_CURRENT_CONFIG."""
    guest = ready_guest()
    params = ndis.encode_offload_parameters(
        2, tcp4_checksum=ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED, lso_v2_ipv4=ndis.OFFLOAD_LSO_ENABLED
    )
    completion, responses = guest.control(rndis.encode_set(40, ndis.OID_TCP_OFFLOAD_PARAMETERS, params))
    messages = [rndis.decode_rndis(r[2][0]) for r in responses]
    assert [m.type for m in messages] == [rndis.RNDIS_MSG_SET_CMPLT, rndis.RNDIS_MSG_INDICATE_STATUS]
    assert messages[0].status == 0
    assert messages[1].status == rndis.RNDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG
    current = ndis.decode_offload_capabilities(messages[1].status_buffer)
    assert current.ipv4_tx_flags & ndis.CHECKSUM_CAP_IPV4_TCP
    lso_v1 = ndis.encode_offload_parameters(1, lso_v1=ndis.OFFLOAD_LSO_ENABLED)
    assert guest.set(ndis.OID_TCP_OFFLOAD_PARAMETERS, lso_v1).status == rndis.RNDIS_STATUS_NOT_SUPPORTED
    bad = bytearray(params)
    bad[0] = 0x81
    assert guest.set(ndis.OID_TCP_OFFLOAD_PARAMETERS, bytes(bad)).status == rndis.RNDIS_STATUS_INVALID_DATA


@pytest.mark.parametrize("damage", ["key 20", "table 0", "table 6 bytes", "entry too big"])
def test_invalid_rss_parameters_return_invalid_data(damage):
    """host#45: bad key size, table size 0 or not a multiple of 4, or an entry >= max queues."""
    guest = ready_guest(max_queues=4)
    params = bytearray(
        ndis.encode_rss_parameters(ndis.RSS_HASH_INFORMATION_LINUX, [0, 1] * 64, ndis.TOEPLITZ_KEY_LINUX)
    )
    if damage == "key 20":
        params[20:22] = (20).to_bytes(2, "little")
    elif damage == "table 0":
        params[12:14] = bytes(2)
    elif damage == "table 6 bytes":
        params[12:14] = (6).to_bytes(2, "little")
    else:
        params[40:44] = (4).to_bytes(4, "little")
    assert (
        guest.set(ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, bytes(params)).status
        == rndis.RNDIS_STATUS_INVALID_DATA
    )


def test_valid_rss_then_disable_puts_traffic_on_channel_zero():
    """host#46 host#47 host#48: RSS over 4 channels spreads flows; DISABLE sends all to channel 0."""
    guest = ready_guest(max_queues=4)
    completion = guest.open_subchannels(3)
    assert (completion.status, completion.num_subchannels) == (1, 3)
    table = [i % 4 for i in range(128)]
    assert (
        guest.set(
            ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS,
            ndis.encode_rss_parameters(ndis.RSS_HASH_INFORMATION_LINUX, table, ndis.TOEPLITZ_KEY_LINUX),
        ).status
        == 0
    )
    assert guest.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, (1).to_bytes(4, "little")).status == 0

    def receive_flows() -> set[int]:
        for port in range(64):
            guest.backend.pending.append(flow_frame(port))
        guest.nic.poll_backend()
        used = set()
        for index in range(4):
            for packet in guest.packets(index):
                assert packet[0] == vw.PACKET_TYPE_XFER_PAGES
                used.add(index)
                guest.channel(index).send_completion(nvsp.encode_send_rndis_packet_complete(1), packet[2])
            guest.nic.service(index)
        return used

    assert len(receive_flows()) > 1, "RSS spreads flows over several channels"
    disable = ndis.encode_rss_parameters(
        ndis.RSS_HASH_INFORMATION_LINUX, table, ndis.TOEPLITZ_KEY_LINUX, flags=ndis.RSS_PARAM_FLAG_DISABLE_RSS
    )
    assert guest.set(ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, disable).status == 0
    assert receive_flows() == {0}, "host#46: after DISABLE everything arrives on channel 0"


def test_control_message_on_a_subchannel_fails():
    """host#68 (host.md 1.6): RNDIS control on a subchannel is completed with FAILURE."""
    guest = ready_guest(max_queues=2)
    guest.open_subchannels(1)
    tid = guest.send_rndis_gpa(rndis.encode_keepalive(3), channel=1)
    completion = guest.one(1)
    assert completion[2] == tid and nvsp.decode_nvsp(completion[4]).status == 2


# ---------------------------------------------------------------------------------------------
# Receive completions, subchannels, fail-stop isolation
# ---------------------------------------------------------------------------------------------


def test_unknown_receive_completion_is_counted_not_released():
    """host#23: a completion for an id that is not outstanding releases nothing and is counted."""
    guest = ready_guest()
    guest.channel().send_completion(nvsp.encode_send_rndis_packet_complete(1), 99)
    guest.nic.service(0)
    assert guest.nic.counters()["unknown_receive_completions"] == 1
    assert guest.rndis_reply(rndis.encode_keepalive(4)).status == 0, "the channel keeps working"


def test_subchannel_grant_offer_order_and_send_table():
    """host#35 host#47 host#48 host#50: {133,1,n} in 40 bytes, offers after the completion, the table."""
    guest = ready_guest(max_queues=4)
    tid = guest.send(nvsp.encode_subchannel_request(3))
    packets = guest.packets()
    assert packets[0][0] == vw.PACKET_TYPE_COMPLETION and packets[0][2] == tid
    assert len(packets[0][4]) == 40
    body = nvsp.decode_nvsp(packets[0][4], completion=True)
    assert (body.type, body.status, body.num_subchannels) == (133, 1, 3)
    count, written_before_offer = guest.resources.offers[0]
    assert count == 3 and written_before_offer > 0, "the completion was in the ring before the offers"
    packet_type, flags, transaction_id, _ext, payload = packets[1]
    assert (packet_type, flags, transaction_id) == (vw.PACKET_TYPE_INBAND, 0, 0), "no completion requested"
    table = nvsp.decode_send_indirection_table(payload)
    assert table.count == 16 and table.offset == 12 and table.entries == tuple(i % 4 for i in range(16))
    assert len(guest.nic.channels) == 4
    # A data packet on a subchannel is completed on that subchannel (host#35: its hash PPI is ignored).
    message = rndis.encode_packet_msg(frame(PEER, MAC), [rndis.Ppi.u32(rndis.PPI_TYPE_HASH_VALUE, 0)])
    tid = guest.send_rndis_section([message], section=2, channel=2)
    assert guest.one(2)[2] == tid and guest.packets(0) == []


@pytest.mark.parametrize(
    ("asked", "max_queues", "fault", "granted"),
    [
        (4, 4, None, 0),
        (70, 64, None, 0),
        (3, 4, 1, 1),
    ],
)
def test_subchannel_refusals_and_fewer_granted(asked, max_queues, fault, granted):
    """host#49: n >= max_queues gets {133, 2, 0}; the grant fault hands out fewer."""
    guest = ready_guest(max_queues=max_queues)
    if fault is not None:
        guest.nic.control("fault", kind="subchannel_grant", count=fault)
    tid = guest.send(nvsp.encode_subchannel_request(asked))
    packets = guest.packets()
    assert packets[0][2] == tid
    body = nvsp.decode_nvsp(packets[0][4], completion=True)
    assert body.num_subchannels == granted
    assert body.status == (1 if granted else 2)
    assert len(guest.nic.channels) == 1 + granted


def test_subchannel_refused_when_receive_slots_are_too_few():
    """host#49: (slots - 16) / (n + 1) < 1 refuses the request."""
    guest = Guest(max_queues=64, slot_size=8192)  # 32 slots: 16 data slots
    guest.bring_up()
    body = nvsp.decode_nvsp(guest.request(nvsp.encode_subchannel_request(20)), completion=True)
    assert (body.status, body.num_subchannels) == (2, 0)


def test_fail_stop_on_a_subchannel_leaves_the_others_running():
    """host#68: a violation on channel 1 silences it; the primary and channel 2 continue."""
    guest = ready_guest(max_queues=3)
    guest.open_subchannels(2)
    guest.send(nvsp.encode_send_ndis_version(nvsp.NDIS_VERSION_6_30), channel=1)
    tid = guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))], channel=1)
    assert guest.packets(1) == [], f"channel 1 is dead (tid {tid} not completed)"
    tid = guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))], section=1, channel=2)
    assert guest.one(2)[2] == tid
    assert guest.rndis_reply(rndis.encode_keepalive(9)).status == 0
    assert guest.nic.counters()["fail_stopped_channels"] == 1
    # Receive: frames RSS steers to the dead channel are dropped, the others still arrive.
    table = [1, 2] * 64
    rss = ndis.encode_rss_parameters(ndis.RSS_HASH_INFORMATION_LINUX, table, ndis.TOEPLITZ_KEY_LINUX)
    assert guest.set(ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, rss).status == 0
    assert guest.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, (1).to_bytes(4, "little")).status == 0
    guest.backend.pending[:] = [flow_frame(port) for port in range(32)]
    guest.nic.poll_backend()
    assert guest.packets(1) == []
    received = len(guest.packets(2))
    dropped = guest.nic.counters()["rx_dropped_ring_full"]
    assert received > 0 and dropped > 0


# ---------------------------------------------------------------------------------------------
# Link and VF
# ---------------------------------------------------------------------------------------------


def indications(guest: Guest) -> list[int]:
    statuses = []
    for packet in guest.packets():
        if packet[0] == vw.PACKET_TYPE_XFER_PAGES:
            _type, _slot, (message,) = guest.take_xfer(packet)
            statuses.append(rndis.decode_rndis(message).status)
    return statuses


def test_link_changes_are_indicated_and_paced():
    """host#51 host#52: DISCONNECT then CONNECT, at least link_change_delay_s apart; the query follows."""
    guest = ready_guest()
    guest.nic.control("link", up=False)
    assert indications(guest) == [rndis.RNDIS_STATUS_MEDIA_DISCONNECT]
    assert int.from_bytes(guest.query(ndis.OID_GEN_MEDIA_CONNECT_STATUS).info, "little") == 1
    guest.clock.now += 1
    guest.nic.control("link", up=True)
    guest.nic.tick(guest.clock.now)
    assert indications(guest) == [], "too soon after the last transition"
    guest.clock.now += 3.9
    guest.nic.tick(guest.clock.now)
    assert indications(guest) == []
    guest.clock.now += 0.2
    guest.nic.tick(guest.clock.now)
    assert indications(guest) == [rndis.RNDIS_STATUS_MEDIA_CONNECT]
    guest.clock.now += 5
    guest.nic.control("link", flap=True)
    assert indications(guest) == [rndis.RNDIS_STATUS_MEDIA_DISCONNECT], "a flap: the opposite at once"
    guest.clock.now += 5
    guest.nic.tick(guest.clock.now)
    assert indications(guest) == [rndis.RNDIS_STATUS_MEDIA_CONNECT], "and the original state later"
    backend_down = guest.backend
    backend_down.link_up = False
    guest.clock.now += 5
    guest.nic.poll_backend()
    guest.nic.tick(guest.clock.now)
    assert indications(guest) == [rndis.RNDIS_STATUS_MEDIA_DISCONNECT], "a backend carrier change too"


def test_vf_association_after_initialize_and_revoke_order():
    """host#53 host#54 host#55 host#56 host#57 host#58."""
    guest = Guest(vf_offer_delay_s=1.0)
    guest.bring_up(capabilities=nvsp.NDIS_CONFIG_CAP_SRIOV)
    guest.nic.control("vf_offer", serial=42, netdev="vf0")
    assert guest.packets() == [], "no association before RNDIS INITIALIZE"
    completion, responses = guest.control(rndis.encode_initialize(2))
    assert responses[0][0] == 1, "INITIALIZE_CMPLT first"
    association = responses[1]
    assert association[0] == vw.PACKET_TYPE_INBAND and association[2] == nvsp.VF_ASSOCIATION_TRANSACTION_ID
    assert association[1] & vw.PACKET_FLAG_COMPLETION_REQUESTED
    message = nvsp.decode_nvsp(association[4])
    assert (message.type, message.allocated, message.serial) == (128, 1, 42)
    assert len(association[4]) == 40
    # host#55: never waits for the completion.
    assert guest.rndis_reply(rndis.encode_keepalive(3)).status == 0
    assert not guest.nic.vf_visible, "host#54: not yet"
    body = guest.request(nvsp.encode_switch_data_path(nvsp.DATA_PATH_VF))
    assert body == b"" and guest.nic.data_path == nvsp.DATA_PATH_SYNTHETIC, "no VF device yet: no switch"
    guest.clock.now += 1.0
    assert guest.nic.vf_visible
    body = guest.request(nvsp.encode_switch_data_path(nvsp.DATA_PATH_VF))
    assert body == b"" and guest.nic.data_path == nvsp.DATA_PATH_VF, "host#56: switched, then completed"
    guest.send(nvsp.encode_switch_data_path(nvsp.DATA_PATH_VF), completion=False)
    assert guest.packets() == [], "host#57: no completion without the flag"
    # A late completion of the association is accepted whatever it holds.
    guest.channel().send_completion(b"", nvsp.VF_ASSOCIATION_TRANSACTION_ID)
    guest.nic.service(0)
    assert guest.nic.session.state is NvspState.READY
    guest.nic.control("vf_revoke")
    assert guest.nic.data_path == nvsp.DATA_PATH_SYNTHETIC
    notice, disassociation = guest.packets()
    assert notice[2] == nvsp.SWITCH_DATA_PATH_TRANSACTION_ID
    assert nvsp.decode_nvsp(notice[4]).active_data_path == 0
    message = nvsp.decode_nvsp(disassociation[4])
    assert disassociation[2] == nvsp.VF_ASSOCIATION_TRANSACTION_ID and (
        message.allocated,
        message.serial,
    ) == (0, 42)


@pytest.mark.parametrize(
    ("version", "capabilities"),
    [(nvsp.NVSP_VERSION_2, nvsp.NDIS_CONFIG_CAP_SRIOV), (nvsp.NVSP_VERSION_61, 0)],
)
def test_no_vf_association_without_nvsp4_and_sriov(version, capabilities):
    """host#53: the association needs NVSP >= 4 and the sriov capability."""
    guest = Guest(version)
    guest.bring_up(capabilities=capabilities)
    guest.nic.control("vf_offer", serial=1, netdev="vf0")
    guest.initialize()
    assert guest.packets() == []


# ---------------------------------------------------------------------------------------------
# Signalling, revoke, close
# ---------------------------------------------------------------------------------------------


def test_service_masks_while_draining_and_rechecks_after_unmasking():
    """host#62: the mask is 1 while draining; a write that lands meanwhile is processed too."""
    guest = ready_guest()
    seen_masks = []

    def during_transmit() -> None:
        seen_masks.append(guest.channel().tx_view.interrupt_mask)
        if len(seen_masks) == 1:
            # The guest writes again while the host drains: the mask tells it not to signal.
            message = rndis.encode_packet_msg(frame(PEER, MAC, 70))
            guest.resources.send_buffer[6144 : 6144 + len(message)] = np.frombuffer(message, np.uint8)
            guest.channel().send_inband(nvsp.encode_send_rndis_packet(0, 1, len(message)), 555, True)

    guest.backend.on_transmit = during_transmit
    guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))])
    assert seen_masks[0] == 1, "masked while draining"
    assert len(guest.backend.sent) == 2, "the write made during the drain was processed in the same call"
    assert guest.channel().tx_view.interrupt_mask == 0, "unmasked when idle"
    assert 555 in [p[2] for p in guest.packets()]


def test_completions_wait_in_order_when_the_guest_ring_is_full():
    """host#28 host#61 (host.md 3.5, 8): a full guest ring keeps completions queued in order, with
    pending-send-size set; they all arrive once the guest reads."""
    guest = Guest(ring_half=2 * 4096)
    guest.bring_up()
    guest.initialize()
    message = rndis.encode_packet_msg(frame(PEER, MAC))
    tids = [guest.send_rndis_section([message], section=i % 16) for i in range(150)]
    assert guest.nic.counters()["ring_full"] > 0
    assert guest.channel().rx_view.pending_send_size > 0, "the host asked to be signalled"
    seen = []
    for _ in range(10):
        seen += [p[2] for p in guest.packets()]
        guest.nic.tick(guest.clock.now)
    assert seen == tids, "every completion exactly once, in order"
    assert guest.channel().rx_view.pending_send_size == 0
    assert len(guest.backend.sent) == 150


def test_revoke_ends_processing_without_completion():
    """host#64: REVOKE_RECEIVE_BUFFER gets no completion; the channel is not processed any more."""
    guest = ready_guest()
    guest.send(nvsp.encode_revoke_receive_buffer())
    assert guest.packets() == []
    guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))])
    assert guest.packets() == [] and guest.backend.sent == []
    assert guest.nic.counters()["buffer_revokes"] == 1


def test_close_rescinds_subchannels_and_restarts_at_version():
    """host#66: closing the primary drops subchannels and state; the next open starts at VERSION."""
    guest = ready_guest(max_queues=3)
    guest.open_subchannels(2)
    guest.nic.channel_closed()
    assert guest.resources.rescinds == 1 and len(guest.nic.channels) == 1
    assert guest.nic.session.state is NvspState.VERSION
    guest.bring_up()
    assert guest.initialize().status == 0, "a fresh RNDIS INITIALIZE is accepted after reopen"


# ---------------------------------------------------------------------------------------------
# Faults and delivery
# ---------------------------------------------------------------------------------------------


def test_completion_faults_drop_delay_and_reorder():
    """host#28 (faults): dropped, delayed and reordered completions, all by transaction id."""
    guest = ready_guest()
    message = rndis.encode_packet_msg(frame(PEER, MAC))
    guest.nic.control("fault", kind="drop_completions", count=1)
    guest.send_rndis_section([message])
    assert guest.packets() == []
    guest.nic.control("fault", name="delay_completions", value=2.0)
    tid = guest.send_rndis_section([message])
    assert guest.packets() == []
    guest.clock.now += 2.0
    guest.nic.tick(guest.clock.now)
    assert [p[2] for p in guest.packets()] == [tid]
    guest.nic.control("fault", kind="delay_completions", seconds=0)
    guest.nic.control("fault", kind="reorder_completions", count=3)
    tids = [guest.send_rndis_section([message], section=i) for i in range(3)]
    assert [p[2] for p in guest.packets()] == tids[::-1]
    assert len(guest.backend.sent) == 5


def test_control_reply_delay_never_and_injected_message_before_reply():
    """host#36 (faults): a control reply can be held forever; an unsolicited message can precede a reply."""
    guest = ready_guest()
    guest.nic.control("fault", kind="inject", message="indirection_table")
    completion, responses = guest.control(rndis.encode_keepalive(11))
    assert nvsp.decode_nvsp(completion).status == 1
    injected = [r for r in responses if isinstance(r, tuple) and len(r) == 5]
    assert (
        len(injected) == 1 and nvsp.peek_message_type(injected[0][4]) == nvsp.NVSP_MSG_SEND_INDIRECTION_TABLE
    )
    assert [r[0] for r in responses if len(r) == 3] == [1], "the KEEPALIVE reply still follows"
    guest2 = ready_guest()
    guest2.nic.control("fault", kind="inject", message="unknown")
    tid = guest2.send_rndis_gpa(rndis.encode_keepalive(12))
    packets = guest2.packets()
    assert packets[0][0] == vw.PACKET_TYPE_INBAND and nvsp.peek_message_type(packets[0][4]) == 0xFFFF
    assert packets[1][2] == tid
    guest2.nic.control("fault", kind="delay_control", seconds="never")
    completion, responses = guest2.control(rndis.encode_keepalive(13))
    assert completion is not None and responses == []
    guest2.clock.now += 3600
    guest2.nic.tick(guest2.clock.now)
    assert guest2.packets() == []


def test_unanswered_control_queue_overflow_fails_the_packet():
    """host#36 (host.md 1.6): past 100 KiB of unanswered control messages the next packet fails."""
    guest = ready_guest()
    guest.nic.control("fault", kind="delay_control", seconds="never")
    query = rndis.encode_query(5, ndis.OID_GEN_SUPPORTED_LIST)
    statuses = []
    for _ in range(40):  # each SUPPORTED_LIST answer is ~150 bytes; 40 queries stay well below
        guest.send_rndis_gpa(query)
        statuses += [nvsp.decode_nvsp(p[4]).status for p in guest.packets()]
    assert statuses == [1] * 40
    big = rndis.encode_set(6, ndis.OID_GEN_RNDIS_CONFIG_PARAMETER, bytes(100 * 1024))
    tid = guest.send_rndis_gpa(big)
    completion = guest.one()
    assert completion[2] == tid and nvsp.decode_nvsp(completion[4]).status == 2
    assert guest.nic.counters()["control_queue_overflow"] == 1


def test_stalled_ring_is_not_serviced_until_resumed():
    """host#62 (fault): a stalled channel processes nothing; resuming drains what waited."""
    guest = ready_guest()
    guest.nic.control("fault", kind="stall", channel=0, on=True)
    tid = guest.send_rndis_section([rndis.encode_packet_msg(frame(PEER, MAC))])
    assert guest.packets() == []
    guest.nic.control("fault", kind="stall", channel=0, on=False)
    guest.nic.service(0)
    assert [p[2] for p in guest.packets()] == [tid]


def test_loopback_delivery_respects_the_filter_and_corruption_fault_reaches_the_receive_path():
    """host#25 (integration): filter 0 delivers nothing; a set filter delivers; corrupt arms rxpath."""
    guest = ready_guest()
    guest.send_rndis_section([rndis.encode_packet_msg(frame(MAC, PEER))])
    guest.packets()
    guest.nic.poll_backend()
    assert guest.packets() == [], "filter 0"
    guest.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, (ndis.NDIS_PACKET_TYPE_DIRECTED).to_bytes(4, "little"))
    guest.backend.pending.append(frame(MAC, PEER, 100))
    guest.nic.poll_backend()
    channel_type, slot, (message,) = guest.take_xfer(guest.one())
    assert channel_type == 0 and slot >= 16
    assert rndis.decode_packet_msg(message).frame == frame(MAC, PEER, 100)
    guest.nic.control("fault", kind="corrupt", target="transfer_page")
    guest.backend.pending.append(frame(MAC, PEER, 100))
    guest.nic.poll_backend()
    bad = decode(guest.one())
    assert bad.ranges[0].byte_offset >= RECV_SIZE, "the next data packet's range points past the buffer"


def test_bad_configuration_and_commands_name_the_parameter():
    """Config errors name parameter, value and what is accepted."""
    with pytest.raises(ConfigError, match="mtu"):
        NicConfig(MAC, mtu=20)
    with pytest.raises(ConfigError, match="mac"):
        NicConfig(b"\x01" * 6)
    with pytest.raises(ConfigError, match="nvsp_versions"):
        NicConfig(MAC, nvsp_versions=(7,))
    assert NicConfig("02:00:00:00:00:09").mac == bytes.fromhex("020000000009")
    guest = Guest()
    with pytest.raises(ConfigError, match="fault kind"):
        guest.nic.control("fault", kind="explode")
    with pytest.raises(ConfigError, match="command"):
        guest.nic.control("reboot")
    counters = guest.nic.control("counters")
    assert counters["channels"] == 1 and counters["packet_filter"] == 0
