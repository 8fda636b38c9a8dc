"""The fleet bench's arithmetic (bench/fleet.py): counts from pyinfra's --debug output,
medians, and the ratios and 1 + 500 estimate from measured no-ops. No lab needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fleet


def test_count_remote_reads_commands_per_host_and_connections() -> None:
    stderr = "\n".join([
        "[pyinfra.connectors.ssh] Connecting to: a (('127.0.0.1', 1))",
        "[pyinfra.connectors.ssh] Connecting to: fleet-c1 (('127.0.0.1', 2))",
        "[pyinfra.connectors.sshuserclient.client] Running command on a: (pty=None) sh -c ..",
        "[pyinfra.connectors.ssh] Running command on fleet-c1: (pty=None) sh -c ..",
        "[pyinfra.connectors.ssh] Running command on fleet-c10: (pty=None) sh -c ..",
    ])
    assert fleet.count_remote(stderr, ["a", "fleet-c1"]) == {
        "remote_commands_per_host_max": 1, "remote_commands_per_host_min": 1,
        "ssh_connections_per_host": 1.0}


def test_medians_per_variant() -> None:
    runs = {"no-op 1+1": [{"wall_s": 1.0, "cpu_s": 0.5, "hosts_cpu_s": 0.2, "rss_mb": 60.0},
                          {"wall_s": 3.0, "cpu_s": 0.7, "hosts_cpu_s": 0.1, "rss_mb": 62.0},
                          {"wall_s": 2.0, "cpu_s": 0.6, "hosts_cpu_s": 0.3, "rss_mb": 61.0}]}
    assert fleet.medians(runs) == {"no-op 1+1": {"wall_s": 2.0, "cpu_s": 0.6,
                                                 "hosts_cpu_s": 0.2, "rss_mb": 61.0,
                                                 "wall_min_s": 1.0}}


def test_scaling_ratios_cost_per_host_and_estimate() -> None:
    med = {"floor 1+1": {"wall_s": 0.5, "cpu_s": 0.4, "hosts_cpu_s": 0.0, "rss_mb": 50.0,
                         "wall_min_s": 0.4},
           "floor 1+50": {"wall_s": 1.0, "cpu_s": 1.2, "hosts_cpu_s": 2.0, "rss_mb": 55.0,
                          "wall_min_s": 0.9},
           "no-op 1+1": {"wall_s": 1.0, "cpu_s": 0.8, "hosts_cpu_s": 0.1, "rss_mb": 60.0,
                         "wall_min_s": 0.9},
           "no-op 1+50": {"wall_s": 3.45, "cpu_s": 5.7, "hosts_cpu_s": 5.0, "rss_mb": 109.0,
                          "wall_min_s": 2.7}}
    out = fleet.scaling(med, 50)
    assert out["wall_s"]["ratio"] == 3.45 and out["wall_s"]["floor_ratio"] == 2.0
    assert out["wall_s"]["per_added_host"] == pytest.approx(0.05)
    # 1 + 500: the 1 + 1 run plus 499 hosts at the measured cost of each added one.
    assert out["wall_s"]["estimate_1+500"] == pytest.approx(1.0 + 499 * 0.05, abs=0.05)
    assert out["cpu_s"]["per_added_host"] == pytest.approx(0.1)
    assert out["rss_mb"]["estimate_1+500"] == pytest.approx(60.0 + 499 * 1.0)
    assert out["hosts_cpu_s"]["ratio"] == 50.0
    assert out["wall_min_s"]["ratio"] == 3.0
    assert out["hosts_cpu_s"]["floor_ratio"] is None  # nothing measured to divide by


def test_container_cpu_reads_cgroup_v1_then_v2(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(fleet, "CGROUP", tmp_path)
    v2 = tmp_path / "system.slice" / "docker-abc.scope" / "cpu.stat"
    v2.parent.mkdir(parents=True)
    v2.write_text("usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    assert fleet.container_cpu("abc") == 2.5
    v1 = tmp_path / "cpuacct" / "docker" / "abc" / "cpuacct.usage"
    v1.parent.mkdir(parents=True)
    v1.write_text("1500000000\n")
    assert fleet.container_cpu("abc") == 1.5
