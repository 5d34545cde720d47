"""DMA memory for GPA-direct packets (vmbus/dma.py): emulated regions and real pinned pages.

The real path runs here as far as the machine allows: as root, /proc/self/pagemap gives real
frame numbers for locked 4 KiB pages; hugepages are used only when the machine has some free.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus import dma
from netvsc.vmbus.dma import allocate_dma, pagemap_physical_addresses
from netvsc.vmbus.guestmem import parse_region_name, region_directory
from netvsc.wire.vmbus import encode_gpa_direct_packet

PAGE = 4096


def _check_ranges(region, offset: int, length: int) -> None:
    ranges = region.page_ranges(offset, length)
    assert sum(count for count, _, _ in ranges) == length
    position = offset
    for count, in_page, pages in ranges:
        assert len(pages) == 1
        assert count > 0 and in_page + count <= PAGE, f"range ({count}, {in_page}) crosses a 4 KiB page"
        assert pages[0] == region.gpa_of(position) >> 12
        assert in_page == region.gpa_of(position) & (PAGE - 1)
        position += count


def test_emulated_region_is_guest_memory_the_host_can_map(tmp_path):
    """pmd#74: emulated root: a guest-mem file, GPA = base + offset, ranges split at 4 KiB."""
    region = allocate_dma(10000, root=tmp_path)
    try:
        assert region.kind == "emulated" and region.size == 3 * PAGE
        files = list(region_directory(tmp_path).iterdir())
        assert len(files) == 1
        base, size = parse_region_name(files[0].name)
        assert size == region.size
        assert region.gpa_of(0) == base and region.gpa_of(5000) == base + 5000
        region.array[4096:4100] = [1, 2, 3, 4]
        with open(files[0], "rb") as shared:  # what the host sees at that GPA
            shared.seek(4096)
            assert shared.read(4) == bytes([1, 2, 3, 4])
        assert region.page_ranges(4000, 200) == [(96, 4000, [(base >> 12)]), (104, 0, [(base >> 12) + 1])]
        _check_ranges(region, 1, region.size - 1)
        encode_gpa_direct_packet(region.page_ranges(100, 9000), b"rndis", 7)  # the wire form takes them
    finally:
        region.close()
    assert list(region_directory(tmp_path).iterdir()) == []
    region.close()  # idempotent


def test_environment_root_selects_the_emulated_path(tmp_path, monkeypatch):
    """NETVSC_SYSFS_ROOT set and no root given: the region lives under that root."""
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    with allocate_dma(PAGE) as region:
        assert region.kind == "emulated"
        assert len(list(region_directory(tmp_path).iterdir())) == 1


@pytest.mark.parametrize("size", [0, -1, True, 1.5, (1 << 32) + 1])
def test_bad_sizes_are_refused(tmp_path, size):
    """A size that is not 1..4 GiB is a ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        allocate_dma(size, root=tmp_path)
    assert caught.value.parameter == "size"


def test_ranges_outside_the_region_and_use_after_close(tmp_path):
    """Out-of-region offsets are ConfigErrors; a closed region refuses to translate."""
    region = allocate_dma(PAGE, root=tmp_path)
    for offset, length in ((-1, 1), (0, 0), (4095, 2), (PAGE, 1)):
        with pytest.raises(ConfigError):
            region.page_ranges(offset, length)
    with pytest.raises(ConfigError):
        region.gpa_of(PAGE)
    region.close()
    with pytest.raises(DeviceError, match="closed"):
        region.gpa_of(0)


@pytest.mark.root
def test_real_locked_pages_have_physical_frames():
    """pmd#74: real path on locked 4 KiB pages: bytes of one page share a frame; ranges never cross 4 KiB."""
    with allocate_dma(5 * PAGE + 1, root="/", hugepages=False) as region:
        assert region.kind == "locked" and region.size == 6 * PAGE
        for page in range(6):
            start = region.gpa_of(page * PAGE)
            assert start & (PAGE - 1) == 0, "a Hyper-V page starts on a 4 KiB physical boundary"
            assert region.gpa_of(page * PAGE + 1) == start + 1
            assert region.gpa_of(page * PAGE + PAGE - 1) == start + PAGE - 1
        frames = {region.gpa_of(page * PAGE) >> 12 for page in range(6)}
        assert len(frames) == 6, "locked pages are distinct physical pages"
        assert all(frame != 0 for frame in frames)
        _check_ranges(region, 3, region.size - 3)
        _check_ranges(region, PAGE - 1, 2)
        region.array[:] = 0xAB
        assert int(region.array.sum()) == 0xAB * region.size
        # the frames stay put while locked: translating again gives the same answer
        again = pagemap_physical_addresses(region.array.ctypes.data, region.size)
        assert [int(a) >> 12 for a in again[:: max(1, os.sysconf("SC_PAGE_SIZE") // PAGE)]][:1] == [
            region.gpa_of(0) >> 12
        ]


@pytest.mark.root
def test_hugepages_used_when_available_else_a_clear_error():
    """Free hugepages are used; without any, requiring them is a DeviceError saying how to reserve."""
    free = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("HugePages_Free")))  # fmt: skip
    if free == 0:
        with pytest.raises(DeviceError, match="nr_hugepages"):
            allocate_dma(PAGE, root="/", hugepages=True)
        with allocate_dma(PAGE, root="/") as region:  # default: falls back to locked pages
            assert region.kind == "locked"
    else:
        with allocate_dma(PAGE, root="/") as region:
            assert region.kind == "hugepage"
            _check_ranges(region, 0, PAGE)


def _fake_pagemap(tmp_path: Path, entries: list[int]) -> tuple[str, int]:
    path = tmp_path / "pagemap"
    page = os.sysconf("SC_PAGE_SIZE")
    first = 10
    path.write_bytes(b"\0" * 8 * first + np.array(entries, dtype=np.uint64).tobytes())
    return str(path), first * page


def test_pagemap_zero_frames_mean_no_permission(tmp_path):
    """Present pages with frame 0 are what an unprivileged process sees: DeviceError saying root is needed."""
    pagemap, address = _fake_pagemap(tmp_path, [1 << 63, 1 << 63])
    with pytest.raises(DeviceError, match="needs root"):
        pagemap_physical_addresses(address, 2 * os.sysconf("SC_PAGE_SIZE"), pagemap)


def test_pagemap_absent_page_and_short_file(tmp_path):
    """A page not resident, or a pagemap that ends early, is a DeviceError, never a wrong address."""
    pagemap, address = _fake_pagemap(tmp_path, [(1 << 63) | 5, 7])
    with pytest.raises(DeviceError, match="not resident"):
        pagemap_physical_addresses(address, 2 * os.sysconf("SC_PAGE_SIZE"), pagemap)
    with pytest.raises(DeviceError, match="short read"):
        pagemap_physical_addresses(address, 5 * os.sysconf("SC_PAGE_SIZE"), pagemap)
    pagemap, address = _fake_pagemap(tmp_path, [(1 << 63) | 5])
    assert list(pagemap_physical_addresses(address + 12, 1, pagemap)) == [5 * os.sysconf("SC_PAGE_SIZE")]


@pytest.mark.root
@pytest.mark.parametrize(
    ("dumpable", "expected"),
    [(False, "Permission denied"), (True, "frame numbers read as 0")],
)
def test_unprivileged_process_gets_a_clear_error(dumpable, expected):
    """Without root: a DeviceError saying root is needed (pagemap unreadable, or frame 0)."""
    # Everything is imported as root (the interpreter lives under /root); only the allocation
    # runs after dropping to nobody, as an unprivileged driver process would.
    code = (
        "import os\n"
        "from netvsc.vmbus import dma\n"
        "from netvsc.errors import DeviceError\n"
        "dma._libc()\n"
        "os.setgid(65534); os.setuid(65534)\n"
        # PR_SET_DUMPABLE (4): /proc/self stays ours, so pagemap opens but shows frame 0
        + ("dma._libc().prctl(4, 1, 0, 0, 0)\n" if dumpable else "")
        + "try:\n    dma.allocate_dma(4096, root='/', hugepages=False)\n"
        "except DeviceError as exc:\n    print('ERR', exc)\n"
        "else:\n    print('OK')\n"
    )
    env = dict(os.environ)
    env.pop("NETVSC_SYSFS_ROOT", None)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ERR"), result.stdout
    assert "root" in result.stdout and expected in result.stdout, result.stdout


def test_hugepage_size_constant_is_not_the_hyperv_page():
    """Hyper-V's page is 4 KiB whatever the system or hugepage size (issue item 8)."""
    assert dma.HV_PAGE_SIZE == PAGE
    assert dma.HUGEPAGE_SIZE % PAGE == 0
