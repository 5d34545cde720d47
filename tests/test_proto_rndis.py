"""RNDIS control session engine: request ids, the RNDIS state and the legal messages, bytes only."""

from __future__ import annotations

import pytest

from netvsc.errors import ConfigError
from netvsc.proto import rndis as proto
from netvsc.proto.rndis import RndisSession, RndisState
from netvsc.wire import ndis, rndis


def test_guest_and_host_initialize_query_set_keepalive_through_bytes():
    """host#37 host#40 host#41: requests matched by type and id; the host answers from its state."""
    guest, host = RndisSession("guest"), RndisSession("host")
    request_id, message = guest.request_initialize()
    assert request_id != 0, "request id 0 is reserved"
    event = host.receive(message)
    assert isinstance(event, proto.ControlRequest) and event.request_id == request_id
    assert host.state is RndisState.OPERATIONAL
    reply = guest.receive(host.encode_initialize_complete(request_id))
    assert isinstance(reply, proto.Response) and reply.status == rndis.RNDIS_STATUS_SUCCESS
    fields = reply.message
    assert (fields.max_packets_per_message, fields.max_transfer_size, fields.packet_alignment_factor) == (
        8,
        0xEFFFFFFF,
        3,
    )
    assert guest.state is RndisState.OPERATIONAL

    request_id, message = guest.request_query(ndis.OID_802_3_PERMANENT_ADDRESS)
    event = host.receive(message)
    assert event.message.oid == ndis.OID_802_3_PERMANENT_ADDRESS
    response = host.encode_query_complete(
        request_id, rndis.RNDIS_STATUS_SUCCESS, bytes.fromhex("020000000001")
    )
    assert int.from_bytes(response[20:24], "little") == 16, "info offset 16 from the rid field"
    answer = guest.receive(response)
    assert answer.message.info == bytes.fromhex("020000000001")

    request_id, message = guest.request_set(ndis.OID_GEN_CURRENT_PACKET_FILTER, (9).to_bytes(4, "little"))
    assert host.receive(message).message.info == (9).to_bytes(4, "little")
    assert guest.receive(host.encode_set_complete(request_id, 0)).status == 0

    request_id, message = guest.request_keepalive()
    assert host.receive(message).message_type == rndis.RNDIS_MSG_KEEPALIVE
    assert guest.receive(host.encode_keepalive_complete(request_id)).request_id == request_id


def test_request_ids_skip_zero_and_wrong_replies_are_unexpected():
    """host#41: a completion of another type or id is not taken for the reply."""
    guest = RndisSession("guest")
    guest._next_request_id = 0xFFFFFFFF
    first, _ = guest.request_query(ndis.OID_GEN_LINK_SPEED)
    assert first == 0xFFFFFFFF
    wrong_type = guest.receive(rndis.encode_set_complete(first))
    assert isinstance(wrong_type, proto.Unexpected)
    wrong_id = guest.receive(rndis.encode_query_complete(first - 1, 0, b"\0" * 4))
    assert isinstance(wrong_id, proto.Unexpected)
    assert isinstance(guest.receive(rndis.encode_query_complete(first, 0, b"\0" * 4)), proto.Response)
    second, _ = guest.request_keepalive()
    assert second == 1, "the counter wraps past 0"
    with pytest.raises(ConfigError, match="one outstanding"):
        guest.request_keepalive()


def test_guest_sees_indications_as_events():
    """host#51: INDICATE_STATUS is an indication, not a reply."""
    guest = RndisSession("guest")
    guest.request_keepalive()
    event = guest.receive(rndis.encode_indicate_status(rndis.RNDIS_STATUS_MEDIA_DISCONNECT))
    assert isinstance(event, proto.Indication) and event.status == rndis.RNDIS_STATUS_MEDIA_DISCONNECT
    assert guest.outstanding is not None


def test_host_refuses_second_initialize_and_guest_only_types():
    """host#38 host#39: a second INITIALIZE, SET_EX, INDICATE and unknown types are violations;
    HALT has no reply."""
    host = RndisSession("host")
    assert isinstance(host.receive(rndis.encode_initialize(1)), proto.ControlRequest)
    assert isinstance(host.receive(rndis.encode_initialize(2)), proto.Violation)
    assert isinstance(
        host.receive(rndis.encode_indicate_status(rndis.RNDIS_STATUS_MEDIA_CONNECT)), proto.Violation
    )
    set_ex = (rndis.RNDIS_MSG_SET_EX).to_bytes(4, "little") + (28).to_bytes(4, "little") + bytes(20)
    assert isinstance(host.receive(set_ex), proto.Violation)
    assert isinstance(
        host.receive((0x77).to_bytes(4, "little") + (12).to_bytes(4, "little") + bytes(4)), proto.Violation
    )
    assert isinstance(host.receive(b"\x02\x00"), proto.Violation)
    halt = host.receive(rndis.encode_halt(5))
    assert isinstance(halt, proto.Halt) and halt.request_id == 5
    assert host.state is RndisState.OPERATIONAL, "HALT leaves the state alone"


def test_reset_is_a_request_by_project_decision_and_a_violation_in_openvmm_mode():
    """DESIGN.md §7.11: RESET completes with success; reset_allowed=False restores OpenVMM's fail-stop."""
    assert isinstance(RndisSession("host").receive(rndis.encode_reset()), proto.ControlRequest)
    assert isinstance(
        RndisSession("host", reset_allowed=False).receive(rndis.encode_reset()), proto.Violation
    )
    assert rndis.decode_rndis(RndisSession.encode_reset_complete()).status == 0


def test_query_failure_carries_no_data():
    """host#42: a failed query has length 0."""
    encoded = RndisSession.encode_query_complete(3, rndis.RNDIS_STATUS_NOT_SUPPORTED, b"junk")
    decoded = rndis.decode_rndis(encoded)
    assert decoded.status == rndis.RNDIS_STATUS_NOT_SUPPORTED and decoded.info_buffer_length == 0


def test_abandon_forgets_the_request_and_its_late_completion_is_unexpected():
    """Issue item 7: after ``abandon`` (the caller's deadline passed) the next request may be sent;
    the abandoned query's late completion is ``Unexpected`` (marked late), counted, and never the
    reply to the request now waiting."""
    guest = RndisSession("guest")
    late_id, _ = guest.request_query(ndis.OID_GEN_MEDIA_CONNECT_STATUS)
    assert guest.abandon() == (late_id, rndis.RNDIS_MSG_QUERY_CMPLT)
    assert guest.outstanding is None and guest.abandon() is None
    next_id, _ = guest.request_query(ndis.OID_GEN_MEDIA_CONNECT_STATUS)
    late = guest.receive(rndis.encode_query_complete(late_id, 0, (1).to_bytes(4, "little")))
    assert isinstance(late, proto.Unexpected) and late.late, f"the late completion was taken as {late}"
    assert guest.unexpected == 1
    assert guest.outstanding == (next_id, rndis.RNDIS_MSG_QUERY_CMPLT)
    reply = guest.receive(rndis.encode_query_complete(next_id, 0, (0).to_bytes(4, "little")))
    assert isinstance(reply, proto.Response) and reply.request_id == next_id
    stray = guest.receive(rndis.encode_query_complete(late_id, 0, (1).to_bytes(4, "little")))
    assert isinstance(stray, proto.Unexpected) and not stray.late, "only the first late reply was awaited"
    assert guest.unexpected == 2, "every unexpected message is counted"


def test_abandon_is_a_guest_operation():
    with pytest.raises(ConfigError, match="role"):
        RndisSession("host").abandon()
