"""The VF manager of a NetVSC port: SR-IOV accelerated networking (spec/pmd.md 7).

Layer 5 (pmd). A VF is a kernel netdev carrying the synthetic NIC's MAC address (DESIGN.md
decision 12); this port drives it through an ``AfPacketPort`` (ethdev/afpacket.py), the way
DPDK's netvsc drives the VF's own ethdev port.

State (pmd.md 7.1): ``reported`` (the host says a VF is allocated), ``vf`` (attached: the
AF_PACKET port on the netdev), ``switched`` (this driver asked the host to move the data path
to the VF and the host completed it), ``state`` (unknown, attached, started, stopped, removed).

Order of operations (pmd.md 7.3, 7.4):

- association "allocated" (the control worker, ``on_association``): attach (find the netdev by
  MAC, not the synthetic NIC's own netdev, the serial checked where sysfs has a PCI slot), then,
  if the port is started, configure the VF with the port's queue counts and offloads it can do,
  set up its queues with the NetVSC queues' mempools, align its MTU, start it, and only then
  send SWITCH_DATA_PATH = VF; ``switched`` is set when the host completes it (as current Linux:
  the completion means the host has moved). No netdev yet: retried once a second, 120 times
  (the VF device appears after the association, host.md 7.1);
- association "not allocated": switch to synthetic, the VF stays attached (pmd#88);
- port stop: switch to synthetic, then stop the VF; port start: start the VF, then switch;
  close: the VF port is closed;
- the netdev vanishes (hot-unplug, seen by the control worker's periodic look): synthetic
  first, then the VF port is stopped and closed (pmd#89); while the host still reports a VF,
  it is looked for again.

Switching away clears the data-path hook before the message is sent (Linux's order: traffic
stops using the VF at once) and ``switched`` is cleared even if the message fails.

The bursts read ``NetvscPort._vf_path`` (this manager while switched with the VF started, else
None: one attribute test on the path without a VF) and then go through a gate that add, remove
and switch close and wait on, so a burst never runs on a VF being torn down (the read/write lock
of pmd.md 7.1 and 7.8).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netvsc.errors import ConfigError, DeviceError, NetvscError
from netvsc.ethdev import api
from netvsc.ethdev.afpacket import DESC_MAX, NET_CLASS_DIR, AfPacketPort, netdev_mac
from netvsc.ethdev.batch import PacketBatch
from netvsc.vmbus.sysfs import NETVSC_CLASS_GUID
from netvsc.wire import nvsp as wire_nvsp

if TYPE_CHECKING:
    from netvsc.pmd.port import NetvscPort

__all__ = ["VfManager"]

log = logging.getLogger(__name__)

HOT_ADD_INTERVAL_S = 1.0  # pmd.md 7.2: one retry a second ...
HOT_ADD_RETRIES = 120  # ... for about two minutes
SWITCH_TIMEOUT_S = 10.0  # Linux retries a switch request for more than 10 s
GATE_DRAIN_S = 5.0
ARPHRD_ETHER = "1"
PCI_SLOTS_DIR = Path("/sys/bus/pci/slots")


class _Gate:
    """Bursts enter while it is open; ``close`` shuts it and waits until the last one left."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._open = False

    def enter(self) -> bool:
        with self._cond:
            if not self._open:
                return False
            self._readers += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True

    def close(self) -> bool:
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._readers == 0, GATE_DRAIN_S)


class VfManager:
    """The VF of one NetVSC port; every method but the bursts runs under the port's lock."""

    def __init__(
        self, port: NetvscPort, net_dir: Path = NET_CLASS_DIR, pci_slots: Path = PCI_SLOTS_DIR
    ) -> None:
        self.port = port
        self.net_dir = Path(net_dir)
        self.pci_slots = Path(pci_slots)
        self.reported = False
        self.serial: int | None = None
        self.vf: AfPacketPort | None = None
        self.switched = False
        self.state = "unknown"
        self.counters: Counter[str] = Counter()
        self._gate = _Gate()
        self._retry_at: float | None = None
        self._retries = 0

    @property
    def attached(self) -> bool:
        return self.vf is not None

    @property
    def netdev(self) -> str | None:
        return self.vf.ifname if self.vf is not None else None

    # -- discovery ---------------------------------------------------------------------------

    def find_netdev(self) -> str | None:
        """The interface that carries the port's MAC and is not a synthetic NIC itself."""
        mac = self.port.mac_address
        try:
            names = sorted(os.listdir(self.net_dir))
        except OSError:
            return None
        for name in names:
            if netdev_mac(name, self.net_dir) != mac:
                continue
            base = self.net_dir / name
            with contextlib.suppress(OSError):
                if (base / "type").read_text().strip() != ARPHRD_ETHER:
                    continue
            if self._is_synthetic(base):
                continue  # the port's own netdev (hv_netvsc) or another synthetic NIC
            if not self._serial_matches(base):
                self.counters["serial_mismatches"] += 1
                continue
            return name
        return None

    @staticmethod
    def _is_synthetic(base: Path) -> bool:
        try:
            class_id = (base / "device" / "class_id").read_text().strip().strip("{}").lower()
        except OSError:
            return False
        return class_id == NETVSC_CLASS_GUID.strip("{}").lower()

    def _serial_matches(self, base: Path) -> bool:
        """DESIGN.md decision 12: where the VF is a PCI function in a slot, the slot's name is the
        serial the host sent (Hyper-V names vPCI slots so); anything else is not checked."""
        if self.serial is None:
            return True
        try:
            device = (base / "device").resolve(strict=True)
            slots = list(self.pci_slots.iterdir())
        except OSError:
            return True
        if not (device / "vendor").is_file():
            return True
        for slot in slots:
            with contextlib.suppress(OSError):
                address = (slot / "address").read_text().strip()
                if address and device.name.startswith(address + "."):
                    return slot.name == str(self.serial)
        return True

    # -- host notifications ------------------------------------------------------------------

    def on_association(self, allocated: bool, serial: int | None = None) -> None:
        """NVSP VF association (control worker, port lock held)."""
        self.counters["associations"] += 1
        self.reported = allocated
        if serial is not None:
            self.serial = serial
        if not allocated:
            self._retry_at = None
            self.switch_to_synthetic()  # pmd#88: the VF stays attached
            return
        if self.vf is None and not self.attach():
            self._retries = 0
            self._retry_at = time.monotonic() + HOT_ADD_INTERVAL_S
            return
        if self.port.started:
            self.start()

    @property
    def needs_poll(self) -> bool:
        """Whether ``poll`` has anything to watch (a VF attached, or one awaited)."""
        return self.vf is not None or self._retry_at is not None

    def poll(self) -> None:
        """The control worker's periodic look (port lock held): a VF netdev that vanished is
        removed (pmd#89), a reported one not found yet is looked for again."""
        vf = self.vf
        if vf is not None and not self._netdev_present(vf):
            self.remove()
        self.poll_hot_add()

    def _netdev_present(self, vf: AfPacketPort) -> bool:
        try:
            return int((self.net_dir / vf.ifname / "ifindex").read_text()) == vf.ifindex
        except (OSError, ValueError):
            return False

    def remove(self) -> None:
        """The VF is gone (hot-unplug): synthetic first, then the VF port is stopped and closed
        (pmd#89); a VF the host still reports is looked for again, as a hot-add."""
        vf = self.vf
        if vf is None:
            return
        log.warning("port %s: VF %s removed", self.port.device_name, vf.ifname)
        self.switch_to_synthetic()
        with contextlib.suppress(NetvscError, OSError):
            vf.close()
        self.vf = None
        self.state = "removed"
        self.counters["removals"] += 1
        if self.reported:
            self._retries = 0
            self._retry_at = time.monotonic() + HOT_ADD_INTERVAL_S

    def on_rescind(self) -> None:
        """The synthetic device is gone: bursts stop using the VF; nothing can be sent to the host."""
        self.port._vf_path = None
        self._gate.close()
        self.switched = False

    def poll_hot_add(self) -> None:
        """A VF reported but not found yet: look again when the retry is due (control worker)."""
        due = self._retry_at
        if due is None or time.monotonic() < due:
            return
        if not self.reported or self.vf is not None:
            self._retry_at = None
            return
        if self.attach():
            self._retry_at = None
            if self.port.started:
                self.start()
            return
        self._retries += 1
        if self._retries >= HOT_ADD_RETRIES:
            self._retry_at = None
            self.counters["hot_add_given_up"] += 1
            log.warning("port %s: no interface with MAC %s appeared: VF given up",
                        self.port.device_name, self.port.mac_address.hex(":"))  # fmt: skip
            return
        self._retry_at = time.monotonic() + HOT_ADD_INTERVAL_S

    # -- add and remove ----------------------------------------------------------------------

    def attach(self) -> bool:
        """Find the VF's netdev and open an AF_PACKET port on it (pmd#85); True once attached."""
        if self.vf is not None:
            return True  # already attached: success (pmd.md 7.3)
        name = self.find_netdev()
        if name is None:
            self.counters["not_found"] += 1
            return False
        try:
            vf = AfPacketPort(name)
        except (ConfigError, DeviceError, OSError) as error:
            self.counters["attach_errors"] += 1
            log.warning("port %s: VF %s cannot be attached: %s", self.port.device_name, name, error)
            return False
        vf.rx_port_id = self.port.port_id  # pmd#69: VF packets carry the NetVSC port id
        self.vf = vf
        self.state = "attached"
        self.counters["attaches"] += 1
        log.info("port %s: VF %s attached (serial %s)", self.port.device_name, name, self.serial)
        return True

    def start(self) -> None:
        """The port is started: configure and start the VF if needed, then switch to it if the
        host reports one (pmd#87). Any failure leaves the data path synthetic."""
        vf = self.vf
        if vf is None:
            return
        try:
            if not vf.started:
                self._configure_and_start(vf)
            if self.reported and not self.switched:
                self._switch_to_vf()
        except (NetvscError, OSError) as error:
            self.counters["start_errors"] += 1
            log.warning("port %s: VF %s not used: %s", self.port.device_name, vf.ifname, error)
            self.switch_to_synthetic()
            with contextlib.suppress(NetvscError, OSError):
                vf.stop()
            self.state = "stopped"

    def _configure_and_start(self, vf: AfPacketPort) -> None:
        port = self.port
        config = port._config
        info = vf.dev_info()
        # The offloads the VF can do; the kernel's fanout hash spreads flows over its queues
        # (it has no key or table to be given).
        vf.configure(
            config.nb_rx_queues,
            config.nb_tx_queues,
            rx_offloads=config.rx_offloads & info.rx_offload_capa,
            tx_offloads=config.tx_offloads & info.tx_offload_capa,
        )
        for queue in range(config.nb_rx_queues):
            rxq = port._rx_queues[queue] if queue < len(port._rx_queues) else None
            if rxq is None or rxq.mempool is None:
                raise ConfigError("rx queue", queue, "set up with a mempool (the VF's mbufs come from it)")
            vf.rx_queue_setup(queue, min(max(rxq.ring_size, 1), DESC_MAX), mempool=rxq.mempool)
        for queue in range(config.nb_tx_queues):
            txq = port._tx_queues[queue] if queue < len(port._tx_queues) else None
            vf.tx_queue_setup(queue, min(txq.nb_desc, DESC_MAX) if txq is not None else 0)
        if vf.mtu != port.mtu:
            vf.set_mtu(port.mtu)
        self.sync_filters()
        vf.rx_port_id = port.port_id
        vf.start()
        self.state = "started"
        self.counters["starts"] += 1

    def stop(self) -> None:
        """Port stop: synthetic first, so the host steers nothing to a VF going down (pmd#29)."""
        self.switch_to_synthetic()
        if self.vf is not None and self.vf.started:
            self.vf.stop()
            self.state = "stopped"

    def close(self) -> None:
        """Port close: the VF port goes with it (pmd#31)."""
        self._retry_at = None
        self.stop()
        if self.vf is not None:
            self.vf.close()
            self.vf = None
            self.state = "removed"

    # -- the data-path switch -----------------------------------------------------------------

    def _send_switch(self, data_path: int) -> None:
        control = self.port.control
        if control is None or self.port.rescinded:
            raise DeviceError("no control channel to switch the data path on")
        name = "VF" if data_path == wire_nvsp.DATA_PATH_VF else "synthetic"
        control.nvsp_request(
            wire_nvsp.encode_switch_data_path(data_path),
            f"SWITCH_DATA_PATH {name} completion",
            min(self.port.control_timeout, SWITCH_TIMEOUT_S),
        )

    def _switch_to_vf(self) -> None:
        self._send_switch(wire_nvsp.DATA_PATH_VF)
        self.switched = True
        self.counters["switches_to_vf"] += 1
        self._gate.open()
        self.port._vf_path = self
        log.info("port %s: data path on VF %s", self.port.device_name, self.netdev)

    def switch_to_synthetic(self) -> None:
        """Bursts stop using the VF first; then the host is told (the flag is cleared even if the
        message fails, pmd.md 7.4)."""
        if not self.switched:
            return
        self.port._vf_path = None
        if not self._gate.close():
            log.warning("port %s: a VF burst did not finish in %g s", self.port.device_name, GATE_DRAIN_S)
        self.switched = False
        self.counters["switches_to_synthetic"] += 1
        try:
            self._send_switch(wire_nvsp.DATA_PATH_SYNTHETIC)
        except NetvscError as error:
            self.counters["switch_errors"] += 1
            log.warning("port %s: switch to synthetic not confirmed: %s", self.port.device_name, error)

    # -- configuration the port propagates ------------------------------------------------------

    def sync_filters(self) -> None:
        """Promiscuous, allmulticast and the multicast list follow the port's (pmd#92)."""
        vf, port = self.vf, self.port
        if vf is None:
            return
        try:
            if vf.promiscuous != port.promiscuous:
                vf.promiscuous_enable() if port.promiscuous else vf.promiscuous_disable()
            if vf.allmulticast != port.allmulticast:
                vf.allmulticast_enable() if port.allmulticast else vf.allmulticast_disable()
            if vf._mc_addrs != port.mc_addr_list:
                vf.set_mc_addr_list(port.mc_addr_list)
        except (NetvscError, OSError) as error:
            self.counters["filter_errors"] += 1
            log.warning("port %s: VF filter not updated: %s", port.device_name, error)

    def merge_dev_info(self, info: api.DevInfo) -> api.DevInfo:
        """pmd#14: with a VF attached, what both paths can do."""
        if self.vf is None:
            return info
        try:
            return api.merge_vf_dev_info(info, self.vf.dev_info())
        except NetvscError:
            return info

    def stats(self) -> api.PortStats | None:
        return self.vf.stats() if self.vf is not None else None

    def xstats(self) -> list[tuple[str, int]] | None:
        return self.vf.xstats() if self.vf is not None else None

    def xstats_reset(self) -> None:
        if self.vf is not None:
            self.vf.xstats_reset()

    # -- bursts (application threads) --------------------------------------------------------------

    def rx_burst(self, queue: int, indices: np.ndarray, start: int, nb_pkts: int) -> int:
        """Fill ``indices[start:start + nb_pkts]`` from VF queue ``queue`` (pmd#69)."""
        if nb_pkts <= 0 or not self._gate.enter():
            return 0
        try:
            return self.vf.rx_burst_into(queue, indices, start, nb_pkts)
        finally:
            self._gate.leave()

    def tx_burst(self, queue: int, batch: PacketBatch, nb_pkts: int) -> int:
        """Send on VF queue ``queue`` (pmd#91); -1 when the VF is being switched away (the port
        then sends on the synthetic path)."""
        if not self._gate.enter():
            return -1
        try:
            return self.vf.tx_burst(queue, batch, nb_pkts)
        finally:
            self._gate.leave()

    def __repr__(self) -> str:
        return (
            f"VfManager(reported={self.reported}, netdev={self.netdev}, switched={self.switched}, "
            f"state={self.state})"
        )
