"""NVS (NVSP) bring-up and tear-down of a NetVSC port over its primary channel.

Layer 5 (pmd). The rules (legal messages, version order, completion matching) live in
``netvsc.proto.nvsp``; this module drives that guest-role session through ``ControlChannel``
requests, each with a deadline: version negotiation newest-down (6.1, 6, 5, 4, 2, 1), NDIS
config (MTU + 14, VLAN, SR-IOV from NVSP 5) and version (6.30 from NVSP 5, else 6.1), the receive
buffer (0xCAFE, exactly one section) and the chimney send buffer (0xFACE, section size non-zero
and a multiple of 4), the subchannel request (the granted count may be fewer) and the revokes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from netvsc.errors import DeviceError, ProtocolError
from netvsc.pmd.control import ControlChannel
from netvsc.proto import nvsp as proto_nvsp
from netvsc.wire import nvsp as wire

__all__ = ["NvsAttachment", "attach", "detach", "request_subchannels"]

log = logging.getLogger(__name__)


@dataclass
class NvsAttachment:
    """What NVS bring-up negotiated."""

    version: int
    ndis_version: int
    mtu: int
    recv_section_count: int
    recv_section_size: int
    chimney_section_size: int
    chimney_section_count: int


def negotiate(control: ControlChannel) -> int:
    """INIT from the newest candidate down; the accepted version (pmd#2)."""
    version = control.nvsp.next_candidate()
    while version is not None:
        event = control.nvsp_init(version)
        if isinstance(event, proto_nvsp.InitComplete) and event.accepted:
            log.info("NVSP %s negotiated", proto_nvsp.version_name(version))
            return version
        if isinstance(event, proto_nvsp.ProtocolViolation):
            control.counters["protocol_errors"] += 1
        version = control.nvsp.next_candidate(version)
    raise DeviceError("the host accepted none of the NVSP versions 6.1, 6, 5, 4, 2, 1")


def _completion(event: proto_nvsp.Event, what: str):
    if not isinstance(event, proto_nvsp.Completion) or event.record is None:
        raise ProtocolError(f"{what}: unexpected reply {event}")
    if event.record.status != wire.NVSP_STATUS_SUCCESS:
        raise DeviceError(f"{what}: host status {event.record.status}")
    return event.record


def attach(
    control: ControlChannel, *, mtu: int, recv_gpadl: int, send_gpadl: int, send_buffer_length: int
) -> NvsAttachment:
    """Negotiate, configure NDIS and connect both buffers (pmd#2-6)."""
    version = negotiate(control)
    capabilities = wire.NDIS_CONFIG_CAP_IEEE8021Q
    if version >= wire.NVSP_VERSION_5:
        capabilities |= wire.NDIS_CONFIG_CAP_SRIOV
    messages = control.nvsp.bringup_messages(
        mtu=mtu + wire.NDIS_CONFIG_MTU_ETHERNET_HEADER,
        capabilities=capabilities,
        receive_gpadl=recv_gpadl,
        send_gpadl=send_gpadl,
    )
    recv = chimney = None
    for message_type, payload, completion_requested in messages:
        if not completion_requested:
            control.nvsp_send(payload)
            continue
        if message_type == wire.NVSP_MSG_SEND_RECEIVE_BUFFER:
            recv = _completion(control.nvsp_request(payload, "receive buffer completion"), "RECV_BUF")
            if recv.num_sections != wire.RECEIVE_BUFFER_SECTION_COUNT:
                raise ProtocolError(f"receive buffer: {recv.num_sections} section groups, expected exactly 1")
        else:
            chimney = _completion(control.nvsp_request(payload, "send buffer completion"), "SEND_BUF")
            if chimney.section_size == 0 or chimney.section_size % 4:
                control.nvsp_send(wire.encode_revoke_send_buffer(wire.SEND_BUFFER_ID_DPDK))
                raise ProtocolError(
                    f"send buffer section size {chimney.section_size}: must be a non-zero multiple of 4"
                )
    assert recv is not None and chimney is not None
    return NvsAttachment(
        version=version,
        ndis_version=wire.ndis_version_for(version),
        mtu=mtu,
        recv_section_count=recv.num_sub_allocations,
        recv_section_size=recv.sub_allocation_size,
        chimney_section_size=chimney.section_size,
        chimney_section_count=send_buffer_length // chimney.section_size,
    )


def request_subchannels(control: ControlChannel, count: int) -> int:
    """Ask for ``count`` subchannels; the number the host granted (may be fewer)."""
    event = control.nvsp_request(wire.encode_subchannel_request(count), "subchannel completion")
    record = _completion(event, "SUBCHANNEL")
    granted = int(record.num_subchannels)
    if granted > count:
        raise ProtocolError(f"host granted {granted} subchannels, {count} asked")
    return granted


def detach(control: ControlChannel, read_timeout: float) -> None:
    """Revoke the receive and send buffers (no replies; DESIGN.md §7 decision 7 order).

    The host has no reply to wait for, so the wait is for the host to have read the receive
    buffer revoke (DPDK sleeps 200 ms instead). Nothing waits for the second: a host may stop
    reading the channel after the first revoke (spec/host.md host#64).
    """
    if control.nvsp.state not in (proto_nvsp.NvspState.INIT, proto_nvsp.NvspState.READY):
        return
    if control.nvsp.negotiated.receive_buffer is not None:
        control.nvsp_send(wire.encode_revoke_receive_buffer(wire.RECEIVE_BUFFER_ID))
        control.wait_host_read(read_timeout)
    if control.nvsp.negotiated.send_buffer is not None:
        control.nvsp_send(wire.encode_revoke_send_buffer(wire.SEND_BUFFER_ID_DPDK))
