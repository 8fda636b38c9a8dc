"""Debian's Prometheus exporters behind a host's metrics endpoint (registry_metrics):
`prometheus-redis-exporter` on the registry_cache host (redis' INFO as metrics) and, with
registry_node_exporter, `prometheus-node-exporter` on servers, load balancers and the cache.

Each listens on the host's loopback only: a drop-in of the kit's
(`/etc/systemd/system/<service>.service.d/registry-kit.conf`) replaces the package's
ExecStart (whose default listens on every address) and is written before the package is
installed, so its first start already listens there. The endpoint's haproxy (the metrics
filter of registry_kit.roles.metrics, or the load balancer's `frontend metrics`) passes GET
on the exporter's path from registry_metrics_allow only. The redis exporter reads redis'
password from REDIS_PASSWORD, set by an EnvironmentFile beside the drop-in (root, 0600;
systemd reads it, the exporter gets it in its environment): never on argv.

The drop-in is the kit's mark: removal (registry_metrics or registry_node_exporter off,
teardown) stops and disables only an exporter that has it, removes the kit's files and, with
registry_packages_remove_on_teardown at teardown, purges the package. See README "Metrics".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyinfra import host
from pyinfra.operations.util import any_changed

from registry_kit.commands import join, q
from registry_kit.facts import HostState
from registry_kit.model import layout
from registry_kit.model.settings import Settings
from registry_kit.model.topology import Topology
from registry_kit.operations import files, packages, services
from registry_kit.operations.typed import operation
from registry_kit.render import haproxy, textfile


@dataclass(frozen=True)
class Exporter:
    name: str  # "redis", "node": its haproxy backend and the scrape job's suffix
    package: str  # Debian's; also its systemd service and /usr/bin command
    path: str  # on the metrics endpoint
    listen: str  # 127.0.0.1:PORT

    @property
    def binary(self) -> str:
        return f"/usr/bin/{self.package}"

    @property
    def dropin_dir(self) -> str:
        return layout.dropin_dir(self.package)

    @property
    def dropin(self) -> str:
        return f"{self.dropin_dir}/{layout.EXPORTER_DROPIN_NAME}"

    @property
    def env_file(self) -> str:
        return f"{self.dropin_dir}/{layout.REDIS_EXPORTER_ENV_NAME}"

    @property
    def route(self) -> haproxy.Exporter:
        return haproxy.Exporter(self.name, self.path, self.listen)


REDIS = Exporter("redis", "prometheus-redis-exporter", layout.REDIS_EXPORTER_PATH,
                 layout.REDIS_EXPORTER_LISTEN)
NODE = Exporter("node", "prometheus-node-exporter", layout.NODE_EXPORTER_PATH,
                layout.NODE_EXPORTER_LISTEN)
ALL = (REDIS, NODE)


def is_cache(settings: Settings, topology: Topology) -> bool:
    return any(cache.host == settings.host for cache in topology.caches)


def wanted(settings: Settings, cache: bool) -> tuple[Exporter, ...]:
    """The exporters this host runs: redis' on the cache host, the node's when asked for;
    none without registry_metrics."""
    if not settings.registry_metrics:
        return ()
    return tuple(e for e, on in ((REDIS, cache), (NODE, settings.registry_node_exporter))
                 if on)


def routes(settings: Settings, topology: Topology) -> tuple[haproxy.Exporter, ...]:
    """What this host's metrics endpoint passes to its exporters."""
    return tuple(e.route for e in wanted(settings, is_cache(settings, topology)))


def probe_args(settings: Settings) -> dict:
    return {"files": [path for e in ALL for path in (e.dropin, e.env_file)],
            "dirs": [e.dropin_dir for e in ALL], "commands": [e.binary for e in ALL],
            "services": [e.package for e in ALL]}


def dropin(exporter: Exporter, settings: Settings) -> bytes:
    """The kit's drop-in: ExecStart replaced (the package's reads ARGS from /etc/default,
    which the kit leaves alone), listening on the loopback."""
    # The endpoint's haproxy passes the path as it is: the exporter serves it there.
    argv = [exporter.binary, f"--web.listen-address={exporter.listen}",
            f"--web.telemetry-path={exporter.path}"]
    environment: list[str] = []
    if exporter is REDIS:
        # redis listens on the loopback too (registry_kit.roles.cache: `bind ... 127.0.0.1`).
        argv.append(f"--redis.addr=redis://127.0.0.1:{int(settings.registry_cache_port)}")
        environment = [f"EnvironmentFile={exporter.env_file}"]
    exec_start = textfile.systemd_exec_args(argv, file=exporter.dropin, field="ExecStart")
    return textfile.systemd_unit(
        "Managed by registry-kit (registry_kit/roles/exporters.py): on the loopback only; "
        "the metrics endpoint's haproxy passes it to registry_metrics_allow",
        {"Service": [*environment, "ExecStart=", f"ExecStart={exec_start}"]}).encode()


def redis_environment(exporter: Exporter, password: str) -> bytes:
    return textfile.systemd_environment([("REDIS_PASSWORD", password)],
                                        file=exporter.env_file, secret=True).encode()


@operation()
def restart_exporter(exporter: Exporter):
    yield f"systemctl daemon-reload && systemctl restart {q(exporter.package)}"


def exporters_deploy(settings: Settings, state: HostState, cache: bool,
                     password: str = "") -> None:
    """Each exporter this host runs, and the removal of the others the kit set up."""
    on = wanted(settings, cache)
    for exporter in on:
        files.managed_dir(exporter.dropin_dir, "0755", state.dirs.get(exporter.dropin_dir),
                          name=f"Create {exporter.dropin_dir}")
        changed = []
        if exporter is REDIS:
            changed.append(files.managed_file(
                exporter.env_file, redis_environment(exporter, password), "0600",
                state.files.get(exporter.env_file),
                name="Write the redis exporter's password file (0600)"))
        changed.append(files.managed_file(
            exporter.dropin, dropin(exporter, settings), "0644",
            state.files.get(exporter.dropin),
            name=f"Install the {exporter.package} drop-in (loopback only)"))
        # After the drop-in: the package's first start listens on the loopback already.
        packages.install_packages((exporter.package,), (exporter.binary,), state,
                                  name=f"Install {exporter.package} from the distro")
        restart_exporter(exporter, name=f"Restart {exporter.package} (drop-in changed)",
                         _if=any_changed(*changed))
        services.start(state, exporter.package, daemon_reload=True,
                       name=f"Enable and start {exporter.package}")
    remove_exporters([e for e in ALL if e not in on], state, purge=False)


@operation()
def remove_exporter(exporter: Exporter, state: HostState, purge: bool):
    """Only an exporter the kit set up (its drop-in is there): stopped and disabled (the
    package's own unit would listen on every address), the kit's files removed; `purge`:
    the package too."""
    if exporter.dropin not in state.files:
        host.noop(f"{exporter.package}: not set up by registry-kit")
        return
    yield f"systemctl disable --now {q(exporter.package)} >/dev/null 2>&1; true"
    if purge and exporter.binary in state.commands:
        yield f"DEBIAN_FRONTEND=noninteractive apt-get purge -y -q {q(exporter.package)}"
    present = [path for path in (exporter.dropin, exporter.env_file) if path in state.files]
    yield f"rm -f {join(present)} && rmdir --ignore-fail-on-non-empty " \
          f"{q(exporter.dropin_dir)} && systemctl daemon-reload"


def remove_exporters(exporters: Sequence[Exporter], state: HostState, purge: bool) -> None:
    for exporter in exporters:
        remove_exporter(exporter, state, purge,
                        name=f"Stop and remove {exporter.package} (set up by registry-kit)")


def exporters_remove(settings: Settings, state: HostState) -> None:
    """Teardown: every exporter the kit set up; the packages with
    registry_packages_remove_on_teardown=True."""
    remove_exporters(ALL, state, purge=settings.registry_packages_remove_on_teardown)
