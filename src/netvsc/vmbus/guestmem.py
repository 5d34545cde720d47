"""Guest memory that the emulated host can read by guest physical address (GPA-direct sends).

Layer 4 (vmbus). On a real VM a GPA-direct packet names guest physical pages; a userspace
driver finds them through ``/proc/self/pagemap`` on locked hugepages. Under the emulated host
(DESIGN.md section 3) the pages are file-backed regions under ``ROOT/guest-mem/`` that both
processes map, and a region's GPAs are ``base_gpa + offset``.

Naming contract (shared with ``netvsc.host.guestmem``):

- a region is the regular file ``ROOT/guest-mem/gpa-<base>-<size>.mem``, ``<base>`` and
  ``<size>`` in lower-case hexadecimal without ``0x``, both multiples of 4096;
- the base is ``(pid << 42) | (serial << 30)`` with a per-process serial (0..4095), so regions of
  different processes never overlap and each region spans at most 1 GiB;
- the file is created under a ``.tmp`` name, sized, then renamed, so the host never maps a
  half-created region; ``close`` removes it (the host keeps mappings it already made until it
  rescans).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import re
from pathlib import Path

import numpy as np

from netvsc.errors import ConfigError
from netvsc.vmbus.sysfs import sysfs_root
from netvsc.wire.vmbus import HV_PAGE_SHIFT, HV_PAGE_SIZE

__all__ = [
    "GUEST_MEMORY_DIR",
    "REGION_NAME",
    "REGION_SIZE_MAX",
    "GuestMemoryRegion",
    "owner_pid_bits",
    "region_file_name",
    "region_owner_pid",
]

GUEST_MEMORY_DIR = "guest-mem"
REGION_NAME = re.compile(r"gpa-([0-9a-f]{1,16})-([0-9a-f]{1,16})\.mem")
REGION_SIZE_MAX = 1 << 30  # one serial's window of the GPA space
# GPA = pid (22 bits: Linux's pid_max is at most 2**22) | serial (12 bits) | offset (30 bits):
# 4096 regions per process, never reused, so the host cannot mistake a new region for a
# mapping it still holds of a closed one.
_PID_SHIFT = 42
_PID_MASK = (1 << 22) - 1
_SERIAL_SHIFT = 30
_SERIAL_LIMIT = 1 << (_PID_SHIFT - _SERIAL_SHIFT)
_serials = itertools.count()


def region_file_name(base_gpa: int, size: int) -> str:
    return f"gpa-{base_gpa:x}-{size:x}.mem"


class GuestMemoryRegion:
    """A page-aligned region of emulated guest memory; ``array`` is its bytes (uint8)."""

    def __init__(self, size: int, root: str | os.PathLike[str] | None = None) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= REGION_SIZE_MAX:
            raise ConfigError("size", size, f"1 .. {REGION_SIZE_MAX} bytes")
        size = (size + HV_PAGE_SIZE - 1) & ~(HV_PAGE_SIZE - 1)
        serial = next(_serials)
        if serial >= _SERIAL_LIMIT:
            raise ConfigError("guest memory regions", serial + 1, f"at most {_SERIAL_LIMIT} per process")
        self.size = size
        self.base_gpa = ((os.getpid() & _PID_MASK) << _PID_SHIFT) | (serial << _SERIAL_SHIFT)
        directory = sysfs_root(root) / GUEST_MEMORY_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / region_file_name(self.base_gpa, size)
        temporary = directory / (self.path.name + ".tmp")
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        os.rename(temporary, self.path)
        self.array = np.frombuffer(self._mmap, dtype=np.uint8)
        self.closed = False

    def gpa_of(self, offset: int) -> int:
        """The guest physical address of byte ``offset`` of the region."""
        if not 0 <= offset < self.size:
            raise ConfigError("offset", offset, f"0 .. {self.size - 1}")
        return self.base_gpa + offset

    def page_range(self, offset: int, length: int) -> tuple[int, int, list[int]]:
        """``(byte_count, byte_offset, page numbers)``: the GPA range of ``length`` bytes at ``offset``."""
        if length <= 0 or offset < 0 or offset + length > self.size:
            raise ConfigError("range", (offset, length), f"inside the region of {self.size} bytes")
        gpa = self.base_gpa + offset
        first_page = gpa >> HV_PAGE_SHIFT
        last_page = (gpa + length - 1) >> HV_PAGE_SHIFT
        return length, gpa & (HV_PAGE_SIZE - 1), list(range(first_page, last_page + 1))

    def close(self) -> None:
        """Remove the region's file and unmap it (idempotent)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.array = None
        with contextlib.suppress(BufferError):
            self._mmap.close()

    def __enter__(self) -> GuestMemoryRegion:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def region_owner_pid(gpa: int) -> int:
    """The pid bits of a GPA: the (masked) pid of the process whose region it would be in."""
    return (int(gpa) >> _PID_SHIFT) & _PID_MASK


def owner_pid_bits(pid: int) -> int:
    """What ``region_owner_pid`` gives for GPAs of the regions process ``pid`` creates."""
    return int(pid) & _PID_MASK


def parse_region_name(name: str) -> tuple[int, int] | None:
    """``(base_gpa, size)`` of a region file name, or None if it is not one."""
    match = REGION_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1), 16), int(match.group(2), 16)


def region_directory(root: str | os.PathLike[str] | None = None) -> Path:
    return sysfs_root(root) / GUEST_MEMORY_DIR
