"""The host's view of emulated guest memory, for GPA-direct packets (DESIGN.md section 3).

Layer 7 (host). Guests publish file-backed regions under ``ROOT/guest-mem/`` (naming contract in
``netvsc.vmbus.guestmem``). ``GuestMemory.read(gpa, length)`` maps regions on demand, rescanning
the directory when an address is not covered, and refuses (``ProtocolError``) any range that is
not wholly inside one region: a guest naming memory it never shared is a misbehaving peer.
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
from netvsc.vmbus.guestmem import parse_region_name
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

    def view(self, gpa: int, length: int) -> np.ndarray:
        """A view (no copy) of ``length`` bytes at ``gpa``; ProtocolError if not backed."""
        if isinstance(gpa, bool) or not isinstance(gpa, int | np.integer) or gpa < 0 or length <= 0:
            self.refused += 1
            raise ProtocolError(f"guest memory: bad range gpa={gpa!r} length={length!r}")
        gpa, length = int(gpa), int(length)
        found = self._find(gpa, length)
        for _ in range(_MAX_RESCANS_PER_READ):
            if found is not None:
                break
            self._rescan()
            found = self._find(gpa, length)
        if found is None:
            self.refused += 1
            raise ProtocolError(
                f"guest memory: {length} bytes at GPA {gpa:#x} are not inside one region "
                f"under {self.directory}"
            )
        array, offset = found
        return array[offset : offset + length]

    def read(self, gpa: int, length: int) -> np.ndarray:
        """A copy of ``length`` bytes at guest physical address ``gpa``; ProtocolError if not backed."""
        return self.view(gpa, length).copy()

    def read_pages(self, byte_offset: int, byte_count: int, page_numbers: Sequence[int]) -> np.ndarray:
        """The bytes of one GPA range (``byte_offset`` into the first of ``page_numbers``), page by page.

        Pages need not be contiguous; each is checked on its own. ProtocolError when the page
        list is too short for the range or a page is not backed.
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
            out[done : done + chunk] = self.view((int(page) << HV_PAGE_SHIFT) + page_offset, chunk)
            done += chunk
            page_offset = 0
        return out

    def close(self) -> None:
        for base in list(self._regions):
            self._drop(base)
