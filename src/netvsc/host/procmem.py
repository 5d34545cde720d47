"""Guest memory read and written in the guest process itself (process_vm_readv/writev).

Layer 7 (host). A guest whose DMA addresses are its own virtual addresses (DPDK with
``--iova-mode=va``, or any driver under the uio preload library, which makes
``/proc/self/pagemap`` say physical == virtual) names GPA pages that lie in no region under
``ROOT/guest-mem/``. The host then reads those bytes in the memory of the process holding the
device open (the peer of its ``open`` connection, found with SO_PEERCRED by the server), as a
hypervisor reads guest RAM. A page the process has not mapped fails (EFAULT): the caller turns
that into a failed completion, counted; nothing here raises for guest input.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

import numpy as np

__all__ = ["ProcessMemory"]

log = logging.getLogger(__name__)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _bind(libc: ctypes.CDLL, name: str):
    function = getattr(libc, name, None)
    if function is None:
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.POINTER(_IoVec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    function.restype = ctypes.c_ssize_t
    return function


_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = _bind(_libc, "process_vm_readv")
_process_vm_writev = _bind(_libc, "process_vm_writev")

# A GPA is a 64-bit page number times 4096 plus an offset; user space ends below 2**57 on x86-64
# with 5-level paging, so anything above cannot be a virtual address of any process.
_ADDRESS_LIMIT = 1 << 57


class ProcessMemory:
    """Reads and writes at virtual addresses of the guest processes in ``pids`` (newest first)."""

    def __init__(self) -> None:
        self.pids: tuple[int, ...] = ()
        self.reads = 0  # successful reads
        self.writes = 0  # successful writes
        self.faults = 0  # addresses no guest process has mapped (or no guest process at all)
        self._denied_logged: set[int] = set()

    def set_pids(self, pids: list[int] | tuple[int, ...]) -> None:
        """The processes holding the device open, newest first (the server calls this)."""
        self.pids = tuple(pid for pid in pids if pid > 0)

    def _transfer(self, function, pid: int, address: int, buffer_address: int, length: int) -> bool:
        local = _IoVec(buffer_address, length)
        remote = _IoVec(address, length)
        done = function(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if done == length:
            return True
        error = ctypes.get_errno() if done < 0 else 0
        if error in (errno.EPERM, errno.EACCES) and pid not in self._denied_logged:
            self._denied_logged.add(pid)
            log.warning(
                "guest process %d: memory access denied (%s); run the host as root or under the "
                "same user with the preload library (it names the host as its ptracer)",
                pid,
                os.strerror(error),
            )
        return False

    def read(self, address: int, length: int) -> np.ndarray | None:
        """A copy of ``length`` bytes at ``address`` of the first guest process that has them mapped."""
        if _process_vm_readv is None or not 0 <= address < _ADDRESS_LIMIT - length or length <= 0:
            self.faults += 1
            return None
        out = np.empty(length, dtype=np.uint8)
        for pid in self.pids:
            if self._transfer(_process_vm_readv, pid, address, out.ctypes.data, length):
                self.reads += 1
                return out
        self.faults += 1
        return None

    def write(self, address: int, data: np.ndarray | bytes) -> bool:
        """Write ``data`` at ``address`` of the first guest process that has it mapped."""
        source = np.ascontiguousarray(
            np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
        )
        length = int(source.nbytes)
        if _process_vm_writev is None or not 0 <= address < _ADDRESS_LIMIT - length or length <= 0:
            self.faults += 1
            return False
        for pid in self.pids:
            if self._transfer(_process_vm_writev, pid, address, source.ctypes.data, length):
                self.writes += 1
                return True
        self.faults += 1
        return False
