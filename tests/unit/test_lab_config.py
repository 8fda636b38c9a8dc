"""Unit tests for lab.config: namespaces never share a host port."""

from __future__ import annotations

from lab.config import LabConfig, get_config

HOSTS_PER_LAB = 100  # the SSH ports each namespace has (base + index)


def test_no_upstream_port_falls_in_any_namespaces_ssh_ports() -> None:
    configs = [LabConfig()] + [get_config(f"ns{n}") for n in range(400)]  # every slot, often
    upstreams = {cfg.upstream_port for cfg in configs}
    ssh = {cfg.ssh_port(index) for cfg in configs for index in range(HOSTS_PER_LAB)}
    assert not upstreams & ssh, sorted(upstreams & ssh)[:10]
