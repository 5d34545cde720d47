"""``netvsc info`` and ``netvsc.probe()``: a stand-in Port, fake sysfs trees, and the emulated host.

The stand-in checks the reading and printing alone; the end-to-end tests open E1's NetvscPort
against ``netvsc host`` (one host per NVSP version limit, shared by the module) and check that
the negotiated versions are what ``netvsc info`` shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import netvsc
from fakesys import SCSI_CLASS_GUID, FakeSys
from netvsc.apps import info as info_app
from netvsc.cli import cli
from netvsc.errors import ConfigError, DeviceError
from netvsc.ethdev import api
from netvsc.pmd.devargs import NetvscDevargs
from netvsc.pmd.probe import ProbedDevice, probe
from netvsc.wire import ndis, nvsp

GUID = "5bd4c4f5-43d5-4c4b-8a3a-0a4d1b2c3d4e"


class StandInPort:
    """Implements ethdev.api.Port with fixed answers, and records what was called."""

    def __init__(self) -> None:
        self.closed = False
        self.reta = [i % 4 for i in range(128)]
        self.rss = api.RssConf(key=ndis.TOEPLITZ_KEY_DPDK, hash_types=api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP)

    mac_address = bytes.fromhex("02155d000001")
    mtu = 1500

    def dev_info(self) -> api.DevInfo:
        limits = api.DescLimits(1, 4096, 1)
        return api.DevInfo(
            driver_name="net_netvsc", max_rx_queues=64, max_tx_queues=64, min_rx_bufsize=1024,
            max_rx_pktlen=16128, max_mac_addrs=1,
            rx_offload_capa=api.RX_OFFLOAD_VLAN_STRIP | api.RX_OFFLOAD_RSS_HASH,
            tx_offload_capa=api.TX_OFFLOAD_MULTI_SEGS | api.TX_OFFLOAD_VLAN_INSERT | api.TX_OFFLOAD_TCP_TSO,
            flow_type_rss_offloads=api.RSS_IPV4 | api.RSS_NONFRAG_IPV4_TCP, hash_key_size=40,
            reta_size=128, rx_desc_lim=api.DescLimits(0, 65535, 1), tx_desc_lim=limits, min_mtu=46,
            max_mtu=16110, speed_capa_mbps=10000, nvs_version=nvsp.NVSP_VERSION_61,
            ndis_version=nvsp.NDIS_VERSION_6_30, device=GUID,
        )  # fmt: skip

    def configure(self, nb_rxq, nb_txq, *, rss=None, rx_offloads=0, tx_offloads=0): ...
    def rx_queue_setup(self, queue, nb_desc, **kw): ...
    def tx_queue_setup(self, queue, nb_desc, *, tx_free_thresh=None): ...
    def start(self): ...
    def stop(self): ...

    def close(self) -> None:
        self.closed = True

    def reset(self):
        raise NotImplementedError("reset")

    def mac_addr_set(self, mac): ...
    def vlan_filter_set(self, vlan_id, on=True): ...
    def flow_ctrl_set(self, conf): ...
    def rx_queue_start(self, queue): ...
    def rx_queue_stop(self, queue): ...
    def tx_queue_start(self, queue): ...
    def tx_queue_stop(self, queue): ...

    def promiscuous_enable(self): ...
    def promiscuous_disable(self): ...
    def allmulticast_enable(self): ...
    def allmulticast_disable(self): ...
    def set_mc_addr_list(self, addrs): ...
    def set_mtu(self, mtu): ...

    def link_update(self, wait=False) -> api.LinkStatus:
        return api.LinkStatus(up=True, speed_mbps=40000)

    def on_link_change(self, callback): ...
    def rss_hash_update(self, conf): ...

    def rss_hash_conf_get(self) -> api.RssConf:
        return self.rss

    def reta_update(self, entries, mask=None): ...

    def reta_query(self) -> list[int]:
        return list(self.reta)

    def stats(self) -> api.PortStats:
        return api.PortStats()

    def stats_reset(self): ...

    def xstats(self):
        return [("rx_good_packets", 7), ("tx_q0_ring_full", 2)]

    def xstats_reset(self): ...

    def counters(self):
        return {"unsolicited": 1, "timeouts": 0}


# ---------------------------------------------------------------------------------------------
# collect and the command, with the stand-in
# ---------------------------------------------------------------------------------------------


def test_collect_reads_everything_through_the_port_api():
    """pmd#11, pmd#12, pmd#13, pmd#50, pmd#52: dev_info, link, offloads, RSS, RETA summary, xstats."""
    record = info_app.collect(StandInPort())
    assert record["nvs_version"] == "6.1" and record["ndis_version"] == "6.30"
    assert record["nvs_version_raw"] == 0x60001 and record["ndis_version_raw"] == 0x6001E
    assert record["mac_address"] == "02:15:5d:00:00:01"
    assert record["link"] == {"up": True, "speed_mbps": 40000, "full_duplex": True, "autoneg": False}
    assert record["rx_offloads"] == ["VLAN_STRIP", "RSS_HASH"]
    assert record["tx_offloads"] == ["VLAN_INSERT", "TCP_TSO", "MULTI_SEGS"]
    assert record["rss"] == {"key": ndis.TOEPLITZ_KEY_DPDK.hex(), "hash_types": ["IPV4", "NONFRAG_IPV4_TCP"]}
    assert record["reta"] == {
        "size": 128,
        "entries_per_queue": {"0": 32, "1": 32, "2": 32, "3": 32},
        "round_robin": True,
    }
    assert record["xstats"] == {"rx_good_packets": 7, "tx_q0_ring_full": 2}
    assert record["control_counters"] == {"unsolicited": 1, "timeouts": 0}
    assert record["dev_info"]["reta_size"] == 128
    json.dumps(record)  # plain values only


def test_reta_summary_custom_table_and_unsupported_rss():
    """pmd#52: a table that is not round robin is reported as custom; a port without RSS shows None."""
    port = StandInPort()
    port.reta = [0] * 127 + [1]
    port.rss_hash_conf_get = lambda: (_ for _ in ()).throw(NotImplementedError("NDIS < 6.20"))
    record = info_app.collect(port)
    assert record["reta"]["round_robin"] is False
    assert record["reta"]["entries_per_queue"] == {"0": 127, "1": 1}
    assert record["rss"] is None


@pytest.fixture
def stand_in(monkeypatch):
    opened: list[tuple] = []
    port = StandInPort()

    def fake_open(device, devargs, root, timeout):
        opened.append((device, devargs, root, timeout))
        if device == "nosuch":
            raise ConfigError("device", device, "a VMBus network device GUID or interface name: none found")
        if device == "deaf":
            raise DeviceError("control request RNDIS query timed out after 0.5 s")
        return port

    monkeypatch.setattr(info_app, "_open_port", fake_open)
    port.opened = opened
    return port


def test_info_tables(stand_in):
    """pmd#11: the table output shows versions, link, offloads, RSS key and xstats, and the port is closed."""
    result = CliRunner().invoke(cli, ["info", GUID, "--devargs", "latency=100"])
    assert result.exit_code == 0, result.output
    expected = ("6.1 (0x60001)", "6.30 (0x6001e)", "up, 40000 Mbps", "VLAN_STRIP", "MULTI_SEGS",
                ndis.TOEPLITZ_KEY_DPDK.hex(), "128 entries, round robin", "tx_q0_ring_full")  # fmt: skip
    for text in (*expected, "unsolicited"):
        assert text in result.output, f"{text!r} missing from:\n{result.output}"
    device, devargs, root, timeout = stand_in.opened[0]
    assert (device, devargs, root, timeout) == (GUID, NetvscDevargs(latency_us=100), None, 60.0)
    assert stand_in.closed


def test_info_json_and_devargs_after_the_device(stand_in):
    """pmd#84: DPDK's "GUID,key=value" form reaches the port as parsed devargs; --json is one document."""
    result = CliRunner().invoke(cli, ["info", f"{GUID},tx_copybreak=0x100", "--json", "--timeout", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["device"] == GUID and record["nvs_version"] == "6.1"
    assert stand_in.opened[0][1] == NetvscDevargs(tx_copybreak=256)
    assert stand_in.opened[0][3] == 2.0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["info", "nosuch"], "invalid device='nosuch'"),
        (["info", "deaf"], "timed out"),
        (["info", GUID, "--devargs", "latency=abc"], "invalid latency='abc'"),
        (["info", GUID, "--devargs", "bogus=1"], "invalid devargs key='bogus'"),
        (["info", f"{GUID},latency=1", "--devargs", "latency=2"], "either after DEV or with --devargs"),
    ],
)
def test_info_errors_are_one_line(stand_in, args, expected):
    """pmd#84: unknown devices, dead hosts and bad devargs end in one error line and exit code != 0."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert expected in result.output
    assert "Traceback" not in result.output
    if "devargs" in " ".join(args) or "," in args[1]:
        assert stand_in.opened == [], "bad devargs are refused before the device is opened"


# ---------------------------------------------------------------------------------------------
# probe over fake sysfs trees
# ---------------------------------------------------------------------------------------------


def test_probe_lists_only_network_devices_bound_to_uio(tmp_path, caplog):
    """pmd#1: NICs bound to uio_hv_generic are listed (netdev, uio, channels, monitor id); others not."""
    fake = FakeSys(tmp_path)
    usable = fake.add_device(GUID, relid=14, monitor_id=3, driver=None)
    fake.bind_uio(usable, "uio0")
    fake.add_channel(usable, 15, 1)
    no_monitor_guid = "00000000-0000-4000-8000-000000000002"
    no_monitor = fake.add_device(no_monitor_guid, relid=16, monitor_id=None, driver=None)
    fake.bind_uio(no_monitor, "uio1")
    fake.add_device("00000000-0000-4000-8000-000000000003", driver="hv_netvsc", netdev="eth0")
    fake.add_device(
        "00000000-0000-4000-8000-000000000004", class_guid=SCSI_CLASS_GUID, driver="uio_hv_generic"
    )
    fake.add_device("00000000-0000-4000-8000-000000000005", device_id_text="garbage\n")
    record = tmp_path / "run" / "netvsc" / "devbind.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"eth1": GUID}))

    with caplog.at_level(logging.WARNING, logger="netvsc.pmd.probe"):
        found = probe(tmp_path)
    assert [device.guid for device in found] == [no_monitor_guid, GUID]
    bound = found[1]
    assert bound == ProbedDevice(
        guid=GUID, netdev="eth1", netdev_recorded=True, uio="uio0", channel_count=2, monitor_id=3,
        relid=14, emulated=True, path=usable,
    )  # fmt: skip
    assert bound.has_monitor and not found[0].has_monitor
    assert found[0].netdev is None and found[0].netdev_recorded is False
    assert "garbage" in caplog.text, "a broken device is logged and skipped"
    assert bound.as_dict()["path"] == str(usable)


def test_probe_follows_the_environment_and_handles_no_tree(tmp_path, monkeypatch):
    """pmd#1: netvsc.probe() reads NETVSC_SYSFS_ROOT; a root without sys/bus/vmbus lists nothing."""
    fake = FakeSys(tmp_path / "a")
    fake.bind_uio(fake.add_device(GUID, driver=None))
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path / "a"))
    assert [device.guid for device in netvsc.probe()] == [GUID]
    assert probe(tmp_path / "empty") == []


def test_info_without_a_device_lists_the_usable_ones(tmp_path):
    """pmd#1: `netvsc info` alone prints the probe result, as a table or JSON."""
    fake = FakeSys(tmp_path)
    fake.bind_uio(fake.add_device(GUID, driver=None, monitor_id=None), "uio3")
    result = CliRunner().invoke(cli, ["info", "--root", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.output)
    assert (listed["guid"], listed["uio"], listed["monitor_id"], listed["emulated"]) == (
        GUID,
        "uio3",
        255,
        True,
    )
    table = CliRunner().invoke(cli, ["info", "--root", str(tmp_path)])
    assert table.exit_code == 0 and GUID in table.output and "uio3" in table.output and "none" in table.output
    empty = CliRunner().invoke(cli, ["info", "--root", str(tmp_path / "nothing")])
    assert empty.exit_code == 0 and "netvsc devbind --bind uio_hv_generic" in empty.output


def test_import_netvsc_stays_cheap():
    """``import netvsc`` loads neither numpy nor the driver; netvsc.probe is loaded on first use."""
    code = (
        "import sys, netvsc; assert 'numpy' not in sys.modules and 'netvsc.pmd' not in sys.modules; "
        "netvsc.probe"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with pytest.raises(AttributeError):
        _ = netvsc.no_such_name


# ---------------------------------------------------------------------------------------------
# end to end: E1's NetvscPort against the emulated host
# ---------------------------------------------------------------------------------------------

SMALL_SIZES = ("--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M",
               "--subchannel-ring-size", "64K")  # fmt: skip

_port_missing = not (Path(info_app.__file__).parent.parent / "pmd" / "port.py").exists()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """One host accepting every NVSP version and one limited to NVSP 4, shared by the module."""
    from host_process import HostProcess

    started: dict[str, HostProcess] = {}
    try:
        for name, extra in (("all", ()), ("v4", ("--nvsp-versions", "1,2,4"))):
            host = HostProcess(tmp_path_factory.mktemp(f"info-{name}") / "root", *SMALL_SIZES, *extra)
            started[name] = host
        for host in started.values():
            host.wait_ready()
        yield started
    finally:
        for host in started.values():
            with contextlib.suppress(Exception):
                host.stop()


def _run_info(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NETVSC_SYSFS_ROOT=str(root))
    return subprocess.run(
        [sys.executable, "-m", "netvsc", "info", *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(_port_missing, reason="pmd/port.py (E1) not present")
@pytest.mark.parametrize(
    ("host_name", "nvs", "ndis_text", "rss_types"),
    [("all", "6.1", "6.30", True), ("v4", "4", "6.1", False)],
)
def test_info_against_the_emulated_host_shows_negotiated_versions(
    hosts, host_name, nvs, ndis_text, rss_types
):
    """pmd#2, pmd#3, pmd#9, pmd#10, pmd#11: netvsc info over the emulated host shows what was negotiated."""
    host = hosts[host_name]
    devices = probe(host.root)
    assert len(devices) == 1 and devices[0].emulated
    device = devices[0]
    result = _run_info(host.root, device.guid, "--json", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["nvs_version"] == nvs
    assert record["ndis_version"] == ndis_text
    assert record["device"] == device.guid
    assert record["mac_address"] == "02:15:5d:00:00:01"
    assert record["mtu"] == 1500
    assert record["link"]["up"] is True
    assert record["dev_info"]["reta_size"] == 128 and record["dev_info"]["hash_key_size"] == 40
    assert "VLAN_STRIP" in record["rx_offloads"] and "MULTI_SEGS" in record["tx_offloads"]
    assert bool(record["rss_flow_types"]) is rss_types, "RSS flow types only from NVS 5 on"
    assert "rx_q0_good_packets" in record["xstats"] and "tx_q0_ring_full" in record["xstats"]

    tables = _run_info(host.root, device.guid, "--devargs", "latency=100")
    assert tables.returncode == 0, tables.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in tables.stdout.splitlines()
            if line.count("│") >= 3}  # fmt: skip
    assert rows["NVS version"].split()[0] == nvs, rows
    assert rows["NDIS version"].split()[0] == ndis_text, rows
    assert "extended statistics" in tables.stdout


@pytest.mark.skipif(_port_missing, reason="pmd/port.py (E1) not present")
def test_info_with_queues_shows_rss_in_effect(hosts):
    """pmd#17, pmd#19, pmd#20, pmd#50, pmd#52: --queues 4: the DPDK key and a 4-queue RETA shown."""
    host = hosts["all"]
    result = _run_info(host.root, probe(host.root)[0].guid, "--json", "--queues", "4", "--timeout", "10")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["rss"]["key"] == ndis.TOEPLITZ_KEY_DPDK.hex()
    assert set(record["rss"]["hash_types"]) >= {"IPV4", "NONFRAG_IPV4_TCP"}
    assert record["reta"] == {
        "size": 128, "entries_per_queue": {"0": 32, "1": 32, "2": 32, "3": 32}, "round_robin": True
    }  # fmt: skip
    assert "rx_q3_good_packets" in record["xstats"]

    unconfigured = json.loads(_run_info(host.root, probe(host.root)[0].guid, "--json").stdout)
    assert unconfigured["rss"] is None and "rss" in unconfigured["unavailable"]


@pytest.mark.skipif(_port_missing, reason="pmd/port.py (E1) not present")
def test_info_unknown_device_against_the_emulated_host(hosts):
    """pmd#1: an unknown device name is one error line naming it and the known devices."""
    host = hosts["all"]
    result = _run_info(host.root, "eth9")
    assert result.returncode != 0
    assert "eth9" in result.stderr and probe(host.root)[0].guid in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
