"""Link state of the NetVSC port: link_update, and `netvsc host ctl link down/up` reaching the
callback through the control worker with the stored link already refreshed."""

from __future__ import annotations

import threading

from netvsc.ethdev import api
from pmd_support import module_host, wait_for

LATENCY_US = 50
CALLBACK_DEADLINE_S = 10.0  # a deadline for the condition, not a timing assertion (loaded CI machines)


host = module_host("link", "--link-change-delay", "0")




def test_link_update_reports_host_state(ports, host):
    """pmd#40: up when connected, full duplex, speed = host value / 10000 Mbps; down otherwise."""
    port = ports.open()
    link = port.link_update()
    assert link == api.LinkStatus(True, 10_000, True, False)
    host.ctl("link", up=False, nic=0)
    try:
        assert wait_for(lambda: not port.link_update().up, "link down via query", timeout=2)
    finally:
        host.ctl("link", up=True, nic=0)
    wait_for(lambda: port.link_update().up, "link up again", timeout=2)


def test_ctl_link_down_up_reaches_callback(ports, host):
    """pmd#41 pmd#42: indications on the primary are handed to the worker, which refreshes the
    stored link and then calls back; each change reaches the callback (waited for with a deadline,
    never timed). The callback may itself query the link (a blocking request) without deadlocking."""
    port = ports.open(f"latency={LATENCY_US}")
    port.configure(1, 1)
    port.start()
    seen: list[tuple[api.LinkStatus, api.LinkStatus, str]] = []
    changed = threading.Event()

    def callback(link: api.LinkStatus) -> None:
        # Stored link already refreshed (DPDK pitfall: stale), and a query from here works.
        seen.append((link, port.link, threading.current_thread().name))
        port.link_update()
        changed.set()

    port.on_link_change(callback)
    for state, up in (("down", False), ("up", True)):
        changed.clear()
        result = host.ctl_cli("link", state)
        assert result.returncode == 0, result.stderr
        assert changed.wait(CALLBACK_DEADLINE_S), f"no callback after link {state}"
        link, stored, thread = seen[-1]
        assert link.up is up and stored == link, f"callback saw {link}, stored {stored}"
        assert thread == "netvsc-control", "callbacks run on the control worker, not in ring processing"
    assert port.counters()["indications"] >= 2


def test_link_events_while_stopped_are_followed(ports, host):
    """pmd#41: the stored link follows indications also while the port is stopped."""
    port = ports.open()
    host.ctl("link", up=False, nic=0)
    try:
        wait_for(lambda: not port.link.up, "stored link down", timeout=2)
    finally:
        host.ctl("link", up=True, nic=0)
    wait_for(lambda: port.link.up, "stored link up", timeout=2)
    port.on_link_change(None)
