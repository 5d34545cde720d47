"""RNDIS control of a NetVSC port: INITIALIZE, queries, sets, HALT.

Layer 5 (pmd). Request ids and response matching belong to ``netvsc.proto.rndis`` (guest role);
this module places each control message in DMA-able memory (one 4 KiB Hyper-V page, never
crossing it: the page size is a protocol constant, not the system's), sends it as a GPA-direct
packet on the primary channel, and waits (with the control deadline) for the response, which
arrives in a transfer-page packet that ``ControlChannel`` completes to the host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from netvsc.errors import ConfigError, DeviceError, ProtocolError
from netvsc.pmd.control import ControlChannel
from netvsc.wire import ndis
from netvsc.wire import nvsp as wire_nvsp
from netvsc.wire import rndis as wire
from netvsc.wire.vmbus import HV_PAGE_SIZE, encode_gpa_direct_packet

__all__ = ["RndisControl", "RndisLimits", "allocate_control_memory", "offload_parameters_for"]

log = logging.getLogger(__name__)

CONTROL_MEMORY_SIZE = HV_PAGE_SIZE  # one message at a time, so one page


def allocate_control_memory(root):
    """DMA memory for control messages: ``vmbus.dma`` when present, else the emulated region."""
    try:
        from netvsc.vmbus.dma import allocate_dma  # E2's module
    except ImportError:
        from netvsc.vmbus.guestmem import GuestMemoryRegion

        return GuestMemoryRegion(CONTROL_MEMORY_SIZE, root)
    return allocate_dma(CONTROL_MEMORY_SIZE, root=root)


def _page_range(memory, offset: int, length: int):
    if hasattr(memory, "page_range"):
        return memory.page_range(offset, length)
    return memory.page_ranges(offset, length)[0]


@dataclass(frozen=True)
class RndisLimits:
    """TX aggregation limits from INITIALIZE_CMPLT (pmd#7)."""

    max_bytes: int
    max_packets: int
    alignment: int


class RndisControl:
    """RNDIS control requests of one port."""

    def __init__(self, control: ControlChannel, memory) -> None:
        self.control = control
        self.memory = memory
        self.limits: RndisLimits | None = None

    def _send_gpa(self, message: bytes) -> int:
        if len(message) > CONTROL_MEMORY_SIZE:
            raise ConfigError("rndis control message length", len(message), f"at most {CONTROL_MEMORY_SIZE}")
        control = self.control
        with control.ring_lock:
            self.memory.array[: len(message)] = np.frombuffer(message, dtype=np.uint8)
            nvsp_payload = wire_nvsp.encode_send_rndis_packet(wire_nvsp.RNDIS_CHANNEL_TYPE_CONTROL)
            transaction_id = control.nvsp.send(nvsp_payload, True)
            packet = encode_gpa_direct_packet(
                [_page_range(self.memory, 0, len(message))], nvsp_payload, transaction_id
            )
            control.channel.send_raw(np.frombuffer(packet, dtype=np.uint8).copy())
            control.pending_sends.add(transaction_id)
        return transaction_id

    def _request(self, request, what: str, timeout: float | None = None):
        response = self.control.rndis_request(request, self._send_gpa, what, timeout)
        return response

    def initialize(self) -> RndisLimits:
        response = self._request(self.control.rndis.request_initialize(), "INITIALIZE_CMPLT")
        if response.status != wire.RNDIS_STATUS_SUCCESS:
            raise DeviceError(f"RNDIS INITIALIZE failed with status {response.status:#x}")
        message = response.message
        # Alignment 2^factor, forced to at least 4 bytes (pmd#7).
        alignment = max(4, 1 << min(int(message.packet_alignment_factor), 12))
        self.limits = RndisLimits(
            int(message.max_transfer_size), int(message.max_packets_per_message), alignment
        )
        return self.limits

    def query(
        self, oid: int, info: bytes = b"", *, expected: int | None = None, timeout: float | None = None
    ) -> bytes:
        name = ndis.OID_NAMES.get(oid, f"{oid:#x}")
        response = self._request(self.control.rndis.request_query(oid, info), f"query {name}", timeout)
        if response.status != wire.RNDIS_STATUS_SUCCESS:
            raise DeviceError(f"RNDIS query {name}: status {response.status:#x}")
        answer = response.message.info
        if expected is not None:
            if len(answer) < expected:
                raise ProtocolError(f"RNDIS query {name}: {len(answer)} bytes, expected {expected}")
            answer = answer[:expected]
        return answer

    def query_u32(self, oid: int) -> int:
        return int.from_bytes(self.query(oid, expected=4), "little")

    def set(self, oid: int, value: bytes, timeout: float | None = None) -> None:
        name = ndis.OID_NAMES.get(oid, f"{oid:#x}")
        response = self._request(self.control.rndis.request_set(oid, value), f"set {name}", timeout)
        if response.status != wire.RNDIS_STATUS_SUCCESS:
            raise DeviceError(f"RNDIS set {name}: status {response.status:#x}")

    def set_packet_filter(self, value: int) -> None:
        self.set(ndis.OID_GEN_CURRENT_PACKET_FILTER, value.to_bytes(4, "little"))

    # -- the queries of attach ---------------------------------------------------------------

    def mac_address(self) -> bytes:
        return self.query(ndis.OID_802_3_PERMANENT_ADDRESS, expected=ndis.MAC_ADDRESS_SIZE)

    def max_frame_size(self) -> int:
        return self.query_u32(ndis.OID_GEN_MAXIMUM_FRAME_SIZE)

    def link_connected(self) -> bool:
        return self.query_u32(ndis.OID_GEN_MEDIA_CONNECT_STATUS) == ndis.NDIS_MEDIA_STATE_CONNECTED

    def link_speed_mbps(self) -> int:
        # 100 bit/s units: Mbps = value / 10000 (pmd#40).
        return self.query_u32(ndis.OID_GEN_LINK_SPEED) // 10000

    def offload_capabilities(self):
        answer = self.query(ndis.OID_TCP_OFFLOAD_HARDWARE_CAPABILITIES, ndis.encode_offload_capabilities())
        return ndis.decode_offload_capabilities(answer)

    def rss_capabilities(self):
        answer = self.query(ndis.OID_GEN_RECEIVE_SCALE_CAPABILITIES, ndis.encode_rss_capabilities())
        return ndis.decode_rss_capabilities(answer)

    def set_rss_parameters(self, hash_information: int, table, key: bytes, *, disable: bool) -> None:
        flags = ndis.RSS_PARAM_FLAG_DISABLE_RSS if disable else 0
        value = ndis.encode_rss_parameters(hash_information, table, key, flags=flags)
        self.set(ndis.OID_GEN_RECEIVE_SCALE_PARAMETERS, value)

    def set_offload_parameters(self, **fields: int) -> None:
        self.set(ndis.OID_TCP_OFFLOAD_PARAMETERS, ndis.encode_offload_parameters(**fields))

    def halt(self, timeout: float) -> bool:
        """HALT has no RNDIS reply (DESIGN.md §7 decision 7: first step of tear-down); waits up
        to ``timeout`` for the packet's VMBus completion, so the host has taken it before the
        buffers are revoked (a revoke ends the host's processing of the channel)."""
        _, message = self.control.rndis.request_halt()
        transaction_id = self._send_gpa(message)
        try:
            self.control.wait_for(
                lambda: transaction_id not in self.control.pending_sends, "HALT completion", timeout
            )
        except TimeoutError:
            return False
        return True


def offload_parameters_for(
    tx_checksum: dict[str, bool], rx_checksum: dict[str, bool], tso: bool
) -> dict[str, int]:
    """NDIS offload parameters for the requested offloads: per protocol the enumeration value.

    DPDK pitfall avoided: the values are an enumeration (off, TX, RX, TX+RX), not bit flags;
    OR-ing TX (2) and RX (3) gives 3 = "RX only". TX+RX is encoded as 4 explicitly.
    Protocols not requested stay "no change".
    """
    fields: dict[str, int] = {}
    for name in ("ipv4_checksum", "tcp4_checksum", "udp4_checksum", "tcp6_checksum", "udp6_checksum"):
        tx, rx = tx_checksum.get(name, False), rx_checksum.get(name, False)
        if tx and rx:
            fields[name] = ndis.OFFLOAD_CHECKSUM_TX_RX_ENABLED
        elif tx:
            fields[name] = ndis.OFFLOAD_CHECKSUM_TX_ENABLED_RX_DISABLED
        elif rx:
            fields[name] = ndis.OFFLOAD_CHECKSUM_RX_ENABLED_TX_DISABLED
    if tso:
        fields["lso_v2_ipv4"] = ndis.OFFLOAD_LSO_ENABLED
        fields["lso_v2_ipv6"] = ndis.OFFLOAD_LSO_ENABLED
    return fields
