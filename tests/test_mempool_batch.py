"""PacketBatch (ethdev/batch.py): indices plus count, and the views users read packets through."""

from __future__ import annotations

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from netvsc.errors import ConfigError
from netvsc.ethdev import Mempool, MempoolExhausted, PacketBatch

SRC = "02:00:00:00:00:01"
DST = "02:00:00:00:00:02"


@pytest.fixture
def pool(tmp_path):
    with Mempool(32, data_room=1024, headroom=128, root=tmp_path) as created:
        yield created


def _udp(payload: bytes) -> Ether:
    return (
        Ether(src=SRC, dst=DST)
        / IP(src="198.18.0.1", dst="198.18.0.2")
        / UDP(sport=1, dport=2)
        / Raw(payload)
    )


def test_scapy_round_trip(pool):
    """Scapy packets in, the same packets out, including a tagged one and a chained one."""
    frames = [
        _udp(b"hello"),
        Ether(src=SRC, dst=DST) / Dot1Q(vlan=7) / IP(src="198.18.0.1", dst="198.18.0.3") / Raw(b"x" * 40),
        _udp(bytes(range(256)) * 8),  # 2090 bytes: three 896-byte segments
    ]
    batch = PacketBatch.from_frames(pool, frames)
    assert len(batch) == 3 and pool.in_use() == 1 + 1 + 3
    for i, frame in enumerate(frames):
        assert batch.bytes(i) == bytes(frame)
        assert bytes(batch.to_scapy(i)) == bytes(frame)
    assert batch.to_scapy(1)[Dot1Q].vlan == 7
    assert batch.to_scapy(2)[UDP].dport == 2
    assert pool.arrays.nb_segs[batch.indices[2]] == 3
    assert batch.free_all() == 3 and len(batch) == 0
    assert pool.available() == 32


def test_memoryview_is_the_buffer_in_place(pool):
    """memoryview of a single-segment packet writes through; a chain is refused (use bytes())."""
    batch = PacketBatch.from_frames(pool, [b"\x00" * 60, b"\x01" * 2000])
    view = batch.memoryview(0)
    assert len(view) == 60 and not view.readonly
    view[0] = 0xAB
    assert batch.bytes(0)[0] == 0xAB
    with pytest.raises(ConfigError) as caught:
        batch.memoryview(1)
    assert "segments" in str(caught.value)
    batch.free_all()


def test_from_frames_accepts_bytes_like(pool):
    frames = [b"a" * 64, bytearray(b"b" * 64), memoryview(b"c" * 64), np.full(64, 0x64, dtype=np.uint8)]
    batch = PacketBatch.from_frames(pool, frames)
    assert [batch.bytes(i)[:1] for i in range(4)] == [b"a", b"b", b"c", b"d"]
    assert list(batch) == batch.indices[:4].tolist()
    batch.free_all()


def test_from_frames_is_all_or_nothing(pool):
    """An exhausted pool or an oversized frame midway: everything taken so far goes back."""
    with pytest.raises(MempoolExhausted):
        PacketBatch.from_frames(pool, [b"x" * 800] * 33)
    assert pool.available() == 32
    with pytest.raises(ConfigError) as caught:
        PacketBatch.from_frames(pool, [b"x" * 100, b"y" * (pool.max_frame_length() + 1)])
    assert caught.value.parameter == "frame length"
    assert pool.available() == 32


def test_batch_of_indices_for_the_fast_path(pool):
    """A batch is an int32 array and a count; a burst kernel fills indices, then count is set."""
    batch = PacketBatch(8, pool)
    assert batch.indices.dtype == np.int32 and batch.capacity == 8 and len(batch) == 0
    assert pool.alloc_bulk(batch.indices, 5) == 5
    batch.count = 5
    assert pool.in_use() == 5
    assert batch.free_all() == 5 and pool.available() == 32


@pytest.mark.parametrize("capacity", [0, -1, 1 << 17, True])
def test_bad_capacity(capacity):
    with pytest.raises(ConfigError) as caught:
        PacketBatch(capacity)
    assert caught.value.parameter == "capacity"


def test_views_need_a_mempool_and_a_valid_position(pool):
    with pytest.raises(ConfigError):
        PacketBatch(4).bytes(0)
    batch = PacketBatch.from_frames(pool, [b"z" * 64])
    with pytest.raises(ConfigError):
        batch.bytes(1)
    batch.free_all()
