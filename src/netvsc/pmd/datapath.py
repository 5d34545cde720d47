"""The data path of a NetVSC port, on the Python side: queue engines and their bursts.

Layer 5 (pmd). ``PortDataPath`` holds what the port's queues share: the chimney sections (a
stack under a spin lock), the registry of mempools packets may come from, the port's counters.
``QueueEngine`` is queue q: it builds the table its kernels take (pmd/qlayout.py) from the
channel's rings, the receive and send buffers and its own arrays, and runs the bursts under the
channel's lock (one lock per channel: RX events, receive completions and TX all write or read
that channel's rings, and each ring has one writer).

When a kernel stops for something only the control path understands (an NVSP completion of a
control request, an in-band notification, RNDIS responses and indications), the engine hands it
to ``ControlChannel`` before returning, so link changes and VF notices interleaved with data
are seen by whoever polls queue 0, as on DPDK (spec/pmd.md 2.6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import config as numba_config

from netvsc.errors import ConfigError
from netvsc.ethdev.mempool import SEGMENTS_MAX, Mempool
from netvsc.fastpath.addrtable import ArrayTable
from netvsc.fastpath.entry import compiled
from netvsc.pmd import qlayout as L
from netvsc.pmd.chan_kernels import POOL_TABLE_WORDS, flush_tx_signal, get_u16, get_u32, get_u64
from netvsc.pmd.events import drain_external, process_events, rx_burst_kernel
from netvsc.pmd.tx_kernels import flush_aggregation, tx_burst_kernel
from netvsc.vmbus.channel import Channel
from netvsc.vmbus.dma import allocate_dma
from netvsc.vmbus.signal import MonitorSignaller
from netvsc.wire.vmbus import HV_PAGE_SIZE, PACKET_DESCRIPTOR_SIZE

__all__ = ["DataPathConfig", "PortDataPath", "QueueEngine", "compile_kernels"]

_CONTROL_ROUNDS = 8  # control items handled per burst call before returning to the caller


@dataclass(frozen=True)
class DataPathConfig:
    """What the queues need from attach and the devargs."""

    port_id: int
    rx_copybreak: int
    tx_copybreak: int
    rx_extmbuf: bool
    vlan_strip: bool
    recv_sections: int
    chimney_size: int
    chimney_count: int
    agg_max_bytes: int
    agg_max_packets: int
    alignment: int


_KERNEL_SIGNATURES = {
    "rx_burst": (rx_burst_kernel, "(int64[::1], int32[::1], int64)"),
    "tx_burst": (tx_burst_kernel, "(int64[::1], int64, int32[::1], int64)"),
    "process_events": (process_events, "(int64[::1], int64, int64)"),
    "flush_aggregation": (flush_aggregation, "(int64[::1], int64[::1])"),
    "flush_tx_signal": (flush_tx_signal, "(int64[::1],)"),
}
_kernels: dict = {}


_ATTENTION, _COUNT_MASK = L.ATTENTION, L.COUNT_MASK


def _returning_int(kernel):
    def call(*args):
        return int(kernel(*args))

    return call


def compile_kernels() -> dict:
    """The burst kernels' entry points by name, compiled (or loaded from numba's cache) on the
    first call, not inside the first burst: a first compile takes many seconds, and a burst holds
    its channel's lock. Bursts call the entry points directly (fastpath/entry.py)."""
    if not _kernels:
        for name, (kernel, signature) in _KERNEL_SIGNATURES.items():
            _kernels[name] = compiled(kernel, signature)
    return _kernels


class PortDataPath:
    """What the queues of one port share; ``engine(q)`` is queue q."""

    def __init__(self, config: DataPathConfig, control, dev, root, rx_counters, tx_counters) -> None:
        self.config = config
        self.rx_counters = rx_counters
        self.tx_counters = tx_counters
        self.control = control
        self.dev = dev
        self.root = root
        count = max(config.chimney_count, 0)
        self.chimney_stack = np.arange(count - 1, -1, -1, dtype=np.int32) if count else np.zeros(1, np.int32)
        self.sync = np.zeros(4, dtype=np.uint32)
        self.sync[1] = count
        self.pool_registry = np.zeros(L.POOLS_MAX * POOL_TABLE_WORDS, dtype=np.int64)
        self._pools: list[Mempool] = []
        self.engines: dict[int, QueueEngine] = {}

    def pool_slot(self, pool: Mempool) -> int:
        """The registry slot of ``pool``, registering it on first use."""
        for slot, known in enumerate(self._pools):
            if known is pool:
                return slot
        if not isinstance(pool, Mempool):
            raise ConfigError("mempool", type(pool).__name__, "a netvsc.ethdev.mempool.Mempool")
        if self.root is not None and pool.region.kind != "emulated":
            # Its GPAs would be physical addresses the emulated host cannot read.
            raise ConfigError(
                "mempool", pool.name, f"a Mempool created with root={self.root} (emulated guest memory)"
            )
        if len(self._pools) >= L.POOLS_MAX:
            raise ConfigError("mempools", len(self._pools) + 1, f"at most {L.POOLS_MAX} per port")
        slot = len(self._pools)
        self._pools.append(pool)
        self.pool_registry[slot * POOL_TABLE_WORDS : (slot + 1) * POOL_TABLE_WORDS] = pool.table.table
        return slot

    def add_engine(
        self,
        queue_id: int,
        channel: Channel,
        lock,
        *,
        rx_pool,
        rx_desc: int,
        tx_desc: int,
        tx_free_thresh: int,
    ) -> QueueEngine:
        engine = QueueEngine(self, queue_id, channel, lock, rx_pool, rx_desc, tx_desc, tx_free_thresh)
        self.engines[queue_id] = engine
        return engine

    def rx_counters_row(self, queue: int) -> np.ndarray:
        """Queue q's RX counter row; a channel with no RX queue (TX only) counts into a spare row."""
        if queue < self.rx_counters.nb_queues:
            return self.rx_counters.row(queue)
        return np.zeros(self.rx_counters.values.shape[1], dtype=np.int64)

    def tx_counters_row(self, queue: int) -> np.ndarray:
        if queue < self.tx_counters.nb_queues:
            return self.tx_counters.row(queue)
        return np.zeros(self.tx_counters.values.shape[1], dtype=np.int64)

    def engine_for(self, channel: Channel) -> QueueEngine | None:
        for engine in self.engines.values():
            if engine.channel is channel:
                return engine
        return None

    def set_started(self, started: bool) -> None:
        for engine in self.engines.values():
            engine.q[L.Q_STARTED] = int(started)

    def outstanding_sends(self) -> int:
        return sum(engine.outstanding_sends() for engine in self.engines.values())

    def counter(self, word: int) -> int:
        return sum(int(engine.q[word]) for engine in self.engines.values())

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines = {}
        self._pools = []


class QueueEngine:
    """Queue q: its kernel table and the Python around the bursts."""

    def __init__(
        self,
        path: PortDataPath,
        queue_id: int,
        channel: Channel,
        lock,
        rx_pool,
        rx_desc: int,
        tx_desc: int,
        tx_free_thresh: int,
    ) -> None:
        config = path.config
        self.path = path
        self.queue_id = queue_id
        self.channel = channel
        self.lock = lock
        self.rx_pool = rx_pool
        kernels = compile_kernels()
        self._process_events = kernels["process_events"]
        self.q = q = L.new_qstate()
        t = self.table = ArrayTable(L.T_SLOTS)
        t.set(L.T_TX_HEADER, channel.tx_view.header)
        t.set(L.T_TX_DATA, channel.tx_view.data)
        t.set(L.T_TX_STATE, channel.tx.state)
        t.set(L.T_RX_HEADER, channel.rx_view.header)
        t.set(L.T_RX_DATA, channel.rx_view.data)
        t.set(L.T_RX_STATE, channel.rx.state)
        signaller = path.dev.signallers.get(channel.relid) if path.dev is not None else None
        if isinstance(signaller, MonitorSignaller):
            t.set(L.T_SIGNAL_WORDS, signaller._words)
            q[L.Q_SIGNAL_WORD] = signaller._word_index
            q[L.Q_SIGNAL_MASK] = signaller._bit_mask
        else:
            t.set(L.T_SIGNAL_WORDS, np.zeros(1, dtype=np.uint32))
            q[L.Q_SIGNAL_WORD] = -1
        t.set(L.T_RECV_BUFFER, path.dev.recv_buffer)
        t.set(L.T_SEND_BUFFER, path.dev.send_buffer)
        t.set(L.T_CHIMNEY_STACK, path.chimney_stack)
        t.set(L.T_PORT_SYNC, path.sync)
        t.set(L.T_QSTATE, q)
        staging = 1 << max(1, (max(rx_desc, 1) - 1).bit_length())
        t.set(L.T_STAGING, np.full(staging, -1, dtype=np.int32))
        t.set(L.T_EVENT, np.zeros(L.EVENT_SIZE, dtype=np.uint8))
        t.set(L.T_MAILBOX, np.zeros(L.MAILBOX_SIZE, dtype=np.uint8))
        entries = max(config.recv_sections, 1) + 1
        t.set(L.T_XFER_ID, np.zeros(entries, dtype=np.int64))
        t.set(L.T_XFER_REFS, np.zeros(entries, dtype=np.int32))
        t.set(L.T_XFER_FREE, np.arange(entries - 1, -1, -1, dtype=np.int32))
        q[L.Q_XFER_FREE_TOP] = entries
        t.set(L.T_ACK_PENDING, np.zeros(max(config.recv_sections, 64) + 64, dtype=np.int64))
        tx_desc = max(tx_desc, 1)
        t.set(L.T_TXD_FREE, np.arange(tx_desc - 1, -1, -1, dtype=np.int32))
        q[L.Q_TXD_FREE_TOP] = tx_desc
        t.set(L.T_TXD_MBUF, np.full(tx_desc, -1, dtype=np.int32))
        t.set(L.T_TXD_POOL, np.zeros(tx_desc, dtype=np.int32))
        t.set(L.T_TXD_CHIMNEY, np.full(tx_desc, -1, dtype=np.int32))
        t.set(L.T_TXD_PACKETS, np.full(tx_desc, -1, dtype=np.int32))
        t.set(L.T_TXD_BYTES, np.zeros(tx_desc, dtype=np.int64))
        header_bytes = -(-tx_desc * L.TXD_HEADER_SLOT // HV_PAGE_SIZE) * HV_PAGE_SIZE
        dma_bytes = header_bytes + L.BOUNCE_SLOTS * L.BOUNCE_SLOT  # header slots, then bounce buffers
        self._headers = allocate_dma(dma_bytes, root=path.root)
        t.set(L.T_TXD_HEADER, self._headers.array[: tx_desc * L.TXD_HEADER_SLOT])
        gpas = np.array(
            [self._headers.gpa_of(p * HV_PAGE_SIZE) for p in range(dma_bytes // HV_PAGE_SIZE)],
            dtype=np.uint64,
        )
        t.set(L.T_TXD_HEADER_GPAS, gpas[: header_bytes // HV_PAGE_SIZE])
        t.set(L.T_BOUNCE, self._headers.array[header_bytes:dma_bytes])
        t.set(L.T_BOUNCE_GPAS, gpas[header_bytes // HV_PAGE_SIZE :])
        t.set(L.T_TXD_BOUNCE, np.full(tx_desc, -1, dtype=np.int32))
        q[L.Q_BOUNCE_FREE] = (1 << L.BOUNCE_SLOTS) - 1
        t.set(L.T_POOLS, path.pool_registry)
        t.set(L.T_SCRATCH, np.zeros(L.SCRATCH_SIZE, dtype=np.uint8))
        t.set(L.T_GPA, np.zeros(L.GPA_MAX, dtype=np.uint64))
        t.set(L.T_GPA_LEN, np.zeros(L.GPA_MAX, dtype=np.int64))
        t.set(L.T_EXT_DONE, np.zeros(L.EXT_DONE_SIZE, dtype=np.int64))
        t.set(L.T_PARSE, np.zeros(L.PARSE_WORDS, dtype=np.int64))
        t.set(L.T_CHAIN, np.zeros(SEGMENTS_MAX + 1, dtype=np.int32))
        t.set(L.T_RX_CACHE, np.full(L.RX_CACHE_SIZE, -1, dtype=np.int32))
        t.set(L.T_RELEASED, np.zeros(L.RELEASED_SIZE, dtype=np.int32))
        self.rx_counters = path.rx_counters_row(queue_id)
        self.tx_counters = path.tx_counters_row(queue_id)
        t.set(L.T_RX_COUNTERS, self.rx_counters)
        t.set(L.T_TX_COUNTERS, self.tx_counters)

        q[L.Q_QUEUE_ID] = queue_id
        q[L.Q_PORT_ID] = config.port_id
        q[L.Q_RX_POOL] = -1
        q[L.Q_RX_OWNER] = -1
        if rx_pool is not None:
            q[L.Q_RX_POOL] = path.pool_slot(rx_pool)
            if config.rx_extmbuf:
                q[L.Q_RX_OWNER] = rx_pool.register_external(path.dev.recv_buffer)
        q[L.Q_RX_COPYBREAK] = config.rx_copybreak
        q[L.Q_RX_EXTMBUF] = int(config.rx_extmbuf)
        q[L.Q_VLAN_STRIP] = int(config.vlan_strip)
        q[L.Q_RECV_SECTIONS] = config.recv_sections
        q[L.Q_NB_DESC] = tx_desc
        q[L.Q_TX_FREE_THRESH] = tx_free_thresh
        q[L.Q_TX_COPYBREAK] = config.tx_copybreak if config.chimney_count > 0 else -1
        q[L.Q_AGG_DESC] = -1
        q[L.Q_AGG_MAX_PACKETS] = max(config.agg_max_packets, 1)
        q[L.Q_AGG_MAX_BYTES] = config.agg_max_bytes
        q[L.Q_ALIGNMENT] = max(config.alignment, 1)
        q[L.Q_CHIMNEY_SIZE] = config.chimney_size
        q[L.Q_MAX_RANGES] = L.MAX_GPA_RANGES
        self._bind_bursts()

    # -- bursts --------------------------------------------------------------------------------
    def _bind_bursts(self) -> None:
        """Set ``self.rx_burst(out, count)`` and ``self.tx_burst(pool_slot, indices, count)``.

        Closures over what a burst needs, not methods: each attribute a method would look up on
        every call costs tens of ns, and a burst of 32 pays them once for all its packets.
        ``out`` and ``indices`` are int32 C-contiguous arrays (the entry points do not check
        the layout). Both return a Python int in both modes.
        """
        lock, table, after_kernel = self.lock, self.table.table, self._after_kernel
        kernels = compile_kernels()
        rx_kernel, tx_kernel = kernels["rx_burst"], kernels["tx_burst"]
        if numba_config.DISABLE_JIT:  # interpreted kernels return numpy integers
            rx_kernel = _returning_int(rx_kernel)
            tx_kernel = _returning_int(tx_kernel)

        def rx_burst(out: np.ndarray, count: int) -> int:
            with lock:
                result = rx_kernel(table, out, count)
                if result & _ATTENTION:
                    after_kernel()
            return result & _COUNT_MASK

        def tx_burst(pool_slot: int, indices: np.ndarray, count: int) -> int:
            with lock:
                result = tx_kernel(table, pool_slot, indices, count)
                if result & _ATTENTION:
                    after_kernel()
            return result & _COUNT_MASK

        self.rx_burst = rx_burst
        self.tx_burst = tx_burst

    def poll(self, tx_limit: int = 0, blocking: bool = True) -> int:
        """Process channel events (completions, received frames into the staging ring, control
        items); returns send completions handled. With ``blocking=False`` a busy channel is left
        to whoever holds it (DPDK's try-lock)."""
        if not self.lock.acquire(blocking=blocking):
            return 0
        try:
            handled = 0
            for _ in range(_CONTROL_ROUNDS):
                handled += int(self._process_events(self.table.table, tx_limit, 0))
                if not self.q[L.Q_CONTROL_KIND]:
                    break
                self._after_kernel()
            if self.q[L.Q_SIGNAL_PYTHON]:
                self._after_kernel()
            return handled
        finally:
            self.lock.release()

    def flush(self) -> bool:
        """Send a pending aggregation (a burst that ended on a full ring keeps one)."""
        with self.lock:
            done = bool(flush_aggregation(self.table.table, self.q))
            flush_tx_signal(self.table.table)
            self._after_kernel()
            return done

    # -- the control path's share ---------------------------------------------------------------
    def _after_kernel(self) -> None:
        q = self.q
        kind = int(q[L.Q_CONTROL_KIND])
        control = self.path.control
        if kind == L.CONTROL_RAW:
            event = self.table.get(L.T_EVENT)
            length = int(q[L.Q_CONTROL_LENGTH])
            q[L.Q_CONTROL_KIND] = L.CONTROL_NONE
            packet_type = int(get_u16(event, 0))
            hlen = int(get_u16(event, 2)) * 8
            flags = int(get_u16(event, 6))
            transaction_id = int(get_u64(event, 8))
            hlen = min(max(hlen, PACKET_DESCRIPTOR_SIZE), length)
            ext = event[PACKET_DESCRIPTOR_SIZE:hlen].tobytes()
            payload = event[hlen:length].tobytes()
            with control.ring_lock:
                control._dispatch(self.channel, packet_type, flags, transaction_id, ext, payload)
        elif kind == L.CONTROL_MAILBOX:
            mailbox = self.table.get(L.T_MAILBOX)
            used = int(q[L.Q_MAILBOX_USED])
            messages = []
            at = 0
            while at + 4 <= used:
                length = int(get_u32(mailbox, at))
                messages.append(mailbox[at + 4 : at + 4 + length].tobytes())
                at += 4 + length
            q[L.Q_MAILBOX_USED] = 0
            q[L.Q_MAILBOX_COUNT] = 0
            q[L.Q_CONTROL_KIND] = L.CONTROL_NONE
            with control.ring_lock:
                for message in messages:
                    control._on_rndis(message)
        self._signal_if_asked()

    def _signal_if_asked(self) -> None:
        """A kernel asked for a signal through the interrupt page (no monitor page)."""
        if self.q[L.Q_SIGNAL_PYTHON]:
            self.q[L.Q_SIGNAL_PYTHON] = 0
            self.channel._signal()

    # -- state -----------------------------------------------------------------------------------
    def staged(self) -> int:
        return int(self.q[L.Q_STAGING_TAIL] - self.q[L.Q_STAGING_HEAD])

    def staging_capacity(self) -> int:
        return int(self.table.get(L.T_STAGING).shape[0])

    def free_descriptors(self) -> int:
        return int(self.q[L.Q_TXD_FREE_TOP])

    def outstanding_sends(self) -> int:
        return int(self.q[L.Q_NB_DESC] - self.q[L.Q_TXD_FREE_TOP])

    def free_staged(self) -> int:
        """Give back mbufs still in the staging ring (stop, close)."""
        with self.lock:
            staging = self.table.get(L.T_STAGING)
            mask = staging.shape[0] - 1
            freed = 0
            while self.q[L.Q_STAGING_HEAD] < self.q[L.Q_STAGING_TAIL]:
                head = int(staging[int(self.q[L.Q_STAGING_HEAD]) & mask])
                self.q[L.Q_STAGING_HEAD] += 1
                if self.rx_pool is not None:
                    self.rx_pool.free(head)
                    freed += 1
            # Freed external mbufs are parked until their receive slots are acknowledged, which
            # only event processing does: do it now, or a stopped port keeps them (and the
            # host's slots) until it is started again and the mempool is never whole.
            drain_external(self.table.table, self.q)
            flush_tx_signal(self.table.table)  # the receive completions it wrote
            self._signal_if_asked()
            return freed

    def close(self) -> None:
        self.free_staged()
        self.table.clear()
        self._headers.close()
