"""NVS bring-up rules of the port (pmd/nvs.py) against a scripted host: byte-level, no process.

The guest session is the real ``proto.nvsp`` engine; the replies are built with ``wire.nvsp``."""

from __future__ import annotations

from collections import Counter

import pytest

from netvsc.errors import DeviceError, ProtocolError
from netvsc.pmd import nvs
from netvsc.pmd.rndis import offload_parameters_for
from netvsc.proto.nvsp import NvspSession
from netvsc.wire import ndis
from netvsc.wire import nvsp as wire
from netvsc.wire.vmbus import PACKET_TYPE_COMPLETION

SEND_BUFFER = 16 << 20


class ScriptedControl:
    """Stands in for ControlChannel: answers requests as a host with the given quirks would."""

    def __init__(self, *, accepted=(wire.NVSP_VERSION_5,), sections=1, section_size=6144, grant=None):
        self.nvsp = NvspSession("guest")
        self.accepted = accepted
        self.sections = sections
        self.section_size = section_size
        self.grant = grant
        self.counters: Counter[str] = Counter()
        self.sent: list[int] = []
        self.inits: list[int] = []

    def nvsp_init(self, version):
        self.inits.append(version)
        transaction_id, _payload = self.nvsp.request_init(version)
        status = wire.NVSP_STATUS_SUCCESS if version in self.accepted else wire.NVSP_STATUS_FAILURE
        return self.nvsp.receive(PACKET_TYPE_COMPLETION, transaction_id, wire.encode_init_complete(status))

    def nvsp_send(self, payload):
        self.nvsp.send(payload, False)
        self.sent.append(wire.peek_message_type(payload))

    def nvsp_request(self, payload, what, timeout=None):
        message_type = wire.peek_message_type(payload)
        transaction_id = self.nvsp.send(payload, True)
        ok = wire.NVSP_STATUS_SUCCESS
        if message_type == wire.NVSP_MSG_SEND_RECEIVE_BUFFER:
            reply = wire.encode_send_receive_buffer_complete(
                ok, sub_allocation_size=1728, num_sub_allocations=100, num_sections=self.sections
            )
        elif message_type == wire.NVSP_MSG_SEND_SEND_BUFFER:
            reply = wire.encode_send_send_buffer_complete(ok, self.section_size)
        else:
            count = wire.decode_nvsp(payload).num_subchannels
            reply = wire.encode_subchannel_complete(ok, count if self.grant is None else self.grant)
        return self.nvsp.receive(PACKET_TYPE_COMPLETION, transaction_id, reply)

    def wait_host_read(self, timeout):
        return True


def attach(control):
    return nvs.attach(control, mtu=1500, recv_gpadl=1, send_gpadl=2, send_buffer_length=SEND_BUFFER)


def test_versions_newest_first_and_ndis():
    """pmd#2 pmd#3 pmd#4: INIT from 6.1 down to the first accepted; NDIS 6.30 from 5; config MTU + 14."""
    control = ScriptedControl(accepted=(wire.NVSP_VERSION_5, wire.NVSP_VERSION_4))
    attached = attach(control)
    assert control.inits == [wire.NVSP_VERSION_61, wire.NVSP_VERSION_6, wire.NVSP_VERSION_5]
    assert attached.version == wire.NVSP_VERSION_5 and attached.ndis_version == wire.NDIS_VERSION_6_30
    assert control.nvsp.negotiated.mtu == 1514
    assert control.nvsp.negotiated.capabilities == wire.NDIS_CONFIG_CAP_IEEE8021Q | wire.NDIS_CONFIG_CAP_SRIOV
    control = ScriptedControl(accepted=(wire.NVSP_VERSION_4,))
    assert attach(control).ndis_version == wire.NDIS_VERSION_6_1
    assert control.nvsp.negotiated.capabilities == wire.NDIS_CONFIG_CAP_IEEE8021Q


def test_no_version_accepted():
    """pmd#2: every version refused -> DeviceError after trying all six."""
    control = ScriptedControl(accepted=())
    with pytest.raises(DeviceError, match="accepted none"):
        attach(control)
    assert len(control.inits) == 6


def test_receive_buffer_needs_exactly_one_section():
    """pmd#5: two section groups fail attach; the slot count becomes the section count."""
    with pytest.raises(ProtocolError, match="exactly 1"):
        attach(ScriptedControl(sections=2))
    assert attach(ScriptedControl()).recv_section_count == 100


@pytest.mark.parametrize("size", [0, 6146])
def test_chimney_section_size_rules(size):
    """pmd#6: a zero or non-multiple-of-4 section size fails attach and disconnects the chimney."""
    control = ScriptedControl(section_size=size)
    with pytest.raises(ProtocolError, match="multiple of 4"):
        attach(control)
    assert control.sent[-1] == wire.NVSP_MSG_REVOKE_SEND_BUFFER


def test_chimney_section_count():
    """pmd#6: section count = buffer length / section size (16 MiB / 6144 = 2730)."""
    assert attach(ScriptedControl()).chimney_section_count == 2730


def test_subchannel_grant_may_be_fewer():
    """pmd#17: the granted count is returned as is; more than asked is a protocol error."""
    control = ScriptedControl(grant=2)
    attach(control)
    control.nvsp.send(wire.encode_send_rndis_packet(wire.RNDIS_CHANNEL_TYPE_CONTROL), True)  # INIT -> READY
    assert nvs.request_subchannels(control, 3) == 2
    control = ScriptedControl(grant=5)
    attach(control)
    control.nvsp.send(wire.encode_send_rndis_packet(wire.RNDIS_CHANNEL_TYPE_CONTROL), True)
    with pytest.raises(ProtocolError, match="granted 5"):
        nvs.request_subchannels(control, 3)


def test_revoke_order():
    """Tear-down (DESIGN.md §7 decision 7): the receive buffer is revoked before the send buffer."""
    control = ScriptedControl()
    attach(control)
    nvs.detach(control, 0.1)
    assert control.sent[-2:] == [wire.NVSP_MSG_REVOKE_RECEIVE_BUFFER, wire.NVSP_MSG_REVOKE_SEND_BUFFER]


def test_offload_parameters_encoding():
    """pmd#23 (DPDK pitfall): TX+RX is TX_RX_ENABLED, not TX|RX = RX only; untouched = no change."""
    fields = offload_parameters_for(
        {"tcp4_checksum": True}, {"tcp4_checksum": True, "udp4_checksum": True}, True
    )
    assert fields["tcp4_checksum"] == ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED
    assert fields["udp4_checksum"] == ndis.OFFLOAD_CHECKSUM_RX_ENABLED_TX_DISABLED
    assert fields["lso_v2_ipv4"] == fields["lso_v2_ipv6"] == ndis.OFFLOAD_LSO_ENABLED
    assert "ipv4_checksum" not in fields
