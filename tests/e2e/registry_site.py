"""A deployed registry scenario for the reliability, security and load suites: settings and
password files in a temp folder, the inventory, and push/pull through the real registry
with skopeo from the control machine (OCI layouts from oci_images)."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from oci_images import layout_digest

DOMAIN = "registry.lab"
PORT = 5000
ADDRESS = f"{DOMAIN}:{PORT}"
SERVER = "lab-reg"


class Site:
    """One server (lab-reg) and some clients, users with random passwords from files."""

    def __init__(self, directory: Path, clients: list[str], **data: Any) -> None:
        self.dir = directory
        self.clients = clients
        self.inventory = directory / "inventory.py"
        self.passwords = {"alice": f"alice-{secrets.token_urlsafe(12)}"}
        self.data: dict[str, Any] = {"registry_domain": DOMAIN, "registry_port": PORT,
                                     "registry_client_login_user": "alice", **data}
        self.write()

    def write(self, **changes: Any) -> Path:
        self.data.update(changes)
        users = []
        for name, password in self.passwords.items():
            path = self.dir / f"{name}.password"
            path.write_text(password + "\n")
            path.chmod(0o600)
            users.append({"name": name, "password_file": str(path)})
        return harness.write_inventory(self.inventory, servers=[SERVER], clients=self.clients,
                                       data={**self.data, "registry_users": users})

    def deploy(self, *extra: str) -> harness.Run:
        return harness.run_kit(self.inventory, "deploy.py", *extra)

    def status(self, user: str | None = "", password: str | None = None) -> int:
        """/v2/ status from the control machine; user="" means anonymous."""
        if user == "":
            return harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT)
        return harness.curl_status(DOMAIN, harness.host_ip(SERVER), PORT, user=user,
                                   password=password or self.passwords[str(user)])

    def wait_serving(self, timeout: float = 90) -> float:
        """Seconds until /v2/ answers 401 again (bounded), for checks after a fault."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.status() == 401:
                return time.monotonic() - started
            time.sleep(0.5)
        raise AssertionError(f"{ADDRESS} did not answer 401 within {timeout}s")

    def skopeo(self, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return harness.skopeo(args, hosts={DOMAIN: harness.host_ip(SERVER)},
                              auth={ADDRESS: ("alice", self.passwords["alice"])},
                              timeout=timeout)

    def push(self, layout: Path, ref: str) -> tuple[subprocess.CompletedProcess[str], str]:
        """skopeo copy oci:LAYOUT -> ADDRESS/ref; (the process, the pushed digest or "")."""
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            proc = self.skopeo(["copy", "--quiet", "--dest-cert-dir", "@CERTS@",
                                "--digestfile", str(digest_file), f"oci:{layout}",
                                f"docker://{ADDRESS}/{ref}"])
            digest = digest_file.read_text().strip() if digest_file.exists() else ""
        return proc, digest

    def pull(self, ref: str, layout: Path) -> str:
        """skopeo copy ADDRESS/ref -> oci:LAYOUT (every blob fetched); its manifest digest."""
        proc = self.skopeo(["copy", "--quiet", "--src-cert-dir", "@CERTS@",
                            f"docker://{ADDRESS}/{ref}", f"oci:{layout}"])
        assert proc.returncode == 0, f"pull {ref}: {proc.stderr}"
        return layout_digest(layout)
