"""The run as the kit sees it: which inventory groups play which role, every host's settings
validated once per run, and the pieces the jobs share (probe merge, reported commands).

"Once per run" is once per pyinfra State: everything a run keeps between its hosts lives in
`run_cache(...)`, a dict kept on the State itself, so two runs in one process (pyinfra's API,
tests) never see each other's settings, certificates or status rows.
Settings are validated for every host of the groups a call names (no other host is read)
before any host is touched; `issue_certificates`
(deploy) also prepares the CA and checks provided certificate files, while teardown, gc and
status must not create a CA. Reports (freed bytes, warnings) are shown in pyinfra's output
by a command that logs its `registry-kit:` lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gevent import GreenletExit
from pyinfra import context, logger
from pyinfra.api import StringCommand
from pyinfra.context import ctx_host, ctx_state

from registry_kit import pyinfra_patches
from registry_kit.errors import SettingsError
from registry_kit.model import settings as settings_module
from registry_kit.model.settings import Settings

REPORT_PREFIX = "registry-kit: "


@dataclass(frozen=True)
class Groups:
    """The inventory group names for each role; the API's callers may use their own."""
    servers: str = "registry_servers"
    clients: str = "registry_clients"
    lb: str = "registry_lb"
    cache: str = "registry_cache"

    @property
    def all(self) -> tuple[str, str, str, str]:
        return (self.servers, self.clients, self.lb, self.cache)


DEFAULT_GROUPS = Groups()
_RUN_ATTRIBUTE = "_registry_kit_run"


def run_cache(name: str, factory: Callable[[], Any], state: Any = None) -> Any:
    """A value kept for one pyinfra run only (on its State: `state`, else the current one),
    made on first use; outside a run (unit tests of the pieces), made anew on every call."""
    if state is None:
        if not ctx_state.isset():
            return factory()
        state = ctx_state.get()  # the run's State itself: `context.state` is a shared proxy
    store: dict[str, Any] = state.__dict__.setdefault(_RUN_ATTRIBUTE, {})
    if name not in store:
        store[name] = factory()
    return store[name]


def validated_settings(groups: Groups = DEFAULT_GROUPS, *,
                       defaults: Mapping[str, Any] | None = None,
                       after: Callable[[dict[str, Settings]], None] | None = None,
                       ) -> dict[str, Settings]:
    """The settings of every host in `groups`, validated once per run; a bad one stops the
    run (one line). `defaults`: the API call's settings=, above the deploy's data_defaults
    and below group and host data; `after(all_settings)` adds the caller's checks (deploy's
    certificates and scale-out), run once with the validation."""

    if run_cache("refused", dict):
        raise GreenletExit()  # another host's refusal ends this run (see refusal())
    deploy_data = {**(context.host.get_deploy_data() if ctx_host.isset() else {}),
                   **(defaults or {})}

    def load() -> dict[str, Settings]:
        try:
            loaded = settings_module.load_inventory(context.inventory, groups=groups.all,
                                                    server_group=groups.servers,
                                                    deploy_data=deploy_data)
            if after is not None:
                after(loaded)
        except SettingsError as error:
            raise refusal(error) from None
        # Process-wide, so one switch for the run: any host may turn them off.
        pyinfra_patches.use(all(s.registry_pyinfra_patches for s in loaded.values()))
        return loaded

    key = f"settings:{groups}:{sorted(deploy_data.items())!r}"
    return run_cache(key, load)  # type: ignore[no-any-return]


def refusal(error: SettingsError) -> BaseException:
    """What to raise for a setting refused while planning a host: the run's first refusal is
    the SettingsError itself (a RegistryKitError: the entry scripts turn it into exit code 1
    and its one line). pyinfra's CLI plans every host at once, each in a greenlet: any later
    refusal ends its host's greenlet as killed (GreenletExit, which gevent does not report),
    so the run shows one line, not one per host (and a second SystemExit from an entry
    script would print a traceback while the run shuts down)."""
    refused: dict[str, SettingsError] = run_cache("refused", dict)
    if refused:
        return GreenletExit()
    refused["first"] = error
    return error


def in_groups(target: Any, groups: Groups) -> bool:
    """Whether a host is in one of the groups a call names: no other host is read or touched."""
    return any(group in target.groups for group in groups.all)


def roles(target: Any, groups: Groups = DEFAULT_GROUPS) -> tuple[bool, bool]:
    """(is_server, is_client) of an inventory host."""
    return groups.servers in target.groups, groups.clients in target.groups


def server_settings(groups: Groups, defaults: Mapping[str, Any] | None) -> Settings | None:
    """The current host's validated settings when it is a server (the jobs that act on
    servers only: gc, retention, backup); None elsewhere. Every host is validated first."""
    settings = validated_settings(groups, defaults=defaults)[context.host.name]
    return settings if groups.servers in context.host.groups else None


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


def fail_host(state: Any, host: Any, message: str) -> bool:
    """A FunctionCommand that fails the host with one clean red line (no traceback).
    FunctionCommand passes state and host only to parameters with exactly these names."""
    host.log_styled(message, fg="red", log_func=logger.error)
    return False


def no_container(settings: Settings) -> str:
    """The one line that fails a job needing the registry's container (gc, retention)."""
    return (f"{context.host.name}: no container {settings.registry_container_name}: run "
            "deploy.py first")


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
