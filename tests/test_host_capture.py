"""pcapng capture of the emulated host: one interface per NIC and direction, readable by scapy and tshark."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import RawPcapNgReader, rdpcap

from netvsc.errors import ConfigError
from netvsc.host.backends.loopback import LoopbackBackend
from netvsc.host.capture import CapturingBackend, PcapngWriter, open_capture, wrap_backend
from netvsc.host.frames import FrameBatch

MAC_A = "02:00:00:00:0a:01"
MAC_B = "02:00:00:00:0b:01"


def frame(sport: int, size: int = 40) -> bytes:
    packet = (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / UDP(sport=sport)
        / (b"p" * size)
    )
    return bytes(packet)


def loop_through(backend, frames: list[bytes], vlan_tci: int = -1) -> None:
    batch = FrameBatch(len(frames) + 1, 2048)
    for raw in frames:
        batch.append(raw, vlan_tci=vlan_tci)
    backend.transmit(batch)
    back = FrameBatch(len(frames) + 1, 2048)
    assert backend.poll(back, len(frames) + 1) == len(frames)


def test_capture_has_one_interface_per_nic_and_direction(tmp_path):
    """Every frame crossing the host is recorded on the interface of its NIC and direction."""
    path = tmp_path / "host.pcapng"
    started = time.time()
    with PcapngWriter(str(path)) as writer:
        nic0 = CapturingBackend(LoopbackBackend(), writer, 0)
        nic1 = CapturingBackend(LoopbackBackend(), writer, 1)
        loop_through(nic0, [frame(1), frame(2)])
        loop_through(nic1, [frame(3)], vlan_tci=(2 << 13) | 44)
        assert writer.interfaces == {(0, "tx"): 0, (0, "rx"): 1, (1, "tx"): 2, (1, "rx"): 3}
    packets = rdpcap(str(path))
    seen = [(p.sniffed_on, p[UDP].sport) for p in packets]
    assert seen == [
        ("nic0-tx", 1),
        ("nic0-tx", 2),
        ("nic0-rx", 1),
        ("nic0-rx", 2),
        ("nic1-tx", 3),
        ("nic1-rx", 3),
    ]
    assert all(started - 1 <= float(p.time) <= time.time() + 1 for p in packets), (
        "timestamps are wall-clock ns"
    )
    # VLAN metadata is written as a tag, as the frame is on the wire.
    assert packets[4][Dot1Q].vlan == 44 and packets[4][Dot1Q].prio == 2
    with RawPcapNgReader(str(path)) as reader:
        list(reader)
        assert [entry[0] for entry in reader.interfaces] == [1, 1, 1, 1], "link type Ethernet"
        assert {entry[1] for entry in reader.interfaces} == {65535}, "snaplen 65535"


def test_capture_readable_by_tshark(tmp_path):
    """tshark reads the file with its interfaces and directions (skipped when tshark is absent)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.skip("tshark not installed (apt-get install -y tshark)")
    path = tmp_path / "host.pcapng"
    with PcapngWriter(str(path)) as writer:
        loop_through(CapturingBackend(LoopbackBackend(), writer, 0), [frame(7)])
    result = subprocess.run(
        [
            tshark,
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "udp.srcport",
            "-e",
            "frame.packet_flags_direction",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [row[:2] for row in rows] == [["nic0-tx", "7"], ["nic0-rx", "7"]], result.stdout
    assert [int(row[2], 16) for row in rows] == [2, 1], "outbound for guest transmits, inbound for receives"


def test_snaplen_truncates_but_keeps_original_length(tmp_path):
    """A frame longer than the snap length is cut, its original length kept."""
    path = tmp_path / "short.pcapng"
    with PcapngWriter(str(path), snaplen=64) as writer:
        writer.write_frame(0, "rx", frame(9, size=500))
    with RawPcapNgReader(str(path)) as reader:
        ((data, meta),) = list(reader)
    assert len(data) == 64 and meta.wirelen == len(frame(9, size=500))


def test_wrap_backend_shares_one_file_and_closes_with_the_last_nic(tmp_path):
    """--pcap-out: all NICs write one file; it is complete once the last wrapped backend closes."""
    path = str(tmp_path / "shared.pcapng")
    nic0 = wrap_backend(LoopbackBackend(), path, nic_index=0)
    nic1 = wrap_backend(LoopbackBackend(), path, nic_index=1)
    assert nic0.writer is nic1.writer
    loop_through(nic0, [frame(1)])
    loop_through(nic1, [frame(2)])
    assert nic0.counters()["captured"] == 2, "per NIC, though the file is shared"
    nic0.close()
    assert not nic1.writer.closed
    loop_through(nic1, [frame(3)])
    nic1.close()
    assert nic1.writer.closed
    assert sorted({p.sniffed_on for p in rdpcap(path)}) == ["nic0-rx", "nic0-tx", "nic1-rx", "nic1-tx"]
    assert len(rdpcap(path)) == 6


def test_wrapper_passes_the_backend_through(tmp_path):
    """The wrapper shows the inner offloads, link, fd and counters; a None writer records nothing."""
    inner = LoopbackBackend()
    wrapped = CapturingBackend(inner, None, 0)
    assert wrapped.offloads is inner.offloads and wrapped.fileno() is None
    wrapped.link_up = False
    assert inner.link_up is False and wrapped.link_up is False
    loop_through(wrapped, [frame(1)])
    assert wrapped.counters()["tx_frames"] == 1 and wrapped.counters()["captured"] == 0


def test_classic_pcap_and_bad_arguments(tmp_path):
    """A .pcap name gets the classic format; bad directions and paths are clear errors."""
    path = tmp_path / "classic.pcap"
    with open_capture(str(path)) as writer:
        writer.write_frame(0, "tx", frame(5))
    assert rdpcap(str(path))[0][UDP].sport == 5
    with PcapngWriter(str(tmp_path / "x.pcapng")) as writer, pytest.raises(ConfigError) as caught:
        writer.interface(0, "sideways")
    assert caught.value.parameter == "direction"
    with pytest.raises(ConfigError):
        PcapngWriter(str(tmp_path / "missing-dir" / "x.pcapng"))
