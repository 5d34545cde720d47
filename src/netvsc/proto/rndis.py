"""The RNDIS control session engine: request ids, the RNDIS state, legal messages, two roles.

Layer 2 (proto), no I/O (STYLE.md, h11). Bytes in, events out; requests in, bytes out.

- Guest role (``RndisSession("guest")``): ``request_*`` build a control message with a fresh
  request id (a counter that skips 0: DPDK reserves 0); ``receive(bytes)`` matches a completion
  by type and id to the outstanding request and returns ``Response``, or classifies an
  indication (``Indication``) or a stray message (``Unexpected``, counted in ``unexpected``).
  When the caller's deadline passes, ``abandon()`` forgets the outstanding request; its late
  completion is then ``Unexpected``, never the reply to the next request.
- Host role (``RndisSession("host")``): ``receive(bytes)`` validates a guest control message
  against the RNDIS state (Initializing -> Operational, host.md 1.2, 4.2) and returns a
  ``ControlRequest`` for the NIC to answer, ``Halt`` (no reply), or ``Violation`` (a second
  INITIALIZE, RESET/SET_EX/INDICATE or an unknown type from the guest: fail-stop, host.md 1.6).
  Project decision (DESIGN.md §7.11): RESET is a ``ControlRequest`` the NIC completes with
  success, not a violation; ``reset_allowed=False`` restores OpenVMM's fail-stop.
  ``encode_*`` build the responses through ``netvsc.wire.rndis``.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from netvsc.errors import ConfigError, ProtocolError
from netvsc.wire import rndis as wire
from netvsc.wire._struct import Record

__all__ = [
    "ControlRequest",
    "Halt",
    "Indication",
    "Response",
    "RndisSession",
    "RndisState",
    "Unexpected",
    "Violation",
]


class RndisState(enum.Enum):
    INITIALIZING = "Initializing"
    OPERATIONAL = "Operational"


# Guest -> host control messages and the completion type each gets (None: no reply).
REQUEST_REPLY: dict[int, int | None] = {
    wire.RNDIS_MSG_INITIALIZE: wire.RNDIS_MSG_INITIALIZE_CMPLT,
    wire.RNDIS_MSG_HALT: None,
    wire.RNDIS_MSG_QUERY: wire.RNDIS_MSG_QUERY_CMPLT,
    wire.RNDIS_MSG_SET: wire.RNDIS_MSG_SET_CMPLT,
    wire.RNDIS_MSG_RESET: wire.RNDIS_MSG_RESET_CMPLT,
    wire.RNDIS_MSG_KEEPALIVE: wire.RNDIS_MSG_KEEPALIVE_CMPLT,
}
# Types only a host may send; from a guest they are violations (host.md 1.6).
HOST_ONLY = frozenset({wire.RNDIS_MSG_INDICATE_STATUS, wire.RNDIS_MSG_SET_EX})
ABANDONED_REMEMBERED = 16  # abandoned request ids kept to name their late completions


@dataclass(frozen=True)
class ControlRequest:
    """Host role: a control request to answer (``message`` is the decoded record)."""

    message_type: int
    request_id: int
    message: Record


@dataclass(frozen=True)
class Halt:
    request_id: int


@dataclass(frozen=True)
class Violation:
    reason: str


@dataclass(frozen=True)
class Response:
    """Guest role: the completion of the outstanding request."""

    message_type: int
    request_id: int
    status: int
    message: Record


@dataclass(frozen=True)
class Indication:
    status: int
    buffer: bytes


@dataclass(frozen=True)
class Unexpected:
    """Guest role: a message that answers nothing outstanding (counted, not fatal)."""

    reason: str
    late: bool = False  # the completion of a request abandoned after its deadline


class RndisSession:
    """One NIC's RNDIS control session in role ``"guest"`` or ``"host"``."""

    def __init__(self, role: str, *, reset_allowed: bool = True) -> None:
        if role not in ("guest", "host"):
            raise ConfigError("role", role, "'guest' or 'host'")
        self.role = role
        self.reset_allowed = reset_allowed
        self.state = RndisState.INITIALIZING
        self._next_request_id = 1
        self._outstanding: tuple[int, int] | None = None  # (request id, completion type)
        self._abandoned: deque[tuple[int, int]] = deque(maxlen=ABANDONED_REMEMBERED)
        self.unexpected = 0  # guest role: messages that answered nothing outstanding

    # -- host role ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> ControlRequest | Halt | Violation | Response | Indication | Unexpected:
        if self.role == "host":
            return self._host_receive(data)
        event = self._guest_receive(data)
        if isinstance(event, Unexpected):
            self.unexpected += 1
        return event

    def _host_receive(self, data: bytes) -> ControlRequest | Halt | Violation:
        try:
            message_type = wire.peek_message_type(data)
        except ProtocolError as error:
            return Violation(f"control message without a header: {error}")
        if message_type in HOST_ONLY:
            return Violation(f"RNDIS type {message_type:#x} from the guest")
        if message_type == wire.RNDIS_MSG_RESET and not self.reset_allowed:
            return Violation("RNDIS RESET from the guest")
        if message_type not in REQUEST_REPLY:
            return Violation(f"unknown RNDIS control type {message_type:#x}")
        try:
            message = wire.decode_rndis(data)
        except ProtocolError as error:
            return Violation(f"malformed RNDIS control message: {error}")
        if message_type == wire.RNDIS_MSG_INITIALIZE:
            if self.state is not RndisState.INITIALIZING:
                return Violation("second RNDIS INITIALIZE")  # host#38
            self.state = RndisState.OPERATIONAL
        if message_type == wire.RNDIS_MSG_HALT:
            return Halt(message.request_id)  # OpenVMM ignores HALT: no reply, state unchanged
        request_id = message.request_id if "request_id" in message else 0
        return ControlRequest(message_type, request_id, message)

    def reset(self) -> None:
        """Channel closed: back to Initializing."""
        self.state = RndisState.INITIALIZING
        self._outstanding = None
        self._abandoned.clear()

    @staticmethod
    def encode_initialize_complete(request_id: int) -> bytes:
        return wire.encode_initialize_complete(request_id)

    @staticmethod
    def encode_query_complete(request_id: int, status: int, info: bytes = b"") -> bytes:
        # Length 0 on error (host.md 4.2).
        return wire.encode_query_complete(
            request_id, status, info if status == wire.RNDIS_STATUS_SUCCESS else b""
        )

    @staticmethod
    def encode_set_complete(request_id: int, status: int) -> bytes:
        return wire.encode_set_complete(request_id, status)

    @staticmethod
    def encode_keepalive_complete(request_id: int, status: int = wire.RNDIS_STATUS_SUCCESS) -> bytes:
        return wire.encode_keepalive_complete(request_id, status)

    @staticmethod
    def encode_reset_complete(status: int = wire.RNDIS_STATUS_SUCCESS) -> bytes:
        return wire.encode_reset_complete(status)

    @staticmethod
    def encode_indication(status: int, buffer: bytes = b"") -> bytes:
        return wire.encode_indicate_status(status, buffer)

    # -- guest role --------------------------------------------------------------------------

    def _new_request(self, completion_type: int | None) -> int:
        if self.role != "guest":
            raise ConfigError("role", self.role, "'guest' to send requests")
        if self._outstanding is not None:
            raise ConfigError(
                "rndis request",
                "new",
                "one outstanding request at a time",
                f"request {self._outstanding[0]} is still waiting",
            )
        request_id = self._next_request_id
        # A counter that never yields 0 (DPDK uses 0 for "no request").
        self._next_request_id = self._next_request_id % 0xFFFFFFFF + 1
        if completion_type is not None:
            self._outstanding = (request_id, completion_type)
        return request_id

    def request_initialize(
        self, max_transfer_size: int = wire.RNDIS_MAX_TRANSFER_SIZE_GUEST
    ) -> tuple[int, bytes]:
        request_id = self._new_request(wire.RNDIS_MSG_INITIALIZE_CMPLT)
        return request_id, wire.encode_initialize(request_id, max_transfer_size=max_transfer_size)

    def request_query(self, oid: int, info: bytes = b"") -> tuple[int, bytes]:
        request_id = self._new_request(wire.RNDIS_MSG_QUERY_CMPLT)
        return request_id, wire.encode_query(request_id, oid, info)

    def request_set(self, oid: int, value: bytes) -> tuple[int, bytes]:
        request_id = self._new_request(wire.RNDIS_MSG_SET_CMPLT)
        return request_id, wire.encode_set(request_id, oid, value)

    def request_keepalive(self) -> tuple[int, bytes]:
        request_id = self._new_request(wire.RNDIS_MSG_KEEPALIVE_CMPLT)
        return request_id, wire.encode_keepalive(request_id)

    def request_halt(self) -> tuple[int, bytes]:
        """HALT has no reply: nothing becomes outstanding."""
        request_id = self._new_request(None)
        return request_id, wire.encode_halt(request_id)

    @property
    def outstanding(self) -> tuple[int, int] | None:
        return self._outstanding

    def abandon(self) -> tuple[int, int] | None:
        """Forget the outstanding request (its caller's deadline passed, or sending it failed);
        returns (request id, completion type) or None. A late completion of it is ``Unexpected``."""
        if self.role != "guest":
            raise ConfigError("role", self.role, "'guest' to abandon a request")
        outstanding, self._outstanding = self._outstanding, None
        if outstanding is not None:
            self._abandoned.append(outstanding)
        return outstanding

    def _guest_receive(self, data: bytes) -> Response | Indication | Unexpected:
        try:
            message = wire.decode_rndis(data)
        except ProtocolError as error:
            return Unexpected(f"malformed host message: {error}")
        message_type = wire.peek_message_type(data)
        if message_type == wire.RNDIS_MSG_INDICATE_STATUS:
            return Indication(message.status, message.status_buffer)
        if message_type == wire.RNDIS_MSG_RESET_CMPLT:
            return Unexpected("RESET_CMPLT without a request id")
        if not message_type & wire.RNDIS_MSG_COMPLETION or "request_id" not in message:
            return Unexpected(f"RNDIS type {message_type:#x} from the host")
        outstanding = self._outstanding
        answered = (message.request_id, message_type)
        if outstanding != answered and answered in self._abandoned:
            self._abandoned.remove(answered)
            return Unexpected(
                f"late completion {message_type:#x} of abandoned request {message.request_id}", late=True
            )
        if outstanding is None or outstanding != (message.request_id, message_type):
            return Unexpected(
                f"completion {message_type:#x} for request {message.request_id}, not outstanding"
            )
        self._outstanding = None
        if message_type == wire.RNDIS_MSG_INITIALIZE_CMPLT and message.status == wire.RNDIS_STATUS_SUCCESS:
            self.state = RndisState.OPERATIONAL
        return Response(message_type, message.request_id, message.status, message)
