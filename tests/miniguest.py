"""A minimal NetVSC guest for driving the emulated host in tests.

Built from ``netvsc.wire`` and ``netvsc.vmbus`` only (never the PMD or ``proto/``), so the host is
checked against the wire formats, not against a second copy of its own rules. It opens a device
under a root with ``VmbusDevice`` (which holds the uio ``open`` connection and signals the host
through the monitor page, or the interrupt page + irq socket for monitor-less channels), and
offers one method per step of a NetVSC bring-up: NVSP INIT, NDIS config and version, receive and
send buffer connect, RNDIS control through GPA-direct packets in guest memory, data from
send-buffer sections or by GPA, receive of transfer-page packets (each completed), subchannels.

Every wait has a deadline; a missing answer raises ``TimeoutError`` naming what was awaited.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from netvsc.vmbus.device import VmbusDevice, list_devices
from netvsc.vmbus.guestmem import GuestMemoryRegion
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import (
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_INBAND,
    PACKET_TYPE_XFER_PAGES,
    encode_gpa_direct_packet,
)

POLL_S = 0.0005


@dataclass
class Received:
    """One RNDIS message from a transfer-page packet."""

    channel: int  # channel index (0 = primary)
    channel_type: int  # NVSP channel_type: 0 data, 1 control
    transaction_id: int
    set_id: int
    offset: int  # in the receive buffer
    length: int  # range length
    raw: bytes  # the range's bytes
    message: object  # decoded (rndis.decode_rndis), or the exception it raised
    packet_flags: int = 0  # the VMBus packet's flags
    nvsp_payload: bytes = b""  # the NVSP message of the VMBus packet (type 107 ...)
    range_count: int = 0


class MiniGuest:
    def __init__(self, root, device: int | str = 0, *, latency_us: int | None = None) -> None:
        devices = list_devices(root)
        info = devices[device] if isinstance(device, int) else next(d for d in devices if d.guid == device)
        self.root = root
        self.dev = VmbusDevice(info, root)
        if latency_us is not None:
            self.dev.set_latency(latency_us)
        self.channels = [self.dev.primary_channel()]
        self.completions: dict[int, bytes] = {}
        self.inband: list[tuple[int, int, bytes]] = []  # (channel, transaction id, payload)
        self.received: list[Received] = []
        self.auto_complete = True
        self.pending_receives: list[tuple[int, int]] = []  # (channel, tid) held when auto_complete is off
        self._tids = itertools.count(1)
        self._rids = itertools.count(1)
        self.version = 0
        self.section_size = 0
        self.recv_slot_size = 0
        self.recv_slot_count = 0
        self.memory: GuestMemoryRegion | None = None

    # -- plumbing ------------------------------------------------------------------------

    def next_tid(self) -> int:
        return next(self._tids)

    def poll(self) -> int:
        """Read every channel once; sort packets into completions, receives and in-band messages."""
        seen = 0
        for index, channel in enumerate(self.channels):
            while (packet := channel.recv()) is not None:
                seen += 1
                packet_type, flags, tid, ext, payload = packet
                if packet_type == PACKET_TYPE_COMPLETION:
                    self.completions[tid] = payload
                elif packet_type == PACKET_TYPE_XFER_PAGES:
                    self._on_transfer_page(index, tid, ext, payload, flags)
                elif packet_type == PACKET_TYPE_INBAND:
                    self.inband.append((index, tid, payload))
        return seen

    def _on_transfer_page(self, index: int, tid: int, ext: bytes, payload: bytes, flags: int) -> None:
        set_id = int.from_bytes(ext[0:2], "little")
        range_count = int.from_bytes(ext[4:8], "little")
        channel_type = int.from_bytes(payload[4:8], "little")
        buffer = self.dev.recv_buffer
        for r in range(range_count):
            length = int.from_bytes(ext[8 + 8 * r : 12 + 8 * r], "little")
            offset = int.from_bytes(ext[12 + 8 * r : 16 + 8 * r], "little")
            raw = bytes(buffer[offset : offset + length]) if offset + length <= buffer.shape[0] else b""
            try:
                message: object = rndis.decode_rndis(raw, limit=length)
            except Exception as exc:  # the test decides what a bad message means
                message = exc
            self.received.append(
                Received(
                    index,
                    channel_type,
                    tid,
                    set_id,
                    offset,
                    length,
                    raw,
                    message,
                    flags,
                    payload,
                    range_count,
                )
            )
        if self.auto_complete:
            self.complete_receive(index, tid)
        else:
            self.pending_receives.append((index, tid))

    def complete_receive(self, channel_index: int, tid: int) -> None:
        self.channels[channel_index].send_completion(
            nvsp.encode_send_rndis_packet_complete(nvsp.NVSP_STATUS_SUCCESS), tid
        )

    def wait(self, predicate, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"miniguest: no {what} within {timeout} s")
            time.sleep(POLL_S)

    def request(self, payload: bytes, *, channel: int = 0, timeout: float = 10.0) -> bytes:
        """Send an in-band NVSP message with completion requested; its completion payload."""
        tid = self.next_tid()
        self.channels[channel].send_inband(payload, tid, completion_requested=True)
        return self.wait(lambda: self.completions.pop(tid, None), f"completion of tid {tid}", timeout)

    def send(self, payload: bytes, *, channel: int = 0) -> int:
        tid = self.next_tid()
        self.channels[channel].send_inband(payload, tid)
        return tid

    # -- NVSP bring-up -------------------------------------------------------------------

    def nvsp_init(self, version: int, timeout: float = 10.0) -> int:
        reply = nvsp.decode_nvsp(self.request(nvsp.encode_init(version), timeout=timeout))
        if reply.status == nvsp.NVSP_STATUS_SUCCESS:
            self.version = version
        return reply.status

    def setup(self, version: int = nvsp.NVSP_VERSION_61, mtu: int = 1500, send_buffer: bool = True) -> None:
        """INIT, NDIS config (v2+), NDIS version, receive buffer, send buffer; asserts success."""
        status = self.nvsp_init(version)
        assert status == nvsp.NVSP_STATUS_SUCCESS, f"INIT {version:#x}: status {status}"
        if version >= nvsp.NVSP_VERSION_2:
            self.send(nvsp.encode_send_ndis_config(mtu + 14, nvsp.NDIS_CONFIG_CAP_IEEE8021Q))
        self.send(nvsp.encode_send_ndis_version(nvsp.ndis_version_for(version)))
        reply = nvsp.decode_nvsp(
            self.request(nvsp.encode_send_receive_buffer(self.dev.recv_gpadl, nvsp.RECEIVE_BUFFER_ID))
        )
        assert reply.status == nvsp.NVSP_STATUS_SUCCESS, f"RECV_BUF: {reply}"
        self.recv_reply = reply
        if send_buffer:
            reply = nvsp.decode_nvsp(
                self.request(nvsp.encode_send_send_buffer(self.dev.send_gpadl, nvsp.SEND_BUFFER_ID_DPDK))
            )
            assert reply.status == nvsp.NVSP_STATUS_SUCCESS, f"SEND_BUF: {reply}"
            self.section_size = reply.section_size

    # -- RNDIS control through GPA-direct packets ----------------------------------------

    def _memory(self) -> GuestMemoryRegion:
        if self.memory is None:
            self.memory = GuestMemoryRegion(1 << 20, self.root)
        return self.memory

    def send_gpa(self, data: bytes, channel_type: int, *, offset: int = 0, channel: int = 0) -> int:
        """An RNDIS message placed in guest memory at ``offset`` and sent as a GPA-direct packet."""
        memory = self._memory()
        memory.array[offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        tid = self.next_tid()
        packet = encode_gpa_direct_packet(
            [memory.page_range(offset, len(data))], nvsp.encode_send_rndis_packet(channel_type), tid
        )
        self.channels[channel].send_raw(np.frombuffer(packet, dtype=np.uint8).copy())
        return tid

    def rndis_request(self, message: bytes, timeout: float = 10.0):
        """Send a control message; wait for its VMBus completion and then for its RNDIS response."""
        request_id = int.from_bytes(message[8:12], "little")
        tid = self.send_gpa(message, nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
        self.wait(lambda: tid in self.completions, f"completion of RNDIS control tid {tid}", timeout)

        def response():
            for item in self.received:
                msg = item.message
                if item.channel_type == 1 and getattr(msg, "request_id", None) == request_id:
                    self.received.remove(item)
                    return msg
            return None

        return self.wait(response, f"RNDIS response to request {request_id}", timeout)

    def rndis_init(self):
        return self.rndis_request(rndis.encode_initialize(next(self._rids)))

    def query(self, oid: int, info: bytes = b""):
        return self.rndis_request(rndis.encode_query(next(self._rids), oid, info))

    def set(self, oid: int, value: bytes):
        return self.rndis_request(rndis.encode_set(next(self._rids), oid, value))

    def set_packet_filter(self, value: int):
        from netvsc.wire.ndis import OID_GEN_CURRENT_PACKET_FILTER

        return self.set(OID_GEN_CURRENT_PACKET_FILTER, value.to_bytes(4, "little"))

    # -- data ----------------------------------------------------------------------------

    def send_frame_section(self, frame: bytes, section: int = 0, ppis=(), *, channel: int = 0) -> int:
        """A frame in send-buffer section ``section``; returns the transaction id."""
        message = rndis.encode_packet_msg(frame, ppis)
        start = section * self.section_size
        self.dev.send_buffer[start : start + len(message)] = np.frombuffer(message, dtype=np.uint8)
        tid = self.next_tid()
        self.channels[channel].send_inband(
            nvsp.encode_send_rndis_packet(nvsp.RNDIS_CHANNEL_TYPE_DATA, section, len(message)),
            tid,
            completion_requested=True,
        )
        return tid

    def send_frame_gpa(self, frame: bytes, ppis=(), *, offset: int = 8192, channel: int = 0) -> int:
        message = rndis.encode_packet_msg(frame, ppis)
        return self.send_gpa(message, nvsp.RNDIS_CHANNEL_TYPE_DATA, offset=offset, channel=channel)

    def wait_completion(self, tid: int, timeout: float = 10.0) -> bytes:
        return self.wait(lambda: self.completions.pop(tid, None), f"completion of tid {tid}", timeout)

    def data_frames(self) -> list[Received]:
        return [r for r in self.received if r.channel_type == 0]

    def indications(self) -> list:
        return [
            r.message
            for r in self.received
            if r.channel_type == 1 and getattr(r.message, "type", None) == rndis.RNDIS_MSG_INDICATE_STATUS
        ]

    # -- subchannels ---------------------------------------------------------------------

    def request_subchannels(self, count: int) -> int:
        reply = nvsp.decode_nvsp(self.request(nvsp.encode_subchannel_request(count)), completion=True)
        return reply.num_subchannels if reply.status == nvsp.NVSP_STATUS_SUCCESS else 0

    def open_subchannels(self, count: int, timeout: float = 5.0) -> None:
        self.channels += self.dev.open_subchannels(count, timeout)

    def close(self) -> None:
        if self.memory is not None:
            self.memory.close()
            self.memory = None
        self.dev.close()
