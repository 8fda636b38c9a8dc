"""registry-kit as a library: the wheel, installed in a fresh virtualenv outside the repo, used
by a foreign pyinfra project with its own inventory, its own group names (`hub`, `builders`),
its own settings and a deploy file of a few lines calling registry_kit.api.

Checked with tools other than the kit: the wheel's file list (zipfile), curl from the
control machine with the project's own CA, the docker CLI on the hosts. Applied twice (the
second run changes nothing), then torn down through the API (twice: no change).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import harness
import pytest
from harness import Run

import lab as lab_api

pytestmark = pytest.mark.e2e

SERVER, CLIENT, OUTSIDER = "lab-reg", "lab-client1", "lab-client2"
DOMAIN, PORT = "registry.lab", 5000
USER, PASSWORD = "builder", "wheel-test-password-1"

DEPLOY = '''\
"""This project's registry: registry-kit's API with our own group names."""
from registry_kit import api

SETTINGS = {"registry_domain": "registry.lab", "registry_container_name": "hub-registry",
            "registry_config_dir": "/etc/hub-registry"}

api.registry(servers="hub", clients="builders", settings=SETTINGS)
'''

TEARDOWN = '''\
from registry_kit import api

SETTINGS = {"registry_domain": "registry.lab", "registry_container_name": "hub-registry",
            "registry_config_dir": "/etc/hub-registry"}

api.teardown(servers="hub", clients="builders", settings=SETTINGS)
'''


def _run(venv: Path, project: Path, script: str) -> Run:
    proc = subprocess.run([str(venv / "bin" / "pyinfra"), "-y", "--json", "inventory.py",
                           script], cwd=project, capture_output=True, text=True, timeout=900,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    results = None
    if proc.stdout.strip():
        try:
            results = json.loads(proc.stdout).get("results")
        except json.JSONDecodeError:
            results = None
    return Run(proc.returncode, results, proc.stdout, proc.stderr)


def _inventory(project: Path) -> None:
    # The foreign project keeps its state where the kit puts it by default (checked below),
    # not in the suite's state folder.
    lab_data = {k: v for k, v in harness.lab_site_data().items() if k != "registry_state_dir"}
    data: dict[str, Any] = {**lab_data, "registry_users": [
        # A relative path: the kit resolves it against the project (the current directory).
        {"name": USER, "password_file": "secrets/builder.password"}]}
    hub = [harness.host_entry(SERVER, data)]
    builders = [harness.host_entry(CLIENT, {**data, "registry_client_login_user": USER})]
    # A host in no group the calls name: with a value the kit would refuse, it must be
    # neither validated nor touched.
    others = [harness.host_entry(OUTSIDER, {**lab_data, "registry_port": 0})]
    (project / "inventory.py").write_text(
        f"hub = {hub!r}\nbuilders = {builders!r}\nothers = {others!r}\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist),
                           str(harness.ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (found,) = dist.glob("registry_kit-*.whl")
    return found


def test_wheel_holds_the_kit_and_its_data_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"registry_kit"}, top
    for data in ("registry_kit/scripts/registry-gc.sh", "registry_kit/scripts/replace-container.sh",
                 "registry_kit/scripts/registry-token-server.py",
                 "registry_kit/scripts/verify-token.sh", "registry_kit/scripts/lib.sh",
                 "registry_kit/templates/keepalived.conf.j2",
                 "registry_kit/templates/redis.conf.j2",
                 "registry_kit/webui_static/index.html", "registry_kit/webui_static/app.js",
                 "registry_kit/webui_static/app.css",
                 "registry_kit/model/settings.py", "registry_kit/errors.py", "registry_kit/api.py",
                 "registry_kit/py.typed"):
        assert data in names, data


def test_foreign_project_deploys_and_tears_down(wheel: Path, lab: dict[str, Any],
                                               tmp_path: Path) -> None:
    # A fresh server: another module's registry may still hold port 5000 there (the lanes of
    # a parallel run take modules in any order), and this one names its container hub-registry.
    lab_api.reset_host(SERVER, docker=True)  # Docker in: its install is test_deploy's
    venv, project = tmp_path / "venv", tmp_path / "project"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    project.mkdir()
    (project / "secrets").mkdir()
    harness.write_secret(project / "secrets", "builder.password", PASSWORD)
    _inventory(project)
    (project / "deploy.py").write_text(DEPLOY)
    (project / "teardown.py").write_text(TEARDOWN)
    assert len(DEPLOY.splitlines()) <= 10

    first = _run(venv, project, "deploy.py").assert_ok()
    _run(venv, project, "deploy.py").assert_no_changes()
    assert first.results and first.results["operations"]
    assert not [op for op in first.results["operations"] if OUTSIDER in json.dumps(op)]

    # The state folder is the project's (current directory), not the package's.
    ca = project / ".registry-kit" / "ca" / "ca.crt"
    assert ca.is_file()
    site = venv / "lib"
    assert not list(site.glob("python*/site-packages/.registry-kit")), "state in site-packages"
    ip = harness.host_ip(SERVER)
    status = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         "--resolve", f"{DOMAIN}:{PORT}:{ip}", "--cacert", str(ca),
         f"https://{DOMAIN}:{PORT}/v2/"], capture_output=True, text=True, timeout=30).stdout
    assert status == "401"  # up, TLS with the project's CA, users required
    running = harness.ssh(SERVER, "docker inspect -f '{{.State.Running}}' hub-registry")
    assert running.stdout.strip() == "true"
    assert harness.ssh(SERVER, "test -f /etc/hub-registry/config.yml", check=False).returncode == 0
    trust = harness.ssh(CLIENT, f"cat /etc/docker/certs.d/{DOMAIN}:{PORT}/ca.crt").stdout
    assert trust.strip() == ca.read_text().strip()
    login = harness.ssh(CLIENT, "cat /root/.docker/config.json").stdout
    assert f"{DOMAIN}:{PORT}" in login

    _run(venv, project, "teardown.py").assert_ok()
    _run(venv, project, "teardown.py").assert_no_changes()
    gone = harness.ssh(SERVER, "docker ps -a --format '{{.Names}}'").stdout.split()
    assert "hub-registry" not in gone
    assert harness.ssh(CLIENT, f"test -e /etc/docker/certs.d/{DOMAIN}:{PORT}",
                       check=False).returncode != 0
