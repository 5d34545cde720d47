"""The uio preload library (``netvsc.preload``) against a running emulated host.

Each scenario runs a small Python program in a child process under ``LD_PRELOAD`` with
``NETVSC_SYSFS_ROOT`` unset, so every path it uses is the real-system one (``/sys/bus/vmbus``,
``/dev/uioN``, ``/proc/self/pagemap``) and only the library maps them onto the host's root. The
child prints one JSON object; the test checks it and the host's counters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from host_process import HostProcess
from netvsc.preload import DEVICES_ENV, build_library, preload_environment
from netvsc.preload.build import cache_directory

SMALL_SIZES = (
    "--ring-size", "256K", "--recv-buffer-size", "1M", "--send-buffer-size", "1M",
    "--subchannel-ring-size", "64K",
)  # fmt: skip

CHILD_PRELUDE = """
import errno, json, mmap, os, select, stat, struct, sys
out = {}
def attempt(name, action):
    try:
        out[name] = action()
    except OSError as exc:
        out[name] = "errno:" + errno.errorcode.get(exc.errno, str(exc.errno))
"""


@pytest.fixture
def host(tmp_path):
    started = HostProcess(tmp_path / "root", *SMALL_SIZES, "--devices", "2")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def run_child(host: HostProcess, body: str, *, devices=None, timeout: float = 60.0) -> dict:
    environment = {key: value for key, value in os.environ.items() if key != "NETVSC_SYSFS_ROOT"}
    environment.update(preload_environment(host.root, devices=devices))
    source = CHILD_PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    result = subprocess.run(
        [sys.executable, "-c", source], env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"child failed ({result.returncode}):\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def guids(host: HostProcess) -> list[str]:
    return [nic["guid"] for nic in host.ctl("status")["nics"]]


def test_library_is_compiled_once_into_a_cache_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cache_directory() == tmp_path / "cache" / "netvsc"
    first = build_library()
    assert first.parent == tmp_path / "cache" / "netvsc" and first.name.startswith("uioshim-")
    built_at = first.stat().st_mtime_ns
    again = build_library()
    assert again == first and again.stat().st_mtime_ns == built_at, "a cached library was rebuilt"
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name], "build leftovers in the cache"


def test_preload_command_prints_the_environment(host):
    result = subprocess.run(
        [sys.executable, "-m", "netvsc", "host", "preload", "--root", str(host.root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assignments = dict(item.split("=", 1) for item in result.stdout.split())
    assert assignments["UIOSHIM_ROOT"] == str(host.root.resolve())
    assert assignments["LD_PRELOAD"].endswith(".so") and os.path.isfile(assignments["LD_PRELOAD"])


def test_preload_command_refuses_a_missing_root(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "netvsc", "host", "preload", "--root", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "root" in result.stderr


def test_sysfs_paths_resolve_inside_the_root_and_read_back_outside_it(host):
    guid = guids(host)[0]
    out = run_child(
        host,
        f"""
        base = "/sys/bus/vmbus/devices"
        out["listing"] = sorted(os.listdir(base))
        out["class_id"] = open(f"{{base}}/{guid}/class_id").read().strip()
        out["uio"] = os.listdir(f"{{base}}/{guid}/uio")
        out["is_link"] = os.path.islink(f"{{base}}/{guid}")
        out["realpath"] = os.path.realpath(f"{{base}}/{guid}")
        out["driver"] = os.path.basename(os.readlink(f"{{base}}/{guid}/driver"))
        out["ring_rw"] = os.access(f"{{base}}/{guid}/channels/14/ring", os.R_OK | os.W_OK)
        out["scandir"] = sorted(entry.name for entry in os.scandir(f"{{base}}/{guid}/uio/uio0/maps"))
        """,
    )
    assert out["listing"] == sorted(guids(host))
    assert out["class_id"] == "{f8615163-df3e-46c5-913f-f2d2f965ed0e}"
    assert out["uio"] == ["uio0"] and out["is_link"] and out["driver"] == "uio_hv_generic"
    # realpath resolves inside ROOT and hands back the path a real system would show.
    assert out["realpath"] == f"/sys/devices/LNXSYSTM:00/VMBUS:00/{guid}", out["realpath"]
    assert out["ring_rw"] is True
    assert out["scandir"] == [f"map{k}" for k in range(5)]


def test_dev_uio_is_a_character_device_whose_offsets_select_the_maps(host):
    out = run_child(
        host,
        """
        info = os.stat("/dev/uio0")
        out["chr"] = stat.S_ISCHR(info.st_mode)
        fd = os.open("/dev/uio0", os.O_RDWR)
        out["fstat_chr"] = stat.S_ISCHR(os.fstat(fd).st_mode)
        page = mmap.PAGESIZE
        interrupt_page = mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=page)
        interrupt_page[100:104] = b"uio!"
        rings = mmap.mmap(fd, 256 * 1024, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        out["rings_len"] = len(rings)
        attempt("map5", lambda: mmap.mmap(fd, 4096, offset=5 * page) and "mapped")
        attempt("too_long", lambda: mmap.mmap(fd, 8192, offset=page) and "mapped")
        os.close(fd)
        """,
    )
    assert out["chr"] and out["fstat_chr"]
    assert out["rings_len"] == 256 * 1024
    assert out["map5"] == "errno:EINVAL" and out["too_long"] == "errno:EINVAL"
    # Map 1 is the host's interrupt page: the child's write is visible in the host's file.
    assert (host.root / "run" / "int_page").read_bytes()[100:104] == b"uio!"


def test_uio_fd_reads_and_writes_follow_the_kernel_rules(host):
    before = host.counters()["host"]
    out = run_child(
        host,
        """
        fd = os.open("/dev/uio0", os.O_RDWR | os.O_NONBLOCK)
        out["write"] = os.write(fd, struct.pack("<i", 1))
        attempt("short_write", lambda: os.write(fd, b"\\x01\\x00"))
        attempt("short_read", lambda: os.read(fd, 2))
        attempt("empty_read", lambda: os.read(fd, 4))
        os.close(fd)
        """,
    )
    assert out["write"] == 4
    assert out["short_write"] == "errno:EINVAL" and out["short_read"] == "errno:EINVAL"
    assert out["empty_read"] == "errno:EAGAIN"
    after = host.counters()["host"]
    assert after["irq_writes"] == before["irq_writes"] + 1
    assert after["channel_opens"] == before["channel_opens"] + 1
    assert after["channel_closes"] == before["channel_closes"] + 1


def test_kernel_uio_path_opens_the_channel_and_receives_interrupt_counts(host):
    out = run_child(
        host,
        f"""
        from netvsc.vmbus.device import VmbusDevice
        from netvsc.wire import nvsp
        device = VmbusDevice.open({guids(host)[0]!r})
        out["uio"] = type(device.uio).__name__
        device.uio.irq_write(1)  # RX interrupts on; the host learns where to send counts
        channel = device.primary_channel()
        channel.send_inband(nvsp.encode_init(nvsp.NVSP_VERSION_61), 1, completion_requested=True)
        out["count"] = device.uio.irq_read(timeout=10)
        from netvsc.host.control import request
        counters = request(os.environ["UIOSHIM_ROOT"], "counters", nic=0)["nics"][0]
        out["nvsp_version"] = counters["nvsp"]["version"]
        device.close()
        """,
    )
    assert out["uio"] == "KernelUio", "NETVSC_SYSFS_ROOT unset must give the kernel's uio path"
    assert isinstance(out["count"], int) and out["count"] >= 1, out
    counters = host.counters()
    assert counters["host"]["interrupts_sent"] >= 1 and counters["host"]["irq_writes"] >= 1
    assert out["nvsp_version"] == 0x60001, "the INIT went to this device's host-side session"


def test_unselected_devices_look_unbound(host):
    first, second = guids(host)
    out = run_child(
        host,
        f"""
        base = "/sys/bus/vmbus/devices"
        out["first"] = os.path.isdir(f"{{base}}/{first}/uio")
        out["second"] = os.path.isdir(f"{{base}}/{second}/uio")
        out["second_class"] = os.path.exists(f"{{base}}/{second}/class_id")
        attempt("second_maps", lambda: os.listdir(f"/sys/devices/LNXSYSTM:00/VMBUS:00/{second}/uio/uio1"))
        """,
        devices=[first],
    )
    assert out["first"] is True and out["second"] is False
    assert out["second_class"] is True, "the device itself stays visible, only its uio binding goes"
    assert out["second_maps"] == "errno:ENOENT"


def test_preload_environment_names_the_selected_devices(host):
    first = guids(host)[0]
    environment = preload_environment(host.root, devices=[first.upper()])
    assert environment[DEVICES_ENV] == first
    with pytest.raises(ValueError, match="device"):
        preload_environment(host.root, devices=["eth0"])


def test_pagemap_says_physical_is_virtual(host):
    out = run_child(
        host,
        """
        import ctypes
        buffer = ctypes.create_string_buffer(3 * 4096)
        address = ctypes.addressof(buffer)
        page = address // mmap.PAGESIZE
        with open("/proc/self/pagemap", "rb", buffering=0) as pagemap:
            pagemap.seek(page * 8)
            entries = struct.unpack("<2Q", pagemap.read(16))
            out["pread"] = struct.unpack("<Q", os.pread(pagemap.fileno(), 8, (page + 1) * 8))[0]
        out["entries"] = list(entries)
        out["page"] = page
        """,
    )
    present = 1 << 63
    page = out["page"]
    assert out["entries"] == [present | page, present | (page + 1)]
    assert out["pread"] == present | (page + 1)


def test_rescinded_device_fails_with_eio_and_polls_as_error(host):
    guid = guids(host)[0]
    out = run_child(
        host,
        f"""
        import json as _json, socket, time
        fd = os.open("/dev/uio0", os.O_RDWR | os.O_NONBLOCK)
        out["before"] = os.write(fd, struct.pack("<i", 1))
        # Ask the host to remove the device, as `netvsc host ctl rescind --device` does.
        sys.path.insert(0, {str(host.root)!r})
        from netvsc.host.control import request
        request({str(host.root)!r}, "rescind", device=True, nic=0)
        deadline = time.monotonic() + 10
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        events = 0
        while time.monotonic() < deadline and not events & select.POLLERR:
            events = dict(poller.poll(50)).get(fd, 0)
        out["pollerr"] = bool(events & select.POLLERR)
        attempt("write_after", lambda: os.write(fd, struct.pack("<i", 1)))
        attempt("read_after", lambda: os.read(fd, 4))
        attempt("map_after", lambda: mmap.mmap(fd, 4096, offset=mmap.PAGESIZE) and "mapped")
        os.close(fd)
        out["gone"] = not os.path.exists("/sys/bus/vmbus/devices/{guid}")
        """,
    )
    assert out["before"] == 4
    assert out["pollerr"] is True
    assert out["write_after"] == "errno:EIO" and out["read_after"] == "errno:EIO"
    assert out["map_after"] == "errno:EIO"
    assert out["gone"] is True
