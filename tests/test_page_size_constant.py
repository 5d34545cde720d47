"""Hyper-V's 4 KiB page is a protocol constant, never the system page size (issue 4, lessons from
the field; spec/vmbus.md conventions): the system page size may be read only where the system
page really is the unit (uio's map offsets, /proc/self/pagemap), and the protocol's page comes
from one constant."""

from __future__ import annotations

import re
from pathlib import Path

from netvsc.wire.vmbus import HV_PAGE_SIZE

SRC = Path(__file__).resolve().parents[1] / "src" / "netvsc"
SYSTEM_PAGE = re.compile(r"mmap\.PAGESIZE|getpagesize|SC_PAGE_SIZE|SC_PAGESIZE")
# Where the system page is the right unit: uio selects map K at offset K * PAGE_SIZE
# (spec/vmbus.md 2.3), pagemap is indexed by system pages, and the kernel wants AF_PACKET ring
# blocks in whole system pages.
ALLOWED = {"vmbus/uio.py", "vmbus/dma.py", "ethdev/afpacket.py"}


def test_system_page_size_is_read_only_where_the_system_page_is_the_unit():
    users = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if SYSTEM_PAGE.search(path.read_text())
    }
    assert users <= ALLOWED, f"system page size read in {sorted(users - ALLOWED)}"


def test_protocol_page_is_4096():
    assert HV_PAGE_SIZE == 4096
