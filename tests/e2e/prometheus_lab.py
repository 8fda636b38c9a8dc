"""A real Prometheus for the e2e tests: Debian's `prometheus` on the control machine, run on
the kit's own `<state dir>/prometheus/` folder (prometheus.yml and its rules), and read
through its HTTP API (/api/v1/targets, /api/v1/alerts). The lab's servers allow the control
machine's lab address (`control_address`) in registry_metrics_allow so it can scrape them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import harness
import pytest

FOLDER = harness.STATE_DIR / "prometheus"
INTERVAL = 2  # registry_prometheus_interval for the tests: seconds, so they wait little


def control_address(server: str) -> str:
    """The control machine's address on the lab network, as `server` sees it (its default
    gateway): where the Prometheus these tests run scrapes from."""
    return harness.ssh(server, "ip -4 route show default").stdout.split()[2]


@contextmanager
def running(folder: Path = FOLDER) -> Iterator[int]:
    """Prometheus on 127.0.0.1 with `folder`'s prometheus.yml, its data in a temporary
    folder; yields its port. Skips the test where Debian's prometheus is not installed."""
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="rk-prometheus-") as tmp, \
            open(f"{tmp}/prometheus.log", "w") as log:
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp}/data", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            yield port
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)


def api(port: int, path: str) -> Any:
    """The `data` of Prometheus' answer to GET `path`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return json.loads(answer.read())["data"]


def alerts(port: int, name: str) -> list[str]:
    """The states (pending, firing) of alert `name`'s active instances."""
    return [a["state"] for a in api(port, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name]


def rules(port: int) -> set[str]:
    """The names of the alert rules Prometheus loaded."""
    return {rule["name"] for group in api(port, "/api/v1/rules")["groups"]
            for rule in group["rules"]}


def wait(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` holds, polled every 0.5 s; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.5)
    return time.monotonic() - started


def wait_targets_up(port: int, timeout: float = 60) -> set[str]:
    """Waits until every scrape target is up; the jobs of those targets."""
    def targets_up() -> bool:
        try:
            active = api(port, "/api/v1/targets")["activeTargets"]
        except OSError:
            return False
        return bool(active) and all(t["health"] == "up" for t in active)

    wait(targets_up, timeout, "every target up")
    return {t["labels"]["job"] for t in api(port, "/api/v1/targets")["activeTargets"]}
