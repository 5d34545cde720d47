"""The test plays the host on one subchannel of an open port, for what no host fault produces.

``ChannelStandIn`` stalls the emulated host on that channel (``fault stall``: the host stops
reading the guest's ring there) and, with the ``null`` backend, the host has nothing to deliver
on it either, so the test is the only peer of both rings: it writes transfer-page packets (and
completions) into the guest's RX ring with a ``RingWriter``, puts RNDIS messages into the
receive buffer's last ``AREA`` bytes (the host only uses slots from the front while no data
flows), and reads what the driver wrote to its TX ring with a ``RingReader``: receive
completions, and data sends decoded from chimney sections or guest memory (GPA ranges), each
RNDIS message with its PPIs. Both endpoints start from the ring indices in the shared headers,
as ``Channel(role="host")`` does when the host opens a channel.

The channel stays the test's until the port closes; ``close`` lifts the stall (the next session
offers fresh subchannels).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from host_process import HostProcess
from netvsc.host.guestmem import GuestMemory
from netvsc.pmd.port import NetvscPort
from netvsc.vmbus.ring import RingReader, RingWriter
from netvsc.wire import nvsp, rndis
from netvsc.wire import vmbus as vmbus_wire

AREA = 256 * 1024  # the end of the receive buffer, where the stand-in puts its messages


def nic_index(host: HostProcess, port: NetvscPort) -> int:
    """The host's NIC index of ``port`` (device lists and NIC indices are ordered differently)."""
    for index, nic in enumerate(host.ctl("status")["nics"]):
        if port.device_name in (nic.get("guid"), nic.get("device")):
            return index
    raise AssertionError(f"{port.device_name} not among the host's NICs: {host.ctl('status')}")


@dataclass
class SentMessage:
    """One RNDIS packet message the driver sent, as the host would parse it."""

    transaction_id: int
    how: str  # "chimney" or "gpa"
    section: int  # chimney section (-1 for GPA)
    raw: bytes  # the message bytes, padding included (its length field)
    message: object  # rndis.PacketMessage (or the exception decoding raised)
    ranges: list[tuple[int, int]] = field(default_factory=list)  # GPA (byte_count, byte_offset) ranges

    @property
    def frame(self) -> bytes:
        return self.message.frame

    def ppi(self, ppi_type: int) -> int | None:
        element = self.message.ppi(ppi_type)
        return None if element is None else element.value


class ChannelStandIn:
    def __init__(self, host: HostProcess, port: NetvscPort, channel_index: int) -> None:
        if channel_index < 1:
            raise ValueError("the stand-in takes a subchannel (the primary carries control traffic)")
        self.host = host
        self.port = port
        self.index = channel_index
        self.nic = nic_index(host, port)
        host.ctl("fault", name="stall", value=channel_index, nic=self.nic)
        channel = port.channels[channel_index]
        self.to_guest = RingWriter(channel.rx_view)
        self.from_guest = RingReader(channel.tx_view)
        self.recv_buffer = port.dev.recv_buffer
        self.send_buffer = port.dev.send_buffer
        self.section_size = int(port.nvs.chimney_section_size)
        self.area_start = (self.recv_buffer.shape[0] - AREA) & ~4095
        self._cursor = self.area_start
        self.guest_memory = GuestMemory(host.root / "guest-mem")
        self.receive_completions: list[tuple[int, int]] = []  # (transaction id, status)
        self.sends: list[SentMessage] = []
        self.packets: list[vmbus_wire.ChannelPacket] = []  # every data send, as read
        self._completed = 0  # packets[:_completed] were completed by ``drain``

    # -- host to guest -------------------------------------------------------------------------
    def place(self, message: bytes, offset: int | None = None) -> tuple[int, int]:
        """Write ``message`` into the receive buffer (at ``offset`` or the next free place of the
        area); returns the range (byte_count, byte_offset) that describes it."""
        if offset is None:
            if self._cursor + len(message) > self.recv_buffer.shape[0]:
                self._cursor = self.area_start
            offset = self._cursor
            self._cursor = (offset + len(message) + 63) & ~63
        self.recv_buffer[offset : offset + len(message)] = np.frombuffer(message, dtype=np.uint8)
        return len(message), offset

    def send_transfer(
        self,
        ranges: list[tuple[int, int]],
        transaction_id: int,
        *,
        set_id: int = nvsp.RECEIVE_BUFFER_ID,
        nvsp_type: int = nvsp.NVSP_MSG_SEND_RNDIS_PACKET,
        range_count: int | None = None,
    ) -> None:
        """A transfer-page packet with ``ranges``; ``range_count`` overrides the announced count."""
        payload = nvsp_type.to_bytes(4, "little") + nvsp.RNDIS_CHANNEL_TYPE_DATA.to_bytes(4, "little")
        payload += bytes(40 - len(payload))
        packet = bytearray(vmbus_wire.encode_transfer_page_packet(set_id, ranges, payload, transaction_id))
        if range_count is not None:
            packet[vmbus_wire.PACKET_DESCRIPTOR_SIZE + 4 : vmbus_wire.PACKET_DESCRIPTOR_SIZE + 8] = (
                range_count.to_bytes(4, "little")
            )
        self.write_raw(bytes(packet))

    def deliver(self, messages: list[bytes], transaction_id: int) -> list[tuple[int, int]]:
        """Place ``messages`` and send them in one transfer-page packet; returns the ranges."""
        ranges = [self.place(message) for message in messages]
        self.send_transfer(ranges, transaction_id)
        return ranges

    def complete_send(self, transaction_id: int, status: int = nvsp.NVSP_STATUS_SUCCESS) -> None:
        """Complete one data send (``drain`` completes the others it has not completed)."""
        self.write_raw(
            vmbus_wire.encode_completion_packet(
                nvsp.encode_send_rndis_packet_complete(status), transaction_id
            )
        )

    def write_raw(self, packet: bytes) -> None:
        if not self.to_guest.try_write(np.frombuffer(packet, dtype=np.uint8)):
            raise AssertionError(f"stand-in: the guest's RX ring on channel {self.index} is full")

    # -- guest to host -------------------------------------------------------------------------
    def read(self) -> int:
        """Read everything the driver wrote: receive completions and data sends. Returns the count."""
        count = 0
        while (raw := self.from_guest.read()) is not None:
            count += 1
            packet = vmbus_wire.decode_channel_packet(raw.tobytes())
            message_type = int.from_bytes(packet.payload[:4], "little")
            if packet.type == vmbus_wire.PACKET_TYPE_COMPLETION:
                self.receive_completions.append(
                    (packet.transaction_id, int.from_bytes(packet.payload[4:8], "little"))
                )
            elif message_type == nvsp.NVSP_MSG_SEND_RNDIS_PACKET:
                self.packets.append(packet)
                self.sends.extend(self._decode_send(packet))
            else:
                raise AssertionError(f"stand-in: unexpected packet type {packet.type}, NVSP {message_type}")
        self.from_guest.commit()
        return count

    def _decode_send(self, packet: vmbus_wire.ChannelPacket) -> list[SentMessage]:
        section = int.from_bytes(packet.payload[8:12], "little")
        size = int.from_bytes(packet.payload[12:16], "little")
        if section != nvsp.SEND_SECTION_INDEX_NONE:
            start = section * self.section_size
            stream = bytes(self.send_buffer[start : start + size])
            how, ranges = "chimney", []
        else:
            parts = [
                bytes(self.guest_memory.read_pages(r.byte_offset, r.byte_count, r.page_numbers))
                for r in packet.gpa_ranges
            ]
            stream = b"".join(parts)
            how, ranges = "gpa", [(r.byte_count, r.byte_offset) for r in packet.gpa_ranges]
            section = -1
        out = []
        at = 0
        while at + 8 <= len(stream):
            length = int.from_bytes(stream[at + 4 : at + 8], "little")
            raw = stream[at : at + max(length, 8)]
            try:
                message = rndis.decode_packet_msg(raw, limit=len(raw))
            except Exception as error:  # noqa: BLE001 - kept for the assertion to show
                message = error
            out.append(SentMessage(packet.transaction_id, how, section, raw, message, ranges))
            if length <= 0:
                break
            at += length
        return out

    def drain(self) -> None:
        """Read what the driver wrote and complete every data send not completed yet."""
        self.read()
        for packet in self.packets[self._completed :]:
            if packet.completion_requested:
                self.complete_send(packet.transaction_id)
        self._completed = len(self.packets)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.host.ctl("fault", name="stall", value=self.index, on=False, nic=self.nic)
        self.guest_memory.close()
