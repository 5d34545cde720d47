"""devbind: every refusal, the sysfs writes of both binding flows, netdev names, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from fakesys import SCSI_CLASS_GUID, FakeSys
from netvsc.apps.devbind import devbind
from netvsc.errors import ConfigError, DeviceError
from netvsc.vmbus import devbind as binding
from netvsc.wire.vmbus import NETVSC_CLASS_GUID

NIC_GUID = "ed963694-e847-4b2a-85af-bc9cfc11d6f3"
NIC2_GUID = "0a1b2c3d-0000-4000-8000-00000000beef"
DISK_GUID = "00000000-0001-8899-0000-000000000000"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("NETVSC_SYSFS_ROOT", str(tmp_path))
    # Never ask the real routing table about fake interfaces.
    monkeypatch.setattr(binding, "default_route_interfaces", lambda root: set())
    sysfs = FakeSys(tmp_path)
    sysfs.add_driver("hv_netvsc")
    sysfs.add_driver("uio_hv_generic")
    return sysfs


@pytest.fixture
def kernel(fake, monkeypatch):
    """Make the fake tree react to bind/unbind writes as the kernel would (driver link, netdev)."""
    real_write = binding._write_sysfs

    def write_and_react(path, content, writes, tolerate=()):
        done = real_write(path, content, writes, tolerate)
        path = Path(path)
        if path.name in ("bind", "unbind"):
            device = fake.devices_dir / content.strip()
            fake.set_driver(device, path.parent.name if path.name == "bind" else None)
            if path.name == "unbind":
                for net in (device / "net").glob("*"):
                    (fake.root / "sys" / "class" / "net" / net.name).unlink()
                    (net / "device").unlink()
                    net.rmdir()
        return done

    monkeypatch.setattr(binding, "_write_sysfs", write_and_react)
    return fake


def read(path: Path) -> str:
    return path.read_text()


def test_not_root_is_refused_before_any_write(fake, monkeypatch):
    dev = fake.add_device(NIC_GUID, netdev="eth1")
    monkeypatch.setattr(binding, "has_privileges", lambda root: False)
    with pytest.raises(DeviceError, match="needs root"):
        binding.bind("eth1", "uio_hv_generic")
    assert read(dev / "driver_override") == "\n"
    assert read(fake.drivers_dir / "hv_netvsc" / "unbind") == ""


def test_privileges_on_the_real_root_come_from_the_euid(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert binding.has_privileges(Path("/")) is False
    assert binding.has_privileges(tmp_path) is True, "an emulated tree is governed by file permissions"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert binding.has_privileges(Path("/")) is True


def test_unknown_device_is_refused_listing_known_ones(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    with pytest.raises(ConfigError) as excinfo:
        binding.bind("eth4", "uio_hv_generic")
    assert "eth4" in str(excinfo.value) and f"{NIC_GUID} (eth1)" in str(excinfo.value)


def test_device_of_another_class_is_refused(fake):
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID, driver="hv_storvsc")
    with pytest.raises(ConfigError, match=f"a network device .*has class {SCSI_CLASS_GUID}"):
        binding.bind(DISK_GUID, "uio_hv_generic")


def test_driver_module_not_loaded_says_modprobe(fake):
    (fake.drivers_dir / "uio_hv_generic" / "bind").unlink()
    (fake.drivers_dir / "uio_hv_generic" / "unbind").unlink()
    (fake.drivers_dir / "uio_hv_generic" / "new_id").unlink()
    (fake.drivers_dir / "uio_hv_generic" / "remove_id").unlink()
    (fake.drivers_dir / "uio_hv_generic").rmdir()
    fake.add_device(NIC_GUID, netdev="eth1")
    with pytest.raises(DeviceError, match="run `modprobe uio_hv_generic`"):
        binding.bind("eth1", "uio_hv_generic")


def test_unknown_driver_is_a_config_error(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    with pytest.raises(ConfigError, match="uio_hv_generic or hv_netvsc"):
        binding.bind("eth1", "vfio-pci")


def test_default_route_device_needs_force(fake, monkeypatch):
    dev = fake.add_device(NIC_GUID, netdev="eth0")
    asked = []
    monkeypatch.setattr(binding, "default_route_interfaces", lambda root: asked.append(root) or {"eth0"})
    with pytest.raises(DeviceError, match=r"eth0 .* carries the default route.*--force"):
        binding.bind("eth0", "uio_hv_generic")
    assert read(dev / "driver_override") == "\n", "nothing written on refusal"
    with pytest.raises(DeviceError, match="--force"):
        binding.unbind(NIC_GUID)
    result = binding.bind("eth0", "uio_hv_generic", force=True)
    assert result.writes and read(dev / "driver_override") == "uio_hv_generic\n"
    assert asked == [fake.root, fake.root], "--force skips the route lookup"


def test_route_lookup_failure_refuses_without_force(fake, monkeypatch):
    fake.add_device(NIC_GUID, netdev="eth0")

    def broken(root):
        raise OSError("netlink unavailable")

    monkeypatch.setattr(binding, "default_route_interfaces", broken)
    with pytest.raises(DeviceError, match="cannot read the routing table.*--force"):
        binding.bind("eth0", "uio_hv_generic")


def test_driver_override_flow_writes_override_unbind_bind(kernel):
    dev = kernel.add_device(NIC_GUID, netdev="eth1")
    result = binding.bind("eth1", "uio_hv_generic")
    drivers = kernel.drivers_dir
    assert result.writes == [
        (str(dev / "driver_override"), "uio_hv_generic\n"),
        (str(drivers / "hv_netvsc" / "unbind"), NIC_GUID),
        (str(drivers / "uio_hv_generic" / "bind"), NIC_GUID),
    ]
    assert read(dev / "driver_override") == "uio_hv_generic\n"
    assert read(drivers / "hv_netvsc" / "unbind") == NIC_GUID
    assert read(drivers / "uio_hv_generic" / "bind") == NIC_GUID
    assert read(drivers / "uio_hv_generic" / "new_id") == "", "new_id is not needed with an override"
    assert (result.driver_before, result.driver_after, result.verified) == (
        "hv_netvsc",
        "uio_hv_generic",
        True,
    )


def test_new_id_flow_when_kernel_has_no_driver_override(kernel):
    dev = kernel.add_device(NIC_GUID, netdev="eth1", driver_override=False)
    result = binding.bind(NIC_GUID, "uio_hv_generic")
    drivers = kernel.drivers_dir
    assert read(drivers / "uio_hv_generic" / "new_id") == NETVSC_CLASS_GUID + "\n"
    assert read(drivers / "hv_netvsc" / "unbind") == NIC_GUID
    assert read(drivers / "uio_hv_generic" / "bind") == NIC_GUID
    assert [Path(p).name for p, _ in result.writes] == ["new_id", "unbind", "bind"]
    assert not (dev / "driver_override").exists()
    assert result.verified


def test_netdev_is_recorded_before_unbinding_and_usable_afterwards(kernel):
    dev = kernel.add_device(NIC_GUID, netdev="eth1")
    kernel.add_device(NIC2_GUID, netdev="eth2", relid=20)
    binding.bind("eth1", "uio_hv_generic")
    assert not (dev / "net").exists() or not list((dev / "net").iterdir()), "the netdev is gone"
    assert binding.recorded_netdevs() == {"eth1": NIC_GUID}
    # eth1 no longer exists in sysfs, but the record still names the device.
    result = binding.bind("eth1", "hv_netvsc")
    assert result.guid == NIC_GUID and result.verified
    assert read(dev / "driver_override") == "\n", "going back clears the override"
    assert read(kernel.drivers_dir / "uio_hv_generic" / "unbind") == NIC_GUID
    assert read(kernel.drivers_dir / "hv_netvsc" / "bind") == NIC_GUID


def test_binding_to_the_current_driver_writes_nothing(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    result = binding.bind("eth1", "hv_netvsc")
    assert (result.changed, result.writes) == (False, [])


def test_unbind_writes_guid_to_current_driver(kernel):
    kernel.add_device(NIC_GUID, driver="uio_hv_generic")
    result = binding.unbind(NIC_GUID)
    assert read(kernel.drivers_dir / "uio_hv_generic" / "unbind") == NIC_GUID
    assert (result.driver_after, result.verified) == (None, True)
    again = binding.unbind(NIC_GUID)
    assert (again.changed, again.writes) == (False, [])


def test_unverified_bind_is_reported(fake):
    # Without the kernel fixture nothing reacts to the writes: the driver link stays hv_netvsc.
    fake.add_device(NIC_GUID, netdev="eth1")
    result = binding.bind("eth1", "uio_hv_generic")
    assert (result.driver_after, result.verified) == ("hv_netvsc", False)


def test_cli_status_json(fake):
    dev = fake.add_device(NIC_GUID, netdev="eth1", monitor_id=None)
    fake.add_channel(dev, 15, 1)
    other = fake.add_device(NIC2_GUID, relid=20, driver=None)
    fake.bind_uio(other, "uio4")
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID, driver="hv_storvsc")
    outcome = CliRunner().invoke(devbind, ["--status", "--json"])
    assert outcome.exit_code == 0, outcome.output
    rows = {row["guid"]: row for row in json.loads(outcome.output)}
    assert set(rows) == {NIC_GUID, NIC2_GUID}
    assert {k: rows[NIC_GUID][k] for k in ("netdev", "driver", "uio", "channel_count", "monitor_id")} == {
        "netdev": "eth1",
        "driver": "hv_netvsc",
        "uio": None,
        "channel_count": 2,
        "monitor_id": 255,
    }
    assert {k: rows[NIC2_GUID][k] for k in ("netdev", "driver", "uio", "relid")} == {
        "netdev": None,
        "driver": "uio_hv_generic",
        "uio": "uio4",
        "relid": 20,
    }


def test_cli_status_table_lists_devices(fake):
    fake.add_device(NIC_GUID, netdev="eth1")
    outcome = CliRunner().invoke(devbind, [], env={"COLUMNS": "200"})
    assert outcome.exit_code == 0, outcome.output
    assert NIC_GUID in outcome.output and "eth1" in outcome.output and "hv_netvsc" in outcome.output


def test_cli_bind_by_netdev_name(kernel):
    kernel.add_device(NIC_GUID, netdev="eth1")
    outcome = CliRunner().invoke(devbind, ["--bind", "uio_hv_generic", "eth1"])
    assert outcome.exit_code == 0, outcome.output
    assert outcome.output.strip() == f"{NIC_GUID} (eth1): hv_netvsc -> uio_hv_generic"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "uio_hv_generic", "eth9"], "invalid device='eth9'"),
        (["--unbind", DISK_GUID], "a network device"),
        (["--bind", "uio_hv_generic", "eth0"], "carries the default route"),
    ],
)
def test_cli_refusals_are_one_clean_line(fake, monkeypatch, args, message):
    fake.add_device(NIC_GUID, netdev="eth0")
    fake.add_device(DISK_GUID, class_guid=SCSI_CLASS_GUID, driver="hv_storvsc")
    monkeypatch.setattr(binding, "default_route_interfaces", lambda root: {"eth0"})
    outcome = CliRunner().invoke(devbind, args)
    assert outcome.exit_code == 1
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], outcome.output
    assert "Traceback" not in outcome.output


def test_cli_usage_errors(fake):
    assert CliRunner().invoke(devbind, ["--unbind"]).exit_code == 2
    assert CliRunner().invoke(devbind, ["eth1"]).exit_code == 2
    assert CliRunner().invoke(devbind, ["--bind", "uio_hv_generic", "--unbind", "eth1"]).exit_code == 2
