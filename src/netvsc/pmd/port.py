"""``NetvscPort``: the NetVSC port of the Port API (ethdev/api.py), control path.

Layer 5 (pmd). Attach (NVS, RNDIS, the queries), dev_info as discovered, configure with
validation, queue setup bookkeeping, start/stop/close/reset, packet filters and the multicast
list (kept for the VF), MTU change, link state and its callback, RSS key and RETA, multi-queue
over subchannels, the operations the synthetic NIC cannot do (``NotSupportedError``: MAC set,
VLAN filter, flow control, per-queue start/stop), draining every channel while stopped, and
survival of a misbehaving host. The RX/TX bursts are issue 5: the queue objects here hold their
channel and counters, and the control worker drains the channels while no burst reads them.

Attach and tear-down are one pair of methods (``_attach`` / ``_detach``) used by open, close,
reset, MTU change and queue-count change (issue item 8). Tear-down order is DESIGN.md §7
decision 7: RNDIS HALT, revoke the receive and send buffers, close the channels.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from netvsc.errors import ConfigError, DeviceError, NetvscError, NotSupportedError
from netvsc.ethdev import api
from netvsc.ethdev.batch import PacketBatch
from netvsc.ethdev.mempool import Mempool
from netvsc.pmd import nvs, qlayout, rss
from netvsc.pmd import stats as pmd_stats
from netvsc.pmd.control import CONTROL_TIMEOUT_S, ControlChannel, ControlWorker, HostEvent
from netvsc.pmd.datapath import DataPathConfig, PortDataPath, QueueEngine, compile_kernels
from netvsc.pmd.devargs import NetvscDevargs, parse_devargs
from netvsc.pmd.rndis import RndisControl, allocate_control_memory, offload_parameters_for
from netvsc.pmd.vf import VfManager
from netvsc.vmbus.channel import Channel
from netvsc.vmbus.device import VmbusDevice
from netvsc.vmbus.signal import LATENCY_US_MAX
from netvsc.wire import ndis
from netvsc.wire import nvsp as wire_nvsp
from netvsc.wire import rndis as wire_rndis

__all__ = ["MAX_QUEUES", "NetvscPort", "PortBusyError"]

log = logging.getLogger(__name__)

MAX_QUEUES = 64  # the bus's channel limit with subchannel support
MIN_RX_BUFSIZE = 1024
MAX_RX_PKTLEN = 0x3F00  # 16128, DPDK's jumbo-frame constant
ETHER_OVERHEAD = 18  # header + CRC, for the MTU rule MTU + 18 <= max RX packet length
MIN_FRAME = 64
SPEED_CAPA_MBPS = 10_000
TX_DESC_MAX = 4096
TX_DESC_DEFAULT = 512
TX_FREE_THRESH_DEFAULT = 32
RX_DESC_DEFAULT = 512
_WHOLE_BATCH = 1 << 30  # an rx_burst count meaning "as many as the batch holds"
_NO_POOL = object()
STOP_DRAIN_S = 1.0  # stop waits this long for outstanding send completions (pmd#29)
RESCIND_CHECK_S = 0.1
TEARDOWN_READ_S = 1.0  # the host reads HALT and the revokes before the channel closes

RX_OFFLOADS_SUPPORTED = (
    api.RX_OFFLOAD_SCATTER
    | api.RX_OFFLOAD_VLAN_STRIP
    | api.RX_OFFLOAD_IPV4_CKSUM
    | api.RX_OFFLOAD_UDP_CKSUM
    | api.RX_OFFLOAD_TCP_CKSUM
    | api.RX_OFFLOAD_RSS_HASH
)
TX_OFFLOADS_SUPPORTED = (
    api.TX_OFFLOAD_VLAN_INSERT
    | api.TX_OFFLOAD_IPV4_CKSUM
    | api.TX_OFFLOAD_UDP_CKSUM
    | api.TX_OFFLOAD_TCP_CKSUM
    | api.TX_OFFLOAD_TCP_TSO
    | api.TX_OFFLOAD_MULTI_SEGS
)


_PORT_IDS = itertools.count()


class PortBusyError(ConfigError):
    """The operation needs a stopped port (DPDK's -EBUSY)."""


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


@dataclass
class RxQueue:
    """RX queue q: its channel, descriptor counts and counters (the burst is issue 5)."""

    queue_id: int
    channel: Channel
    nb_desc: int
    ring_size: int
    mempool: object | None = None
    completions_only: bool = False  # created for a TX queue beyond the RX queues (pmd#25)


@dataclass
class TxQueue:
    queue_id: int
    channel: Channel
    nb_desc: int
    tx_free_thresh: int


@dataclass
class _Configuration:
    nb_rx_queues: int = 1
    nb_tx_queues: int = 1
    rss: object | None = None  # api.RssConf when RSS mq mode
    rx_offloads: int = 0
    tx_offloads: int = 0
    flow_hash: dict | None = None


class NetvscPort:
    """A NetVSC device as a Port. Open with ``NetvscPort.open(device, devargs, root=...)``."""

    driver_name = "net_netvsc"

    def __init__(self, device: str, devargs: NetvscDevargs, root, control_timeout: float) -> None:
        if control_timeout <= 0:
            raise ConfigError("control_timeout", control_timeout, "a positive number of seconds")
        self.device_name = device
        self.devargs = devargs
        self.root = root
        self.control_timeout = control_timeout
        self._lock = threading.RLock()
        self._link_callbacks: list[Callable] = []
        self._link = api.LinkStatus(False, 0)
        self._closed = False
        self._started = False
        self._configured = False
        self._config = _Configuration()
        self._rss_state = rss.RssState()
        self.rx_counters = pmd_stats.QueueCounters(1)
        self.tx_counters = pmd_stats.QueueCounters(1)
        self.promiscuous = False
        self.allmulticast = True  # start enables ALL_MULTICAST on the host (pmd#28)
        self._mc_addrs: list[bytes] = []
        self._mtu = 1500
        self._rx_queues: list[RxQueue | None] = []
        self._tx_queues: list[TxQueue | None] = []
        self._subchannels: list[Channel] = []
        self._subchannels_requested = False
        self.rescinded = False
        self._counters_total: dict[str, int] = {}
        self.dev: VmbusDevice | None = None
        self.control: ControlChannel | None = None
        self.worker: ControlWorker | None = None
        self._memory = None
        self._datapath: PortDataPath | None = None
        self._set_engines([], [])
        self.port_id = next(_PORT_IDS)
        self.vf = VfManager(self)  # spec/pmd.md 7; pmd/vf.py
        self._vf_path: VfManager | None = None  # set while the data path is on a started VF

    # -- open / attach / detach --------------------------------------------------------------

    @classmethod
    def open(
        cls,
        device: str,
        devargs: str | NetvscDevargs | None = None,
        *,
        root=None,
        control_timeout: float = CONTROL_TIMEOUT_S,
    ) -> NetvscPort:
        """Attach to ``device`` (instance GUID or netdev name) under ``root`` (or NETVSC_SYSFS_ROOT)."""
        if not isinstance(devargs, NetvscDevargs):
            devargs = parse_devargs(devargs)
        if root is None and os.environ.get("NETVSC_SYSFS_ROOT"):
            root = Path(os.environ["NETVSC_SYSFS_ROOT"])
        port = cls(device, devargs, root, control_timeout)
        try:
            port._attach(1500)
        except BaseException:
            port._detach()
            raise
        return port

    def _attach(self, mtu: int) -> None:
        """Open the device, NVS and RNDIS bring-up, the queries (pmd#2-13)."""
        self.dev = VmbusDevice.open(self.device_name, self.root)
        self._apply_latency()
        primary = self.dev.primary_channel()
        self._memory = allocate_control_memory(self.root)
        self.control = ControlChannel(primary, self.dev.recv_buffer, timeout=self.control_timeout)
        self.rndis = RndisControl(self.control, self._memory)
        self.nvs = nvs.attach(
            self.control,
            mtu=mtu,
            recv_gpadl=self.dev.recv_gpadl,
            send_gpadl=self.dev.send_gpadl,
            send_buffer_length=self.dev.send_buffer.shape[0],
        )
        self.rndis_limits = self.rndis.initialize()
        # Some Hyper-V versions leave a non-zero filter after init (pmd#8).
        self.rndis.set_packet_filter(ndis.NDIS_PACKET_TYPE_NONE)
        self.mac_address = self.rndis.mac_address()
        self._mtu = self.rndis.max_frame_size()
        self._rss_caps_flags = 0
        self.max_queues = 1
        self.host_rss_rings = 0
        self.rss_table_size = 0
        if self.nvs.version >= wire_nvsp.NVSP_VERSION_5:
            channel_limit = MAX_QUEUES if self.dev.supports_subchannels else 1
            try:
                caps = self.rndis.rss_capabilities()
                rings = int(caps.number_of_receive_queues)
                self._rss_caps_flags = int(caps.capabilities_flags)
                self.rss_table_size = int(caps.number_of_indirection_table_entries)
            except (DeviceError, NetvscError) as error:
                log.info("RSS capabilities unavailable (%s): one queue", error)
                rings = 1
            self.host_rss_rings = rings
            self.max_queues = max(1, min(rings, channel_limit))
        self._offload_caps = self.rndis.offload_capabilities()
        self._refresh_link(notify=False)
        self._rx_queues = [RxQueue(0, primary, 0, 0)]
        self._tx_queues = []
        self._subchannels = []
        self._subchannels_requested = False
        self.worker = ControlWorker(
            self.control,
            self._on_host_event,
            periodic=self._check_rescind,
            periodic_interval=RESCIND_CHECK_S,
            drain=self._channels_to_drain,
        )
        self.worker.start()

    def _channels_to_drain(self) -> list[Channel]:
        """Every channel while stopped: no RX burst reads them then, so the control worker drops
        their data frames and completes the sections, never leaving the host's receive slots
        held (pmd#30). While started the queues belong to the data path."""
        if self._started or self.dev is None or self.rescinded:
            return []
        return self.channels

    def _apply_latency(self) -> None:
        latency = int(self.devargs.latency_us)
        if latency > LATENCY_US_MAX:
            # 65535 x 100 ns is the most the monitor page holds: ignored, as DPDK does (pmd#83).
            log.error("latency %d us is above %d us: ignored", latency, LATENCY_US_MAX)
            return
        self.dev.set_latency(latency)

    def _detach(self) -> None:
        """HALT, revoke buffers, close channels; each step survives a dead host."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self._drop_datapath()
        control = self.control
        if control is not None and not control.closed:
            for name, step in (
                ("halt", self._halt),
                ("revoke", lambda: nvs.detach(control, TEARDOWN_READ_S)),
            ):
                if self.rescinded:
                    break
                try:
                    step()
                except Exception as error:  # a dead or rescinded host: keep tearing down
                    control.counters["teardown_errors"] += 1
                    log.info("tear-down %s: %s", name, error)
            control.close()
            for key, value in control.counters.items():
                self._counters_total[key] = self._counters_total.get(key, 0) + value
        # Drop every view of the device maps before closing it, so the maps and their fds are
        # released now rather than when the garbage collector gets to them.
        self.control = None
        self.rndis = None
        self._subchannels = []
        self._rx_queues = []
        self._tx_queues = []
        self._extra_rx = {}
        if self._memory is not None:
            with contextlib.suppress(Exception):
                self._memory.close()
            self._memory = None
        if self.dev is not None:
            self.dev.close()
            self.dev = None

    def _halt(self) -> None:
        if self.control.rndis.state.value == "Operational":
            self.rndis.halt(TEARDOWN_READ_S)

    def _reattach(self, mtu: int) -> None:
        """Full NVS/RNDIS re-init through the same code as close and open (issue item 8)."""
        self._detach()
        try:
            self._attach(mtu)
        except BaseException:
            self._detach()  # a clean, detached state: reset() or set_mtu() can try again
            raise

    # -- properties ----------------------------------------------------------------------------

    @property
    def nvs_version(self) -> int:
        return self.nvs.version

    @property
    def ndis_version(self) -> int:
        return self.nvs.ndis_version

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def started(self) -> bool:
        return self._started

    @property
    def nb_rx_queues(self) -> int:
        return self._config.nb_rx_queues

    @property
    def nb_tx_queues(self) -> int:
        return self._config.nb_tx_queues

    @property
    def channels(self) -> list[Channel]:
        """Channel i serves queue i (pmd#17)."""
        return [self.dev.primary_channel(), *self._subchannels] if self.dev else []

    def counters(self) -> dict[str, int]:
        """Control-path counters (unsolicited messages, protocol errors, timeouts, ...) since open."""
        out = dict(self._counters_total)
        if self.control is not None:
            for key, value in self.control.counters.items():
                out[key] = out.get(key, 0) + value
            out["data_frames_dropped"] = self._counters_total.get("data_frames_dropped", 0) + (
                self.control.data_frames_dropped
            )
        return out

    def _check_open(self) -> None:
        if self._closed or self.control is None:
            raise DeviceError(
                f"port {self.device_name} is closed"
                if self._closed
                else f"port {self.device_name} is not attached (a failed re-init left it unusable)"
            )

    def _check_stopped(self, what: str) -> None:
        if self._started:
            raise PortBusyError(what, "while started", "a stopped port (stop() first)")

    # -- dev_info ------------------------------------------------------------------------------

    def _offload_capa(self) -> tuple[int, int]:
        caps = self._offload_caps
        tx = api.TX_OFFLOAD_MULTI_SEGS | api.TX_OFFLOAD_VLAN_INSERT
        rx = api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_RSS_HASH | api.RX_OFFLOAD_SCATTER
        v4_tx, v6_tx = caps.ipv4_tx_flags, caps.ipv6_tx_flags
        v4_rx, v6_rx = caps.ipv4_rx_flags, caps.ipv6_rx_flags
        if v4_tx & ndis.CHECKSUM_CAP_IPV4_HEADER and v4_tx & ndis.CHECKSUM_CAP_IPV4_OPTIONS:
            tx |= api.TX_OFFLOAD_IPV4_CKSUM
        if (
            v4_tx & ndis.CHECKSUM_CAP_IPV4_TCP
            and v4_tx & ndis.CHECKSUM_CAP_IPV4_TCP_OPTIONS
            and v6_tx & ndis.CHECKSUM_CAP_IPV6_TCP
            and v6_tx & ndis.CHECKSUM_CAP_IPV6_TCP_OPTIONS
            and v6_tx & ndis.CHECKSUM_CAP_IPV6_EXTENSION_HEADERS
        ):
            tx |= api.TX_OFFLOAD_TCP_CKSUM
        if v4_tx & ndis.CHECKSUM_CAP_IPV4_UDP and v6_tx & ndis.CHECKSUM_CAP_IPV6_UDP:
            tx |= api.TX_OFFLOAD_UDP_CKSUM
        if (
            caps.lso_v2_ipv4_encapsulation & ndis.NDIS_ENCAPSULATION_IEEE_802_3
            and caps.lso_v2_ipv6_options & ndis.LSO_V2_IPV6_CAP_EXTENSION_HEADERS
            and caps.lso_v2_ipv6_options & ndis.LSO_V2_IPV6_CAP_TCP_OPTIONS
        ):
            tx |= api.TX_OFFLOAD_TCP_TSO
        if v4_rx & ndis.CHECKSUM_CAP_IPV4_HEADER:
            rx |= api.RX_OFFLOAD_IPV4_CKSUM
        if v4_rx & ndis.CHECKSUM_CAP_IPV4_TCP and v6_rx & ndis.CHECKSUM_CAP_IPV6_TCP:
            rx |= api.RX_OFFLOAD_TCP_CKSUM
        if v4_rx & ndis.CHECKSUM_CAP_IPV4_UDP and v6_rx & ndis.CHECKSUM_CAP_IPV6_UDP:
            rx |= api.RX_OFFLOAD_UDP_CKSUM
        return rx, tx

    def dev_info(self):
        """As discovered from the host (pmd#10-13); offload capabilities queried afresh."""
        self._check_open()
        with contextlib.suppress(NetvscError):
            self._offload_caps = self.rndis.offload_capabilities()
        rx_capa, tx_capa = self._offload_capa()
        info = api.DevInfo(
            driver_name=self.driver_name,
            device=self.dev.guid,
            max_rx_queues=self.max_queues,
            max_tx_queues=self.max_queues,
            min_rx_bufsize=MIN_RX_BUFSIZE,
            max_rx_pktlen=MAX_RX_PKTLEN,
            max_mac_addrs=1,
            rx_offload_capa=rx_capa,
            tx_offload_capa=tx_capa,
            flow_type_rss_offloads=self.flow_type_rss_offloads,
            hash_key_size=rss.KEY_SIZE,
            reta_size=rss.RETA_SIZE,
            rx_desc_lim=api.DescLimits(0, 65535, 1),
            tx_desc_lim=api.DescLimits(1, TX_DESC_MAX, 1),
            min_mtu=MIN_FRAME - ETHER_OVERHEAD,
            max_mtu=MAX_RX_PKTLEN - ETHER_OVERHEAD,
            speed_capa_mbps=SPEED_CAPA_MBPS,
            nvs_version=self.nvs.version,
            ndis_version=self.nvs.ndis_version,
        )
        return self.vf.merge_dev_info(info)  # pmd#14

    @property
    def flow_type_rss_offloads(self) -> int:
        return rss.flow_types_from_capabilities(
            self._rss_caps_flags, self.nvs.version, wire_nvsp.NVSP_VERSION_5
        )

    # -- configure -----------------------------------------------------------------------------

    def configure(
        self,
        nb_rxq: int,
        nb_txq: int,
        *,
        rss: object | None = None,
        rx_offloads: int = 0,
        tx_offloads: int = 0,
        flow_hash: dict | None = None,
    ) -> None:
        """Validate, then (re)build channels, RSS and offloads (pmd#15-23).

        ``rss`` (an ``RssConf``) selects RSS mq mode; ``flow_hash`` picks L3 or L4 per protocol
        (``{"udp4": "l3"}``; see pmd/rss.py for the Azure advice on fragmented UDP) when the
        RssConf's hash types are 0.
        """
        with self._lock:
            self._check_open()
            self._check_stopped("configure")
            config = self._validate_configuration(nb_rxq, nb_txq, rss, rx_offloads, tx_offloads, flow_hash)
            self._apply_configuration(config)

    def _validate_configuration(self, nb_rxq, nb_txq, rss_conf, rx_offloads, tx_offloads, flow_hash):
        for name, value in (("nb_rx_queues", nb_rxq), ("nb_tx_queues", nb_txq)):
            if not isinstance(value, int) or not 1 <= value <= self.max_queues:
                raise ConfigError(name, value, f"1..{self.max_queues} (the host's queue limit)")
        if rx_offloads & api.RX_OFFLOAD_LRO:
            raise ConfigError(
                "rx_offloads", "LRO", "not LRO", "the host does not coalesce toward this driver"
            )
        unsupported_rx = rx_offloads & ~RX_OFFLOADS_SUPPORTED
        unsupported_tx = tx_offloads & ~TX_OFFLOADS_SUPPORTED
        if unsupported_rx:
            raise ConfigError(
                "rx_offloads",
                hex(rx_offloads),
                f"a subset of {RX_OFFLOADS_SUPPORTED:#x}",
                f"unsupported bits {unsupported_rx:#x}",
            )
        if unsupported_tx:
            raise ConfigError(
                "tx_offloads",
                hex(tx_offloads),
                f"a subset of {TX_OFFLOADS_SUPPORTED:#x}",
                f"unsupported bits {unsupported_tx:#x}",
            )
        rx_capa, tx_capa = self._offload_capa()
        if rx_offloads & ~rx_capa or tx_offloads & ~tx_capa:
            raise ConfigError(
                "offloads",
                (hex(rx_offloads), hex(tx_offloads)),
                f"within the host's capabilities rx {rx_capa:#x} tx {tx_capa:#x}",
            )
        if rss_conf is not None:
            rx_offloads |= api.RX_OFFLOAD_RSS_HASH  # pmd#16
            rss.validate_key(rss_conf.key if rss_conf.key else None)
            hash_types = rss_conf.hash_types or rss.hash_types_for_flow_hash(flow_hash)
            if rss_conf.hash_types:
                rss.validate_hash_types(hash_types, self.flow_type_rss_offloads or rss.ALL_RSS_TYPES)
        elif rx_offloads & api.RX_OFFLOAD_RSS_HASH:
            raise ConfigError("rx_offloads", "RSS_HASH", "RSS_HASH only with rss=RssConf(...)")
        return _Configuration(nb_rxq, nb_txq, rss_conf, rx_offloads, tx_offloads, flow_hash)

    def _apply_configuration(self, config: _Configuration) -> None:
        wanted_channels = max(config.nb_rx_queues, config.nb_tx_queues)
        if wanted_channels != len(self.channels) or (
            wanted_channels > 1 and self._subchannels_requested and len(self.channels) != wanted_channels
        ):
            if self._subchannels_requested:
                # The host takes one subchannel request per NVS session: re-init (pmd#21).
                self._reattach(self._mtu)
            if wanted_channels > 1:
                granted = nvs.request_subchannels(self.control, wanted_channels - 1)
                self._subchannels_requested = True
                if granted < wanted_channels - 1:
                    # DPDK pitfall avoided: it left the missing channel slots empty.
                    log.warning(
                        "host granted %d of %d subchannels: using %d queues",
                        granted,
                        wanted_channels - 1,
                        granted + 1,
                    )
                    self.control.counters["subchannels_short"] += 1
                    config.nb_rx_queues = min(config.nb_rx_queues, granted + 1)
                    config.nb_tx_queues = min(config.nb_tx_queues, granted + 1)
                if granted:
                    self._subchannels = self.dev.open_subchannels(granted, timeout=self.control_timeout)
                    self._apply_latency()
        self._drop_datapath()
        self._config = config
        self.rx_counters.resize(config.nb_rx_queues)
        self.tx_counters.resize(config.nb_tx_queues)
        self._rx_queues = [self._rx_queues[0] if self._rx_queues else RxQueue(0, self.channels[0], 0, 0)]
        self._rx_queues += [None] * (config.nb_rx_queues - 1)
        self._tx_queues = [None] * config.nb_tx_queues
        self._rss_state = rss.RssState(table=rss.default_reta(config.nb_rx_queues))
        if config.rss is not None:
            key = rss.validate_key(config.rss.key or None)
            hash_types = config.rss.hash_types or rss.hash_types_for_flow_hash(config.flow_hash)
            self._rss_state = rss.RssState(key, hash_types, rss.default_reta(config.nb_rx_queues))
            if config.nb_rx_queues > 1:  # RSS is skipped with one RX queue (pmd#18)
                self._send_rss()
        self._send_offloads(config)
        self._configured = True

    def _send_rss(self) -> None:
        """Disable, then enable with the new parameters (pmd#22; the host requires it)."""
        state = self._rss_state
        hash_information = rss.ndis_hash_information(state.hash_types, self._rss_caps_flags)
        self.rndis.set_rss_parameters(hash_information, state.table, state.key, disable=True)
        state.enabled = False
        if state.hash_types:
            self.rndis.set_rss_parameters(hash_information, state.table, state.key, disable=False)
            state.enabled = True

    def _send_offloads(self, config: _Configuration) -> None:
        tx, rx = config.tx_offloads, config.rx_offloads
        tx_checksum = {
            "ipv4_checksum": bool(tx & api.TX_OFFLOAD_IPV4_CKSUM),
            "tcp4_checksum": bool(tx & api.TX_OFFLOAD_TCP_CKSUM),
            "tcp6_checksum": bool(tx & api.TX_OFFLOAD_TCP_CKSUM),
            "udp4_checksum": bool(tx & api.TX_OFFLOAD_UDP_CKSUM),
            "udp6_checksum": bool(tx & api.TX_OFFLOAD_UDP_CKSUM),
        }
        rx_checksum = {
            "ipv4_checksum": bool(rx & api.RX_OFFLOAD_IPV4_CKSUM),
            "tcp4_checksum": bool(rx & api.RX_OFFLOAD_TCP_CKSUM),
            "tcp6_checksum": bool(rx & api.RX_OFFLOAD_TCP_CKSUM),
            "udp4_checksum": bool(rx & api.RX_OFFLOAD_UDP_CKSUM),
            "udp6_checksum": bool(rx & api.RX_OFFLOAD_UDP_CKSUM),
        }
        fields = offload_parameters_for(tx_checksum, rx_checksum, bool(tx & api.TX_OFFLOAD_TCP_TSO))
        if fields:
            self.rndis.set_offload_parameters(**fields)
        self.offload_parameters_sent = fields

    # -- queues --------------------------------------------------------------------------------

    def rx_queue_setup(self, queue: int, nb_desc: int = 0, *, mempool: object | None = None, **kw) -> RxQueue:
        """Bookkeeping of RX queue ``queue`` (pmd#26): nb_desc clamped to the pool's share."""
        with self._lock:
            self._check_open()
            self._check_stopped("rx_queue_setup")
            if not isinstance(queue, int) or not 0 <= queue < self._config.nb_rx_queues:
                raise ConfigError("rx queue", queue, f"0..{self._config.nb_rx_queues - 1}")
            if not isinstance(nb_desc, int) or nb_desc < 0:
                raise ConfigError("nb_desc", nb_desc, "a non-negative integer (0 = default 512)")
            nb_desc = nb_desc or RX_DESC_DEFAULT
            if mempool is not None and not isinstance(mempool, Mempool):
                raise ConfigError("mempool", type(mempool).__name__, "a netvsc.ethdev.mempool.Mempool")
            if mempool is not None and self.root is not None and mempool.region.kind != "emulated":
                raise ConfigError(
                    "mempool", mempool.name, f"a Mempool created with root={self.root} (emulated memory)"
                )
            if mempool is not None:
                share = mempool.available() // self._config.nb_rx_queues
                nb_desc = min(nb_desc, max(share, 1))
            self._drop_datapath()
            rxq = RxQueue(queue, self.channels[queue], nb_desc, _next_power_of_two(nb_desc), mempool)
            self._rx_queues[queue] = rxq
            return rxq

    def tx_queue_setup(self, queue: int, nb_desc: int, *, tx_free_thresh: int | None = None) -> TxQueue:
        """Bookkeeping of TX queue ``queue`` (pmd#24, #25)."""
        with self._lock:
            self._check_open()
            self._check_stopped("tx_queue_setup")
            if not isinstance(queue, int) or not 0 <= queue < self._config.nb_tx_queues:
                raise ConfigError("tx queue", queue, f"0..{self._config.nb_tx_queues - 1}")
            if not isinstance(nb_desc, int) or not 1 <= nb_desc <= TX_DESC_MAX:
                raise ConfigError("nb_desc", nb_desc, f"1..{TX_DESC_MAX}")
            threshold = min(nb_desc // 4, 32) if tx_free_thresh is None else tx_free_thresh
            if not isinstance(threshold, int) or threshold < 0 or threshold + 3 >= nb_desc:
                raise ConfigError(
                    "tx_free_thresh", threshold, f"0..{nb_desc - 4} (threshold + 3 < nb_desc {nb_desc})"
                )
            self._drop_datapath()
            txq = TxQueue(queue, self.channels[queue], nb_desc, threshold)
            self._tx_queues[queue] = txq
            if queue >= self._config.nb_rx_queues:
                # Completions of this channel still need a reader; RSS never targets it (pmd#25).
                self._extra_rx = getattr(self, "_extra_rx", {})
                self._extra_rx[queue] = RxQueue(queue, self.channels[queue], 0, 0, completions_only=True)
            return txq

    def rx_queue_info(self, queue: int) -> dict:
        rxq = self._rx_queues[queue] if 0 <= queue < len(self._rx_queues) else None
        if rxq is None:
            raise ConfigError("rx queue", queue, "a queue that was set up")
        return {"nb_desc": rxq.ring_size, "mempool": rxq.mempool, "offloads": self._config.rx_offloads}

    def tx_queue_info(self, queue: int) -> dict:
        txq = self._tx_queues[queue] if 0 <= queue < len(self._tx_queues) else None
        if txq is None:
            raise ConfigError("tx queue", queue, "a queue that was set up")
        return {
            "nb_desc": txq.nb_desc,
            "tx_free_thresh": txq.tx_free_thresh,
            "offloads": self._config.tx_offloads,
        }

    # -- start / stop / close / reset ----------------------------------------------------------

    def _packet_filter(self) -> int:
        """From both flags every time, as Linux does (DPDK pitfall avoided: allmulticast on/off
        rewrote the filter and cancelled promiscuous mode, pmd#34)."""
        if self.promiscuous:
            return ndis.NDIS_PACKET_TYPE_PROMISCUOUS
        value = ndis.NDIS_PACKET_TYPE_DIRECTED | ndis.NDIS_PACKET_TYPE_BROADCAST
        if self.allmulticast or self._mc_addrs:
            value |= ndis.NDIS_PACKET_TYPE_ALL_MULTICAST
        return value

    def start(self) -> None:
        with self._lock:
            self._check_open()
            if self._started:
                return
            if self.rescinded:
                raise DeviceError(f"port {self.device_name}: channels were rescinded")
            if self._datapath is None:
                self._build_datapath()
            self._datapath.set_started(True)
            engines = self._datapath.engines
            self._set_engines(
                [engines.get(q) for q in range(self._config.nb_rx_queues)],
                [engines.get(q) for q in range(self._config.nb_tx_queues)],
            )
            self.rndis.set_packet_filter(self._packet_filter())  # pmd#28
            self._started = True
            self._refresh_link(notify=False)
            self.vf.start()  # start the VF, then switch to it (pmd.md 7.4)

    def stop(self) -> None:
        with self._lock:
            if not self._started:
                return
            self.vf.stop()  # synthetic before the VF stops (pmd#29)
            self._started = False  # received data is dropped from now on (pmd#30)
            self._set_engines([None] * len(self._rx_engines), [None] * len(self._tx_engines))
            path = self._datapath
            if path is not None:
                path.set_started(False)
            if self.control is None or self.rescinded:
                return
            self.rndis.set_packet_filter(ndis.NDIS_PACKET_TYPE_NONE)
            deadline = time.monotonic() + STOP_DRAIN_S
            while time.monotonic() < deadline:
                if path is not None:
                    for engine in path.engines.values():
                        engine.flush()
                        engine.poll()
                if not self.control.pending_sends and (path is None or path.outstanding_sends() == 0):
                    break
                self.control.poll()
                time.sleep(0.001)
            if path is not None:
                for engine in path.engines.values():
                    engine.free_staged()  # the mempool is whole again after stop
            if self.control.pending_sends or (path is not None and path.outstanding_sends()):
                log.warning("stop: sends still without completion")

    def close(self) -> None:
        """Release everything; idempotent (pmd#31)."""
        with self._lock:
            if self._closed:
                return
            with contextlib.suppress(NetvscError):
                self.stop()
            self._started = False
            self.vf.close()
            self._detach()
            self._closed = True

    def reset(self) -> None:
        """Stop and re-attach from scratch: the state of a freshly opened port (also the way back
        after a failed re-attach left the port detached).

        Differs from DPDK on purpose: DPDK's netvsc answers reset with "not supported" (pmd#32),
        but the issue asks for reset in the Port API, and a full NVS/RNDIS re-init through the
        same code as close and open is exactly what the synthetic NIC needs to recover.
        """
        with self._lock:
            if self._closed:
                raise DeviceError(f"port {self.device_name} is closed")
            with contextlib.suppress(NetvscError):
                self.stop()
            self._reattach(1500)
            self._config = _Configuration()
            self._configured = False

    # -- data path ----------------------------------------------------------------------------

    def _build_datapath(self) -> None:
        compile_kernels()
        limits = self.rndis_limits
        config = DataPathConfig(
            port_id=self.port_id,
            rx_copybreak=int(self.devargs.rx_copybreak),
            tx_copybreak=int(self.devargs.tx_copybreak),
            rx_extmbuf=self.devargs.rx_extmbuf,
            vlan_strip=bool(self._config.rx_offloads & api.RX_OFFLOAD_VLAN_STRIP),
            recv_sections=int(self.nvs.recv_section_count),
            chimney_size=int(self.nvs.chimney_section_size),
            chimney_count=int(self.nvs.chimney_section_count),
            agg_max_bytes=min(int(limits.max_bytes), int(self.nvs.chimney_section_size)),
            agg_max_packets=int(limits.max_packets),
            alignment=int(limits.alignment),
        )
        path = PortDataPath(config, self.control, self.dev, self.root, self.rx_counters, self.tx_counters)
        try:
            nb_channels = max(self._config.nb_rx_queues, self._config.nb_tx_queues)
            for queue, channel in enumerate(self.channels[:nb_channels]):
                rxq = self._rx_queues[queue] if queue < len(self._rx_queues) else None
                txq = self._tx_queues[queue] if queue < len(self._tx_queues) else None
                lock = self.control.ring_lock if queue == 0 else threading.RLock()
                path.add_engine(
                    queue,
                    channel,
                    lock,
                    rx_pool=rxq.mempool if rxq is not None else None,
                    rx_desc=rxq.ring_size if rxq is not None and rxq.ring_size else RX_DESC_DEFAULT,
                    tx_desc=txq.nb_desc if txq is not None else TX_DESC_DEFAULT,
                    tx_free_thresh=txq.tx_free_thresh if txq is not None else TX_FREE_THRESH_DEFAULT,
                )
        except BaseException:
            path.close()
            raise
        self._datapath = path
        self.control.datapath = path

    def _drop_datapath(self) -> None:
        path = self._datapath
        if path is None:
            return
        if self.control is not None:
            self.control.datapath = None
        with contextlib.suppress(Exception):
            path.close()
        self._datapath = None
        self._set_engines([], [])

    def _set_engines(self, rx: list[QueueEngine | None], tx: list[QueueEngine | None]) -> None:
        """The queues' engines (None: stopped), and what rx_burst and tx_burst call for them."""
        self._rx_engines: list[QueueEngine | None] = rx
        self._tx_engines: list[QueueEngine | None] = tx
        # Only started queues have an entry: a burst looks up one thing.
        self._rx_paths = {q: (e.rx_burst, e.rx_pool) for q, e in enumerate(rx) if e is not None}
        self._tx_paths = {q: (e.tx_burst, self._datapath) for q, e in enumerate(tx) if e is not None}
        self._tx_pool_slot = (_NO_POOL, -1)  # the last mempool a TX burst came from, and its slot

    def _engine(self, engines: list, queue: int, direction: str) -> QueueEngine | None:
        """Queue ``queue``'s engine, None while stopped; a queue the port lacks is refused."""
        if isinstance(queue, int) and 0 <= queue < len(engines):
            return engines[queue]
        if self._started:
            raise ConfigError(f"{direction} queue", queue, f"0..{len(engines) - 1}")
        return None

    def rx_burst(self, queue: int, batch: PacketBatch, nb_pkts: int = 0) -> int:
        """Receive up to ``nb_pkts`` (default: the batch's capacity) frames of queue ``queue``
        into ``batch`` (spec/pmd.md 2.1); returns how many. 0 while the port is stopped."""
        try:
            burst, pool = self._rx_paths[queue]
        except (KeyError, TypeError):
            self._engine(self._rx_engines, queue, "rx")  # raises for a queue the port lacks
            batch.count = 0
            return 0
        if nb_pkts <= 0:
            if nb_pkts:
                raise ConfigError("nb_pkts", nb_pkts, "0 (the batch's capacity) or a positive count")
            nb_pkts = _WHOLE_BATCH  # the kernel clamps the count to the batch's capacity
        count = burst(batch.indices, nb_pkts)
        vf = self._vf_path
        if vf is not None:  # synthetic first, the rest of the budget from the VF (pmd#69)
            budget = min(nb_pkts, batch.indices.shape[0])
            count += vf.rx_burst(queue, batch.indices, count, budget - count)
        batch.count = count
        batch.mempool = pool
        return count

    def tx_burst(self, queue: int, batch: PacketBatch, nb_pkts: int = 0) -> int:
        """Send the first ``nb_pkts`` (default all) packets of ``batch`` on queue ``queue``.

        Returns how many the port took (sent, or refused as malformed and counted as errors);
        those leave the batch, and the rest move to its front for the caller to retry or free
        (a full ring or send buffer ends the burst early, never blocks, spec/pmd.md 3.8).
        """
        try:
            burst, path = self._tx_paths[queue]
        except (KeyError, TypeError):
            self._engine(self._tx_engines, queue, "tx")  # raises for a queue the port lacks
            return 0
        count = batch.count if not nb_pkts else min(nb_pkts, batch.count)
        if count <= 0:
            return 0
        vf = self._vf_path
        if vf is not None and (sent := vf.tx_burst(queue, batch, count)) >= 0:
            return sent  # pmd#91: on the VF while switched and started
        pool, slot = self._tx_pool_slot
        if pool is not batch.mempool:
            pool = batch.mempool
            slot = path.pool_slot(pool)  # refuses a mempool the port cannot use
            self._tx_pool_slot = (pool, slot)
        sent = burst(slot, batch.indices, count)
        if sent:
            remaining = batch.count - sent
            if remaining:
                batch.indices[:remaining] = batch.indices[sent : batch.count]
            batch.count = remaining
        return sent

    def tx_done_cleanup(self, queue: int, free_cnt: int = 0) -> int:
        """Process send completions of queue ``queue``: up to ``free_cnt`` (0 = all pending);
        returns how many were handled (pmd#80)."""
        engine = self._engine(self._tx_engines, queue, "tx")
        if engine is None:
            return 0
        if not isinstance(free_cnt, int) or free_cnt < 0:
            raise ConfigError("free_cnt", free_cnt, "0 (all) or a positive count")
        engine.flush()
        wanted = free_cnt or engine.outstanding_sends()
        handled = 0
        while handled < wanted:
            got = engine.poll(tx_limit=wanted - handled)
            if got == 0:
                break
            handled += got
        return handled

    def rx_queue_count(self, queue: int) -> int:
        """Received frames waiting in queue ``queue``'s staging ring (after processing events)."""
        engine = self._engine(self._rx_engines, queue, "rx")
        if engine is None:
            return 0
        engine.poll()
        return engine.staged()

    def rx_descriptor_status(self, queue: int, offset: int) -> str:
        """pmd#81: "DONE" when a frame waits at ``offset``, else "AVAIL"."""
        engine = self._engine(self._rx_engines, queue, "rx")
        if engine is None:
            raise ConfigError("port state", "stopped", "a started port")
        engine.poll()
        if not isinstance(offset, int) or not 0 <= offset < engine.staging_capacity():
            raise ConfigError("offset", offset, f"0..{engine.staging_capacity() - 1}")
        return "DONE" if offset < engine.staged() else "AVAIL"

    def tx_descriptor_status(self, queue: int, offset: int) -> str:
        """pmd#81: "FULL" while descriptor ``offset`` is in flight, else "DONE"."""
        engine = self._engine(self._tx_engines, queue, "tx")
        if engine is None:
            raise ConfigError("port state", "stopped", "a started port")
        engine.poll()
        nb_desc = int(engine.q[qlayout.Q_NB_DESC])
        if not isinstance(offset, int) or not 0 <= offset < nb_desc:
            raise ConfigError("offset", offset, f"0..{nb_desc - 1}")
        return "FULL" if offset < engine.outstanding_sends() else "DONE"

    def datapath_counters(self) -> dict[str, int]:
        """Data-path counters beyond the xstats (bad transfers, skipped ranges, fallbacks...)."""
        if self._datapath is None:
            return {}
        return {name: self._datapath.counter(word) for name, word in qlayout.EXTRA_COUNTERS.items()}

    # -- what the synthetic NIC cannot do (pmd#32) ----------------------------------------------

    def mac_addr_set(self, mac: bytes) -> None:
        raise NotSupportedError(
            "mac_addr_set", "the synthetic NIC's MAC address is the one the host assigned to the VM's adapter"
        )

    def vlan_filter_set(self, vlan_id: int, on: bool = True) -> None:
        raise NotSupportedError(
            "vlan_filter_set",
            "the host has no VLAN filter for the synthetic NIC (VLANs are set on the vSwitch port)",
        )

    def flow_ctrl_set(self, conf: object) -> None:
        raise NotSupportedError("flow_ctrl_set", "the synthetic NIC has no physical link to pause")

    def _no_queue_start_stop(self, operation: str) -> NotSupportedError:
        return NotSupportedError(
            operation, "queues start and stop with the port (the host has no per-queue switch)"
        )

    def rx_queue_start(self, queue: int) -> None:
        raise self._no_queue_start_stop("rx_queue_start")

    def rx_queue_stop(self, queue: int) -> None:
        raise self._no_queue_start_stop("rx_queue_stop")

    def tx_queue_start(self, queue: int) -> None:
        raise self._no_queue_start_stop("tx_queue_start")

    def tx_queue_stop(self, queue: int) -> None:
        raise self._no_queue_start_stop("tx_queue_stop")

    def __enter__(self) -> NetvscPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- filters -------------------------------------------------------------------------------

    def _update_filter(self) -> None:
        self.vf.sync_filters()  # pmd#92
        if self._started:
            self.rndis.set_packet_filter(self._packet_filter())

    def promiscuous_enable(self) -> None:
        with self._lock:
            self._check_open()
            self.promiscuous = True
            self._update_filter()

    def promiscuous_disable(self) -> None:
        with self._lock:
            self._check_open()
            self.promiscuous = False
            self._update_filter()

    def allmulticast_enable(self) -> None:
        with self._lock:
            self._check_open()
            self.allmulticast = True
            self._update_filter()

    def allmulticast_disable(self) -> None:
        with self._lock:
            self._check_open()
            self.allmulticast = False
            self._update_filter()

    def set_mc_addr_list(self, addrs: Sequence[bytes]) -> None:
        """Validated and kept for the VF only (pmd#35): the host has no multicast filter, so no
        multicast-list OID is sent; the synthetic filter gains ALL_MULTICAST while the list is
        non-empty (as Linux does). An empty list clears it."""
        accepted = "6-byte multicast MAC addresses (group bit set in the first byte)"
        if isinstance(addrs, bytes | bytearray | str) or not isinstance(addrs, Sequence):
            raise ConfigError("mc_addr_list", addrs, f"a sequence of {accepted}")
        addresses = []
        for index, addr in enumerate(addrs):
            if not isinstance(addr, bytes | bytearray | memoryview):
                raise ConfigError(f"mc_addr_list[{index}]", addr, accepted)
            addr = bytes(addr)
            if len(addr) != 6 or not addr[0] & 1:
                raise ConfigError(f"mc_addr_list[{index}]", addr.hex(":"), accepted)
            addresses.append(addr)
        with self._lock:
            self._check_open()
            self._mc_addrs = addresses
            self._update_filter()

    @property
    def mc_addr_list(self) -> list[bytes]:
        """The multicast list kept for the VF (pmd#35)."""
        return list(self._mc_addrs)

    @property
    def packet_filter(self) -> int:
        """The filter the host has (NONE while stopped)."""
        return self._packet_filter() if self._started else ndis.NDIS_PACKET_TYPE_NONE

    # -- MTU -----------------------------------------------------------------------------------

    def set_mtu(self, mtu: int) -> None:
        """Re-attach with the new MTU (pmd#36-39); a failure is raised and the old MTU stays."""
        if not isinstance(mtu, int) or not MIN_FRAME <= mtu + ETHER_OVERHEAD <= MAX_RX_PKTLEN:
            raise ConfigError("mtu", mtu, f"{MIN_FRAME - ETHER_OVERHEAD}..{MAX_RX_PKTLEN - ETHER_OVERHEAD}")
        with self._lock:
            self._check_open()
            if self._started:
                raise PortBusyError("mtu", mtu, "a stopped port (stop() first)", "EBUSY")
            old_mtu, config = self._mtu, self._config
            self._started = False
            try:
                self._reattach(mtu)
                if self._configured:
                    self._apply_configuration(_Configuration(**vars(config)))
            except NetvscError as error:
                # DPDK pitfall avoided: the rollback's success was returned as the result.
                log.warning("MTU %d failed (%s): back to %d", mtu, error, old_mtu)
                with contextlib.suppress(NetvscError):
                    self._reattach(old_mtu)
                    if self._configured:
                        self._apply_configuration(_Configuration(**vars(config)))
                self._mtu = old_mtu
                raise
            self._mtu = mtu

    # -- link ----------------------------------------------------------------------------------

    def _refresh_link(self, notify: bool) -> api.LinkStatus:
        if self.rescinded:
            link = api.LinkStatus(False, 0)
        else:
            up = self.rndis.link_connected()
            speed = self.rndis.link_speed_mbps()
            link = api.LinkStatus(up, speed if up else 0, True, False)
        changed = link != self._link
        self._link = link  # any field change is stored (DPDK pitfall: speed changes were lost)
        if notify and changed:
            for callback in list(self._link_callbacks):
                try:
                    callback(link)
                except Exception:
                    log.exception("link-change callback")
        return link

    def link_update(self, wait: bool = False) -> api.LinkStatus:
        """Query the host's media state and speed (pmd#40)."""
        with self._lock:
            self._check_open()
            return self._refresh_link(notify=False)

    @property
    def link(self) -> api.LinkStatus:
        return self._link

    def on_link_change(self, callback: api.LinkCallback | None) -> None:
        """``callback(LinkStatus)`` runs on the control worker after the stored link is refreshed
        (pmd#41; DPDK pitfall avoided: its callback read a stale link). None removes it."""
        self._link_callbacks = [] if callback is None else [callback]

    def _on_host_event(self, event: HostEvent) -> None:
        """Runs on the control worker: never inside ring processing (pmd#42)."""
        if event.kind not in ("link", "rescind", "vf"):
            return
        if event.kind == "link" and event.status not in (
            wire_rndis.RNDIS_STATUS_MEDIA_CONNECT,
            wire_rndis.RNDIS_STATUS_MEDIA_DISCONNECT,
            wire_rndis.RNDIS_STATUS_LINK_SPEED_CHANGE,
        ):
            return  # network change, offload config: nothing to refresh
        # The application thread may hold the port (and be stopping this worker): retry later
        # rather than block, so close never waits on the worker.
        if not self._lock.acquire(timeout=0.05):
            if self.control is not None:
                self.control.events.put(event)
            return
        try:
            if self.control is None:
                return
            if event.kind == "rescind":
                self._on_rescind()
            elif event.kind == "vf":
                self.vf.on_association(bool(event.status), self.control.vf_serial)  # pmd#85-88
            else:
                self._refresh_link(notify=True)
        finally:
            self._lock.release()

    def _check_rescind(self) -> None:
        if self.vf.needs_poll and self._lock.acquire(timeout=0.05):
            try:
                self.vf.poll()  # a VF that vanished, or one reported before its netdev (pmd.md 7.2)
            finally:
                self._lock.release()
        dev = self.dev
        if dev is None or self.rescinded:
            return
        gone = not dev.path.exists() or any(
            not (dev.path / "channels" / str(ch.relid)).exists() for ch in self._subchannels
        )
        if gone:
            self.control.events.put(HostEvent("rescind"))

    def _on_rescind(self) -> None:
        """A rescinded channel stops the port and reports link down."""
        with self._lock:
            if self.rescinded:
                return
            self.rescinded = True
            self.vf.on_rescind()
            self.control.counters["rescinds"] += 1
            self._started = False
            log.warning("port %s: channels rescinded; port stopped", self.device_name)
            self._link = api.LinkStatus(True, self._link.speed_mbps)  # force a change to down
            self._refresh_link(notify=True)

    # -- RSS -----------------------------------------------------------------------------------

    def _check_rss_mode(self) -> None:
        if self._config.rss is None:
            raise ConfigError("rss", None, "a port configured with rss=RssConf(...)", "not supported")
        if self.nvs.ndis_version < wire_nvsp.NDIS_VERSION_6_20:
            raise ConfigError("rss", "NDIS < 6.20", "NVSP 5 or newer", "not supported")

    def rss_hash_update(self, conf) -> None:
        """New key and hash types; validated before anything is sent (pmd#49)."""
        with self._lock:
            self._check_open()
            self._check_rss_mode()
            # An update without a key keeps the current one (DPDK pitfall: reset to default).
            key = rss.validate_key(conf.key) if conf.key else self._rss_state.key
            hash_types = rss.validate_hash_types(
                conf.hash_types, self.flow_type_rss_offloads or rss.ALL_RSS_TYPES
            )
            self._rss_state = rss.RssState(key, hash_types, list(self._rss_state.table))
            self._send_rss()

    def rss_hash_conf_get(self):
        """The key and hash types in effect (pmd#50)."""
        self._check_open()
        self._check_rss_mode()
        return api.RssConf(self._rss_state.key, self._rss_state.hash_types)

    def reta_update(self, entries: Sequence[int], mask: Sequence[bool] | None = None) -> None:
        """Masked entries; the whole table checked before it changes (pmd#51)."""
        with self._lock:
            self._check_open()
            table = rss.validate_reta_update(
                self._rss_state.table, list(entries), mask, self._config.nb_rx_queues
            )
            self._rss_state.table = table
            if self._config.rss is not None and self._config.nb_rx_queues > 1:
                self._send_rss()

    def reta_query(self, mask: Sequence[bool] | None = None) -> list[int]:
        """The 128-entry table; unmasked entries are -1 when a mask is given (pmd#52)."""
        table = list(self._rss_state.table)
        if mask is None:
            return table
        if len(mask) != rss.RETA_SIZE:
            raise ConfigError("reta mask size", len(mask), f"exactly {rss.RETA_SIZE}")
        return [entry if masked else -1 for entry, masked in zip(table, mask, strict=True)]

    @property
    def vlan_strip(self) -> bool:
        """Always on: the host strips 802.1Q tags and reports them as per-packet info."""
        return True

    # -- stats (the data path of issue 5 updates these counters) ---------------------------------

    def stats(self) -> api.PortStats:
        return pmd_stats.port_stats(self.rx_counters, self.tx_counters, self.vf.stats())  # pmd#43

    def stats_reset(self) -> None:
        self.rx_counters.reset()
        self.tx_counters.reset()

    def xstats(self) -> list[tuple[str, int]]:
        return pmd_stats.port_xstats(self.rx_counters, self.tx_counters, self.vf.stats(), self.vf.xstats())

    def xstats_reset(self) -> None:
        self.stats_reset()
        self.vf.xstats_reset()  # propagated, unlike stats_reset (pmd.md 7.6)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("started" if self._started else "stopped")
        return f"NetvscPort({self.device_name}, {state})"
