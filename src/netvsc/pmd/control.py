"""The control-request machinery of the NetVSC port and its control worker thread.

Layer 5 (pmd). ``ControlChannel`` owns the primary channel's control traffic: it reads the
primary ring, hands every packet to the ``proto`` session engines (NVSP guest role, RNDIS guest
role) and sorts their events: the completion of the one outstanding NVSP request, RNDIS responses
(from transfer-page packets, each completed to the host), status indications (queued for the
worker), send-indirection tables, VF notices, unknown messages and violations (counted). Every
wait has a deadline (default 60 s as DPDK, settable); a wait that times out raises
``ControlTimeout`` and abandons the request in its session engine, so a late reply is counted
as unexpected rather than taken for the next request's reply.

``ControlChannel.poll(channel)`` is also the one loop that drains a channel no data path reads:
data frames are dropped, counted in ``counters["data_frames_dropped"]``, and their receive
sections completed to the host at once (pmd#30), so a stopped port never holds the host's
receive slots.

``ControlWorker`` is the thread that takes link and VF events seen on the receive path and acts on
them outside ring processing: it refreshes the stored link (queries are blocking requests) and
only then calls the application's callback (pmd#41, #42; DPDK pitfall avoided: its deferred work
never refreshed the link, and an earlier version queried the link from inside the ring read and
deadlocked). The worker also polls the primary ring for control traffic at ``poll_interval``
while no one else does (the RX burst of the data path takes that role when it exists), and
drains every channel its ``drain`` callback names: the port names all its channels while it is
stopped, when no RX burst reads them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netvsc.errors import DeviceError, ProtocolError, RingFullError
from netvsc.pmd.qlayout import Q_STOPPED_DROPS
from netvsc.proto import nvsp as proto_nvsp
from netvsc.proto import rndis as proto_rndis
from netvsc.vmbus.channel import Channel
from netvsc.wire import nvsp as wire_nvsp
from netvsc.wire import rndis as wire_rndis
from netvsc.wire.vmbus import (
    PACKET_TYPE_COMPLETION,
    PACKET_TYPE_INBAND,
    PACKET_TYPE_XFER_PAGES,
)

__all__ = ["CONTROL_TIMEOUT_S", "ControlChannel", "ControlTimeout", "ControlWorker", "HostEvent"]

log = logging.getLogger(__name__)

CONTROL_TIMEOUT_S = 60.0  # DPDK's VSP response timeout: busy Azure hosts take up to 15 s
POLL_SLEEP_S = 0.0001  # between empty polls while a request waits (DPDK polls every 100 us)

# Header extension of a transfer-page packet: set id (u16), sender-owns (u8), reserved (u8),
# range count (u32), then ranges of (length u32, offset u32) (spec/vmbus.md 4.4).
_XFER_RANGES_OFFSET = 8
_XFER_RANGE_SIZE = 8


class ControlTimeout(DeviceError, TimeoutError):
    """A control request got no answer before its deadline."""


@dataclass(frozen=True)
class HostEvent:
    """Something the receive path saw that the control worker acts on."""

    kind: str  # "link" (an RNDIS status indication), "vf", "rescind"
    status: int = 0
    buffer: bytes = b""


class ControlChannel:
    """Control traffic of the primary channel: requests with deadlines and event routing (and
    the draining of any channel of the port that no data path reads, through ``poll``).

    One lock serialises ring access between the application thread and the worker; requests
    are serialised by a second lock, since each session allows one outstanding request.
    """

    def __init__(
        self,
        channel: Channel,
        recv_buffer,
        *,
        timeout: float = CONTROL_TIMEOUT_S,
        nvsp_versions=wire_nvsp.NVSP_VERSIONS_NEWEST_FIRST,
    ) -> None:
        self.channel = channel
        self.recv_buffer = recv_buffer
        self.timeout = timeout
        self.nvsp = proto_nvsp.NvspSession("guest", supported_versions=nvsp_versions)
        self.rndis = proto_rndis.RndisSession("guest")
        self.ring_lock = threading.RLock()
        self.request_lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.events: queue.SimpleQueue[HostEvent] = queue.SimpleQueue()
        self.send_indirection_table: tuple[int, ...] | None = None
        self.vf_serial: int | None = None
        self.vf_allocated = False
        self.pending_sends: set[int] = set()  # transaction ids of GPA/inband sends awaiting completion
        self.closed = False
        self.datapath = None  # the port's PortDataPath once started: it owns the channels' rings
        self._nvsp_reply: proto_nvsp.Event | None = None
        self._rndis_reply: proto_rndis.Response | None = None

    @property
    def data_frames_dropped(self) -> int:
        """Data frames dropped (and their sections completed) because no data path read them."""
        extra = self.datapath.counter(Q_STOPPED_DROPS) if self.datapath is not None else 0
        return self.counters["data_frames_dropped"] + extra

    # -- ring processing ---------------------------------------------------------------------

    def poll(self, budget: int = 256, channel: Channel | None = None) -> int:
        """Process up to ``budget`` packets of ``channel`` (default the primary); never blocks
        on the host. Every channel of the port goes through here when no data path reads it."""
        channel = self.channel if channel is None else channel
        engine = self.datapath.engine_for(channel) if self.datapath is not None else None
        if engine is not None:
            # The queue's kernels read this ring now; control items come back through _dispatch
            # and _on_rndis. A queue busy in another thread is left to it (DPDK's try-lock).
            return engine.poll(blocking=False)
        handled = 0
        with self.ring_lock:
            while handled < budget and not self.closed:
                try:
                    packet = channel.recv()
                except ProtocolError as error:
                    self.counters["protocol_errors"] += 1
                    log.warning("channel %s ring: %s", channel.relid, error)
                    break
                if packet is None:
                    break
                handled += 1
                self._dispatch(channel, *packet)
        return handled

    def _dispatch(
        self, channel: Channel, packet_type: int, flags: int, transaction_id: int, ext: bytes, payload: bytes
    ) -> None:
        if packet_type == PACKET_TYPE_XFER_PAGES:
            self._on_transfer_pages(channel, transaction_id, ext, payload)
            return
        if packet_type not in (PACKET_TYPE_COMPLETION, PACKET_TYPE_INBAND):
            self.counters["unknown_packets"] += 1
            return
        event = self.nvsp.receive(packet_type, transaction_id, payload, bool(flags & 1))
        if isinstance(event, (proto_nvsp.Completion, proto_nvsp.InitComplete)):
            self._nvsp_reply = event
        elif isinstance(event, proto_nvsp.RndisPacketCompletion):
            self.pending_sends.discard(transaction_id)
            if event.status != wire_nvsp.NVSP_STATUS_SUCCESS:
                self.counters["failed_send_completions"] += 1
        elif isinstance(event, proto_nvsp.SendIndirectionTable):
            # pmd#82: accepted and kept for TX steering; never taken for a reply.
            self.send_indirection_table = event.entries
            self.counters["send_indirection_tables"] += 1
        elif isinstance(event, proto_nvsp.VfAssociation):
            self.vf_allocated, self.vf_serial = event.allocated, event.serial
            self.counters["vf_associations"] += 1
            self.events.put(HostEvent("vf", int(event.allocated)))
        elif isinstance(event, proto_nvsp.SwitchDataPath):
            self.counters["switch_data_path_notices"] += 1
        elif isinstance(event, proto_nvsp.Unexpected):
            self.counters["late_replies"] += 1
            log.info("NVSP: %s", event.reason)
        elif isinstance(event, proto_nvsp.UnknownMessage):
            self.counters["unknown_nvsp_messages"] += 1
            log.debug("unknown NVSP message type %d skipped", event.message_type)
        elif isinstance(event, proto_nvsp.ProtocolViolation):
            self.counters["protocol_errors"] += 1
            log.warning("host NVSP violation: %s", event.reason)
        else:
            self.counters["unsolicited_messages"] += 1

    def _on_transfer_pages(self, channel: Channel, transaction_id: int, ext: bytes, payload: bytes) -> None:
        try:
            channel_type = int.from_bytes(payload[4:8], "little")
            range_count = int.from_bytes(ext[4:8], "little")
            if len(ext) < _XFER_RANGES_OFFSET + range_count * _XFER_RANGE_SIZE or len(payload) < 8:
                raise ProtocolError(f"transfer-page packet with {range_count} ranges in {len(ext)} bytes")
            set_id = int.from_bytes(ext[0:2], "little")
            if set_id != wire_nvsp.RECEIVE_BUFFER_ID:
                raise ProtocolError(f"transfer-page set id {set_id:#x}")
            size = self.recv_buffer.shape[0]
            for index in range(range_count):
                base = _XFER_RANGES_OFFSET + index * _XFER_RANGE_SIZE
                length = int.from_bytes(ext[base : base + 4], "little")
                offset = int.from_bytes(ext[base + 4 : base + 8], "little")
                if length == 0 or offset + length > size:
                    self.counters["bad_ranges"] += 1
                    continue
                if channel_type == wire_nvsp.RNDIS_CHANNEL_TYPE_CONTROL:
                    self._on_rndis(bytes(self.recv_buffer[offset : offset + length]))
                else:
                    # No data path reads this channel now: dropped, and the section completed
                    # below so the host can reuse it (pmd#30).
                    self.counters["data_frames_dropped"] += 1
        except ProtocolError as error:
            self.counters["protocol_errors"] += 1
            log.warning("transfer-page packet on channel %s: %s", channel.relid, error)
        self._complete_receive(channel, transaction_id)

    def _on_rndis(self, message: bytes) -> None:
        try:
            message_type = wire_rndis.peek_message_type(message)
        except ProtocolError:
            self.counters["protocol_errors"] += 1
            return
        if message_type == wire_rndis.RNDIS_MSG_PACKET:
            self.counters["data_frames_dropped"] += 1  # data in a control-typed packet
            return
        event = self.rndis.receive(message)
        if isinstance(event, proto_rndis.Response):
            self._rndis_reply = event
        elif isinstance(event, proto_rndis.Unexpected) and event.late:
            self.counters["late_replies"] += 1
            log.info("RNDIS: %s", event.reason)
        elif isinstance(event, proto_rndis.Indication):
            self.counters["indications"] += 1
            # Handed to the worker; answering it here (a query) would block ring processing.
            self.events.put(HostEvent("link", event.status, event.buffer))
        else:
            self.counters["unexpected_rndis"] += 1
            log.info("RNDIS: %s", getattr(event, "reason", event))

    def _complete_receive(self, channel: Channel, transaction_id: int) -> None:
        reply = self.nvsp.encode_rndis_packet_complete(wire_nvsp.NVSP_STATUS_SUCCESS)
        try:
            channel.send_completion(reply, transaction_id)
        except RingFullError:
            self.counters["completion_ring_full"] += 1

    # -- waiting -----------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], object], what: str, timeout: float | None = None):
        """Poll the primary ring until ``predicate()`` is truthy; ``ControlTimeout`` at the deadline."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            if self.closed:
                raise DeviceError(f"control channel closed while waiting for {what}")
            self.poll()
            result = predicate()
            if result:
                return result
            if time.monotonic() > deadline:
                self.counters["timeouts"] += 1
                raise ControlTimeout(f"no {what} from the host within {limit:g} s")
            time.sleep(POLL_SLEEP_S)

    # -- NVSP requests -----------------------------------------------------------------------

    def nvsp_send(self, payload: bytes) -> None:
        """An NVSP message without a reply (NDIS config and version, revokes)."""
        with self.request_lock, self.ring_lock:
            transaction_id = self.nvsp.send(payload, False)
            self.channel.send_inband(payload, transaction_id)

    def nvsp_request(self, payload: bytes, what: str, timeout: float | None = None) -> proto_nvsp.Event:
        """Send ``payload`` with completion requested; its completion event (or ControlTimeout)."""
        with self.request_lock:
            with self.ring_lock:
                self._nvsp_reply = None
                if wire_nvsp.peek_message_type(payload) == wire_nvsp.NVSP_MSG_INIT:
                    transaction_id = self._pending_init_tid
                else:
                    transaction_id = self.nvsp.send(payload, True)
                self.channel.send_inband(payload, transaction_id, completion_requested=True)
            try:
                return self.wait_for(lambda: self._nvsp_reply, what, timeout)
            except ControlTimeout:
                # A clean state: the late completion is counted, not taken for the next reply.
                self.nvsp.abandon()
                raise

    def nvsp_init(self, version: int, timeout: float | None = None) -> proto_nvsp.Event:
        with self.request_lock:
            self._pending_init_tid, payload = self.nvsp.request_init(version)
            return self.nvsp_request(payload, f"INIT_COMPLETE for NVSP {version:#x}", timeout)

    # -- RNDIS requests ----------------------------------------------------------------------

    def rndis_request(
        self,
        request: tuple[int, bytes],
        send_gpa: Callable[[bytes], int],
        what: str,
        timeout: float | None = None,
    ) -> proto_rndis.Response:
        """Send an RNDIS control message (built by the session) and wait for its response."""
        request_id, message = request
        with self.request_lock:
            self._rndis_reply = None
            try:
                send_gpa(message)
                return self.wait_for(lambda: self._rndis_reply, f"{what} (request {request_id})", timeout)
            except BaseException:
                self.rndis.abandon()  # clean state after a timeout or a failed send
                raise

    def wait_host_read(self, timeout: float) -> bool:
        """Wait until the host has read everything sent (messages without a reply: HALT,
        revokes), reading our RX ring meanwhile so the host is never blocked on it."""
        view = self.channel.tx_view
        deadline = time.monotonic() + timeout
        while view.read_index != view.write_index:
            self.poll()
            if time.monotonic() > deadline:
                self.counters["teardown_unread"] += 1
                return False
            time.sleep(POLL_SLEEP_S * 10)
        return True

    def close(self) -> None:
        self.closed = True


class ControlWorker(threading.Thread):
    """The control thread: acts on host events outside ring processing, and polls the primary.

    ``handler(event)`` runs on this thread and may issue blocking control requests.
    """

    def __init__(
        self,
        control: ControlChannel,
        handler: Callable[[HostEvent], None],
        *,
        poll_interval: float = 0.001,
        periodic: Callable[[], None] | None = None,
        periodic_interval: float = 0.1,
        drain: Callable[[], Sequence[Channel]] | None = None,
    ) -> None:
        super().__init__(name="netvsc-control", daemon=True)
        self.control = control
        self.handler = handler
        self.poll_interval = poll_interval
        self.periodic = periodic  # e.g. the rescind check
        self.periodic_interval = periodic_interval
        self._next_periodic = time.monotonic() + periodic_interval
        self.background_poll = True  # the data path turns this off when rx_burst polls queue 0
        self.drain = drain  # the channels no data path reads right now (pmd#30)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                # Non-blocking: take the ring only when no request is using it.
                channels = self._channels_to_poll()
                if channels and not self.control.closed and self.control.ring_lock.acquire(blocking=False):
                    try:
                        for channel in channels:
                            self.control.poll(channel=channel)
                    finally:
                        self.control.ring_lock.release()
                if self.periodic is not None and time.monotonic() >= self._next_periodic:
                    self._next_periodic = time.monotonic() + self.periodic_interval
                    self.periodic()
                # Only the events present now: a handler may put one back to retry later.
                for _ in range(self.control.events.qsize()):
                    try:
                        event = self.control.events.get_nowait()
                    except queue.Empty:
                        break
                    self.handler(event)
            except Exception:  # a misbehaving host must not kill the worker
                self.control.counters["worker_errors"] += 1
                log.exception("control worker")
            self._stop_event.wait(self.poll_interval)

    def _channels_to_poll(self) -> list[Channel]:
        """The primary while polling it for control traffic, plus every channel to drain."""
        drained = list(self.drain()) if self.drain is not None else []
        primary = self.control.channel
        others = [channel for channel in drained if channel is not primary]
        if self.background_poll or len(others) < len(drained):
            return [primary, *others]
        return others

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
