"""The guest-to-host transmit path of the emulated host: the RNDIS stream of one
SEND_RNDIS_PACKET, parsed into frames with their offload requests (spec/host.md 3.1-3.4), and the
software fallback for offloads a backend cannot do.

Layer 7 (host).

- ``TransmitPath.parse`` reads the stream as the send-buffer section bytes followed by the GPA
  ranges (3.1). The first RNDIS message type decides: PACKET is data, anything else is a
  control message for the RNDIS engine. Data messages (several may be concatenated, each at the
  previous one's length) are validated as OpenVMM does (3.2, 3.4) in one numba call; any
  failure makes the whole VMBus packet a FAILURE (status 2) and appends nothing.
- ``apply_software_offloads`` performs, with the kernels of ``fastpath.offload``, the checksums,
  LSO segmentation and VLAN insertion the backend's ``BackendOffloads`` does not claim; the
  one place the host does transmit offloads in software (backends do none of their own).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, ProtocolError
from netvsc.fastpath import offload
from netvsc.fastpath.atomics import copy_bytes
from netvsc.fastpath.borrow import borrowed
from netvsc.host.backends.base import BackendOffloads
from netvsc.host.frames import (
    TX_CSUM_IP,
    TX_CSUM_TCP,
    TX_CSUM_UDP,
    TX_IPV4,
    TX_IPV6,
    TX_LSO,
    FrameBatch,
)
from netvsc.wire import nvsp, rndis
from netvsc.wire.vmbus import HV_PAGE_SIZE

if TYPE_CHECKING:
    from netvsc.host.guestmem import GuestMemory

__all__ = [
    "DEFAULT_MAX_GPA_RANGES",
    "MAX_MESSAGES_PER_PACKET",
    "TransmitPath",
    "TxParseResult",
    "apply_software_offloads",
    "software_work_needed",
    "stream_to_batch",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_GPA_RANGES = 32  # DESIGN.md §7 decision 6
# PACKET messages one VMBus packet may carry: guests are told 8 (max_packets_per_message,
# host.md 4.2); the host takes up to twice that and fails a packet with more.
MAX_MESSAGES_PER_PACKET = 16

_PACKET_HEADER = rndis.RNDIS_PACKET_HEADER_SIZE
_MIN_DATA_OFFSET = rndis.RNDIS_PACKET_MIN_DATA_OFFSET
_RNDIS_BASE = rndis.RNDIS_OFFSET_BASE
_PPI_HEADER = rndis.PPI_HEADER_SIZE
_PPI_CHECKSUM = rndis.PPI_TYPE_CHECKSUM_INFO
_PPI_LSO = rndis.PPI_TYPE_LSO
_PPI_VLAN = rndis.PPI_TYPE_IEEE_8021Q
_CSUM_IPV4 = rndis.CHECKSUM_TX_IPV4
_CSUM_IPV6 = rndis.CHECKSUM_TX_IPV6
_CSUM_TCP = rndis.CHECKSUM_TX_TCP
_CSUM_UDP = rndis.CHECKSUM_TX_UDP
_CSUM_IP_HEADER = rndis.CHECKSUM_TX_IP_HEADER
_LSO_TYPE = rndis.LSO_V2_TYPE
_LSO_IPV6 = rndis.LSO_V2_IPV6
_MIN_L4_IPV4 = 14 + 20
_MIN_L4_IPV6 = 14 + 40

# Columns of the per-message metadata the parse kernel fills.
_M_START, _M_LENGTH, _M_FLAGS, _M_L4, _M_MSS, _M_VLAN = range(6)
_META_COLUMNS = 6

# Parse errors (negative kernel results), with their reasons.
_REASONS = {
    -1: "stream shorter than an RNDIS header",
    -2: "a message after the first is not a PACKET",
    -3: "message length below 44 or past the end of the stream",
    -4: "non-zero OOB data or vc_handle",
    -5: "data_length 0",
    -6: "data area outside the message",
    -7: "PPI area outside the message or misaligned",
    -8: "PPI of size 0, overrunning, or with a bad offset",
    -9: "RNDIS header and PPIs not within the first contiguous range",
    -10: "bad transport header offset",
    -11: "LSO PPI not LSOv2, MSS 0, or TCP header outside the frame",
    -12: "frame larger than a batch slot",
    -13: "checksum request without IPv4 or IPv6",
    -14: f"more than {MAX_MESSAGES_PER_PACKET} messages in one packet, or more than a batch holds",
}
# Not errors of the guest: what ``stream_to_batch`` could not do for its caller.
ERR_NEEDS_LSO = -15  # an LSO frame and the caller asked for none
ERR_NO_ROOM = -16  # fewer free frames in the batch than messages in the stream


@dataclass
class TxParseResult:
    """What one SEND_RNDIS_PACKET carried.

    ``kind``: "data" (``frames`` appended to the batch), "control" (``control_message`` holds
    the RNDIS message for the control engine) or "error" (complete with ``status`` 2).
    ``status`` is the NVSP status to complete with (1 success, 2 failure). ``fatal`` marks an
    error OpenVMM answers with a fail-stop (a send-buffer section outside the buffer, host.md
    1.6) rather than a failed completion; the caller decides.
    """

    kind: str
    status: int
    frames: int = 0
    control_message: bytes | None = None
    reason: str = ""
    fatal: bool = False


def _error(reason: str, *, fatal: bool = False) -> TxParseResult:
    return TxParseResult("error", nvsp.NVSP_STATUS_FAILURE, reason=reason, fatal=fatal)


@njit(nogil=True, cache=True)
def _u32(buf, at):
    return (
        np.int64(buf[at])
        | (np.int64(buf[at + 1]) << 8)
        | (np.int64(buf[at + 2]) << 16)
        | (np.int64(buf[at + 3]) << 24)
    )


@njit(nogil=True, cache=True)
def _transport_offset(offset, is_ipv4, data_length):
    """The checked transport offset (0 = no IP options), or -1 (host.md 3.4)."""
    minimum = _MIN_L4_IPV4 if is_ipv4 else _MIN_L4_IPV6
    if offset == 0:
        offset = minimum
    if offset < minimum or offset >= data_length:
        return -1
    return offset


@njit(nogil=True, cache=True)
def _parse_kernel(stream, stream_length, range_ends, frame_capacity, meta):
    """Validate every PACKET message of the stream; fill ``meta`` rows; returns the message
    count or a negative error code (see ``_REASONS``)."""
    if stream_length > stream.shape[0]:
        return -1
    count = 0
    at = 0
    while at < stream_length:
        if at + 8 > stream_length:
            return -1
        if _u32(stream, at) != 1:
            return -2
        length = _u32(stream, at + 4)
        if length < _PACKET_HEADER or at + length > stream_length:
            return -3
        if count >= meta.shape[0]:
            return -3
        data_offset = _u32(stream, at + 8)
        data_length = _u32(stream, at + 12)
        if _u32(stream, at + 16) != 0 or _u32(stream, at + 20) != 0 or _u32(stream, at + 24) != 0:
            return -4
        if _u32(stream, at + 36) != 0:
            return -4
        if data_length == 0:
            return -5
        if data_offset < _MIN_DATA_OFFSET or _RNDIS_BASE + data_offset + data_length > length:
            return -6
        ppi_offset = _u32(stream, at + 28)
        ppi_length = _u32(stream, at + 32)
        headers_end = at + _PACKET_HEADER
        if ppi_length != 0:
            if ppi_offset < _MIN_DATA_OFFSET or ppi_offset % 4 != 0:
                return -7
            if _RNDIS_BASE + ppi_offset + ppi_length > length:
                return -7
            headers_end = at + _RNDIS_BASE + ppi_offset + ppi_length
        # The header and PPIs must lie in the range where the message starts (host.md 3.2).
        range_end = stream_length
        for r in range(range_ends.shape[0]):
            if at < range_ends[r]:
                range_end = range_ends[r]
                break
        if headers_end > range_end:
            return -9
        if data_length > frame_capacity:
            return -12
        checksum_request = 0
        lso = 0
        vlan = -1
        ppi = at + _RNDIS_BASE + ppi_offset
        ppi_end = ppi + ppi_length
        while ppi_length != 0 and ppi < ppi_end:
            if ppi + _PPI_HEADER > ppi_end:
                return -8
            size = _u32(stream, ppi)
            ppi_type = _u32(stream, ppi + 4)
            payload = _u32(stream, ppi + 8)
            if size == 0 or ppi + size > ppi_end or payload < _PPI_HEADER or payload > size:
                return -8
            if ppi_type in (_PPI_CHECKSUM, _PPI_LSO, _PPI_VLAN):
                if payload + 4 > size:
                    return -8
                value = _u32(stream, ppi + payload)
                if ppi_type == _PPI_CHECKSUM:
                    checksum_request = value
                elif ppi_type == _PPI_LSO:
                    lso = value | np.int64(0x100000000)  # remember "present" even for value 0
                else:
                    priority = value & 0x7
                    dei = (value >> 3) & 1
                    vlan_id = (value >> 4) & 0xFFF
                    vlan = (priority << 13) | (dei << 12) | vlan_id
            # Unknown types (the hash value among them) are skipped (host.md 3.3).
            ppi += size
        flags = 0
        l4 = 0
        mss = 0
        if lso != 0:
            value = lso & 0xFFFFFFFF
            if not value & _LSO_TYPE:
                return -11
            mss = value & 0xFFFFF
            is_ipv4 = (value & _LSO_IPV6) == 0
            l4 = _transport_offset((value >> 20) & 0x3FF, is_ipv4, data_length)
            if l4 < 0:
                return -10
            if mss == 0 or l4 + 12 >= data_length:
                return -11
            flags = TX_LSO | TX_CSUM_TCP | (TX_IPV4 | TX_CSUM_IP if is_ipv4 else TX_IPV6)
        elif checksum_request & (_CSUM_TCP | _CSUM_UDP | _CSUM_IP_HEADER):
            is_ipv4 = (checksum_request & _CSUM_IPV4) != 0
            if not is_ipv4 and not (checksum_request & _CSUM_IPV6):
                return -13
            flags = TX_IPV4 if is_ipv4 else TX_IPV6
            if checksum_request & _CSUM_TCP:
                flags |= TX_CSUM_TCP  # TCP wins when both are set (host.md 3.3)
            elif checksum_request & _CSUM_UDP:
                flags |= TX_CSUM_UDP
            if checksum_request & _CSUM_IP_HEADER and is_ipv4:
                flags |= TX_CSUM_IP
            if flags & (TX_CSUM_TCP | TX_CSUM_UDP):
                l4 = _transport_offset((checksum_request >> 16) & 0x3FF, is_ipv4, data_length)
                if l4 < 0:
                    return -10
        meta[count, _M_START] = at + _RNDIS_BASE + data_offset
        meta[count, _M_LENGTH] = data_length
        meta[count, _M_FLAGS] = flags
        meta[count, _M_L4] = l4
        meta[count, _M_MSS] = mss
        meta[count, _M_VLAN] = vlan
        count += 1
        at += length
    return count


@njit(nogil=True, cache=True)
def _append_kernel(
    stream, meta, count, data, cap, length, vlan_tci, tx_flags, l4_offset, mss, queue, first, channel_index
):
    """Copy the validated frames into the batch from index ``first``."""
    for k in range(count):
        index = first + k
        start = meta[k, _M_START]
        n = meta[k, _M_LENGTH]
        if index >= length.shape[0] or (index + 1) * cap > data.shape[0] or n > cap:
            return k
        if start < 0 or start + n > stream.shape[0]:
            return k
        copy_bytes(data, index * cap, stream, start, n)
        length[index] = n
        vlan_tci[index] = meta[k, _M_VLAN]
        tx_flags[index] = meta[k, _M_FLAGS]
        l4_offset[index] = meta[k, _M_L4]
        mss[index] = meta[k, _M_MSS]
        queue[index] = channel_index
    return count


@njit(nogil=True, cache=True)
def stream_to_batch(
    stream, stream_length, range_ends, frame_capacity, meta, allow_lso,
    data, length, vlan_tci, tx_flags, l4_offset, mss, queue, rx_checksum, hash_value, hash_info,
    first, channel_index,
):
    """The PACKET messages of one send's RNDIS stream, validated (``_parse_kernel``), appended to
    the batch arrays from frame ``first``: the one path from RNDIS bytes to frames. Returns the
    frames appended, a parse error (``_REASONS``), ``ERR_NEEDS_LSO`` or ``ERR_NO_ROOM``; on any
    negative result nothing is appended."""
    # No reference counting inside the call (fastpath/borrow.py).
    stream, range_ends, meta, data = borrowed(stream), borrowed(range_ends), borrowed(meta), borrowed(data)
    length, vlan_tci, tx_flags = borrowed(length), borrowed(vlan_tci), borrowed(tx_flags)
    l4_offset, mss, queue = borrowed(l4_offset), borrowed(mss), borrowed(queue)
    rx_checksum, hash_value, hash_info = borrowed(rx_checksum), borrowed(hash_value), borrowed(hash_info)
    count = _parse_kernel(stream, stream_length, range_ends, frame_capacity, meta)
    if count < 0:
        return count
    if count > MAX_MESSAGES_PER_PACKET or count > length.shape[0]:
        return -14
    if not allow_lso:
        for k in range(count):
            if meta[k, _M_FLAGS] & TX_LSO:
                return ERR_NEEDS_LSO
    if count > length.shape[0] - first:
        return ERR_NO_ROOM
    appended = _append_kernel(
        stream, meta, count, data, frame_capacity, length, vlan_tci, tx_flags, l4_offset, mss, queue,
        first, channel_index,
    )
    for index in range(first, first + appended):
        # Receive-side metadata does not apply to transmitted frames.
        rx_checksum[index] = 0
        hash_value[index] = 0
        hash_info[index] = 0
    return appended


class TransmitPath:
    """Guest -> host RNDIS stream (host.md 3.1-3.4)."""

    def __init__(
        self,
        send_buffer: np.ndarray | None,
        section_size: int,
        guest_memory: GuestMemory | None,
        *,
        max_gpa_ranges: int = DEFAULT_MAX_GPA_RANGES,
    ) -> None:
        if send_buffer is not None and (
            not isinstance(send_buffer, np.ndarray) or send_buffer.dtype != np.uint8 or send_buffer.ndim != 1
        ):
            raise ConfigError("send_buffer", type(send_buffer).__name__, "a 1-D uint8 numpy array or None")
        if not isinstance(section_size, int | np.integer) or section_size < 1:
            raise ConfigError("section_size", section_size, "an integer >= 1 (6144 on Hyper-V)")
        if not isinstance(max_gpa_ranges, int) or max_gpa_ranges < 1:
            raise ConfigError("max_gpa_ranges", max_gpa_ranges, "an integer >= 1")
        self.send_buffer = send_buffer
        self.section_size = int(section_size)
        self.guest_memory = guest_memory
        self.max_gpa_ranges = max_gpa_ranges
        self.channel_index = 0
        self.counters: dict[str, int] = {"tx_parse_errors": 0, "tx_frames": 0, "tx_control": 0}

    def parse(
        self,
        section_index: int,
        section_bytes: int,
        gpa_ranges: Sequence[tuple[int, int, Sequence[int]]],
        batch: FrameBatch,
        *,
        channel_index: int = 0,
    ) -> TxParseResult:
        """Parse one SEND_RNDIS_PACKET's stream; data frames are appended to ``batch`` (their
        ``queue`` = ``channel_index``). Never raises for anything the guest sent."""
        result = self._parse(section_index, section_bytes, gpa_ranges, batch, channel_index)
        if result.kind == "error":
            self.counters["tx_parse_errors"] += 1
            log.debug("rndis packet refused: %s", result.reason)
        elif result.kind == "control":
            self.counters["tx_control"] += 1
        else:
            self.counters["tx_frames"] += result.frames
        return result

    def _stream(
        self, section_index: int, section_bytes: int, gpa_ranges: Sequence[tuple[int, int, Sequence[int]]]
    ) -> tuple[np.ndarray, list[int]] | TxParseResult:
        pieces: list[np.ndarray] = []
        if section_index != nvsp.SEND_SECTION_INDEX_NONE:
            if self.send_buffer is None:
                return _error(f"section {section_index} with no send buffer", fatal=True)
            start = section_index * self.section_size
            if section_bytes < 0 or start + section_bytes > self.send_buffer.shape[0]:
                return _error(
                    f"section {section_index} ({section_bytes} bytes at {start}) outside the "
                    f"{self.send_buffer.shape[0]}-byte send buffer",
                    fatal=True,
                )
            if section_bytes:
                pieces.append(self.send_buffer[start : start + section_bytes])
        if len(gpa_ranges) > self.max_gpa_ranges:
            return _error(f"{len(gpa_ranges)} GPA ranges, at most {self.max_gpa_ranges} accepted")
        for byte_count, byte_offset, page_numbers in gpa_ranges:
            if byte_count <= 0 or not 0 <= byte_offset < HV_PAGE_SIZE:
                return _error(f"GPA range of {byte_count} bytes at page offset {byte_offset}")
            if self.guest_memory is None:
                return _error("GPA range with no guest memory")
            needed = (byte_offset + byte_count + HV_PAGE_SIZE - 1) // HV_PAGE_SIZE
            if len(page_numbers) < needed:
                return _error(
                    f"GPA range of {byte_count} bytes lists {len(page_numbers)} pages, needs {needed}"
                )
            left = byte_count
            offset = byte_offset
            for page in page_numbers[:needed]:
                take = min(left, HV_PAGE_SIZE - offset)
                try:
                    data = self.guest_memory.read(int(page) * HV_PAGE_SIZE + offset, take)
                except ProtocolError as error:
                    return _error(f"GPA page {page:#x} not backed by guest memory: {error}")
                pieces.append(np.asarray(data, dtype=np.uint8).reshape(-1)[:take])
                left -= take
                offset = 0
        ends: list[int] = []
        total = 0
        for piece in pieces:
            total += piece.shape[0]
            ends.append(total)
        stream = (
            np.concatenate(pieces)
            if len(pieces) > 1
            else (pieces[0].copy() if pieces else np.zeros(0, dtype=np.uint8))
        )
        return stream, ends

    def _parse(
        self,
        section_index: int,
        section_bytes: int,
        gpa_ranges: Sequence[tuple[int, int, Sequence[int]]],
        batch: FrameBatch,
        channel_index: int,
    ) -> TxParseResult:
        built = self._stream(section_index, section_bytes, gpa_ranges)
        if isinstance(built, TxParseResult):
            return built
        stream, ends = built
        if stream.shape[0] < rndis.RNDIS_HEADER_SIZE:
            return _error(_REASONS[-1])
        first_type = int(stream[:4].view("<u4")[0])
        if first_type != rndis.RNDIS_MSG_PACKET:
            length = int(stream[4:8].view("<u4")[0])
            # The control engine validates the message; hand it what its length claims.
            if rndis.RNDIS_HEADER_SIZE <= length <= stream.shape[0]:
                message = stream[:length].tobytes()
            else:
                message = stream.tobytes()
            return TxParseResult("control", nvsp.NVSP_STATUS_SUCCESS, control_message=message)
        # Each message is at least a 44-byte header plus one byte of data.
        meta = np.zeros((stream.shape[0] // (_PACKET_HEADER + 1) + 1, _META_COLUMNS), dtype=np.int64)
        appended = int(
            stream_to_batch(
                stream,
                stream.shape[0],
                np.array(ends, dtype=np.int64),
                batch.frame_capacity,
                meta,
                True,
                batch.data,
                batch.length,
                batch.vlan_tci,
                batch.tx_flags,
                batch.l4_offset,
                batch.mss,
                batch.queue,
                batch.rx_checksum,
                batch.hash_value,
                batch.hash_info,
                batch.count,
                channel_index,
            )
        )
        if appended == ERR_NO_ROOM:
            raise ConfigError(
                "batch free frames",
                batch.capacity - batch.count,
                "room for every message: flush the batch and parse the packet again",
            )
        if appended < 0:
            return _error(_REASONS.get(appended, f"error {appended}"))
        batch.count += appended
        return TxParseResult("data", nvsp.NVSP_STATUS_SUCCESS, frames=appended)


def _software_mask(offloads: BackendOffloads) -> int:
    """The offloads the host does in software for a backend: those it does not claim."""
    do_mask = 0
    if not offloads.ipv4_checksum:
        do_mask |= TX_CSUM_IP
    if not offloads.tcp_checksum:
        do_mask |= TX_CSUM_TCP
    if not offloads.udp_checksum:
        do_mask |= TX_CSUM_UDP
    if not offloads.tso:
        do_mask |= TX_LSO
    if not offloads.vlan_insert:
        do_mask |= offload.DO_VLAN_INSERT
    return do_mask


def software_work_needed(batch: FrameBatch, offloads: BackendOffloads) -> bool:
    """Whether ``apply_software_offloads`` would change any frame of ``batch`` (else the batch
    can be transmitted as it is)."""
    return bool(
        offload.software_work_needed(
            batch.frame_capacity, batch.length, batch.vlan_tci, batch.tx_flags, batch.count,
            _software_mask(offloads),
        )
    )


def apply_software_offloads(batch: FrameBatch, offloads: BackendOffloads, out: FrameBatch) -> int:
    """Copy ``batch``'s frames into ``out`` (appending), doing in software the offloads
    ``offloads`` does not claim: IPv4 header, TCP and UDP checksums, LSO segmentation (with
    per-segment checksums) and VLAN insertion. Offloads the backend claims stay requested in
    the frames' flags. Returns the number of input frames dropped (headers that do not allow
    the work, or no room in ``out``)."""
    do_mask = _software_mask(offloads)
    stats = np.zeros(offload.STAT_WORDS, dtype=np.int64)
    first = out.count
    out.count = int(
        offload.software_offload_batch(
            batch.data,
            batch.frame_capacity,
            batch.length,
            batch.vlan_tci,
            batch.tx_flags,
            batch.l4_offset,
            batch.mss,
            batch.queue,
            batch.count,
            out.data,
            out.frame_capacity,
            out.length,
            out.vlan_tci,
            out.tx_flags,
            out.l4_offset,
            out.mss,
            out.queue,
            out.count,
            do_mask,
            stats,
        )
    )
    out.rx_checksum[first : out.count] = 0
    out.hash_value[first : out.count] = 0
    out.hash_info[first : out.count] = 0
    return int(stats[offload.STAT_DROPPED])
