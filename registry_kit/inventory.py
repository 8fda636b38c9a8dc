"""Shared pieces of the lifecycle runs (teardown.py, gc.py, status.py).

Settings are validated once for every host, like deploy.py does, but without issuing
certificates on the control machine: tearing down or inspecting a registry must not
create a CA. Reports (freed bytes, warnings) are shown in pyinfra's output by running the
remote command from a FunctionCommand and logging its `registry-kit:` lines.
Reads: nothing itself; settings.load reads host data.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyinfra import inventory, logger
from pyinfra.api import StringCommand

from registry_kit import settings as settings_module
from registry_kit.settings import Settings, SettingsError, SettingsRefused

SERVER_GROUP = "registry_servers"
CLIENT_GROUP = "registry_clients"
REPORT_PREFIX = "registry-kit: "

_validated: dict[str, Settings] | None = None


def validated_settings() -> dict[str, Settings]:
    """Every host's settings, validated once per run; a bad one stops the run (one line)."""
    global _validated
    if _validated is None:
        try:
            _validated = settings_module.load_inventory(inventory)
        except SettingsError as error:
            raise SettingsRefused(error) from None
    return _validated


def roles(target: Any) -> tuple[bool, bool]:
    """(is_server, is_client) of an inventory host."""
    return SERVER_GROUP in target.groups, CLIENT_GROUP in target.groups


def merge_probe(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Combine probe arguments (registry_kit.facts.RegistryHostState) of several parts:
    lists are joined (without repeats), single values taken from the last part."""
    merged: dict[str, Any] = {"files": [], "dirs": []}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged[key] = merged.get(key, []) + [v for v in value
                                                     if v not in merged.get(key, [])]
            else:
                merged[key] = value
    return merged


class ReportedCommand(StringCommand):
    """A command whose `registry-kit:` stdout lines are shown (pyinfra shows a successful
    command's output only with -v; on failure it prints all of it itself). A command, not
    a FunctionCommand calling host.run_shell_command: that call would drop the operation's
    connector arguments, --sudo among them."""

    def execute(self, state: Any, host: Any, connector_arguments: Any) -> Any:
        status, output = super().execute(state, host, connector_arguments)
        for line in output.stdout_lines:
            if line.startswith(REPORT_PREFIX):
                host.log_styled(line, fg="cyan", log_func=logger.info)
        return status, output
