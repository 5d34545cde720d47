"""A misbehaving host is counted and survived: short subchannel grants, late or missing control
replies, unsolicited NVSP messages during requests, rescinded channels, a vanished host."""

from __future__ import annotations

import os
import threading
import time

import pytest

from netvsc.errors import DeviceError
from netvsc.ethdev import api
from netvsc.pmd.control import ControlTimeout
from netvsc.pmd.port import NetvscPort
from pmd_support import Ports, device_guid, module_host, netvsp, start_host, wait_for

host = module_host("faults", "--queues", "8", "--link-change-delay", "0")


@pytest.fixture(autouse=True)
def clear_faults(host):
    """Each test starts from a host without faults."""
    yield
    host.ctl("fault", name="clear", nic=0)


def test_fewer_subchannels_granted(ports, host):
    """pmd#17 (issue item 8): the port uses the number of subchannels the host grants."""
    port = ports.open()
    host.ctl("fault", name="subchannel_grant", value=1, nic=0)
    port.configure(4, 4, rss=api.RssConf(b"", 0))
    assert len(port.channels) == 2 and port.nb_rx_queues == 2 and port.nb_tx_queues == 2
    assert port.counters()["subchannels_short"] == 1
    assert set(port.reta_query()) == {0, 1}, "RETA points only at queues that exist"
    port.rx_queue_setup(1, 128)
    with pytest.raises(ValueError, match="rx queue"):
        port.rx_queue_setup(2, 128)
    port.start()
    assert netvsp(host)["channels"] == 2


def test_delayed_control_reply_hits_the_deadline(ports, host):
    """Issue item 7: a late reply raises ControlTimeout within the deadline, leaves nothing
    outstanding, is counted when it finally arrives, and the next request works."""
    port = ports.open(timeout=0.3)
    host.ctl("fault", name="delay_control", value=1.0, nic=0)
    started = time.monotonic()
    with pytest.raises(ControlTimeout, match="OID_GEN_MEDIA_CONNECT_STATUS"):
        port.link_update()
    assert time.monotonic() - started < 1.0
    assert port.control.rndis.outstanding is None
    host.ctl("fault", name="clear", nic=0)
    # Abandoned in the RNDIS engine, so the late reply is told apart and counted (task 4).
    wait_for(lambda: port.counters().get("late_replies", 0) >= 1, "the late reply, counted", timeout=3)
    assert port.control.rndis.unexpected >= 1
    assert port.link_update().up
    assert port.counters()["timeouts"] == 1


def test_open_against_a_silent_host_fails_cleanly(host):
    """Issue item 7: attach with control replies never coming fails at the deadline, releasing all."""
    fds = len(os.listdir("/proc/self/fd"))
    host.ctl("fault", name="delay_control", value="never", nic=0)
    try:
        started = time.monotonic()
        with pytest.raises(ControlTimeout):
            NetvscPort.open(device_guid(host), root=host.root, control_timeout=0.3)
        assert time.monotonic() - started < 3
    finally:
        host.ctl("fault", name="clear", nic=0)
    assert len(os.listdir("/proc/self/fd")) == fds
    NetvscPort.open(device_guid(host), root=host.root, control_timeout=5).close()


@pytest.mark.parametrize("message", ["indirection_table", "unknown"])
def test_unsolicited_message_during_request(ports, host, message):
    """pmd#82 (issue item 7): a send-indirection table or an unknown NVSP message arriving while a
    request waits is handled or counted, never taken for the reply."""
    port = ports.open()
    port.worker.background_poll = False  # the request itself must meet the message
    before = port.counters()
    host.ctl("fault", name="inject", value=message, nic=0)
    assert port.link_update().up
    wait_for(lambda: netvsp(host).get("injected_messages", 0) >= 1, "injection")
    after = port.counters()
    if message == "indirection_table":
        assert after["send_indirection_tables"] == before.get("send_indirection_tables", 0) + 1
        assert len(port.control.send_indirection_table) == 16
    else:
        assert after["unknown_nvsp_messages"] == before.get("unknown_nvsp_messages", 0) + 1
    assert after.get("protocol_errors", 0) == before.get("protocol_errors", 0)


def test_rescinded_channels_stop_the_port(ports, host):
    """Issue item 7: a rescinded channel stops the port and reports link down to the callback."""
    port = ports.open()
    port.configure(2, 2)
    port.start()
    seen = []
    port.on_link_change(seen.append)
    host.ctl("rescind", nic=0)
    wait_for(lambda: port.rescinded, "rescind noticed", timeout=3)
    assert not port.started
    wait_for(lambda: seen and not seen[-1].up, "link down reported", timeout=3)
    assert port.counters()["rescinds"] == 1
    with pytest.raises(DeviceError, match="rescinded"):
        port.start()
    port.close()


def test_vanished_host_does_not_hang_close(tmp_path):
    """Issue item 7: with the host gone, requests fail at their deadline and close still returns."""
    host = start_host(tmp_path / "root")
    ports = Ports(host)
    try:
        port = ports.open(timeout=30)  # a host with a cold numba cache is slow to answer at first
        port.control.timeout = 0.3  # then every request's deadline is short
        host.proc.kill()
        host.proc.wait(5)
        with pytest.raises(ControlTimeout):
            port.link_update()
        done = threading.Event()
        threading.Thread(target=lambda: (port.close(), done.set()), daemon=True).start()
        assert done.wait(5), "close hung on a dead host"
    finally:
        ports.close_all()
        host.stop()
