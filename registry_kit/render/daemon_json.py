"""Merging the kit's keys into Docker's daemon.json, keeping every key it does not own.

Owned by the kit: "registry-mirrors" and "live-restore" when their settings are given,
and its own entry in "insecure-registries" (other entries stay). All three are keys that
`systemctl reload docker` (SIGHUP) applies, so running containers keep running.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from registry_kit.model.layout import DAEMON_JSON

RELOADABLE_KEYS = frozenset({"registry-mirrors", "insecure-registries", "live-restore"})


class DaemonJsonError(ValueError):
    pass


def parse(text: str | None) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DaemonJsonError(f"{DAEMON_JSON} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DaemonJsonError(f"{DAEMON_JSON} is not a JSON object")
    return data


def merge(current: dict[str, Any], *, mirrors: Sequence[str], live_restore: bool | None,
          insecure_add: Sequence[str] = (), insecure_remove: Sequence[str] = ()) -> dict[str, Any]:
    """The wanted daemon.json: current keys kept, the kit's applied (order preserved)."""
    wanted = dict(current)
    if mirrors:
        wanted["registry-mirrors"] = list(mirrors)
    if live_restore is not None:
        wanted["live-restore"] = live_restore
    insecure = [entry for entry in wanted.get("insecure-registries", [])
                if entry not in insecure_remove]
    insecure += [entry for entry in insecure_add if entry not in insecure]
    if insecure:
        wanted["insecure-registries"] = insecure
    else:
        wanted.pop("insecure-registries", None)
    return wanted


def unmerge(current: dict[str, Any], *, mirrors: Sequence[str], live_restore: bool | None,
            insecure: Sequence[str]) -> dict[str, Any]:
    """Teardown: remove what the kit put there, and nothing else."""
    wanted = merge(current, mirrors=(), live_restore=None, insecure_remove=insecure)
    if mirrors and wanted.get("registry-mirrors") == list(mirrors):
        del wanted["registry-mirrors"]
    if live_restore is not None and wanted.get("live-restore") == live_restore:
        del wanted["live-restore"]
    return wanted


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"


# A reload (SIGHUP) applies only the keys present in daemon.json: a removed key keeps its
# old value in the running engine. Writing the key with its empty/default value first and
# reloading clears it live; the file then loses the key, and no restart is needed.
RESET_VALUES: dict[str, Any] = {"registry-mirrors": [], "insecure-registries": [],
                                "live-restore": False}


def live_reset(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    """Reloadable keys removed entirely, with the value that clears them on reload."""
    return {key: value for key, value in RESET_VALUES.items()
            if key in current and key not in wanted}


def needs_restart(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """True when a key outside the reloadable set changed (a reload would not apply it)."""
    keys = set(before) | set(after)
    return any(before.get(key) != after.get(key) for key in keys - RELOADABLE_KEYS)
