"""Traffic for the data-path tests: frames that are a pure function of a sequence number, built
straight into mempool buffers and checked byte for byte on arrival, a burst at a time.

Frame ``seq`` of a ``Traffic`` is Ethernet / IPv4 / UDP from ``src_mac`` to ``dst_mac``; its length
(``min_size``..``max_size``), its flow (UDP ports and IP addresses, so RSS spreads the flows over the
queues) and every payload byte derive from ``seq``; the first 8 payload bytes are ``seq`` itself. The
receive side reads ``seq`` from the frame, regenerates the frame and compares every byte, following
the mbuf chain (and external buffers) the way an application reads a packet: through the
mempool's documented metadata (data_off, data_len, next_seg, ext_owner, ext_base), not through
the driver. ``seen[seq]`` counts arrivals, so losses and duplicates show too.

The kernels run interpreted under NUMBA_DISABLE_JIT=1 (about a thousand times slower): tests scale
their counts down then (``SLOW``).
"""

from __future__ import annotations

import numpy as np
from numba import config, njit

from netvsc.ethdev import mempool as mp
from netvsc.ethdev.mempool import pool_from_table

SLOW = bool(config.DISABLE_JIT)

ETH_IP_UDP = 14 + 20 + 8
SEQ_AT = ETH_IP_UDP  # the sequence number: the first 8 bytes of the UDP payload
MIN_FRAME = ETH_IP_UDP + 8 + 14  # 64

# Results of check_frames (one row per call): counts, then the first bad one.
R_GOOD, R_BAD_SEQ, R_BAD_LENGTH, R_BAD_BYTES, R_DUPLICATE, R_FIRST_BAD_SEQ = range(6)
R_WORDS = 8


@njit(nogil=True, cache=True)
def _mix(value):
    """splitmix64's finaliser: a well-spread 64-bit function of ``value``."""
    z = np.uint64(value) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(nogil=True, cache=True)
def frame_length(seq, min_size, max_size):
    return min_size + np.int64(_mix(seq * 3 + 1) % np.uint64(max_size - min_size + 1))


@njit(nogil=True, cache=True)
def expected_frame(seq, length, header, out):
    """Frame ``seq`` (``length`` bytes) into ``out``; ``header`` = its 42 header bytes."""
    for position in range(ETH_IP_UDP):
        out[position] = header[position]
    for b in range(8):
        out[SEQ_AT + b] = (np.uint64(seq) >> np.uint64(8 * b)) & np.uint64(0xFF)
    position = SEQ_AT + 8
    while position < length:
        word = _mix(np.uint64(seq) * np.uint64(0x100000001B3) + np.uint64(position))
        for b in range(min(8, length - position)):
            out[position + b] = (word >> np.uint64(8 * b)) & np.uint64(0xFF)
        position += 8


@njit(nogil=True, cache=True)
def _ip_checksum(header):
    total = 0
    for k in range(14, 34, 2):
        total += (np.int64(header[k]) << 8) | np.int64(header[k + 1])
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


@njit(nogil=True, cache=True)
def frame_header(template, seq, length, flows, header):
    """The 42 header bytes of frame ``seq`` into ``header``."""
    for k in range(ETH_IP_UDP):
        header[k] = template[k]
    flow = seq % flows
    ip_length = length - 14
    header[16] = (ip_length >> 8) & 0xFF
    header[17] = ip_length & 0xFF
    header[18] = (seq >> 8) & 0xFF  # IP id
    header[19] = seq & 0xFF
    header[24] = 0
    header[25] = 0
    header[26] = 198  # src 198.18.<flow>, dst 198.19.<flow>.1 (DESIGN.md decision 13)
    header[27] = 18
    header[28] = (flow >> 8) & 0xFF
    header[29] = flow & 0xFF
    header[30] = 198
    header[31] = 19
    header[32] = flow & 0xFF
    header[33] = 1
    checksum = _ip_checksum(header)
    header[24] = (checksum >> 8) & 0xFF
    header[25] = checksum & 0xFF
    sport = 1024 + flow % 60000
    dport = 2000 + (flow * 7919) % 60000
    header[34] = (sport >> 8) & 0xFF
    header[35] = sport & 0xFF
    header[36] = (dport >> 8) & 0xFF
    header[37] = dport & 0xFF
    udp_length = length - 34
    header[38] = (udp_length >> 8) & 0xFF
    header[39] = udp_length & 0xFF
    header[40] = 0  # no UDP checksum
    header[41] = 0


@njit(nogil=True, cache=True)
def build_frames(ptab, template, first_seq, count, flows, min_size, max_size, out, header, scratch):
    """Frames ``first_seq`` .. ``first_seq + count - 1`` into new (chained) mbufs; their heads
    into ``out``. Returns how many were built (fewer when the pool runs short)."""
    pool = pool_from_table(ptab)
    room = pool.state[mp.ST_DATA_ROOM] - pool.state[mp.ST_HEADROOM]
    data_room = pool.state[mp.ST_DATA_ROOM]
    chain = np.empty(mp.SEGMENTS_MAX, dtype=np.int32)
    for k in range(count):
        seq = first_seq + k
        length = frame_length(seq, min_size, max_size)
        frame_header(template, seq, length, flows, header)
        expected_frame(seq, length, header, scratch)
        needed = (length + room - 1) // room
        if mp.mp_alloc_bulk(pool, chain, needed) == 0:
            return k
        position = 0
        for s in range(needed):
            segment = chain[s]
            at = np.int64(segment) * data_room + pool.data_off[segment]
            piece = min(room, length - position)
            pool.data[at : at + piece] = scratch[position : position + piece]
            position += piece
            pool.data_len[segment] = piece
            pool.next_seg[segment] = chain[s + 1] if s + 1 < needed else -1
        pool.pkt_len[chain[0]] = length
        pool.nb_segs[chain[0]] = needed
        out[k] = chain[0]
    return count


@njit(nogil=True, cache=True)
def _segment_bytes(pool, segment):
    """(memory, start, length) of a segment's data, as an application reads it; start -1 if the
    metadata points outside the memory."""
    offset = np.int64(pool.data_off[segment])
    length = np.int64(pool.data_len[segment])
    owner = pool.ext_owner[segment]
    if owner >= 0:
        memory = mp.mp_external_memory(pool, owner)
        start = pool.ext_base[segment] + offset
    else:
        memory = pool.data
        start = np.int64(segment) * pool.state[mp.ST_DATA_ROOM] + offset
    if offset < 0 or length < 0 or start < 0 or start + length > memory.shape[0]:
        return memory, np.int64(-1), length
    return memory, start, length


@njit(nogil=True, cache=True)
def _packet_seq(pool, head):
    """The 8-byte sequence number at SEQ_AT of the packet, or -1."""
    seq = np.uint64(0)
    got = 0
    position = 0
    segment = head
    while segment >= 0 and got < 8:
        memory, start, length = _segment_bytes(pool, segment)
        if start < 0:
            return -1
        for b in range(length):
            at = position + b
            if SEQ_AT <= at < SEQ_AT + 8:
                seq |= np.uint64(memory[start + b]) << np.uint64(8 * (at - SEQ_AT))
                got += 1
        position += length
        segment = pool.next_seg[segment]
    if got < 8:
        return -1
    return np.int64(seq)


@njit(nogil=True, cache=True)
def check_frames(ptab, heads, count, template, flows, min_size, max_size, seen, results, header, scratch):
    """Check ``count`` received packets against the frames they claim to be (see the module);
    ``seen[seq] += 1`` for each; results[R_*] accumulate. Frees nothing."""
    pool = pool_from_table(ptab)
    n = pool.refcnt.shape[0]
    for k in range(count):
        head = heads[k]
        seq = _packet_seq(pool, head) if 0 <= head < n else -1
        if seq < 0 or seq >= seen.shape[0]:
            results[R_BAD_SEQ] += 1
            continue
        seen[seq] += 1
        if seen[seq] > 1:
            results[R_DUPLICATE] += 1
        length = frame_length(seq, min_size, max_size)
        frame_header(template, seq, length, flows, header)
        expected_frame(seq, length, header, scratch)
        good = pool.pkt_len[head] == length
        position = 0
        segment = head
        segments = 0
        while good and segment >= 0:
            memory, start, piece = _segment_bytes(pool, segment)
            if start < 0 or position + piece > length or segments >= mp.SEGMENTS_MAX:
                good = False
                break
            for b in range(piece):
                if memory[start + b] != scratch[position + b]:
                    good = False
                    break
            position += piece
            segment = pool.next_seg[segment]
            segments += 1
        if good and position != length:
            good = False
        if good:
            results[R_GOOD] += 1
        else:
            if pool.pkt_len[head] != length or position != length:
                results[R_BAD_LENGTH] += 1
            else:
                results[R_BAD_BYTES] += 1
            if results[R_FIRST_BAD_SEQ] < 0:
                results[R_FIRST_BAD_SEQ] = seq


def template(src_mac: bytes, dst_mac: bytes) -> np.ndarray:
    """The fixed part of every frame's 42 header bytes (fields that vary are patched per frame)."""
    header = bytearray(ETH_IP_UDP)
    header[0:6] = dst_mac
    header[6:12] = src_mac
    header[12:14] = b"\x08\x00"
    header[14] = 0x45
    header[20:22] = b"\x40\x00"  # DF: a UDP frame the soft-checksum rule leaves alone
    header[22] = 64
    header[23] = 17
    return np.frombuffer(bytes(header), dtype=np.uint8).copy()


class Traffic:
    """Frames ``0 .. total - 1`` of one traffic pattern: build bursts, check arrivals."""

    def __init__(
        self,
        src_mac: bytes,
        dst_mac: bytes,
        total: int,
        *,
        flows: int = 64,
        min_size: int = MIN_FRAME,
        max_size: int = 1514,
    ) -> None:
        if not MIN_FRAME <= min_size <= max_size:
            raise ValueError(f"frame sizes {min_size}..{max_size}: at least {MIN_FRAME}")
        self.template = template(src_mac, dst_mac)
        self.total = total
        self.flows = flows
        self.min_size = min_size
        self.max_size = max_size
        self.seen = np.zeros(total, dtype=np.int32)
        self.results = np.zeros(R_WORDS, dtype=np.int64)
        self.results[R_FIRST_BAD_SEQ] = -1
        self._header = np.zeros(ETH_IP_UDP, dtype=np.uint8)
        self._check_header = np.zeros(ETH_IP_UDP, dtype=np.uint8)
        self._scratch = np.zeros(max_size, dtype=np.uint8)
        self._check_scratch = np.zeros(max_size, dtype=np.uint8)

    def length(self, seq: int) -> int:
        with np.errstate(over="ignore"):
            return int(frame_length(seq, self.min_size, self.max_size))

    def frame(self, seq: int) -> bytes:
        """Frame ``seq`` as bytes (for the few checks done in Python)."""
        length = self.length(seq)
        header = np.zeros(ETH_IP_UDP, dtype=np.uint8)
        out = np.zeros(length, dtype=np.uint8)
        with np.errstate(over="ignore"):
            frame_header(self.template, seq, length, self.flows, header)
            expected_frame(seq, length, header, out)
        return out.tobytes()

    def build(self, pool, first_seq: int, count: int, out: np.ndarray) -> int:
        count = min(count, self.total - first_seq, out.shape[0])
        if count <= 0:
            return 0
        with np.errstate(over="ignore"):  # the hash wraps on purpose (interpreted mode warns)
            return int(
                build_frames(
                    pool.table.table,
                    self.template,
                    first_seq,
                    count,
                    self.flows,
                    self.min_size,
                    self.max_size,
                    out,
                    self._header,
                    self._scratch,
                )
            )

    def check(self, pool, heads: np.ndarray, count: int) -> None:
        if count:
            with np.errstate(over="ignore"):
                check_frames(
                    pool.table.table,
                    heads,
                    count,
                    self.template,
                    self.flows,
                    self.min_size,
                    self.max_size,
                    self.seen,
                    self.results,
                    self._check_header,
                    self._check_scratch,
                )

    @property
    def good(self) -> int:
        return int(self.results[R_GOOD])

    def summary(self) -> dict[str, int]:
        r = self.results
        return {
            "good": int(r[R_GOOD]),
            "bad_seq": int(r[R_BAD_SEQ]),
            "bad_length": int(r[R_BAD_LENGTH]),
            "bad_bytes": int(r[R_BAD_BYTES]),
            "duplicates": int(r[R_DUPLICATE]),
            "first_bad_seq": int(r[R_FIRST_BAD_SEQ]),
            "missing": int(np.count_nonzero(self.seen == 0)),
        }


def pump(
    traffic: Traffic,
    tx_port,
    tx_pool,
    rx_port,
    rx_pool,
    *,
    tx_queues: int,
    rx_queues: int,
    window: int,
    burst: int = 32,
    stall_timeout: float = 20.0,
) -> dict:
    """Send frames ``0 .. traffic.total - 1`` from ``tx_port`` (round robin over its queues) and
    check each as it arrives at ``rx_port`` (every queue polled), with at most ``window``
    frames sent and not yet received: the host drops, never queues, what its receive slots
    cannot take, and a lossless test must not outrun them. Stops when every frame arrived;
    AssertionError when nothing arrives for ``stall_timeout`` seconds. Returns frames per RX
    queue and the elapsed time."""
    import time

    from netvsc.ethdev.batch import PacketBatch

    batches = [PacketBatch(burst, tx_pool) for _ in range(tx_queues)]
    rx = PacketBatch(max(burst, 64))
    per_queue = [0] * rx_queues
    built = received = 0
    started = last_progress = time.monotonic()
    while received < traffic.total:
        for q, batch in enumerate(batches):
            room = min(burst - batch.count, window - (built - received), traffic.total - built)
            if room > 0:
                made = traffic.build(tx_pool, built, room, batch.indices[batch.count :])
                batch.count += made
                built += made
            if batch.count:
                tx_port.tx_burst(q, batch)
        progress = False
        for q in range(rx_queues):
            n = rx_port.rx_burst(q, rx)
            if n:
                traffic.check(rx_pool, rx.indices, n)
                rx_pool.free_bulk(rx.indices, n)
                per_queue[q] += n
                received += n
                progress = True
        now = time.monotonic()
        if progress:
            last_progress = now
        elif now - last_progress > stall_timeout:
            raise AssertionError(
                f"no frame for {stall_timeout} s: {received} of {traffic.total} received, {built} built; "
                f"{traffic.summary()}; rx {rx_port.stats()}; tx {tx_port.stats()}"
            )
    for batch in batches:
        batch.free_all()
    return {"per_queue": per_queue, "seconds": time.monotonic() - started}
