"""Memory the host reads by guest physical address: GPA-direct packets, RNDIS control messages.

Layer 4 (vmbus). ``allocate_dma(size, root=...)`` returns a ``DmaRegion`` whatever the host is:

- emulated host (a root other than ``/``, DESIGN.md section 3): a
  ``vmbus.guestmem.GuestMemoryRegion``, a file under ``ROOT/guest-mem/`` the host maps, whose
  GPAs are its base plus the offset;
- real Hyper-V or Azure: pinned memory whose physical frames come from ``/proc/self/pagemap``.
  Hugepages first (``MAP_HUGETLB``, then a file on a hugetlbfs mount such as ``/dev/hugepages``)
  because the kernel neither swaps nor migrates them; else ordinary 4 KiB pages locked with
  ``mlock`` (they stay resident; see ``_allocate_locked`` for what that does not promise).

Hyper-V's page is 4 KiB on every architecture (a protocol constant, never the system page
size): GPA page numbers are ``physical address >> 12``, and ``page_ranges`` splits at 4 KiB.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus.guestmem import GuestMemoryRegion
from netvsc.vmbus.sysfs import sysfs_root
from netvsc.wire.vmbus import HV_PAGE_SHIFT, HV_PAGE_SIZE

__all__ = ["DmaRegion", "allocate_dma", "pagemap_physical_addresses"]

log = logging.getLogger(__name__)

HUGEPAGE_SIZE = 2 << 20  # the x86-64 / arm64 (4K granule) default hugepage
_MAP_HUGETLB = getattr(mmap, "MAP_HUGETLB", 0x40000)  # Linux value on x86 and arm; Python < 3.13 lacks it
_PAGEMAP_PRESENT = 1 << 63
_PAGEMAP_PFN_MASK = (1 << 55) - 1
_HUGETLBFS_MOUNTS = (Path("/dev/hugepages"), Path("/mnt/huge"))
_SIZE_MAX = 1 << 32
_hugepage_file_serials = itertools.count()


def pagemap_physical_addresses(address: int, length: int, pagemap: str = "/proc/self/pagemap") -> np.ndarray:
    """Physical address of each system page of ``[address, address + length)`` (uint64).

    The pages must be resident (touched and locked by the caller). A zero frame number is what
    the kernel shows a process without CAP_SYS_ADMIN: that is refused with ``DeviceError``.
    """
    system_page = os.sysconf("SC_PAGE_SIZE")
    first = address // system_page
    count = (address + length - 1) // system_page - first + 1
    try:
        with open(pagemap, "rb", buffering=0) as stream:
            stream.seek(first * 8)
            raw = stream.read(count * 8)
    except PermissionError as exc:
        raise DeviceError(
            f"{pagemap}: cannot read physical page numbers: {exc.strerror or exc}; this needs root "
            "(CAP_SYS_ADMIN) to send GPA-direct packets to a real host"
        ) from None
    except OSError as exc:
        raise DeviceError(f"{pagemap}: cannot read physical page numbers: {exc.strerror or exc}") from None
    if len(raw) != count * 8:
        raise DeviceError(f"{pagemap}: short read ({len(raw)} of {count * 8} bytes)")
    entries = np.frombuffer(raw, dtype=np.uint64)
    if not np.all(entries & np.uint64(_PAGEMAP_PRESENT)):
        raise DeviceError(f"{pagemap}: a page of the DMA region is not resident although it was locked")
    frames = entries & np.uint64(_PAGEMAP_PFN_MASK)
    if not np.all(frames):
        raise DeviceError(
            f"{pagemap}: physical frame numbers read as 0: reading them needs root (CAP_SYS_ADMIN); "
            "run as root to send GPA-direct packets to a real host"
        )
    return frames * np.uint64(system_page)


class DmaRegion:
    """``size`` bytes (a multiple of 4 KiB) the host can read by GPA; ``array`` is their uint8 view.

    ``kind`` says how the memory was obtained: ``"emulated"``, ``"hugepage"`` or ``"locked"``.
    """

    def __init__(self, size: int, array: np.ndarray, page_gpas: np.ndarray, kind: str, releaser) -> None:
        self.size = size
        self.array = array
        self.kind = kind
        # GPA of each 4 KiB Hyper-V page of the region, in order
        self._page_gpas = page_gpas
        self._release = releaser
        self.closed = False

    def _check(self, offset: int, length: int) -> None:
        if self.closed:
            raise DeviceError("DMA region is closed")
        if length <= 0 or offset < 0 or offset + length > self.size:
            raise ConfigError(
                "range", (offset, length), f"non-empty and inside the region of {self.size} bytes"
            )

    def gpa_of(self, offset: int) -> int:
        """The guest physical address of byte ``offset``."""
        self._check(offset, 1)
        return int(self._page_gpas[offset >> HV_PAGE_SHIFT]) + (offset & (HV_PAGE_SIZE - 1))

    def page_ranges(self, offset: int, length: int) -> list[tuple[int, int, list[int]]]:
        """``length`` bytes at ``offset`` as GPA ranges ``(byte_count, byte_offset, [page])``.

        One range per 4 KiB page touched, each within its page, the form
        ``wire.vmbus.encode_gpa_direct_packet`` takes: physical pages need not be contiguous.
        """
        self._check(offset, length)
        ranges = []
        end = offset + length
        while offset < end:
            in_page = offset & (HV_PAGE_SIZE - 1)
            count = min(HV_PAGE_SIZE - in_page, end - offset)
            ranges.append((count, in_page, [int(self._page_gpas[offset >> HV_PAGE_SHIFT]) >> HV_PAGE_SHIFT]))
            offset += count
        return ranges

    def close(self) -> None:
        """Release the memory (idempotent). ``array`` must no longer be used."""
        if self.closed:
            return
        self.closed = True
        self.array = None
        self._release()

    def __enter__(self) -> DmaRegion:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _round_up(value: int, unit: int) -> int:
    return (value + unit - 1) // unit * unit


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _lock(address: int, length: int) -> None:
    libc = _libc()
    if libc.mlock(ctypes.c_void_p(address), ctypes.c_size_t(length)) != 0:
        errno = ctypes.get_errno()
        raise DeviceError(
            f"mlock of {length} bytes failed: {os.strerror(errno)} (raise RLIMIT_MEMLOCK, e.g. ulimit -l, "
            "or run as root)"
        )


def _unlock(address: int, length: int) -> None:
    _libc().munlock(ctypes.c_void_p(address), ctypes.c_size_t(length))


def _hugepage_mapping(size: int) -> tuple[mmap.mmap, str] | None:
    """A hugepage mapping of ``size`` bytes (a multiple of the hugepage size), or None."""
    try:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | _MAP_HUGETLB), "MAP_HUGETLB"
    except OSError as exc:
        log.debug("MAP_HUGETLB of %d bytes failed: %s", size, exc)
    for mount in _HUGETLBFS_MOUNTS:
        if not mount.is_dir():
            continue
        path = mount / f"netvsc-dma-{os.getpid()}-{next(_hugepage_file_serials)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.debug("%s: cannot create a hugepage file: %s", mount, exc)
            continue
        try:
            os.ftruncate(fd, size)
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE), str(mount)
        except OSError as exc:
            log.debug("%s: hugepage file of %d bytes failed: %s", mount, size, exc)
        finally:
            os.close(fd)
            # The mapping keeps the pages; no name is left behind for another process to find.
            with contextlib.suppress(OSError):
                path.unlink()
    return None


def _allocate_real(size: int, hugepages: bool | None) -> DmaRegion:
    mapping = None
    kind = "locked"
    if hugepages is not False:
        found = _hugepage_mapping(_round_up(size, HUGEPAGE_SIZE))
        if found is not None:
            mapping, source = found
            kind = "hugepage"
            log.debug("DMA region of %d bytes on hugepages (%s)", size, source)
        elif hugepages:
            raise DeviceError(
                f"no hugepages for a {size}-byte DMA region: reserve some "
                "(echo N > /proc/sys/vm/nr_hugepages) or allow 4 KiB pages"
            )
    if mapping is None:
        # Fallback: ordinary pages, locked so they stay resident. The kernel may still migrate a
        # locked page (compaction) unless vm.compact_unevictable_allowed is 0; hugepages avoid
        # that, which is why they are tried first.
        log.info("no hugepages available: DMA region of %d bytes on locked 4 KiB pages", size)
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    mapped = len(mapping)
    array = np.frombuffer(mapping, dtype=np.uint8)
    address = array.ctypes.data
    try:
        array[:] = 0  # fault every page in before locking and reading frame numbers
        _lock(address, mapped)
        try:
            physical = pagemap_physical_addresses(address, mapped)
        except BaseException:
            _unlock(address, mapped)
            raise
    except BaseException:
        del array
        mapping.close()
        raise
    system_page = os.sysconf("SC_PAGE_SIZE")
    hv_pages = size // HV_PAGE_SIZE
    # Each 4 KiB Hyper-V page lies inside one system page (system pages are 4 KiB or larger
    # multiples of it), so its physical address is its system page's plus the offset within.
    hv_offsets = np.arange(hv_pages, dtype=np.uint64) * np.uint64(HV_PAGE_SIZE)
    page_gpas = physical[hv_offsets // np.uint64(system_page)] + hv_offsets % np.uint64(system_page)

    def release() -> None:
        _unlock(address, mapped)
        try:
            mapping.close()
        except BufferError:
            log.debug("DMA region still referenced by a view; unmapped when released")

    view = array[:size]
    del array
    return DmaRegion(size, view, page_gpas, kind, release)


def _allocate_emulated(size: int, root: Path) -> DmaRegion:
    region = GuestMemoryRegion(size, root)
    page_gpas = region.base_gpa + np.arange(region.size // HV_PAGE_SIZE, dtype=np.uint64) * np.uint64(
        HV_PAGE_SIZE
    )
    return DmaRegion(region.size, region.array, page_gpas, "emulated", region.close)


def allocate_dma(
    size: int, *, root: str | os.PathLike[str] | None = None, hugepages: bool | None = None
) -> DmaRegion:
    """``size`` bytes (rounded up to 4 KiB) the host can read by guest physical address.

    ``root`` (default ``$NETVSC_SYSFS_ROOT``) decides: a root other than ``/`` is an emulated
    host. On a real host ``hugepages`` None tries hugepages then locked 4 KiB pages, True
    requires hugepages, False uses locked 4 KiB pages. Needs root on a real host (frame numbers).
    """
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= _SIZE_MAX:
        raise ConfigError("size", size, f"1 .. {_SIZE_MAX} bytes")
    size = _round_up(size, HV_PAGE_SIZE)
    resolved = sysfs_root(root)
    if resolved.resolve() != Path("/"):
        return _allocate_emulated(size, resolved)
    return _allocate_real(size, hugepages)
