"""The host loop while frames flow: it does not sleep between batches, it goes on with channels
a budgeted service left unfinished without waiting for their signal, and its sub-millisecond
waits are kept (epoll would make them whole milliseconds)."""

from __future__ import annotations

from netvsc.host import server as server_module
from netvsc.host.server import DEFAULT_LATENCY_S, NO_GUEST_WAIT_S, HostOptions, HostServer
from test_host_server import SMALL, RunningServer, open_device, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_no_wait_while_work_flows_then_the_idle_rules(tmp_path):
    """The scan interval is 0 while a channel is unfinished or within ``busy_poll_s`` of the last
    work; after that the usual rules (no guest open: the long wait)."""
    clock = Clock()
    server = HostServer(
        HostOptions(root=tmp_path / "root", backend="null", sizes=SMALL, nic_module="host_standin_nic"),
        clock=clock,
    )
    try:
        assert server.scan_interval(clock()) == NO_GUEST_WAIT_S
        server._last_work = clock()
        clock.now += server.options.busy_poll_s / 2
        assert server.scan_interval(clock()) == 0.0, "spinning right after work"
        clock.now += server.options.busy_poll_s
        assert server.scan_interval(clock()) == NO_GUEST_WAIT_S
        server._unfinished.add((server.nics[0], 0))
        assert server.scan_interval(clock()) == 0.0, "an unfinished channel is worked on at once"
    finally:
        server.close()


def test_sub_millisecond_waits_are_slept_not_rounded_up(tmp_path, monkeypatch):
    """A 100 us monitor latency stays 100 us: epoll gets no sub-millisecond timeout."""
    server = HostServer(
        HostOptions(root=tmp_path / "root", backend="null", sizes=SMALL, nic_module="host_standin_nic")
    )
    try:
        timeouts, sleeps = [], []
        monkeypatch.setattr(server.selector, "select", lambda timeout=None: timeouts.append(timeout) or [])
        monkeypatch.setattr(server_module.time, "sleep", sleeps.append)
        server._select(DEFAULT_LATENCY_S)
        assert timeouts == [0, 0] and sleeps == [DEFAULT_LATENCY_S]
        timeouts.clear()
        server._select(0.05)
        assert timeouts == [0.05] and sleeps == [DEFAULT_LATENCY_S]
    finally:
        server.close()


def test_unfinished_channels_are_serviced_without_a_signal(tmp_path):
    """host#62 with budgets: a channel the NetVSP reports unfinished is serviced every loop turn
    with no signal from the guest, and no longer once it is finished."""
    host = RunningServer(tmp_path / "root", devices=1)
    try:
        with open_device(host):
            wait_for(lambda: host.server.nics[0].is_open, "channel open")
            netvsp = host.netvsp()
            host.loops_after(5)
            before = netvsp.stats["services"]
            host.loops_after(5)
            assert netvsp.stats["services"] == before, "no signal, no service"
            # As after a budgeted service that stopped early (set.add is atomic for the loop's thread).
            netvsp.unfinished = {0}
            host.server._unfinished.add((host.server.nics[0], 0))
            started = netvsp.stats["services"]
            host.loops_after(20)
            assert netvsp.stats["services"] >= started + 19, "serviced every turn"
            netvsp.unfinished = set()
            host.loops_after(3)
            settled = netvsp.stats["services"]
            host.loops_after(20)
            assert netvsp.stats["services"] == settled, "finished: back to waiting for signals"
    finally:
        host.close()
