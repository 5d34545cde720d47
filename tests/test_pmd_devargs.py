"""Device arguments of the NetVSC port (spec/pmd.md section 6): defaults, number syntax, every refusal."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from netvsc.errors import ConfigError
from netvsc.pmd.devargs import (
    DEVARG_RANGES,
    LATENCY_US_MAX,
    NetvscDevargs,
    parse_devargs,
    parse_unsigned,
    split_device_spec,
)
from netvsc.pmd.probe import probe
from netvsc.vmbus.signal import LATENCY_US_MAX as SIGNAL_LATENCY_US_MAX
from netvsc.vmbus.signal import latency_units
from netvsc.wire.vmbus import MONITOR_LATENCY_OFFSET


def test_defaults_are_dpdks():
    """pmd#84: no devargs gives latency 50, rx_copybreak 256, tx_copybreak 512, extmbuf and numa off."""
    for empty in (None, "", ",", {}):
        devargs = parse_devargs(empty)
        assert devargs == NetvscDevargs(
            latency_us=50, rx_copybreak=256, tx_copybreak=512, rx_extmbuf_enable=0, numa_aware=0
        ), f"defaults from {empty!r}"
    assert not devargs.rx_extmbuf and not devargs.numa


def test_every_dpdk_key_is_accepted():
    """pmd#84: the five keys DPDK netvsc accepts, and no other."""
    assert set(DEVARG_RANGES) == {
        "latency",
        "rx_copybreak",
        "tx_copybreak",
        "rx_extmbuf_enable",
        "numa_aware",
    }
    devargs = parse_devargs("latency=100,rx_copybreak=128,tx_copybreak=256,rx_extmbuf_enable=1,numa_aware=1")
    assert devargs == NetvscDevargs(100, 128, 256, 1, 1)
    assert devargs.rx_extmbuf and devargs.numa


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("100", 100),
        ("0x100", 256),
        ("0X1f", 31),
        ("0100", 64),  # leading 0: octal, as strtoul with base 0
        ("00", 0),
        ("4294967295", 0xFFFFFFFF),
        (" 12 ", 12),  # whitespace around the value is stripped with the pair
    ],
)
def test_unsigned_numbers_as_strtoul_base_0(text, value):
    """pmd#84: decimal, 0x hexadecimal and leading-0 octal."""
    assert parse_devargs(f"tx_copybreak={text}").tx_copybreak == value


@pytest.mark.parametrize("key", sorted(DEVARG_RANGES))
@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "empty value"),
        ("abc", "not an unsigned number"),
        ("12abc", "not an unsigned number"),  # trailing characters: strtoul leaves them, DPDK refuses
        ("0x", "not an unsigned number"),
        ("08", "not an unsigned number"),  # 8 is no octal digit
        ("-1", "not an unsigned number"),  # strtoul would wrap it to ULONG_MAX
        ("+5", "not an unsigned number"),
        ("1.5", "not an unsigned number"),
    ],
)
def test_bad_numbers_are_refused_naming_key_value_and_range(key, text, detail):
    """pmd#84: empty or non-numeric values fail with the key, the value and the accepted range."""
    with pytest.raises(ConfigError) as caught:
        parse_devargs(f"{key}={text}")
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.parameter == key
    assert error.value == text.strip()
    low, high = DEVARG_RANGES[key]
    assert f"{low}..{high}" in error.accepted
    assert detail in str(error)
    assert key in str(error)


def test_bare_key_without_value_is_an_empty_value():
    """pmd#84: "latency" alone has no number to parse."""
    with pytest.raises(ConfigError, match="no value given") as caught:
        parse_devargs("latency")
    assert caught.value.parameter == "latency"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("latency", LATENCY_US_MAX + 1),
        ("latency", 0xFFFFFFFF),
        ("rx_copybreak", 0x100000000),
        ("tx_copybreak", 0x100000000),
        ("rx_extmbuf_enable", 0x100000000),
        ("numa_aware", 0x100000000),
    ],
)
def test_out_of_range_values_are_refused(key, value):
    """pmd#83, pmd#84: values outside the accepted range are refused, not truncated to 32 bits."""
    for text in (str(value), hex(value)):
        with pytest.raises(ConfigError, match="out of range") as caught:
            parse_devargs(f"{key}={text}")
        assert caught.value.parameter == key
        assert caught.value.value == text
        assert str(DEVARG_RANGES[key][1]) in caught.value.accepted


def test_latency_limit_matches_the_monitor_page():
    """pmd#83: latency in µs is stored in 100 ns units; 6553 µs is the largest a u16 holds below 65535."""
    assert LATENCY_US_MAX == SIGNAL_LATENCY_US_MAX == 6553
    largest = parse_devargs(f"latency={LATENCY_US_MAX}")
    assert largest.latency_units == 65530 == latency_units(LATENCY_US_MAX)
    assert parse_devargs("latency=0x64").latency_units == 1000 == latency_units(100)
    assert NetvscDevargs().latency_units == 500  # the default 50 µs, as DPDK stores it


def test_unknown_keys_are_refused():
    """pmd#84: an unknown key makes the parse fail and the message lists the keys accepted."""
    for text in ("latncy=5", "latency=5,mtu=1500", "foo"):
        with pytest.raises(ConfigError) as caught:
            parse_devargs(text)
        assert "latency, rx_copybreak, tx_copybreak, rx_extmbuf_enable, numa_aware" in caught.value.accepted
    with pytest.raises(ConfigError) as caught:
        parse_devargs({"max_queues": 4})
    assert caught.value.value == "max_queues"


def test_key_given_twice_is_refused():
    """pmd#84: two values for one key are ambiguous."""
    with pytest.raises(ConfigError, match="given twice") as caught:
        parse_devargs("latency=10,latency=20")
    assert caught.value.parameter == "latency"


def test_mapping_input():
    """pmd#84: a mapping takes strings (parsed) and non-negative ints; other types are refused."""
    assert parse_devargs({"latency": "0x10", "tx_copybreak": 0}) == NetvscDevargs(
        latency_us=16, tx_copybreak=0
    )
    for bad in (True, 1.5, None, -1):
        with pytest.raises(ConfigError) as caught:
            parse_devargs({"rx_copybreak": bad})
        assert caught.value.parameter == "rx_copybreak"
    with pytest.raises(ConfigError) as caught:
        parse_devargs(42)
    assert caught.value.parameter == "devargs"


def test_round_trip_and_passthrough():
    """pmd#84: to_text reads back to an equal object; parsed devargs pass through unchanged."""
    devargs = NetvscDevargs(
        latency_us=7, rx_copybreak=0, tx_copybreak=9000, rx_extmbuf_enable=1, numa_aware=0
    )
    assert parse_devargs(devargs.to_text()) == devargs
    assert parse_devargs(devargs) is devargs
    assert devargs.as_dict()["latency"] == 7


def test_parse_unsigned_directly():
    """pmd#84: the number reader alone names the key it reads for."""
    assert parse_unsigned("latency", "017") == 15
    with pytest.raises(ConfigError) as caught:
        parse_unsigned("latency", "0xg")
    assert caught.value.parameter == "latency"


def test_device_spec_split():
    """pmd#84: DPDK's allow-list form "<uuid>,key=value" splits into device and devargs."""
    guid = "f8615163-df3e-46c5-913f-f2d2f965ed0e"
    assert split_device_spec(f"{guid},latency=100,tx_copybreak=256") == (guid, "latency=100,tx_copybreak=256")
    assert split_device_spec("eth1") == ("eth1", "")
    with pytest.raises(ConfigError) as caught:
        split_device_spec(",latency=1")
    assert caught.value.parameter == "device"


# ---------------------------------------------------------------------------------------------
# end to end: the devargs reach the device (E1's NetvscPort against the emulated host)
# ---------------------------------------------------------------------------------------------

_PORT_MISSING = importlib.util.find_spec("netvsc.pmd.port") is None
SMALL_SIZES = ("--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M",
               "--subchannel-ring-size", "64K")  # fmt: skip


@pytest.fixture(scope="module")
def emulated_host(tmp_path_factory):
    from host_process import HostProcess

    host = HostProcess(tmp_path_factory.mktemp("devargs") / "root", *SMALL_SIZES)
    try:
        host.wait_ready()
        yield host
    finally:
        host.stop()


def _monitor_latency_units(root, device) -> int:
    """The latency entry of the device's monitor id in the monitor page map (map 2), as the host sees it."""
    page = np.fromfile(root / "dev" / device.uio / "map2", dtype=np.uint16)
    return int(page[MONITOR_LATENCY_OFFSET // 2 + device.monitor_id])


@pytest.mark.skipif(_PORT_MISSING, reason="pmd/port.py (E1) not present")
@pytest.mark.parametrize(("devargs", "units"), [(None, 500), ("latency=0x64", 1000), ("latency=0", 0)])
def test_latency_devarg_reaches_the_monitor_page(emulated_host, devargs, units):
    """pmd#83: latency (µs) lands in the monitor-page entry in 100 ns units (default 50 µs)."""
    from netvsc.pmd.port import NetvscPort

    device = probe(emulated_host.root)[0]
    assert device.has_monitor
    port = NetvscPort.open(device.guid, devargs, root=emulated_host.root, control_timeout=10)
    try:
        assert _monitor_latency_units(emulated_host.root, device) == units
    finally:
        port.close()


@pytest.mark.skipif(_PORT_MISSING, reason="pmd/port.py (E1) not present")
@pytest.mark.parametrize("devargs", ["latency=7000", "tx_copybreak=", "rx_extmbuf_enable=yes", "speed=10"])
def test_bad_devargs_fail_the_open(emulated_host, devargs):
    """pmd#83, pmd#84: a bad devarg makes probe/open fail with ConfigError, before the device is touched."""
    from netvsc.pmd.port import NetvscPort

    device = probe(emulated_host.root)[0]
    with pytest.raises(ConfigError) as caught:
        NetvscPort.open(device.guid, devargs, root=emulated_host.root, control_timeout=10)
    assert devargs.split("=")[0] in str(caught.value)
