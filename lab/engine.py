"""The control machine's Docker engine and the tools the lab needs.

`ensure_engine()` uses a daemon that already answers; otherwise, as root on Debian, it
installs docker.io if needed and starts `dockerd` in the background (there is no systemd to
do it on the machines this project runs on), then waits for it to answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lab.config import LabError, say

DOCKERD_LOG = Path("/var/log/registry-kit-lab-dockerd.log")
ENGINE_TIMEOUT = 60.0

# Command (or file) -> Debian package that provides it.
TOOLS = {
    "debootstrap": "debootstrap",
    "skopeo": "skopeo",
    "docker-registry": "docker-registry",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "/bin/busybox": "busybox-static",
}


def run(
    args: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; on failure raise LabError with stderr's gist."""
    try:
        # No input: give the child /dev/null rather than our stdin (CI has none).
        stdin = subprocess.DEVNULL if input is None else None
        proc = subprocess.run(
            list(args), input=input, stdin=stdin, capture_output=True, text=True,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout:.0f}s: {' '.join(args[:4])}") from exc
    if check and proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit {proc.returncode}"
        raise LabError(f"{' '.join(args[:4])} failed: {last}")
    return proc


def docker(*args: str, input: str | None = None, check: bool = True,
           timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
    return run(["docker", *args], input=input, check=check, timeout=timeout)


def docker_inspect(kind: str, names: Sequence[str]) -> list[dict[str, Any]]:
    """`docker <kind> inspect` of the objects that exist among `names` (missing ones skipped)."""
    if not names:
        return []
    proc = docker(kind, "inspect", *names, check=False)
    # Exit 1 when some are missing, but stdout still holds the ones found.
    out = proc.stdout.strip()
    return list(json.loads(out)) if out.startswith("[") else []


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=15,
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _is_root_on_debian() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists()


def apt_install(packages: Sequence[str]) -> None:
    if not _is_root_on_debian():
        raise LabError(f"missing {', '.join(packages)}: install them (needs root on Debian)")
    say(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise LabError(f"{' '.join(args[:3])} failed: {' '.join(tail)}")


def ensure_tools() -> None:
    """Install whatever of debootstrap, skopeo, busybox-static, ... is missing."""
    missing = sorted(
        {
            pkg
            for tool, pkg in TOOLS.items()
            if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))
        }
    )
    if missing:
        apt_install(missing)


def _dockerd() -> str | None:
    # /usr/sbin may be missing from a non-login PATH (CI, sudo -E).
    found = shutil.which("dockerd")
    if found is None and Path("/usr/sbin/dockerd").exists():
        found = "/usr/sbin/dockerd"
    return found


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# Each lab host's systemd holds dozens of inotify instances. Debian's 512 per user ran out
# with four labs of about ten hosts each (parallel lanes and namespaces): a new host's
# systemd logged "Failed to create inotify object: Too many open files" and never reached
# running, so its start timed out.
INOTIFY_INSTANCES_MIN = 8192


def ensure_inotify(path: Path = INOTIFY_INSTANCES) -> None:
    """Raise the machine's inotify instances per user to INOTIFY_INSTANCES_MIN where lower
    (root only; otherwise, or where it cannot be read, say so and go on)."""
    try:
        current = int(path.read_text())
    except (OSError, ValueError):
        return
    if current >= INOTIFY_INSTANCES_MIN:
        return
    try:
        path.write_text(f"{INOTIFY_INSTANCES_MIN}\n")
    except OSError as exc:
        say(f"{path} is {current}, which several labs' hosts can exhaust; could not raise "
            f"it to {INOTIFY_INSTANCES_MIN}: {exc}")
        return
    say(f"raised {path} from {current} to {INOTIFY_INSTANCES_MIN} (systemd in each lab host)")


def ensure_engine() -> None:
    """Make sure `docker info` answers, starting dockerd ourselves if we can."""
    if engine_answers():
        return
    if not _is_root_on_debian():
        raise LabError("Docker engine not reachable and not root on Debian: start dockerd")
    if _dockerd() is None or shutil.which("docker") is None:
        apt_install(["docker.io"])
    dockerd = _dockerd()
    if dockerd is None:
        raise LabError("dockerd not found even after installing docker.io")
    say(f"starting dockerd (log: {DOCKERD_LOG})")
    with DOCKERD_LOG.open("ab") as log:
        # start_new_session: dockerd must outlive this CLI and not get its Ctrl-C.
        subprocess.Popen(
            [dockerd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + ENGINE_TIMEOUT
    while time.monotonic() < deadline:
        if engine_answers():
            say("dockerd answers")
            return
        time.sleep(0.5)
    raise LabError(f"dockerd did not answer within {ENGINE_TIMEOUT:.0f}s: see {DOCKERD_LOG}")
