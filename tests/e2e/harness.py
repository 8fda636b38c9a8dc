"""Helpers for the e2e scenarios: write an inventory for chosen lab hosts and settings,
run the kit through the real pyinfra CLI, and check the result with independent tools
(curl, skopeo, the docker CLI on lab hosts over SSH), never with the kit's own code.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import state as lab_state

ROOT = Path(__file__).resolve().parents[2]
PYINFRA = str(Path(os.sys.executable).parent / "pyinfra")  # type: ignore[attr-defined]
# The kit's control-machine state (CA, secrets) for inventories that do not name their own:
# the default folder, except in a second parallel lane (pytest-xdist worker), which keeps its
# own. The CA widens its name constraints for each lab's addresses, and another lane would see
# that as a CA rotation in the middle of its scenario.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
STATE_DIR = ROOT / ".registry-kit" if _WORKER == "gw0" \
    else ROOT / ".test-output" / "lanes" / _WORKER / "registry-kit"
CA_CERT = STATE_DIR / "ca" / "ca.crt"


@dataclass
class Run:
    returncode: int
    results: dict[str, Any] | None
    stdout: str
    stderr: str

    @property
    def changed(self) -> list[tuple[str, list[str]]]:
        """(operation, hosts) for every operation that changed something."""
        if not self.results:
            return []
        return [(op["name"], op["success"]) for op in self.results["operations"]
                if op["success"]]

    @property
    def errors(self) -> list[tuple[str, list[str]]]:
        if not self.results:
            return []
        return [(op["name"], op["error"]) for op in self.results["operations"] if op["error"]]

    def assert_ok(self) -> Run:
        assert self.returncode == 0 and not self.errors, self.describe()
        return self

    def assert_no_changes(self) -> Run:
        self.assert_ok()
        assert self.changed == [], "second run changed:\n" + self.describe()
        return self

    def describe(self) -> str:
        return (f"rc={self.returncode}\nchanged={self.changed}\nerrors={self.errors}\n"
                f"stderr:\n{self.stderr[-6000:]}")


class OwnStateSite:
    """A scenario with control-machine state of its own (CA, http secret: no other suite
    shares them): its settings, inventory, one user's password file, the CA its clients
    trust (for skopeo --cert-dir), and how long named runs took."""

    def __init__(self, directory: Path, *, servers: list[str], clients: list[str],
                 user: str, password: str, data: dict[str, Any],
                 times: dict[str, float]) -> None:
        self.dir = directory
        self.state_dir = directory / "state"
        self.certs = directory / "certs"
        self.inventory = directory / "inventory.py"
        self.servers, self.clients, self.user = servers, clients, user
        self.password = password
        self.data: dict[str, Any] = {**data, "registry_state_dir": str(self.state_dir)}
        self.times = times
        self.write()

    def write(self) -> None:
        users = [{"name": self.user, "password_file": write_secret(
            self.dir, f"{self.user}.password", self.password)}]
        write_inventory(self.inventory, servers=self.servers, clients=self.clients,
                        data={**self.data, "registry_users": users})

    def run(self, script: str = "deploy.py", *extra: str, timing: str | None = None) -> Run:
        start = time.monotonic()
        run = run_kit(self.inventory, script, *extra)
        if timing:
            self.times[timing] = round(time.monotonic() - start, 1)
        return run

    @property
    def ca(self) -> Path:
        return self.state_dir / "ca" / "ca.crt"

    def refresh_certs(self) -> None:
        self.certs.mkdir(exist_ok=True)
        (self.certs / "ca.crt").write_bytes(self.ca.read_bytes())


def host_entry(name: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    entry_name, entry = lab_state.pyinfra_host(name)
    return entry_name, {**entry, **data}


def lab_site_data() -> dict[str, Any]:
    """What every lab deploy needs: the upstream as Docker Hub mirror, and this lane's
    state folder (an inventory's own registry_state_dir wins)."""
    state = lab_state.load()
    return {"docker_registry_mirrors": [state["upstream"]["url"]],
            "registry_state_dir": str(STATE_DIR)}


def write_inventory(path: Path, *, servers: list[str], clients: list[str],
                    data: dict[str, Any], per_host: dict[str, dict[str, Any]] | None = None) \
        -> Path:
    per_host = per_host or {}
    merged = {**lab_site_data(), **data}

    def entries(names: list[str]) -> list:
        return [host_entry(name, {**merged, **per_host.get(name, {})}) for name in names]

    path.write_text(
        "# Written by tests/e2e/harness.py for one scenario.\n"
        f"registry_servers = {entries(servers)!r}\n"
        f"registry_clients = {entries(clients)!r}\n")
    return path


def run_kit(inventory: Path, script: str = "deploy.py", *extra: str,
            env: dict[str, str] | None = None, timeout: int = 900) -> Run:
    command = [PYINFRA, "-y", "--json", *extra, str(inventory), script]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    results = None
    with contextlib.suppress(json.JSONDecodeError):
        results = json.loads(proc.stdout).get("results") if proc.stdout.strip() else None
    return Run(proc.returncode, results, proc.stdout, proc.stderr)


def ssh(name: str, command: str, *, check: bool = True, timeout: int = 300,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command on a lab host over SSH (as its operators would)."""
    host = lab_state.load()["hosts"][name]
    args = ["ssh", "-i", lab_state.load()["key"], "-p", str(host["port"]),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "root@127.0.0.1", command]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          **({"input": stdin} if stdin is not None
                             else {"stdin": subprocess.DEVNULL}))
    if check and proc.returncode != 0:
        raise AssertionError(f"{name}: {command!r} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def host_ip(name: str) -> str:
    return str(lab_state.load()["hosts"][name]["ip"])


def curl_status(url_host: str, ip: str, port: int, *, user: str | None = None,
                password: str | None = None, tls: bool = True, path: str = "/v2/") -> int:
    """HTTP status of the registry from the control machine, by name, with the kit's CA.
    With credentials it authenticates as Docker does: basic auth, or, on a Bearer
    challenge (token auth), a token from the challenge's realm with those credentials; a
    refused token request is the answer (401 for a wrong password)."""
    return _curl_authenticated(url_host, ip, port, path, user=user, password=password,
                               tls=tls)[0]


def _curl(args: list[str], *, stdin: str | None = None) -> tuple[int, str, str]:
    """(status, body, headers lowercased) of one curl request."""
    with tempfile.TemporaryDirectory() as tmp:
        headers = Path(tmp) / "headers"
        proc = subprocess.run(["curl", "-s", "-D", str(headers), "-w", "\n%{http_code}",
                               "--max-time", "10", *args], input=stdin, capture_output=True,
                              text=True, timeout=30)
        seen = headers.read_text().lower() if headers.exists() else ""
    body, _, code = proc.stdout.rpartition("\n")
    return int(code or 0), body, seen


def bearer_challenge(headers: str) -> dict[str, str] | None:
    """realm, service and scope of a `WWW-Authenticate: Bearer ...` header (lowercased
    headers: the values are URLs, names and scopes, which the kit spells in lowercase)."""
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "www-authenticate" and value.strip().startswith("bearer "):
            return dict(re.findall(r'(\w+)="([^"]*)"', value))
    return None


def _curl_authenticated(url_host: str, ip: str, port: int, path: str, *, user: str | None,
                        password: str | None, tls: bool = True) -> tuple[int, str]:
    scheme = "https" if tls else "http"
    base = ["--resolve", f"{url_host}:{port}:{ip}", *(["--cacert", str(CA_CERT)] if tls else [])]
    url = f"{scheme}://{url_host}:{port}{path}"
    if user is None:
        return _curl([*base, url])[:2]
    with tempfile.TemporaryDirectory() as tmp:
        # Credentials through a config file, not argv.
        config = Path(tmp) / "curlrc"
        config.write_text(f'user = "{user}:{password}"\n')
        status, body, headers = _curl([*base, "-K", str(config), url])
        challenge = bearer_challenge(headers) if status == 401 else None
        if challenge is None and status == 401:
            # The web page's origin moves the challenge to X-Registry-Authenticate (no browser
            # dialog) and serves the token server at its own /token: do as the page does.
            challenge = bearer_challenge(headers.replace("x-registry-authenticate:",
                                                         "www-authenticate:"))
            if challenge is not None:
                challenge["realm"] = f"{scheme}://{url_host}:{port}/token"
        if challenge is None:
            return status, body
        realm = urllib.parse.urlsplit(challenge["realm"])
        query = {key: challenge[key] for key in ("service", "scope") if key in challenge}
        token_base = ["--resolve", f"{realm.hostname}:{realm.port}:{ip}",
                      *(["--cacert", str(CA_CERT)] if tls else [])]
        status, body, _ = _curl([*token_base, "-K", str(config),
                                 f"{challenge['realm']}?{urllib.parse.urlencode(query)}"])
    if status != 200:
        return status, body
    token = json.loads(body)["token"]
    return _curl([*base, "-H", "@-", url], stdin=f"Authorization: Bearer {token}\n")[:2]


def curl_docker(args: list[str], *, user: str, password: str, ip: str,
                ca: Path | None = CA_CERT, timeout: int = 30) -> subprocess.CompletedProcess[str]:
    """`curl ARGS` (the registry URL last, output options as the caller wants) with the
    user's credentials as Docker uses them: basic auth (a -K file), and on a 401 with a
    Bearer challenge (token auth) a token from the challenge's realm (its host resolved to
    `ip`), then the same request again with the token (also a -K file). A refused token
    request is returned as it came (`-w` output included)."""
    with tempfile.TemporaryDirectory() as tmp:
        basic, headers = Path(tmp) / "basic", Path(tmp) / "headers"
        basic.write_text(f'user = "{user}:{password}"\n')
        proc = subprocess.run(["curl", "-D", str(headers), "-K", str(basic), *args],
                              capture_output=True, text=True, timeout=timeout)
        blocks = (headers.read_text().lower() if headers.exists() else "").split("\n\n")
        last = [block for block in blocks if block.strip()][-1:] or [""]  # after a 100
        challenge = bearer_challenge(last[0]) if " 401" in last[0].split("\n", 1)[0] else None
        if challenge is None:
            return proc
        realm = urllib.parse.urlsplit(challenge["realm"])
        query = {key: challenge[key] for key in ("service", "scope") if key in challenge}
        status, body, _ = _curl(["--resolve", f"{realm.hostname}:{realm.port}:{ip}",
                                 *(["--cacert", str(ca)] if ca else []), "-K", str(basic),
                                 f"{challenge['realm']}?{urllib.parse.urlencode(query)}"])
        if status != 200:
            return proc
        bearer = Path(tmp) / "bearer"
        bearer.write_text(f'header = "Authorization: Bearer {json.loads(body)["token"]}"\n')
        return subprocess.run(["curl", "-K", str(bearer), *args], capture_output=True,
                              text=True, timeout=timeout)


def skopeo(args: list[str], *, hosts: dict[str, str], auth: dict[str, tuple[str, str]]
           | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """skopeo on the control machine, resolving lab names through a private /etc/hosts
    (a mount namespace of its own: the machine's /etc/hosts is not touched)."""
    with tempfile.TemporaryDirectory() as tmp:
        hosts_file = Path(tmp) / "hosts"
        hosts_file.write_text("127.0.0.1 localhost\n" + "".join(
            f"{ip} {name}\n" for name, ip in hosts.items()))
        authfile = Path(tmp) / "auth.json"
        auths = {registry: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                 for registry, (u, p) in (auth or {}).items()}
        authfile.write_text(json.dumps({"auths": auths}))
        certs = Path(tmp) / "certs"
        certs.mkdir()
        if CA_CERT.exists():
            (certs / "ca.crt").write_bytes(CA_CERT.read_bytes())
        inner = " ".join(shlex.quote(a) for a in [
            "skopeo", *args[:1], "--authfile", str(authfile), *args[1:]])
        inner = inner.replace("@CERTS@", str(certs))
        script = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {inner}"
        return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                              text=True, timeout=timeout)


def curl_body(url_host: str, ip: str, port: int, path: str, *, user: str, password: str) -> str:
    """Body of an authenticated GET from the control machine (credentials via -K file;
    token auth followed as in curl_status)."""
    status, body = _curl_authenticated(url_host, ip, port, path, user=user, password=password)
    assert status == 200, (status, body)
    return body


def started_at(name: str, container: str = "registry") -> str:
    """The container's start time, read with the docker CLI on the host."""
    return ssh(name, f"docker inspect -f '{{{{.State.StartedAt}}}}' {container}").stdout.strip()


def upstream_source(image: str) -> str:
    """A skopeo source for an image of the lab's upstream (plain HTTP on loopback)."""
    return f"docker://127.0.0.1:{lab_state.load()['upstream']['local_port']}/{image}"


def write_secret(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


class PullLoop:
    """Pulls back to back in a thread while the `with` block runs (a client during an
    operation): how many were made and how many failed."""

    def __init__(self, pull: Callable[[], bool]) -> None:
        self.pull = pull
        self.pulls = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.pull()
            except (AssertionError, subprocess.SubprocessError):
                ok = False
            self.pulls += 1
            self.failed += 0 if ok else 1

    def __enter__(self) -> PullLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


# Changes the registry refuses at start, 2.8 and 3.0 alike (seen with both binaries), with
# the words of its refusal. The token service is not among them: the kit derives it from
# registry_domain and registry_port, and the registry only compares it with a token's
# audience (both versions start even with an empty one).
REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    # The filesystem driver parses maxthreads at start: a panic, not a default.
    "storage parameter": ({"registry_storage": {"driver": "filesystem", "maxthreads": "many"}},
                          "maxthreads config error: parameter must be an integer, 'many'"),
}
# A cache whose remote resolves nowhere would panic at start; the kit refuses it before any
# host is touched (registry_kit.model.pull_through: 2.x as a cache, a name the server
# cannot resolve), so no candidate is even needed.
UNRESOLVABLE_REMOTE = {"registry_mode": "pull-through-cache",
                       "registry_proxy_remoteurl": "http://nosuch-remote.invalid:5000"}
PROVE_OPERATION = "Prove the registry's new files on a candidate container"
REFUSED = "registry-kit: the registry refused the new files"
CANDIDATE_LEFTOVERS = ("docker ps -a --format '{{.Names}}' | grep -c -- '-candidate$'; "
                       "ls /run/registry-kit 2>/dev/null | grep -c -- '-candidate$'; true")


def server_files(server: str) -> tuple[str, str]:
    """(sha256 of config.yml, the running registry container's id), read on the host."""
    sha = ssh(server, "sha256sum /etc/registry-kit/config.yml").stdout.split()[0]
    running = ssh(server, "docker inspect -f '{{.Id}} {{.State.Running}}' registry").stdout
    return sha, running.strip()


def assert_refused_before_any_change(server: str, deploy: Callable[[], Run],
                                     expected: str) -> Run:
    """A deploy the kit refuses while planning: one line with `expected`, nothing changed,
    config.yml and the running container the ones from before."""
    before = server_files(server)
    run = deploy()
    assert run.returncode != 0 and not run.changed, run.describe()
    assert expected in run.stderr, run.describe()
    assert server_files(server) == before and before[1].endswith(" true")
    print(f"\nrefused before any change: {expected}")
    return run


def assert_refused_and_kept(server: str, deploy: Callable[[], Run], pull: Callable[[], bool],
                            registry_error: str, secrets: list[str]) -> Run:
    """A deploy of a change the registry refuses, while a client pulls back to back: the
    run fails at the proof with one line quoting the registry's error (and no secret), no
    pull fails, and config.yml and the running container are the ones from before."""
    before = server_files(server)
    with PullLoop(pull) as loop:
        run = deploy()
    # The proof is the first error (pyinfra lists every operation after it as failed too),
    # and nothing changed on the server.
    assert run.returncode != 0 and run.errors[0] == (PROVE_OPERATION, [server]), \
        run.describe()
    assert not any(server in hosts for _, hosts in run.changed), run.describe()
    lines = [line for line in run.stderr.splitlines() if REFUSED in line]
    assert len(lines) == 1 and registry_error in lines[0], run.describe()
    assert not any(secret in run.stderr for secret in secrets)
    assert loop.pulls >= 1 and loop.failed == 0, \
        f"{loop.failed} of {loop.pulls} pulls failed during the refused deploy"
    assert server_files(server) == before and before[1].endswith(" true")
    assert ssh(server, CANDIDATE_LEFTOVERS).stdout.split() == ["0", "0"]
    print(f"\nrefused: {lines[0].strip()}\n  {loop.pulls} pulls during the run, "
          f"{loop.failed} failed")
    return run
