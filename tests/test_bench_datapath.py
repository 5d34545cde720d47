"""``netvsc bench`` (the data path): the JSON it prints has every figure, ratio and target.

Runs each part once with the shortest settings and checks the shape of the result and that it
measured something; never how fast (timings of a shared machine are no test, DESIGN.md 6).
"""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from netvsc.apps import bench_datapath
from netvsc.apps.bench import _targets
from netvsc.cli import cli

SHORT = ("--runs", "1", "--seconds", "0.2", "--afpacket-packets", "2000")


def bench_json(*args: str) -> dict:
    outcome = CliRunner().invoke(cli, ["bench", "--json", *SHORT, *args], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    return json.loads(outcome.stdout)


def test_driver_part_gives_rx_and_tx_cost_in_both_modes():
    result = bench_json("--parts", "driver")
    assert result["burst"] == 32 and result["frame_size"] == 64
    for direction in ("rx", "tx"):
        for mode in ("copy", "ext"):
            figures = result["driver"][direction][mode]
            assert figures["ns_per_packet"] > 0 and figures["ns_per_packet_wall"] > 0
            assert figures["packets_per_run"] > 0 and figures["runs"] >= 1
            assert figures["burst"] == 32 and figures["frame_size"] == 64
    rx = result["driver"]["rx"]
    assert "rx_extmbuf_enable=1" in rx["ext"]["devargs"] and "rx_extmbuf" not in rx["copy"]["devargs"]
    assert rx["copy"]["rx_errors"] == 0 and rx["ext"]["rx_errors"] == 0
    assert result["driver"]["tx"]["ext"]["devargs"] == "tx_copybreak=0"
    assert result["driver"]["tx"]["copy"]["tx_errors"] == 0
    targets = result["targets"]
    assert targets["driver_rx_met"] in (True, False) and targets["driver_tx_met"] in (True, False)
    assert targets["e2e_mpps_64_met"] is None, "e2e was not measured"


def test_e2e_part_gives_mpps_at_64_and_gbps_at_1500_bytes():
    e2e = bench_json("--parts", "e2e")["e2e"]
    for size in ("64", "1500"):
        assert e2e[size]["frame_size"] == int(size)
        # Rates are rounded (interpreted kernels, NUMBA_DISABLE_JIT, may show 0.0): count frames.
        assert e2e[size]["received"] > 0 and e2e[size]["mpps"] >= 0 and e2e[size]["gbps"] >= 0
    assert e2e["mempool_full_after_stop"] is True


@pytest.mark.root
def test_afpacket_baseline_measures_send_and_receive_and_removes_its_namespaces():
    result = bench_json("--parts", "afpacket")
    baseline = result["afpacket"]
    assert baseline["send_ns_per_packet"] > 0 and baseline["recv_ns_per_packet"] > 0
    assert baseline["packets_per_run"] == 2000 and baseline["lost"] == 0
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "nvb-" not in namespaces


def test_afpacket_baseline_says_why_when_not_root(monkeypatch):
    monkeypatch.setattr(bench_datapath.os, "geteuid", lambda: 1000)
    result = bench_datapath.afpacket(1000, runs=1)
    assert "root" in result["skipped"]
    assert bench_datapath.ratios({"rx": {}}, result) == {"skipped": result["skipped"]}


def test_ratios_are_afpacket_cost_over_ours_for_each_direction_and_mode():
    driver = {
        "rx": {"copy": {"ns_per_packet": 100.0}, "ext": {"ns_per_packet": 50.0}},
        "tx": {"copy": {"ns_per_packet": 200.0}, "ext": {"ns_per_packet": 400.0}},
    }
    baseline = {"send_ns_per_packet": 2000.0, "recv_ns_per_packet": 1500.0}
    ratios = bench_datapath.ratios(driver, baseline)
    assert ratios == {
        "rx_copy_vs_afpacket": 15.0,
        "rx_ext_vs_afpacket": 30.0,
        "tx_copy_vs_afpacket": 10.0,
        "tx_ext_vs_afpacket": 5.0,
    }
    targets = _targets({"driver": driver, "ratios": ratios, "e2e": {"64": {"mpps": 2.5}}})
    assert targets["driver_rx_met"] is True and targets["driver_tx_met"] is False  # 400 > 150
    assert targets["vs_afpacket_met"] is False  # 5 < 6
    assert targets["e2e_mpps_64_met"] is True and targets["e2e_gbps_1500_met"] is None


def test_peer_part_needs_the_peer_named():
    outcome = CliRunner().invoke(cli, ["bench", "--parts", "peer"])
    assert outcome.exit_code == 2 and "--peer dpdk" in outcome.output


@pytest.mark.dpdk
def test_peer_dpdk_gives_both_rates_and_the_ratio():
    result = bench_json("--parts", "peer", "--peer", "dpdk", "--peer-seconds", "1")
    peer = result["peer"]
    assert peer["frame_size"] == 64
    assert peer["dpdk_mpps"] > 0 and peer["ours_mpps"] > 0
    # The rates are printed to 3 decimals and the ratio to 2 (from the unrounded rates): the
    # ratio lies within what the rounded rates allow, widened by its own rounding.
    ours, dpdk, half = peer["ours_mpps"], peer["dpdk_mpps"], 0.0005
    low = (ours - half) / (dpdk + half) - 0.005
    high = (ours + half) / max(dpdk - half, 1e-9) + 0.005
    assert low <= peer["ratio"] <= high
    assert peer["ours"]["mpps"] == peer["ours_mpps"]
