"""scripts/haproxy-server.sh (drain and ready through haproxy's admin socket), run with sh
against a stand-in socat that answers `show stat` from a small state file, and a stand-in
sleep that records each wait and lets the stand-in haproxy move on (sessions end, the
health check says UP) after a given number of waits."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "registry_kit" / "scripts" / "haproxy-server.sh"

# The stand-in socat: `show stat` prints the header and the server's row (field 5 scur,
# field 18 status, as haproxy's CSV); `set server B/S state X` is recorded.
_SOCAT = r"""#!/usr/bin/env python3
import json, os, sys
path = os.environ["FAKE_HAPROXY"]
state = json.load(open(path))
line = sys.stdin.readline().strip()
if line == "show stat":
    row = ["registry", "lab-rep1", "0", "0", str(state["scur"])] + ["0"] * 12 + \
        [state["status"]] + ["0"] * 10
    print("# pxname,svname,qcur,qmax,scur")
    print(",".join(row))
else:
    state["commands"].append(line)
    json.dump(state, open(path, "w"))
"""

# The stand-in sleep: records its argument; after `after` waits, the sessions are gone and
# the status is UP.
_SLEEP = r"""#!/usr/bin/env python3
import json, os, sys
path = os.environ["FAKE_HAPROXY"]
state = json.load(open(path))
state["sleeps"].append(sys.argv[1])
if len(state["sleeps"]) >= state["after"]:
    state["scur"], state["status"] = 0, "UP"
json.dump(state, open(path, "w"))
"""


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("socat", _SOCAT), ("sleep", _SLEEP)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    sock_path = tmp_path / "admin.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))  # the script only checks that the socket is there
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_HAPROXY": str(tmp_path / "state.json")}
    try:
        yield tmp_path / "state.json", sock_path, env
    finally:
        server.close()


def _run(haproxy: tuple[Path, Path, dict[str, str]], action: str, state: dict[str, object],
         timeout: int = 60) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    path, sock, env = haproxy
    path.write_text(json.dumps({"commands": [], "sleeps": [], **state}))
    proc = subprocess.run(["sh", str(SCRIPT), action, "registry", "lab-rep1", str(timeout),
                           str(sock)], capture_output=True, text=True, env=env, timeout=60)
    return proc, json.loads(path.read_text())


def test_ready_waits_until_the_server_is_up(
        haproxy: tuple[Path, Path, dict[str, str]]) -> None:
    proc, state = _run(haproxy, "ready", {"scur": 0, "status": "MAINT", "after": 3})
    assert proc.returncode == 0, proc.stderr
    assert "lab-rep1 is back in haproxy backend registry (UP)" in proc.stdout
    assert state["commands"] == ["set server registry/lab-rep1 state ready"]
    assert len(state["sleeps"]) == 3  # it waited until UP, no longer


def test_drain_waits_for_the_sessions_then_maintenance(
        haproxy: tuple[Path, Path, dict[str, str]]) -> None:
    proc, state = _run(haproxy, "drain", {"scur": 2, "status": "DRAIN", "after": 4})
    assert proc.returncode == 0, proc.stderr
    assert state["commands"] == ["set server registry/lab-rep1 state drain",
                                 "set server registry/lab-rep1 state maint"]
    assert len(state["sleeps"]) == 4  # until the sessions ended, no longer
    assert "(0 connections were open)" in proc.stdout


def test_drain_gives_up_at_its_timeout_and_ready_fails_there(
        haproxy: tuple[Path, Path, dict[str, str]]) -> None:
    # Timeout 0: one look, no wait; the sessions still open are reported, the server goes
    # to maintenance anyway; a server that is not UP makes `ready` fail.
    proc, state = _run(haproxy, "drain", {"scur": 3, "status": "DRAIN", "after": 99}, 0)
    assert proc.returncode == 0, proc.stderr
    assert state["sleeps"] == [] and "(3 connections were open)" in proc.stdout
    assert state["commands"][-1] == "set server registry/lab-rep1 state maint"
    proc, state = _run(haproxy, "ready", {"scur": 0, "status": "DOWN", "after": 99}, 0)
    assert proc.returncode == 1
    assert "lab-rep1 is DOWN in haproxy backend registry after 0s" in proc.stderr
