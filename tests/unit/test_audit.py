"""The audit log (registry_audit_log): the receiver's reading of the registry's events
(scripts/registry-audit-receiver.py, imported from its file and run on a local socket),
config.yml's `notifications`, the container's --add-host, the unit and logrotate snippet,
the setting's checks, and status' merge of the receiver's and the token server's lines.
The e2e (a push, a delete through the web page, a denied push, by the right users) is in
tests/e2e/test_webui.py."""

from __future__ import annotations

import http.client
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import script_module
import yaml

from registry_kit import package_data
from registry_kit.errors import SettingsError
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.render import audit as render
from registry_kit.render.config import render_config
from registry_kit.roles import audit, server

SCRIPT = Path(package_data.__file__).parent / "scripts" / layout.AUDIT_SCRIPT_NAME
DIGEST = "sha256:" + "a" * 64


def _script() -> Any:
    return script_module.load(SCRIPT, "registry_audit_receiver")


receiver = _script()


def event(action: str, media: str, *, tag: str | None = None, user: str = "alice",
          addr: str = "10.0.0.5:41234") -> dict[str, Any]:
    target: dict[str, Any] = {"mediaType": media, "repository": "team/app", "digest": DIGEST}
    if tag:
        target["tag"] = tag
    return {"id": "x", "timestamp": "2026-12-07T05:00:01.123456789Z", "action": action,
            "target": target, "request": {"addr": addr, "method": "PUT"},
            "actor": {"name": user}, "source": {"addr": "registry:5000"}}


def test_receiver_records_manifest_pushes_and_deletes_only() -> None:
    oci = "application/vnd.oci.image.manifest.v1+json"
    assert receiver.record(event("push", oci, tag="1.0")) == {
        "time": "2026-12-07T05:00:01.123456789Z", "action": "push", "user": "alice",
        "address": "10.0.0.5", "repository": "team/app", "reference": "1.0",
        "digest": DIGEST, "source": "registry"}
    index = receiver.record(event("push", "application/vnd.oci.image.index.v1+json"))
    assert index is not None and index["reference"] is None  # pushed by digest
    assert receiver.record(event("push", "application/octet-stream")) is None  # a blob
    assert receiver.record(event("pull", oci, tag="1.0")) is None
    deleted = receiver.record(event("delete", "", user="", addr="[fd00::5]:443"))
    assert deleted is not None and deleted["user"] is None and deleted["address"] == "fd00::5"
    assert receiver.bare_address("10.0.0.5") == "10.0.0.5"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The receiver on 127.0.0.1, answering 127.0.0.0/8 as if it were the bridge."""
    log = tmp_path / "audit.log"
    handler = type("H", (receiver.Handler,), {
        "network": ipaddress.ip_network("127.0.0.0/8"),
        "gateway": ipaddress.ip_address("127.0.0.9"), "log_file": str(log),
        "events_path": layout.AUDIT_EVENTS_PATH, "lock": threading.Lock()})
    http_server = receiver.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    yield http_server, log
    http_server.shutdown()
    http_server.server_close()


def post(http_server: Any, body: bytes, path: str = layout.AUDIT_EVENTS_PATH) -> int:
    connection = http.client.HTTPConnection(*http_server.server_address, timeout=10)
    connection.request("POST", path, body=body,
                       headers={"Content-Type": "application/vnd.docker.distribution.events"
                                ".v1+json"})
    status = connection.getresponse().status
    connection.close()
    return status


def test_receiver_appends_json_lines_and_refuses_garbage(
        running: tuple[Any, Path], capsys: pytest.CaptureFixture[str]) -> None:
    http_server, log = running
    hostile = event("push", "application/vnd.docker.distribution.manifest.v2+json",
                    tag="1.0", user="eve\nforged\x1b[2K")
    envelope = {"events": [hostile, event("push", "application/octet-stream")]}
    assert post(http_server, json.dumps(envelope).encode()) == 200
    assert post(http_server, b"not json") == 400
    assert post(http_server, b"{}", path="/other") == 404
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["user"] == "eve\nforged\x1b[2K"
    assert "\x1b" not in log.read_text()  # escaped by JSON: one line, no terminal escape
    assert capsys.readouterr().out == log.read_text()  # the journal gets the same lines


def test_receiver_refuses_peers_outside_the_bridge(running: tuple[Any, Path]) -> None:
    http_server, log = running
    handler = http_server.RequestHandlerClass
    handler.network = ipaddress.ip_network("172.17.0.0/16")
    assert post(http_server, b'{"events": []}') == 403
    assert not log.exists()


def test_config_has_the_receiver_and_the_container_resolves_it(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_audit_log=True)
    config = yaml.safe_load(render_config(settings, "s" * 32))
    assert config["notifications"] == {"endpoints": [{
        "name": "registry-kit-audit", "url": "http://registry-kit-audit.host:5002/events",
        "timeout": "2s", "threshold": 5, "backoff": "2s",
        "ignore": {"mediatypes": ["application/octet-stream"], "actions": ["pull", "mount"]}}]}
    spec = server.container_spec(settings, b"config", None)
    assert "registry-kit-audit.host:host-gateway" in spec.run_args()
    off = make_settings()
    assert "notifications" not in yaml.safe_load(render_config(off, "s" * 32))
    assert "registry-kit-audit.host:host-gateway" not in \
        server.container_spec(off, b"config", None).run_args()


def test_unit_is_sandboxed_and_logrotate_leaves_the_file_to_the_receiver(
        make_settings: Callable[..., Settings]) -> None:
    unit = render.unit_text(make_settings(registry_audit_log=True)).decode()
    assert "DynamicUser=yes" in unit and "ProtectSystem=strict" in unit
    assert "LogsDirectory=registry-kit\n" in unit
    assert ("ExecStart=/usr/bin/python3 /usr/local/lib/registry-kit/registry-audit-receiver.py "
            "--interface docker0 --port 5002 --log-file /var/log/registry-kit/audit.log "
            "--path /events\n") in unit
    snippet = render.logrotate_text().decode()
    assert snippet.splitlines()[1] == "/var/log/registry-kit/audit.log {"
    assert "nocreate" in snippet and "copytruncate" not in snippet


def test_audit_port_must_differ_from_the_ports_on_every_address(
        make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError, match=r"registry_audit_port=5000.*registry_port"):
        make_settings(registry_audit_log=True, registry_audit_port=5000)
    make_settings(registry_audit_log=False, registry_audit_port=5000)  # unused: no check


def test_status_merges_both_sources_newest_last(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_audit_log=True)
    push = {"time": "2026-12-07T05:00:01.5Z", "action": "push", "user": "alice",
            "address": "10.0.0.5", "repository": "team/app", "reference": "1.0",
            "digest": DIGEST, "source": "registry"}
    denied = {"time": "2026-12-07T05:00:02Z", "action": "denied", "user": "bob\x1b[2K",
              "address": "10.0.0.6", "repository": "team/app", "reference": None,
              "digest": None, "source": "token", "refused": "push", "reason": "not granted"}
    sections = {"audit": [json.dumps(push), "not json"],
                "audit-denied": ["registry-token-server: audit " + json.dumps(denied)]}
    assert audit.entries(settings, sections) == [push, denied]
    lines = audit.status_lines(settings, sections)
    assert lines[0] == "audit (HOST): the last 2 entries:".replace("HOST", settings.host)
    assert "alice from 10.0.0.5  team/app:1.0@" + DIGEST in lines[1]
    assert "bob\\x1b[2K from 10.0.0.6  team/app (push refused: not granted)" in lines[2]
    many = {"audit": [json.dumps({**push, "time": f"2026-12-07T05:{i:02d}:00Z"})
                      for i in range(30)]}
    assert len(audit.entries(settings, many) or []) == audit.AUDIT_SHOWN
    assert audit.entries(make_settings(), sections) is None
    assert audit.status_command(make_settings()) == "true"
