"""The audit log's files (registry_audit_log), rendered from settings: config.yml's
`notifications` section, the receiver's systemd unit and its logrotate snippet. No host
access; registry_kit.roles.audit puts them on servers.

The registry (2.8 and 3.0 read the same keys) posts an envelope of events to the
receiver (scripts/registry-audit-receiver.py) for each push, pull and delete; pulls and
blob events are left out here (`ignore`), so the receiver gets
manifest pushes and deletes. The endpoint carries no credential: the registry logs every
endpoint's URL and headers at start (`configuring endpoint ... headers=...`), so a secret
there would land in `docker logs`. The receiver instead answers only the Docker bridge's
own network (registry-audit-receiver.py).
"""

from __future__ import annotations

from typing import Any

from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.render import textfile
from registry_kit.render.token_auth import SANDBOX

# Blobs (layers, configs) are pushed as application/octet-stream: not audited.
IGNORED_MEDIA_TYPES = ["application/octet-stream"]
IGNORED_ACTIONS = ["pull", "mount"]


def notifications_section(settings: Settings) -> dict[str, Any]:
    """config.yml's `notifications`: one endpoint, the host's receiver. A receiver that is
    down delays nothing: the registry queues events in memory and retries (`backoff`)."""
    return {"endpoints": [{
        "name": layout.AUDIT_SERVICE, "url": layout.audit_url(settings),
        "timeout": "2s", "threshold": 5, "backoff": "2s",
        "ignore": {"mediatypes": IGNORED_MEDIA_TYPES, "actions": IGNORED_ACTIONS}}]}


def extra_hosts(settings: Settings) -> tuple[tuple[str, str], ...]:
    """The registry container's --add-host for the receiver's name: the host's gateway
    (the Docker bridge's address, where the receiver listens)."""
    return ((layout.AUDIT_HOST_NAME, "host-gateway"),) if settings.registry_audit_log else ()


def unit_text(settings: Settings) -> bytes:
    """The receiver's unit: the token server's sandbox (a dynamic user, no capabilities,
    read-only system), with its log folder (LogsDirectory=) the one place it writes."""
    argv = [layout.PYTHON, layout.AUDIT_SCRIPT, "--interface", layout.AUDIT_BRIDGE,
            "--port", str(settings.registry_audit_port), "--log-file", layout.AUDIT_LOG,
            "--path", layout.AUDIT_EVENTS_PATH]
    service = [
        f"LogsDirectory={layout.AUDIT_LOG_DIR.removeprefix('/var/log/')}",
        "LogsDirectoryMode=0750",
        f"ExecStart={' '.join(argv)}",
        # Before the engine has made docker0 (a boot), the start fails: try again.
        "Restart=always", "RestartSec=2", *SANDBOX,
    ]
    return textfile.systemd_unit(
        "Managed by registry-kit (registry_kit/render/audit.py)",
        {"Unit": ["Description=registry-kit audit log: the registry's notifications",
                  "After=docker.service"],
         "Service": service, "Install": ["WantedBy=multi-user.target"]}).encode()


def logrotate_text() -> bytes:
    """Weekly, a year kept. The receiver opens the file for each line it writes, so a
    renamed file is never written again and no signal is needed (nocreate: the receiver
    makes the new one, as its own user)."""
    return ("# Managed by registry-kit (registry_kit/render/audit.py)\n"
            f"{layout.AUDIT_LOG} {{\n"
            "    weekly\n    rotate 52\n    compress\n    delaycompress\n    missingok\n"
            "    notifempty\n    nocreate\n}\n").encode()
