"""Transmit parsing, software offloads and the receive path chained as a loopback NIC does it:
a guest's LSO and checksum-offload sends come back to a guest as valid frames."""

from __future__ import annotations

import struct

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from netvsc.host.backends.base import BackendOffloads
from netvsc.host.frames import FrameBatch
from netvsc.host.rxpath import ReceivePath, ReceiveSlots
from netvsc.host.txpath import TransmitPath, apply_software_offloads
from netvsc.vmbus.channel import Channel
from netvsc.wire import ndis, nvsp, rndis
from netvsc.wire.rndis import Ppi

MAC = "02:00:00:00:00:0a"
SECTION = 6144


def test_lso_and_checksum_sends_loop_back_as_valid_frames():
    """host#28-#33, host#19, host#34/#18: one aggregated section with an LSO send (IPv4, VLAN)
    and a UDP send with a checksum request; segmented, checksummed, tagged, then delivered back
    untagged with the VLAN PPI and a verified-good checksum PPI on every frame."""
    send_buffer = np.zeros(SECTION * 64, dtype=np.uint8)
    tx = TransmitPath(send_buffer, SECTION, None)
    payload = bytes(range(256)) * 16  # 4096 bytes -> 3 segments of 1448
    tcp = Ether(src="02:00:00:00:00:0b", dst=MAC) / IP(src="198.18.0.2", dst="198.18.0.1") / TCP(flags="PA")
    lso_frame = bytearray(bytes(tcp / Raw(payload)))
    lso_frame[16:18] = b"\0\0"  # LSOv2: total length zeroed by the guest
    udp = (
        Ether(src="02:00:00:00:00:0b", dst=MAC)
        / IP(src="198.18.0.2", dst="198.18.0.1")
        / UDP(sport=5, dport=6)
    )
    udp_frame = bytearray(bytes(udp / Raw(b"u" * 333)))
    udp_frame[40:42] = b"\0\0"
    section = rndis.aggregate_packet_msgs(
        [
            rndis.encode_packet_msg(
                bytes(lso_frame),
                [
                    Ppi.u32(rndis.PPI_TYPE_LSO, rndis.encode_lso_v2(1448, 34, ipv6=False)),
                    Ppi.u32(rndis.PPI_TYPE_IEEE_8021Q, rndis.encode_vlan_ppi_value(12, priority=2)),
                ],
            ),
            rndis.encode_packet_msg(
                bytes(udp_frame),
                [
                    Ppi.u32(
                        rndis.PPI_TYPE_CHECKSUM_INFO, rndis.encode_checksum_tx_request(ipv4=True, udp=True)
                    )
                ],
            ),
        ],
        8,
    )
    send_buffer[SECTION * 5 : SECTION * 5 + len(section)] = np.frombuffer(section, dtype=np.uint8)
    sent = FrameBatch(8)
    result = tx.parse(5, len(section), [], sent)
    assert (result.kind, result.status, result.frames) == ("data", nvsp.NVSP_STATUS_SUCCESS, 2)

    wire = FrameBatch(16, 2048)
    assert apply_software_offloads(sent, BackendOffloads(), wire) == 0
    assert wire.count == 4
    for frame in wire.frames()[:3]:
        assert Ether(frame)[Dot1Q].vlan == 12

    recv = np.zeros(1 << 20, dtype=np.uint8)
    slots = ReceiveSlots(recv.shape[0], 1806)
    path = ReceivePath(recv, slots, nvsp.RECEIVE_BUFFER_ID, 40)
    area = np.zeros(8 * 4096, dtype=np.uint8)
    host_channel = Channel(area, lambda: None, role="host")
    guest_channel = Channel(area, lambda: None)
    delivered = path.deliver(
        wire,
        [host_channel],
        mac=bytes.fromhex(MAC.replace(":", "")),
        packet_filter=ndis.NDIS_PACKET_TYPE_DIRECTED,
        rss=None,
    )
    assert delivered == 4
    _type, _flags, _tid, extension, _payload = guest_channel.recv()
    count = struct.unpack_from("<I", extension, 4)[0]
    received = []
    for k in range(count):
        byte_count, byte_offset = struct.unpack_from("<II", extension, 8 + 8 * k)
        message = rndis.decode_packet_msg(
            recv[byte_offset : byte_offset + byte_count].tobytes(), limit=byte_count
        )
        checksum = message.ppi(rndis.PPI_TYPE_CHECKSUM_INFO).value
        assert checksum & rndis.CHECKSUM_RX_IP_SUCCEEDED, f"frame {k}: {checksum:#x}"
        assert checksum & (rndis.CHECKSUM_RX_TCP_SUCCEEDED | rndis.CHECKSUM_RX_UDP_SUCCEEDED)
        assert not checksum & (rndis.CHECKSUM_RX_TCP_FAILED | rndis.CHECKSUM_RX_UDP_FAILED)
        vlan = message.ppi(rndis.PPI_TYPE_IEEE_8021Q)
        assert (vlan is not None) == (k < 3)
        received.append(Ether(message.frame))
    assert b"".join(bytes(p[TCP].payload) for p in received[:3]) == payload
    assert bytes(received[3][UDP].payload) == b"u" * 333
