"""The lab's SSH key and the ssh command line used to reach a host.

Every host image shares one set of sshd host keys (fine for a lab), so known-hosts checking
is off for lab connections.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from lab.config import LabConfig, LabError
from lab.engine import run

SSH_OPTIONS = (
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=5",
)


def ensure_key(cfg: LabConfig) -> Path:
    """The namespace's ed25519 key (0600), generated on first use."""
    key = cfg.key_file
    if not (key.exists() and key.with_suffix(".pub").exists()):
        key.parent.mkdir(parents=True, exist_ok=True)
        key.unlink(missing_ok=True)
        key.with_suffix(".pub").unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{cfg.name}-key",
             "-f", str(key)])
    key.chmod(0o600)
    return key


def ssh_argv(key: Path, port: int, command: list[str] | None = None) -> list[str]:
    argv = ["ssh", "-i", str(key), "-p", str(port), *SSH_OPTIONS, "root@127.0.0.1"]
    return argv + (command or [])


def wait_ssh(name: str, key: Path, port: int, timeout: float = 60.0) -> None:
    """Wait until sshd on 127.0.0.1:port accepts the lab key."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        proc = subprocess.run(ssh_argv(key, port, ["true"]), capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
        if proc.returncode == 0:
            return
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        time.sleep(0.5)
    raise LabError(f"{name}: ssh on port {port} not answering after {timeout:.0f}s: {last}")
