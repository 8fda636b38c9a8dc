"""The audit log on hosts in registry_servers (registry_audit_log): who pushed, deleted or
was refused what.

- Pushes (manifests) and deletes: the registry's notifications (config.yml, rendered by
  registry_kit.render.audit) go to `registry-kit-audit.service`
  (scripts/registry-audit-receiver.py), which writes one JSON line per event to its
  journal and to /var/log/registry-kit/audit.log (rotated by the logrotate snippet).
- Denied requests: the token server (token auth) writes the same JSON line, with
  `"action": "denied"`, to its own journal (registry-token-server.py, audit_denied): it
  alone knows what it refused. htpasswd auth has no token server: no denials there.

status.py shows the newest AUDIT_SHOWN lines of both, merged by time (status_lines; the
JSON document's `audit`). Teardown removes the receiver, its unit and the snippet and keeps
the log itself (a record is not the kit's to destroy).
"""

from __future__ import annotations

import json
from typing import Any

from pyinfra import host
from pyinfra.operations.util import any_changed

from registry_kit import package_data
from registry_kit.commands import q
from registry_kit.facts import HostState, section_command
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.operations import files, packages
from registry_kit.operations.typed import operation
from registry_kit.render import audit

SERVICE = layout.AUDIT_SERVICE
PACKAGES = ("python3", "logrotate")
COMMANDS = ("python3", "logrotate")
AUDIT_SHOWN = 20
DENIED_MARK = "audit {"  # the token server's audit lines: "registry-token-server: audit {..."


def probe_args(settings: Settings) -> dict:
    return {"files": [layout.AUDIT_UNIT, layout.AUDIT_SCRIPT, layout.AUDIT_LOGROTATE],
            "commands": list(COMMANDS), "services": [SERVICE]}


@operation()
def restart_audit():
    yield f"systemctl daemon-reload && systemctl restart {q(SERVICE)}"


@operation()
def enable_audit(state: HostState):
    active, enabled = state.services.get(SERVICE, (False, False))
    if active and enabled:
        host.noop(f"{SERVICE} is enabled and running")
        return
    yield f"systemctl daemon-reload && systemctl enable --now {q(SERVICE)}"


@operation()
def disable_audit(state: HostState):
    active, enabled = state.services.get(SERVICE, (False, False))
    if not (active or enabled or layout.AUDIT_UNIT in state.files):
        host.noop(f"no {SERVICE}")
        return
    yield f"systemctl disable --now {q(SERVICE)} 2>/dev/null; true"


def audit_deploy(settings: Settings, state: HostState) -> None:
    if not settings.registry_audit_log:
        audit_remove(state)
        return
    packages.install_packages(PACKAGES, COMMANDS, state,
                              name="Install python3 and logrotate (audit log)")
    script = files.managed_file(layout.AUDIT_SCRIPT,
                                package_data.script(layout.AUDIT_SCRIPT_NAME), "0755",
                                state.files.get(layout.AUDIT_SCRIPT),
                                name=f"Install {layout.AUDIT_SCRIPT}")
    unit = files.managed_file(layout.AUDIT_UNIT, audit.unit_text(settings), "0644",
                              state.files.get(layout.AUDIT_UNIT),
                              name=f"Install {SERVICE}.service")
    files.managed_file(layout.AUDIT_LOGROTATE, audit.logrotate_text(), "0644",
                       state.files.get(layout.AUDIT_LOGROTATE),
                       name="Install the audit log's logrotate snippet")
    restart_audit(name=f"Restart {SERVICE}", _if=any_changed(script, unit))
    enable_audit(state, name=f"Enable and start {SERVICE}")


def audit_remove(state: HostState) -> None:
    """The reverse of audit_deploy (teardown, or registry_audit_log=False); the log stays."""
    disable_audit(state, name=f"Stop and disable {SERVICE}")
    files.absent_paths([layout.AUDIT_UNIT, layout.AUDIT_SCRIPT, layout.AUDIT_LOGROTATE],
                       list(state.files), name="Remove the audit log's receiver")


# --- status: the newest entries ---

def status_command(settings: Settings) -> str:
    if not settings.registry_audit_log:
        return "true"
    shown = q(str(AUDIT_SHOWN))
    return "; ".join([
        section_command("audit"), f"tail -n {shown} {q(layout.AUDIT_LOG)} 2>/dev/null",
        section_command("audit-denied"),
        f"journalctl -u {q(layout.TOKEN_SERVICE)} -o cat --no-pager -n 5000 2>/dev/null"
        f" | grep -F {q(DENIED_MARK)} | tail -n {shown}; true"])


def entries(settings: Settings, sections: dict[str, list[str]]) -> list[dict[str, Any]] | None:
    """The newest AUDIT_SHOWN entries, oldest first; None without the audit log."""
    if not settings.registry_audit_log:
        return None
    found: list[dict[str, Any]] = []
    lines = [*sections.get("audit", []),
             *(line.partition(DENIED_MARK[:-1])[2] for line in sections.get("audit-denied", []))]
    for text in lines:
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict):
            found.append(entry)
    # Seconds decide the order: the registry's times have nanoseconds, the token server's not.
    found.sort(key=lambda entry: str(entry.get("time"))[:19])
    return found[-AUDIT_SHOWN:]


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    return {}


def _shown(value: Any) -> str:
    """A logged value for the terminal: a user name came from a request, so control
    characters are shown escaped, never sent."""
    text = "-" if value in (None, "") else str(value)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def status_lines(settings: Settings, sections: dict[str, list[str]]) -> list[str]:
    found = entries(settings, sections)
    if found is None:
        return []
    if not found:
        return [f"audit ({settings.host}): no entries yet"]
    lines = [f"audit ({settings.host}): the last {len(found)} entries:"]
    for entry in found:
        what = _shown(entry.get("repository"))
        if entry.get("reference"):
            what += f":{_shown(entry['reference'])}"
        if entry.get("digest"):
            what += f"@{_shown(entry['digest'])}"
        extra = f" ({_shown(entry.get('refused'))} refused: {_shown(entry.get('reason'))})" \
            if entry.get("action") == "denied" else ""
        lines.append(f"  {_shown(str(entry.get('time'))[:19])}  {_shown(entry.get('action')):7} "
                     f"{_shown(entry.get('user'))} from {_shown(entry.get('address'))}  "
                     f"{what}{extra}")
    return lines
