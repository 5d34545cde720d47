"""sysfs scan: class filtering, GUID forms, netdev <-> GUID, validation of every attribute read."""

from __future__ import annotations

import pytest

from fakesys import SCSI_CLASS_GUID, FakeSys
from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus.sysfs import find_device, netdev_to_guid, parse_guid, scan_devices, sysfs_root
from netvsc.wire.vmbus import MONITOR_NONE, NETVSC_CLASS_GUID

NIC_GUID = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"
NIC2_GUID = "0a1b2c3d-0000-4000-8000-00000000beef"
DISK_GUID = "00000000-0001-8899-0000-000000000000"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    return FakeSys(tmp_path)


def test_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    assert sysfs_root() == tmp_path
    monkeypatch.delenv("NETVSC_SYSFS_ROOT")
    assert str(sysfs_root()) == "/"


@pytest.mark.parametrize(
    "text",
    [
        "{F8615163-DF3E-46C5-913F-F2D2F965ED0E}\n",
        "f8615163-df3e-46c5-913f-f2d2f965ed0e",
        "  {f8615163-Df3E-46c5-913f-f2d2f965ed0e}  ",
    ],
)
def test_guid_parses_with_or_without_braces_in_any_case(text):
    assert parse_guid(text) == NETVSC_CLASS_GUID


@pytest.mark.parametrize(
    "text", ["", "{}", "eth0", "f8615163df3e46c5913ff2d2f965ed0e", "{f8615163-df3e-46c5-913f}"]
)
def test_non_guids_are_refused(text):
    with pytest.raises(ValueError):
        parse_guid(text)


def test_scan_keeps_network_devices_only(fake):
    fake.add_device(NIC_GUID, relid=14, monitor_id=3, netdev="eth0")
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID, relid=2, driver="hv_storvsc")
    nics = scan_devices()
    assert [d.guid for d in nics] == [NIC_GUID]
    nic = nics[0]
    assert (nic.relid, nic.monitor_id, nic.driver, nic.netdev, nic.uio) == (14, 3, "hv_netvsc", "eth0", None)
    assert nic.channel_count == 1
    assert {d.guid for d in scan_devices(class_guid=None)} == {NIC_GUID, DISK_GUID}


def test_devices_are_identified_by_class_id_not_directory_name(fake):
    # Old kernels named directories vmbus_<n>; an upper-case, brace-less class_id is still a NIC.
    fake.add_device(NIC_GUID, dirname="vmbus_7", class_id_text=NETVSC_CLASS_GUID.upper() + "\n")
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID, dirname=NIC2_GUID)  # misleading name
    nics = scan_devices()
    assert [(d.guid, d.path.name) for d in nics] == [(NIC_GUID, "vmbus_7")]
    assert find_device(NIC_GUID).path.name == "vmbus_7"


def test_missing_monitor_id_means_no_monitor(fake):
    fake.add_device(NIC_GUID, monitor_id=None)
    assert scan_devices()[0].monitor_id == MONITOR_NONE


def test_uio_device_is_the_first_uio_numbered_entry(fake):
    dev = fake.add_device(NIC_GUID, driver="uio_hv_generic")
    for name in ("uio10", "uio2", "uiofoo", "xuio1"):
        (dev / "uio" / name).mkdir(parents=True)
    info = scan_devices()[0]
    assert (info.uio, info.driver, info.netdev) == ("uio2", "uio_hv_generic", None)


def test_channel_count_counts_numeric_entries(fake):
    dev = fake.add_device(NIC_GUID, relid=14)
    fake.add_channel(dev, 15, 1)
    fake.add_channel(dev, 16, 2)
    (dev / "channels" / "not-a-relid").mkdir()
    assert scan_devices()[0].channel_count == 3


def test_netdev_name_maps_to_guid_both_ways(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    fake.add_device(NIC2_GUID, netdev="eth2", relid=20)
    assert netdev_to_guid("eth1") == NIC_GUID
    assert netdev_to_guid("eth2") == NIC2_GUID
    assert netdev_to_guid("eth9") is None
    assert find_device("eth2").guid == NIC2_GUID
    assert find_device("eth2").netdev == "eth2"
    assert find_device("{" + NIC_GUID.upper() + "}").netdev == "eth1"


def test_netdev_link_basename_is_used_when_target_has_no_device_id(fake, tmp_path):
    fake.add_device(NIC_GUID)
    link = tmp_path / "sys" / "class" / "net" / "eth5"
    link.mkdir(parents=True)
    (link / "device").symlink_to(tmp_path / "nowhere" / NIC_GUID)
    assert netdev_to_guid("eth5") == NIC_GUID


def test_unknown_device_names_it_and_lists_known_ones(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    with pytest.raises(ConfigError) as excinfo:
        find_device("eth7")
    message = str(excinfo.value)
    assert excinfo.value.parameter == "device" and excinfo.value.value == "eth7"
    assert NIC_GUID in message and "eth1" in message


def test_non_nic_is_not_found_unless_any_class(fake):
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID)
    with pytest.raises(ConfigError):
        find_device(DISK_GUID)
    assert find_device(DISK_GUID, any_class=True).class_guid == SCSI_CLASS_GUID


@pytest.mark.parametrize(
    ("attribute", "content", "expected"),
    [
        ("id", "fourteen\n", "expected a decimal number, found 'fourteen'"),
        ("id", "70000\n", "value 70000 outside 0..65535"),
        ("monitor_id", "200\n", "monitor id 200 outside 0..127"),
        ("monitor_id", "-1\n", "found '-1'"),
        ("device_id", "{not-a-guid}\n", "found '{not-a-guid}'"),
    ],
)
def test_bad_attribute_content_names_file_and_content(fake, attribute, content, expected):
    dev = fake.add_device(NIC_GUID)
    (dev / attribute).write_text(content)
    with pytest.raises(DeviceError) as excinfo:
        scan_devices()
    assert attribute in str(excinfo.value)
    assert expected in str(excinfo.value)


def test_bad_class_id_is_reported_even_for_a_filtered_scan(fake):
    fake.add_device(NIC_GUID, class_id_text="garbage\n")
    with pytest.raises(DeviceError, match=r"class_id: expected a GUID.*'garbage'"):
        scan_devices()


def test_missing_attribute_is_reported(fake):
    dev = fake.add_device(NIC_GUID)
    (dev / "id").unlink()
    with pytest.raises(DeviceError, match=r"/id: missing"):
        scan_devices()


def test_no_vmbus_at_all_is_an_empty_scan(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    assert scan_devices() == []


def test_unknown_device_on_a_machine_without_vmbus_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist: not a Hyper-V guest.*NETVSC_SYSFS_ROOT"):
        find_device("eth0")
