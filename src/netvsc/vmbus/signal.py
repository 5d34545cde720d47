"""Signalling the host from userspace: monitor-page bits, interrupt-page bits, latency (spec/vmbus.md 5).

Layer 4 (vmbus). A channel with a monitor id (0..127) is signalled by setting its pending bit in
the guest-to-host monitor page (map 2); the host notices it within the latency the guest stored
for that id. A channel without one (sysfs shows no ``monitor_id``; 255 here) is signalled by
setting its relid's bit in the send half of the interrupt page (map 1) and writing 1 to the irq
fd, which makes the kernel (or the emulated host) perform the signal (spec 5, 5.3, 2.4).

Bits are set with a 32-bit atomic OR after a fence, and never cleared by the guest (spec 8.3
rule 6): the host consumes them. The fence and the OR are numba intrinsics
(``netvsc.fastpath.atomics``), so they are wrapped in small jitted functions here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from netvsc.errors import ConfigError, DeviceError
from netvsc.fastpath.atomics import atomic_or_u32, full_fence
from netvsc.wire.vmbus import (
    HV_PAGE_SIZE,
    INTERRUPT_PAGE_SEND_OFFSET,
    MONITOR_GROUP_STRIDE,
    MONITOR_ID_COUNT,
    MONITOR_LATENCY_MAX,
    MONITOR_LATENCY_OFFSET,
    MONITOR_NONE,
    MONITOR_PENDING_OFFSET,
)

__all__ = [
    "LATENCY_US_MAX",
    "InterruptPageSignaller",
    "MonitorSignaller",
    "latency_units",
    "make_signaller",
    "set_monitor_latency",
]

# The latency entry is a u16 in 100 ns units and DPDK refuses ns >= 65535 * 100 (spec 5.2), so
# the largest accepted value is 6553 us (65530 units).
LATENCY_US_MAX = (MONITOR_LATENCY_MAX * 100 - 1) // 1000
_NS_PER_LATENCY_UNIT = 100

# Relids whose bit fits in the 2048-byte send half of the interrupt page.
_INTERRUPT_PAGE_RELID_LIMIT = (HV_PAGE_SIZE - INTERRUPT_PAGE_SEND_OFFSET) * 8


@njit(cache=True)
def _publish_bit(words, word_index, bit_mask):  # pragma: no cover - body runs compiled
    # Everything the host should see (the ring's new write index) must be visible before the
    # bit that makes it look; the OR is itself seq_cst, the fence keeps that true for any
    # store the compiler might otherwise sink below it.
    full_fence()
    return atomic_or_u32(words, word_index, bit_mask)


def _page_words(page: np.ndarray, what: str) -> np.ndarray:
    """A uint32 view of a 4096-byte page given as a uint8 array (or anything with a buffer)."""
    page_bytes = page if isinstance(page, np.ndarray) else np.frombuffer(page, dtype=np.uint8)
    if page_bytes.dtype != np.uint8 or page_bytes.ndim != 1 or page_bytes.size < HV_PAGE_SIZE:
        raise DeviceError(f"{what}: expected at least {HV_PAGE_SIZE} bytes as uint8, got {page_bytes.size}")
    if page_bytes.ctypes.data % 4:
        raise DeviceError(f"{what}: page is not 4-byte aligned")
    return page_bytes[:HV_PAGE_SIZE].view(np.uint32)


def latency_units(latency_us: int) -> int:
    """Microseconds as the monitor page stores them (100 ns units); ConfigError outside 0..6553."""
    if isinstance(latency_us, bool) or not isinstance(latency_us, int | np.integer):
        raise ConfigError("latency", latency_us, f"an integer number of microseconds 0..{LATENCY_US_MAX}")
    if not 0 <= latency_us <= LATENCY_US_MAX:
        raise ConfigError("latency", latency_us, f"0..{LATENCY_US_MAX} microseconds")
    return int(latency_us) * 1000 // _NS_PER_LATENCY_UNIT


def set_monitor_latency(monitor_page: np.ndarray, monitor_id: int, latency_us: int) -> bool:
    """Store ``latency_us`` for ``monitor_id``; False (and nothing written) for a channel without monitor.

    The value is checked first even when it will be ignored, so a bad devarg is reported on
    every machine, not only on those whose channels have monitors.
    """
    units = latency_units(latency_us)
    if not 0 <= monitor_id < MONITOR_ID_COUNT:
        return False
    latencies = _page_words(monitor_page, "monitor page").view(np.uint16)
    latencies[MONITOR_LATENCY_OFFSET // 2 + monitor_id] = units
    return True


class MonitorSignaller:
    """Signals one channel through its pending bit in the guest-to-host monitor page (spec 5.1)."""

    def __init__(self, monitor_page: np.ndarray, monitor_id: int) -> None:
        if not 0 <= monitor_id < MONITOR_ID_COUNT:
            # DPDK computes the word address without this check; an id >= 128 would set bits in
            # the reserved area of the page (spec 5.1).
            raise DeviceError(f"monitor id {monitor_id} outside 0..{MONITOR_ID_COUNT - 1}")
        self.monitor_id = monitor_id
        self._words = _page_words(monitor_page, "monitor page")
        group = monitor_id // 32
        self._word_index = (MONITOR_PENDING_OFFSET + MONITOR_GROUP_STRIDE * group) // 4
        self._bit_mask = 1 << (monitor_id % 32)
        self._monitor_page = monitor_page
        self.signals_sent = 0

    def signal(self) -> None:
        _publish_bit(self._words, self._word_index, self._bit_mask)
        self.signals_sent += 1

    __call__ = signal

    def set_latency(self, latency_us: int) -> None:
        set_monitor_latency(self._monitor_page, self.monitor_id, latency_us)


class InterruptPageSignaller:
    """Signals a monitor-less channel: its relid's bit in the interrupt page, then irq write 1 (spec 5.3)."""

    monitor_id = MONITOR_NONE

    def __init__(self, int_page: np.ndarray, relid: int, irq_write: Callable[[int], None]) -> None:
        if not 0 <= relid < _INTERRUPT_PAGE_RELID_LIMIT:
            raise DeviceError(
                f"relid {relid} has no bit in the interrupt page (0..{_INTERRUPT_PAGE_RELID_LIMIT - 1})"
            )
        self.relid = relid
        self._words = _page_words(int_page, "interrupt page")
        self._word_index = (INTERRUPT_PAGE_SEND_OFFSET + 4 * (relid // 32)) // 4
        self._bit_mask = 1 << (relid % 32)
        self._irq_write = irq_write
        self.signals_sent = 0

    def signal(self) -> None:
        _publish_bit(self._words, self._word_index, self._bit_mask)
        # The write is what makes the kernel signal a monitor-less channel; it also enables
        # host-to-guest interrupts, which a polling driver does not mind (spec 2.4).
        self._irq_write(1)
        self.signals_sent += 1

    __call__ = signal

    def set_latency(self, latency_us: int) -> None:
        """Checked, then ignored: only monitored channels have a latency (spec 5.2)."""
        latency_units(latency_us)


def make_signaller(
    *,
    relid: int,
    monitor_id: int,
    monitor_page: np.ndarray,
    int_page: np.ndarray,
    irq_write: Callable[[int], None],
) -> MonitorSignaller | InterruptPageSignaller:
    """The signaller for a channel: monitor page if it has a monitor id (0..127), else interrupt page."""
    if 0 <= monitor_id < MONITOR_ID_COUNT:
        return MonitorSignaller(monitor_page, monitor_id)
    return InterruptPageSignaller(int_page, relid, irq_write)
