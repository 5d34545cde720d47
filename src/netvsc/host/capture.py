"""Packet capture of every frame crossing the emulated host, as pcapng (or classic pcap).

Layer 7 (host). ``PcapngWriter`` writes a Section Header Block, then one Interface
Description Block per NIC and direction (link type Ethernet, snap length 65535, nanosecond
timestamps, named ``nic<N>-tx`` / ``nic<N>-rx``), each added the first time it is used, then
one Enhanced Packet Block per frame with its timestamp and the direction flag (tx = guest to
wire, outbound; rx = wire to guest, inbound). ``CapturingBackend`` wraps any backend and
records what it is given and what it returns (OpenVMM's packet-capture endpoint); a VLAN tag
carried out of band is written into the recorded frame, as it is on the wire.

``PcapWriter`` writes the classic format for ``.pcap`` names (one link, no interfaces);
``open_capture(path)`` picks by the file name. ``wrap_backend(backend, path, nic_index=N)``
(the server's ``--pcap-out``) shares one writer per file among the NICs, so one file holds
an interface per NIC and direction; the file is closed when its last backend closes.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from typing import BinaryIO

import numpy as np

from netvsc.errors import ConfigError
from netvsc.host.backends.base import Backend, BackendOffloads
from netvsc.host.frames import FrameBatch

__all__ = ["CapturingBackend", "PcapWriter", "PcapngWriter", "open_capture", "wrap_backend"]

log = logging.getLogger(__name__)

LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 65535
BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_END = 0
OPT_COMMENT = 1
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_IF_DESCRIPTION = 3
OPT_IF_TSRESOL = 9
OPT_EPB_FLAGS = 2
EPB_FLAG_INBOUND = 1
EPB_FLAG_OUTBOUND = 2
DIRECTIONS = ("tx", "rx")


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _vlan_tagged(frame: bytes | memoryview, vlan_tci: int) -> bytes:
    frame = bytes(frame)
    if vlan_tci < 0 or len(frame) < 12:
        return frame
    return frame[:12] + struct.pack("!HH", 0x8100, vlan_tci & 0xFFFF) + frame[12:]


class _CaptureFile:
    """The file handling both formats share: open, lock, flush, close."""

    def __init__(self, target: str | BinaryIO, snaplen: int) -> None:
        if not 1 <= snaplen <= 0x40000:
            raise ConfigError("snaplen", snaplen, "1..262144")
        self.snaplen = snaplen
        self._owns = isinstance(target, str)
        self.path = target if isinstance(target, str) else getattr(target, "name", "<stream>")
        try:
            self._file: BinaryIO | None = open(target, "wb") if isinstance(target, str) else target  # noqa: SIM115
        except OSError as exc:
            raise ConfigError("capture file", target, "a writable path", exc.strerror or "") from exc
        self._lock = threading.Lock()
        self.packets = 0

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is None:
                return
            self._file.flush()
            if self._owns:
                self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def write_batch(
        self, nic_index: int, direction: str, batch: FrameBatch, first: int = 0, count: int | None = None
    ) -> None:
        """Record frames ``first..first+count-1`` of ``batch`` (VLAN metadata written as a tag)."""
        end = batch.count if count is None else min(batch.count, first + count)
        stamp = time.time_ns()
        for index in range(first, end):
            self.write_frame(
                nic_index, direction, _vlan_tagged(batch.frame(index), int(batch.vlan_tci[index])), stamp
            )

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class PcapngWriter(_CaptureFile):
    """A pcapng file: SHB, IDBs added on first use, EPBs (link type Ethernet, ns timestamps)."""

    def __init__(
        self, target: str | BinaryIO, snaplen: int = DEFAULT_SNAPLEN, application: str = "netvsc host"
    ) -> None:
        super().__init__(target, snaplen)
        self._interfaces: dict[tuple[int, str], int] = {}
        options = _option(OPT_SHB_USERAPPL, application.encode()) + _option(OPT_END, b"")
        # version 1.0, section length unknown (-1)
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + options
        self._write(_block(BLOCK_SHB, body))

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise ConfigError("capture file", self.path, "an open capture", "already closed")
        self._file.write(data)

    def interface(self, nic_index: int, direction: str) -> int:
        """Interface id of (``nic_index``, ``direction`` "tx" or "rx"); its IDB is written on first use."""
        if direction not in DIRECTIONS:
            raise ConfigError("direction", direction, "tx or rx")
        key = (nic_index, direction)
        with self._lock:
            if key not in self._interfaces:
                name = f"nic{nic_index}-{direction}"
                description = f"NIC {nic_index}, " + (
                    "guest to wire" if direction == "tx" else "wire to guest"
                )
                options = (
                    _option(OPT_IF_NAME, name.encode())
                    + _option(OPT_IF_DESCRIPTION, description.encode())
                    + _option(OPT_IF_TSRESOL, bytes([9]))
                    + _option(OPT_END, b"")
                )
                self._write(
                    _block(BLOCK_IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self.snaplen) + options)
                )
                self._interfaces[key] = len(self._interfaces)
            return self._interfaces[key]

    @property
    def interfaces(self) -> dict[tuple[int, str], int]:
        return dict(self._interfaces)

    def write_frame(
        self,
        nic_index: int,
        direction: str,
        frame: bytes | memoryview | np.ndarray,
        timestamp_ns: int | None = None,
    ) -> None:
        """One Enhanced Packet Block for ``frame`` on the interface of (nic, direction)."""
        interface_id = self.interface(nic_index, direction)
        raw = frame.tobytes() if isinstance(frame, np.ndarray) else bytes(frame)
        stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
        captured = raw[: self.snaplen]
        flags = EPB_FLAG_OUTBOUND if direction == "tx" else EPB_FLAG_INBOUND
        body = (
            struct.pack(
                "<IIIII",
                interface_id,
                (stamp >> 32) & 0xFFFFFFFF,
                stamp & 0xFFFFFFFF,
                len(captured),
                len(raw),
            )
            + captured
            + b"\0" * (-len(captured) % 4)
            + _option(OPT_EPB_FLAGS, struct.pack("<I", flags))
            + _option(OPT_END, b"")
        )
        with self._lock:
            self._write(_block(BLOCK_EPB, body))
            self.packets += 1


class PcapWriter(_CaptureFile):
    """A classic pcap file (microsecond timestamps, Ethernet); NIC and direction are not recorded."""

    def __init__(self, target: str | BinaryIO, snaplen: int = DEFAULT_SNAPLEN) -> None:
        super().__init__(target, snaplen)
        with self._lock:
            self._file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write_frame(
        self,
        nic_index: int,
        direction: str,
        frame: bytes | memoryview | np.ndarray,
        timestamp_ns: int | None = None,
    ) -> None:
        raw = frame.tobytes() if isinstance(frame, np.ndarray) else bytes(frame)
        stamp = time.time_ns() if timestamp_ns is None else timestamp_ns
        captured = raw[: self.snaplen]
        seconds, nanoseconds = divmod(stamp, 1_000_000_000)
        with self._lock:
            if self._file is None:
                raise ConfigError("capture file", self.path, "an open capture", "already closed")
            self._file.write(
                struct.pack("<IIII", seconds, nanoseconds // 1000, len(captured), len(raw)) + captured
            )
            self.packets += 1


def open_capture(path: str, snaplen: int = DEFAULT_SNAPLEN) -> PcapngWriter | PcapWriter:
    """A writer for ``path``: classic pcap when it ends in ``.pcap``, pcapng otherwise."""
    if path.endswith(".pcap"):
        return PcapWriter(path, snaplen)
    return PcapngWriter(path, snaplen)


class CapturingBackend(Backend):
    """Wraps ``inner`` and records every frame it transmits and receives for NIC ``nic_index``.

    ``writer`` may be replaced or set to None at run time (a ctl command starting or stopping
    a capture); with None the wrapper only passes frames through.
    """

    def __init__(self, inner: Backend, writer: PcapngWriter | PcapWriter | None, nic_index: int) -> None:
        self.inner = inner
        self.writer = writer
        self.nic_index = nic_index
        self.name = f"capture({inner.name})"
        self.captured = 0  # frames this NIC wrote (a shared writer counts every NIC's)

    @property
    def offloads(self) -> BackendOffloads:  # type: ignore[override]
        return self.inner.offloads

    @property
    def link_up(self) -> bool:  # type: ignore[override]
        return self.inner.link_up

    @link_up.setter
    def link_up(self, value: bool) -> None:
        self.inner.link_up = value

    @property
    def tx_frames(self) -> int:  # type: ignore[override]
        return self.inner.tx_frames

    @property
    def rx_frames(self) -> int:  # type: ignore[override]
        return self.inner.rx_frames

    def _record(self, direction: str, batch: FrameBatch, first: int, count: int) -> None:
        writer = self.writer
        if writer is None or count <= 0 or writer.closed:
            return
        try:
            writer.write_batch(self.nic_index, direction, batch, first, count)
            self.captured += count
        except (OSError, ConfigError) as exc:
            # A full disk must not stop the host: stop capturing and say so once.
            log.warning("capture to %s stopped: %s", writer.path, exc)
            self.writer = None

    def transmit(self, batch: FrameBatch) -> int:
        # Recorded as handed to the backend: after the host's software offloads, before the
        # backend's own (a TAP's kernel checksums and segmentation are not seen here).
        self._record("tx", batch, 0, batch.count)
        return self.inner.transmit(batch)

    def poll(self, batch: FrameBatch, limit: int) -> int:
        first = batch.count
        got = self.inner.poll(batch, limit)
        self._record("rx", batch, first, got)
        return got

    def fileno(self) -> int | None:
        return self.inner.fileno()

    def close(self) -> None:
        self.inner.close()

    def counters(self) -> dict[str, int]:
        counters = dict(self.inner.counters())
        counters["captured"] = self.captured
        return counters


_shared_writers: dict[str, tuple[PcapngWriter | PcapWriter, int]] = {}
_shared_lock = threading.Lock()


class _SharedCapturingBackend(CapturingBackend):
    """A ``CapturingBackend`` whose writer is shared by path and closed with its last user."""

    def __init__(self, inner: Backend, path: str, nic_index: int) -> None:
        with _shared_lock:
            writer, users = _shared_writers.get(path, (None, 0))
            if writer is None or writer.closed:
                writer, users = open_capture(path), 0
            _shared_writers[path] = (writer, users + 1)
        super().__init__(inner, writer, nic_index)
        self._path: str | None = path

    def close(self) -> None:
        super().close()
        path, self._path = self._path, None
        if path is None:
            return
        with _shared_lock:
            writer, users = _shared_writers.get(path, (None, 0))
            if writer is None:
                return
            if users <= 1:
                del _shared_writers[path]
                writer.close()
            else:
                _shared_writers[path] = (writer, users - 1)


def wrap_backend(backend: Backend, path: str, *, nic_index: int) -> CapturingBackend:
    """``backend`` recorded into capture file ``path`` (shared by every NIC wrapped with that path)."""
    return _SharedCapturingBackend(backend, os.path.abspath(path), nic_index)
