"""The host's view of emulated guest memory, for GPA-direct packets (DESIGN.md section 3).

Layer 7 (host). Guests publish file-backed regions under ``ROOT/guest-mem/`` (naming contract in
``netvsc.vmbus.guestmem``). ``GuestMemory.read(gpa, length)`` maps regions on demand, rescanning
the directory when an address is not covered. A range in no region is read in the memory of the
guest process that holds the device open (``host.procmem``: drivers whose DMA address is their
virtual address, such as DPDK with ``--iova-mode=va``); the server keeps ``processes.pids``
current. A range that is in neither is refused (``ProtocolError``, counted in ``refused``): a
guest naming memory it does not have is a misbehaving peer.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netvsc.errors import ProtocolError
from netvsc.host.procmem import ProcessMemory
from netvsc.vmbus.guestmem import owner_pid_bits, parse_region_name, region_owner_pid
from netvsc.wire.vmbus import HV_PAGE_SHIFT, HV_PAGE_SIZE

__all__ = ["GuestMemory"]

log = logging.getLogger(__name__)

# A rescan lists a directory; bound how often a guest sending bad addresses can make us do it.
_MAX_RESCANS_PER_READ = 1


class GuestMemory:
    """Guest memory regions under ``directory``, mapped lazily. ``close`` unmaps them all."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._bases: list[int] = []  # sorted region bases
        self._regions: dict[
            int, tuple[int, mmap.mmap, np.ndarray, str]
        ] = {}  # base -> (size, map, array, name)
        self.rescans = 0
        self.refused = 0
        # GPAs in no region: the guest process's own memory (empty pid list: none readable).
        self.processes = ProcessMemory()

    def _rescan(self) -> None:
        self.rescans += 1
        try:
            names = set(os.listdir(self.directory))
        except FileNotFoundError:
            names = set()
        # Forget regions whose file is gone: a guest that exited, or closed the region.
        for base in [b for b, entry in self._regions.items() if entry[3] not in names]:
            self._drop(base)
        for name in names:
            parsed = parse_region_name(name)
            if parsed is None or parsed[0] in self._regions:
                continue
            base, size = parsed
            if base % HV_PAGE_SIZE or size <= 0 or size % HV_PAGE_SIZE or self._overlaps(base, size):
                log.warning("%s: ignoring region %s (misaligned or overlapping)", self.directory, name)
                continue
            try:
                fd = os.open(self.directory / name, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue  # removed meanwhile
            try:
                if os.fstat(fd).st_size < size:
                    log.warning("%s: region %s is shorter than its name says", self.directory, name)
                    continue
                mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                os.close(fd)
            self._regions[base] = (size, mapping, np.frombuffer(mapping, dtype=np.uint8), name)
            bisect.insort(self._bases, base)

    def _overlaps(self, base: int, size: int) -> bool:
        return any(b < base + size and base < b + s for b, (s, *_rest) in self._regions.items())

    def _drop(self, base: int) -> None:
        _size, mapping, _array, _name = self._regions.pop(base)
        self._bases.remove(base)
        with contextlib.suppress(BufferError):
            mapping.close()

    def _find(self, gpa: int, length: int) -> tuple[np.ndarray, int] | None:
        index = bisect.bisect_right(self._bases, gpa) - 1
        if index < 0:
            return None
        base = self._bases[index]
        size, _mapping, array, _name = self._regions[base]
        if gpa + length > base + size:
            return None
        return array, gpa - base

    def _check_range(self, gpa: int, length: int) -> tuple[int, int]:
        if isinstance(gpa, bool) or not isinstance(gpa, int | np.integer) or gpa < 0 or length <= 0:
            self.refused += 1
            raise ProtocolError(f"guest memory: bad range gpa={gpa!r} length={length!r}")
        return int(gpa), int(length)

    def _region_view(self, gpa: int, length: int) -> np.ndarray | None:
        found = self._find(gpa, length)
        for _ in range(_MAX_RESCANS_PER_READ):
            if found is not None:
                break
            self._rescan()
            found = self._find(gpa, length)
        if found is None:
            return None
        array, offset = found
        return array[offset : offset + length]

    def _refuse(self, gpa: int, length: int) -> ProtocolError:
        self.refused += 1
        return ProtocolError(
            f"guest memory: {length} bytes at GPA {gpa:#x} are neither inside one region under "
            f"{self.directory} nor mapped in a guest process {list(self.processes.pids)}"
        )

    def view(self, gpa: int, length: int) -> np.ndarray:
        """A view (no copy) of ``length`` bytes at ``gpa`` in a region; ProtocolError if not one.

        Not being in a region is no refusal (the bytes may be in the guest process, which
        ``read`` tries next), so only ``read``, ``read_pages`` and ``write`` count ``refused``.
        """
        gpa, length = self._check_range(gpa, length)
        found = self._region_view(gpa, length)
        if found is None:
            raise ProtocolError(
                f"guest memory: {length} bytes at GPA {gpa:#x} are not inside one region "
                f"under {self.directory}"
            )
        return found

    def _process_first(self, gpa: int) -> bool:
        """Whether a GPA is read in the guest process before any region rescan: it is in no
        mapped region, and its pid bits name no guest holding the device open (region GPAs
        carry their creator's pid), so it is a virtual address. A rescan lists a directory;
        doing one per page of a DPDK send would cost more than the copy itself."""
        pids = self.processes.pids
        if not pids or self._find(gpa, 1) is not None:
            return False
        return region_owner_pid(gpa) not in {owner_pid_bits(pid) for pid in pids}

    def _other_memory(self, gpa: int, length: int) -> np.ndarray:
        """Bytes outside the mapped regions: the guest process, or a region created since."""
        process_tried = self._process_first(gpa)
        if process_tried:
            copied = self.processes.read(gpa, length)
            if copied is not None:
                return copied
        found = self._region_view(gpa, length)
        if found is not None:
            return found.copy()
        if not process_tried:
            copied = self.processes.read(gpa, length)
            if copied is not None:
                return copied
        raise self._refuse(gpa, length)

    def _bytes(self, gpa: int, length: int) -> np.ndarray:
        """Region view (the common case, no copy) or a copy from the guest process."""
        gpa, length = self._check_range(gpa, length)
        found = self._find(gpa, length)
        if found is not None:
            array, offset = found
            return array[offset : offset + length]
        return self._other_memory(gpa, length)

    def read(self, gpa: int, length: int) -> np.ndarray:
        """A copy of ``length`` bytes at guest physical address ``gpa``; ProtocolError if not backed."""
        gpa, length = self._check_range(gpa, length)
        found = self._find(gpa, length)
        if found is not None:
            array, offset = found
            return array[offset : offset + length].copy()
        return self._other_memory(gpa, length)

    def write(self, gpa: int, data: np.ndarray | bytes) -> None:
        """Store ``data`` at ``gpa`` (a region, else the guest process); ProtocolError if not backed."""
        source = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data.reshape(-1)
        gpa, length = self._check_range(gpa, int(source.nbytes))
        found = self._region_view(gpa, length)
        if found is not None:
            found[:] = source
        elif not self.processes.write(gpa, source):
            raise self._refuse(gpa, length)

    def read_pages(self, byte_offset: int, byte_count: int, page_numbers: Sequence[int]) -> np.ndarray:
        """The bytes of one GPA range (``byte_offset`` into the first of ``page_numbers``), page by page.

        Pages need not be contiguous; each is checked on its own (a region, else the guest
        process). ProtocolError when the page list is too short for the range or a page is not
        backed.
        """
        if not 0 <= byte_offset < HV_PAGE_SIZE or byte_count <= 0:
            self.refused += 1
            raise ProtocolError(f"GPA range: offset {byte_offset} / count {byte_count} invalid")
        needed_pages = (byte_offset + byte_count + HV_PAGE_SIZE - 1) >> HV_PAGE_SHIFT
        if len(page_numbers) < needed_pages:
            self.refused += 1
            raise ProtocolError(
                f"GPA range: {byte_count} bytes at offset {byte_offset} need {needed_pages} pages, "
                f"{len(page_numbers)} given"
            )
        out = np.empty(byte_count, dtype=np.uint8)
        done = 0
        page_offset = byte_offset
        for page in page_numbers[:needed_pages]:
            chunk = min(HV_PAGE_SIZE - page_offset, byte_count - done)
            out[done : done + chunk] = self._bytes((int(page) << HV_PAGE_SHIFT) + page_offset, chunk)
            done += chunk
            page_offset = 0
        return out

    def close(self) -> None:
        for base in list(self._regions):
            self._drop(base)
