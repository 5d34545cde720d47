"""NVSP session engine: a guest session and a host session talking through byte strings only.

No rings, no host: every rule of spec/host.md 1.2-1.6 is checked with plain bytes, and the
bytes the sessions produce are held against the vectors of spec/nvsp-rndis.md 8.1.
"""

from __future__ import annotations

import re

import pytest

from netvsc.errors import ConfigError
from netvsc.proto import nvsp as proto
from netvsc.proto.nvsp import NvspSession, NvspState
from netvsc.wire import nvsp as wire
from netvsc.wire.vmbus import PACKET_TYPE_COMPLETION, PACKET_TYPE_INBAND

VERSIONS = {
    "1": wire.NVSP_VERSION_1,
    "2": wire.NVSP_VERSION_2,
    "4": wire.NVSP_VERSION_4,
    "5": wire.NVSP_VERSION_5,
    "6": wire.NVSP_VERSION_6,
    "6.1": wire.NVSP_VERSION_61,
}
RECV_GPADL, SEND_GPADL = 0x1000, 0x1001


def spec_hex(text: str) -> bytes:
    text = re.sub(
        r"([0-9a-fA-F]{2})\s*[×x]\s*(\d+)", lambda m: " ".join([m.group(1)] * int(m.group(2))), text
    )
    return bytes.fromhex(text.replace("|", " "))


def exchange(guest: NvspSession, host: NvspSession, payload: bytes, completion: bool):
    """The guest sends ``payload``; returns (transaction id, host event)."""
    transaction_id = guest.send(payload, completion)
    return transaction_id, host.receive(PACKET_TYPE_INBAND, transaction_id, payload, completion)


def negotiate(guest: NvspSession, host: NvspSession, version: int) -> proto.InitComplete:
    transaction_id, payload = guest.request_init(version)
    event = host.receive(PACKET_TYPE_INBAND, transaction_id, payload, True)
    assert isinstance(event, proto.InitRequest)
    assert len(event.reply) == 28, "INIT_COMPLETE is always 28 bytes (host#3)"
    return guest.receive(PACKET_TYPE_COMPLETION, transaction_id, event.reply)


def bring_up(guest: NvspSession, host: NvspSession, *, send_buffer: bool = True) -> list:
    """Guest bring-up through the host session; the host answers like a NetVSP would."""
    events = []
    messages = guest.bringup_messages(
        mtu=1514, capabilities=wire.NDIS_CONFIG_CAP_SRIOV, receive_gpadl=RECV_GPADL, send_gpadl=SEND_GPADL
    )
    for message_type, payload, completion in messages:
        if message_type == wire.NVSP_MSG_SEND_SEND_BUFFER and not send_buffer:
            continue
        transaction_id, event = exchange(guest, host, payload, completion)
        events.append(event)
        if isinstance(event, proto.BufferOffered):
            reply = (
                host.encode_receive_buffer_complete(wire.NVSP_STATUS_SUCCESS, 1806, 1000)
                if event.receive
                else host.encode_send_buffer_complete(wire.NVSP_STATUS_SUCCESS, 6144)
            )
            assert len(reply) == host.host_message_size
            completion_event = guest.receive(PACKET_TYPE_COMPLETION, transaction_id, reply)
            assert isinstance(completion_event, proto.Completion), completion_event
            assert completion_event.record.status == wire.NVSP_STATUS_SUCCESS
    return events


@pytest.mark.parametrize("name", list(VERSIONS))
def test_guest_and_host_sessions_negotiate_every_version_through_bytes(name):
    """host#3 host#5 host#6 host#7 host#9: each version negotiates, sizes follow the version."""
    version = VERSIONS[name]
    guest, host = NvspSession("guest"), NvspSession("host")
    complete = negotiate(guest, host, version)
    assert complete.accepted and complete.version == version
    assert guest.state is host.state is NvspState.INIT
    assert host.version == version
    events = bring_up(guest, host)
    kinds = [type(e).__name__ for e in events]
    expected = ["NdisVersion", "BufferOffered", "BufferOffered"]
    if version >= wire.NVSP_VERSION_2:
        expected.insert(0, "NdisConfig")
    assert kinds == expected
    assert guest.state is host.state is NvspState.READY, "both roles agree on READY"
    assert host.host_message_size == (40 if version >= wire.NVSP_VERSION_61 else 28)
    assert len(host.encode_rndis_packet_complete(wire.NVSP_STATUS_SUCCESS)) == host.host_message_size
    assert len(guest.encode_rndis_packet_complete(wire.NVSP_STATUS_SUCCESS)) == 40, "guests always send 40"
    if version >= wire.NVSP_VERSION_2:
        assert host.negotiated.mtu == 1514


def test_guest_probes_newest_first_until_the_host_accepts():
    """host#4: an unsupported INIT keeps VERSION with a non-success status; the next one succeeds."""
    guest = NvspSession("guest")
    host = NvspSession("host", supported_versions=(wire.NVSP_VERSION_4, wire.NVSP_VERSION_2))
    tried = []
    candidate = guest.next_candidate()
    while candidate is not None:
        tried.append(candidate)
        complete = negotiate(guest, host, candidate)
        if complete.accepted:
            break
        assert complete.status != wire.NVSP_STATUS_SUCCESS
        assert host.state is NvspState.VERSION and guest.state is NvspState.VERSION
        candidate = guest.next_candidate(candidate)
    assert tried == [wire.NVSP_VERSION_61, wire.NVSP_VERSION_6, wire.NVSP_VERSION_5, wire.NVSP_VERSION_4]
    assert host.version == guest.version == wire.NVSP_VERSION_4


def test_host_reads_only_the_first_field_of_init():
    """host#3: a range INIT (2 .. 6.1) negotiates v1, as OpenVMM does (spec 8.1 vector)."""
    host = NvspSession("host")
    payload = spec_hex("01 00 00 00 02 00 00 00 01 00 06 00 | 00 × 28")
    event = host.receive(PACKET_TYPE_INBAND, 1, payload, True)
    assert event.accepted and host.version == wire.NVSP_VERSION_1
    assert wire.decode_nvsp(event.reply).negotiated_version == wire.NVSP_VERSION_1


def test_session_bytes_match_the_spec_vectors():
    """host#3 host#7 host#9 host#50: host replies and guest requests are the spec's bytes."""
    guest, host = NvspSession("guest"), NvspSession("host")
    transaction_id, init = guest.request_init(wire.NVSP_VERSION_61)
    assert init == spec_hex("01 00 00 00 01 00 06 00 01 00 06 00 | 00 × 28")
    event = host.receive(PACKET_TYPE_INBAND, transaction_id, init, True)
    assert event.reply == spec_hex("02 00 00 00 ff ff ff ff 22 00 00 00 01 00 00 00 | 00 × 12")
    guest.receive(PACKET_TYPE_COMPLETION, transaction_id, event.reply)
    messages = guest.bringup_messages(mtu=1514, capabilities=0x0C, receive_gpadl=0x1000, send_gpadl=0x1001)
    assert [m[1] for m in messages] == [
        spec_hex("7d 00 00 00 ea 05 00 00 00 00 00 00 0c 00 00 00 | 00 × 24"),
        spec_hex("64 00 00 00 06 00 00 00 1e 00 00 00 | 00 × 28"),
        spec_hex("65 00 00 00 00 10 00 00 fe ca 00 00 | 00 × 28"),
        spec_hex("68 00 00 00 01 10 00 00 ce fa 00 00 | 00 × 28"),
    ]
    # Before 6.1 the host pads to 28 bytes: the 31 MiB receive-buffer reply of the spec.
    old_host = NvspSession("host")
    old_host.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_5), True)
    assert old_host.encode_receive_buffer_complete(1, 1806, 17998) == spec_hex(
        "66 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 0e 07 00 00 4e 46 00 00 44 fa ef 01"
    )
    assert old_host.encode_send_buffer_complete(1, 6144) == spec_hex(
        "69 00 00 00 01 00 00 00 00 18 00 00 | 00 × 16"
    )
    for payload, completion in (
        (wire.encode_send_ndis_config(1514, 0x0C), False),
        (wire.encode_send_ndis_version(wire.NDIS_VERSION_6_30), False),
        (wire.encode_send_receive_buffer(0x1000), True),
    ):
        old_host.receive(PACKET_TYPE_INBAND, 2, payload, completion)
    old_host.receive(PACKET_TYPE_INBAND, 3, wire.encode_send_rndis_packet(1), True)
    assert old_host.state is NvspState.READY
    assert old_host.encode_vf_association(True, 7) == spec_hex(
        "80 00 00 00 01 00 00 00 07 00 00 00 | 00 × 16"
    )
    assert old_host.encode_send_indirection_table(4) == spec_hex(
        "86 00 00 00 10 00 00 00 0c 00 00 00" + " 00 00 00 00 01 00 00 00 02 00 00 00 03 00 00 00" * 4
    )


def ready_host(version: int = wire.NVSP_VERSION_61, *, send_buffer: bool = True) -> NvspSession:
    guest, host = NvspSession("guest"), NvspSession("host")
    negotiate(guest, host, version)
    bring_up(guest, host, send_buffer=send_buffer)
    return host


@pytest.mark.parametrize(
    "scenario",
    [
        "second INIT",
        "duplicate NDIS_VERSION",
        "duplicate NDIS_CONFIG",
        "duplicate RECV_BUF",
        "duplicate SEND_BUF",
    ],
)
def test_duplicates_and_a_second_init_fail_stop(scenario):
    """host#10 host#68: a repeated set-up message is refused by fail-stop; DEAD ignores everything."""
    host = ready_host()
    payload = {
        "second INIT": wire.encode_init(wire.NVSP_VERSION_61),
        "duplicate NDIS_VERSION": wire.encode_send_ndis_version(wire.NDIS_VERSION_6_30),
        "duplicate NDIS_CONFIG": wire.encode_send_ndis_config(1514, 0),
        "duplicate RECV_BUF": wire.encode_send_receive_buffer(RECV_GPADL),
        "duplicate SEND_BUF": wire.encode_send_send_buffer(SEND_GPADL),
    }[scenario]
    event = host.receive(PACKET_TYPE_INBAND, 9, payload, True)
    assert isinstance(event, proto.FailStop), event
    assert host.state is NvspState.DEAD
    later = host.receive(PACKET_TYPE_INBAND, 10, wire.encode_send_rndis_packet(0), True)
    assert isinstance(later, proto.Ignored), "a fail-stopped session produces nothing"


def test_duplicate_in_init_state_is_refused_too():
    """host#10: NDIS_VERSION twice before READY is a fail-stop."""
    host = NvspSession("host")
    host.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_5), True)
    assert isinstance(
        host.receive(PACKET_TYPE_INBAND, 2, wire.encode_send_ndis_version(0x6001E), False), proto.NdisVersion
    )
    event = host.receive(PACKET_TYPE_INBAND, 3, wire.encode_send_ndis_version(0x6001E), False)
    assert isinstance(event, proto.FailStop) and "duplicate" in event.reason


def test_receive_buffer_before_ndis_config_fail_stops_on_v2_and_is_fine_on_v1():
    """host#8: RECV_BUF before NDIS_CONFIG on v2+ never succeeds."""
    host = NvspSession("host")
    host.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_2), True)
    event = host.receive(PACKET_TYPE_INBAND, 2, wire.encode_send_receive_buffer(RECV_GPADL), True)
    assert isinstance(event, proto.FailStop) and "NDIS_CONFIG" in event.reason
    v1 = NvspSession("host")
    v1.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_1), True)
    assert isinstance(
        v1.receive(PACKET_TYPE_INBAND, 2, wire.encode_send_receive_buffer(RECV_GPADL), True),
        proto.BufferOffered,
    )
    # NDIS_CONFIG does not exist on v1.
    assert isinstance(
        v1.receive(PACKET_TYPE_INBAND, 3, wire.encode_send_ndis_config(1514, 0), False), proto.FailStop
    )


def test_rndis_packet_without_send_buffer_starts_ready():
    """host#11: an RNDIS packet after NDIS_VERSION, NDIS_CONFIG and RECV_BUF is the first READY message."""
    host = ready_host(send_buffer=False)
    assert host.state is NvspState.INIT
    event = host.receive(PACKET_TYPE_INBAND, 5, wire.encode_send_rndis_packet(1), True)
    assert isinstance(event, proto.RndisPacket) and event.became_ready
    assert host.state is NvspState.READY


def test_rndis_packet_too_early_fail_stops():
    """host#68 (host.md 1.6): an RNDIS packet before the receive buffer is a fail-stop."""
    host = NvspSession("host")
    host.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_5), True)
    assert isinstance(
        host.receive(PACKET_TYPE_INBAND, 2, wire.encode_send_rndis_packet(0), True), proto.FailStop
    )


@pytest.mark.parametrize(
    ("version", "payload", "legal"),
    [
        (wire.NVSP_VERSION_2, wire.encode_switch_data_path(1), False),
        (wire.NVSP_VERSION_4, wire.encode_switch_data_path(1), True),
        (wire.NVSP_VERSION_4, wire.encode_subchannel_request(2), False),
        (wire.NVSP_VERSION_5, wire.encode_subchannel_request(2), True),
        (wire.NVSP_VERSION_4, wire.encode_oid_query_ex(0x10101), False),
        (wire.NVSP_VERSION_6, wire.encode_oid_query_ex(0x10101), True),
    ],
)
def test_messages_below_their_minimum_version_fail_stop(version, payload, legal):
    """host#68: a type not valid for the negotiated version is a fail-stop (host.md 1.6)."""
    host = ready_host(version)
    event = host.receive(PACKET_TYPE_INBAND, 7, payload, True)
    assert isinstance(event, proto.FailStop) is not legal, event


def test_short_unknown_and_bad_completion_fail_stop():
    """host#68: short bodies, unknown types and completions that are not 108 stop the channel."""
    for payload in (
        wire.encode_subchannel_request(1)[:8],
        (109).to_bytes(4, "little") + bytes(36),
        b"\x01\x00",
    ):
        host = ready_host()
        assert isinstance(host.receive(PACKET_TYPE_INBAND, 1, payload, False), proto.FailStop), payload.hex()
    host = ready_host()
    assert isinstance(
        host.receive(PACKET_TYPE_COMPLETION, 1, wire.encode_switch_data_path(0)), proto.FailStop
    )
    host = ready_host()
    event = host.receive(PACKET_TYPE_COMPLETION, 20, wire.encode_send_rndis_packet_complete(1)[:8])
    assert isinstance(event, proto.RndisPacketCompletion), "Linux's 8-byte receive completion is accepted"
    for host_tid in proto.HOST_TRANSACTION_IDS:
        assert isinstance(host.receive(PACKET_TYPE_COMPLETION, host_tid, b""), proto.Ignored)


def test_subchannel_session_accepts_only_data_messages():
    """host#68: a subchannel takes RNDIS packets, completions and OID_QUERY_EX, nothing else."""
    primary = ready_host(wire.NVSP_VERSION_5)
    sub = primary.subchannel_session()
    assert sub.state is NvspState.READY and sub.version == wire.NVSP_VERSION_5
    assert isinstance(
        sub.receive(PACKET_TYPE_INBAND, 1, wire.encode_send_rndis_packet(0, 3, 100), True), proto.RndisPacket
    )
    assert isinstance(
        sub.receive(PACKET_TYPE_INBAND, 2, wire.encode_oid_query_ex(0x10101), True), proto.OidQueryEx
    )
    assert isinstance(
        sub.receive(PACKET_TYPE_INBAND, 3, wire.encode_subchannel_request(1), True), proto.FailStop
    )
    assert primary.state is NvspState.READY, "a dead subchannel leaves the primary alone"


def test_guest_classifies_unsolicited_messages_while_waiting():
    """host#47 host#50 host#53: a table, a VF association or an unknown type is not the reply."""
    guest, host = NvspSession("guest"), NvspSession("host")
    negotiate(guest, host, wire.NVSP_VERSION_61)
    bring_up(guest, host)
    transaction_id, event = exchange(guest, host, wire.encode_subchannel_request(3), True)
    assert isinstance(event, proto.SubchannelRequest) and event.count == 3
    assert guest.outstanding == (transaction_id, wire.NVSP_MSG_SUBCHANNEL)
    table = guest.receive(PACKET_TYPE_INBAND, 0, host.encode_send_indirection_table(4))
    assert isinstance(table, proto.SendIndirectionTable) and table.entries == tuple(i % 4 for i in range(16))
    vf = guest.receive(
        PACKET_TYPE_INBAND, wire.VF_ASSOCIATION_TRANSACTION_ID, host.encode_vf_association(True, 9), True
    )
    assert isinstance(vf, proto.VfAssociation) and vf.allocated and vf.serial == 9
    unknown = guest.receive(PACKET_TYPE_INBAND, 0, (0xFFFF).to_bytes(4, "little") + bytes(36))
    assert isinstance(unknown, proto.UnknownMessage) and unknown.message_type == 0xFFFF
    assert guest.outstanding is not None, "none of those answered the request"
    stray = guest.receive(PACKET_TYPE_COMPLETION, transaction_id + 100, host.encode_subchannel_complete(1, 3))
    assert isinstance(stray, proto.ProtocolViolation), "a completion for another id is not the reply"
    reply = guest.receive(PACKET_TYPE_COMPLETION, transaction_id, host.encode_subchannel_complete(1, 3))
    assert isinstance(reply, proto.Completion) and reply.record.num_subchannels == 3
    assert len(host.encode_subchannel_complete(1, 3)) == 40, "host#47: 40-byte body on 6.1"
    assert guest.outstanding is None


def test_guest_rejects_host_messages_its_version_does_not_have():
    """host#53: VF association needs NVSP 4; on v2 the guest flags it instead of acting on it."""
    guest, host = NvspSession("guest"), NvspSession("host")
    negotiate(guest, host, wire.NVSP_VERSION_2)
    bring_up(guest, host)
    event = guest.receive(PACKET_TYPE_INBAND, 1, wire.encode_send_vf_association(True, 1))
    assert isinstance(event, proto.ProtocolViolation)
    with pytest.raises(ConfigError):
        host.encode_vf_association(True, 1)


def test_one_outstanding_request_and_bad_configuration_are_refused():
    """host#3: the guest role enforces one request at a time; bad versions name the parameter."""
    guest = NvspSession("guest")
    guest.request_init(wire.NVSP_VERSION_61)
    with pytest.raises(ConfigError, match="one outstanding"):
        guest.request_init(wire.NVSP_VERSION_6)
    with pytest.raises(ConfigError, match="nvsp versions"):
        NvspSession("host", supported_versions=(0x30000,))
    with pytest.raises(ConfigError, match="role"):
        NvspSession("switch")


def test_reset_returns_to_version():
    """host#66: after a close the session starts from VERSION again."""
    host = ready_host()
    host.reset()
    assert host.state is NvspState.VERSION and host.version == 0
    assert isinstance(
        host.receive(PACKET_TYPE_INBAND, 1, wire.encode_init(wire.NVSP_VERSION_5), True), proto.InitRequest
    )


def test_abandon_forgets_the_request_and_its_late_completion_is_unexpected():
    """Issue item 7 (a timed-out request leaves a clean state): after ``abandon`` a new request
    may be sent at once; the abandoned one's late completion, arriving while the new one waits,
    is an ``Unexpected`` event, counted, and the new request still gets its own reply."""
    guest, host = NvspSession("guest"), NvspSession("host")
    negotiate(guest, host, wire.NVSP_VERSION_61)
    bring_up(guest, host)
    late_id, _ = exchange(guest, host, wire.encode_subchannel_request(3), True)
    assert guest.abandon() == (late_id, wire.NVSP_MSG_SUBCHANNEL)
    assert guest.outstanding is None and guest.abandon() is None, "nothing left to abandon"
    next_id, _ = exchange(guest, host, wire.encode_subchannel_request(2), True)
    assert next_id != late_id
    late = guest.receive(PACKET_TYPE_COMPLETION, late_id, host.encode_subchannel_complete(1, 3))
    assert isinstance(late, proto.Unexpected), f"the late completion was taken as {late}"
    assert guest.unexpected == 1
    assert guest.outstanding == (next_id, wire.NVSP_MSG_SUBCHANNEL), "the new request still waits"
    reply = guest.receive(PACKET_TYPE_COMPLETION, next_id, host.encode_subchannel_complete(1, 2))
    assert isinstance(reply, proto.Completion) and reply.record.num_subchannels == 2
    again = guest.receive(PACKET_TYPE_COMPLETION, late_id, host.encode_subchannel_complete(1, 3))
    assert isinstance(again, proto.ProtocolViolation), "a second late completion is no longer expected"
    assert guest.unexpected == 1


def test_abandoned_init_lets_the_next_version_be_probed():
    """An INIT whose INIT_COMPLETE never came in time is abandoned; the next candidate is sent and
    negotiated, and the stale INIT_COMPLETE changes nothing."""
    guest, host = NvspSession("guest"), NvspSession("host")
    stale_id, _ = guest.request_init(wire.NVSP_VERSION_61)
    guest.abandon()
    assert negotiate(guest, host, wire.NVSP_VERSION_6).accepted
    stale = wire.encode_init_complete(wire.NVSP_STATUS_SUCCESS)
    assert isinstance(guest.receive(PACKET_TYPE_COMPLETION, stale_id, stale), proto.Unexpected)
    assert guest.unexpected == 1
    assert guest.version == wire.NVSP_VERSION_6 and guest.state is NvspState.INIT


def test_abandon_is_a_guest_operation():
    with pytest.raises(ConfigError, match="role"):
        NvspSession("host").abandon()
