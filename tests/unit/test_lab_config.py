"""Unit tests for lab.config (namespaces never share a host port) and the machine knobs the
lab raises (lab.engine.ensure_inotify)."""

from __future__ import annotations

from pathlib import Path

from lab import engine
from lab.config import LabConfig, get_config

HOSTS_PER_LAB = 100  # the SSH ports each namespace has (base + index)


def test_no_upstream_port_falls_in_any_namespaces_ssh_ports() -> None:
    configs = [LabConfig()] + [get_config(f"ns{n}") for n in range(400)]  # every slot, often
    upstreams = {cfg.upstream_port for cfg in configs}
    ssh = {cfg.ssh_port(index) for cfg in configs for index in range(HOSTS_PER_LAB)}
    assert not upstreams & ssh, sorted(upstreams & ssh)[:10]


def test_inotify_instances_raised_only_when_low(tmp_path: Path) -> None:
    knob = tmp_path / "max_user_instances"
    knob.write_text("512\n")
    engine.ensure_inotify(knob)
    assert knob.read_text() == f"{engine.INOTIFY_INSTANCES_MIN}\n"
    knob.write_text("65536\n")
    engine.ensure_inotify(knob)
    assert knob.read_text() == "65536\n"  # never lowered
    engine.ensure_inotify(tmp_path / "absent")  # not there: nothing to do, no error
    assert not (tmp_path / "absent").exists()
