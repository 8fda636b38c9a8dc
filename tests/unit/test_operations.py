"""Operation-level tests, as pyinfra tests its own operations: each operation gets a probe
snapshot (registry_kit.facts.parse_probe of the probe's output, or a HostState) and the test
pins the exact commands it yields, or its no-op. The decision logic is tested here without
a lab; the e2e suites check the same operations against real hosts.

Commands are shown as text: a plain command as it is, an upload as `UPLOAD <bytes> -> DEST`,
a function as `CALL name(args)`, a command object as `<Class>: <text>`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.context import ctx_host

from registry_kit.commands import wait_until_answers_command
from registry_kit.facts import FileState, HostState, parse_probe
from registry_kit.jobs import backup, restore
from registry_kit.jobs import retention as retention_job
from registry_kit.model import layout, retention
from registry_kit.model.settings import Settings
from registry_kit.model.topology import OutOfRotation, Rotation
from registry_kit.operations import files, ownership, packages, removal, services
from registry_kit.operations.files import sha256_of
from registry_kit.render import prometheus
from registry_kit.roles import (
    audit,
    client,
    disk_guard,
    engine,
    gc_timer,
    keepalived,
    loadbalancer,
    metrics,
    retention_timer,
    server,
    trust,
)
from registry_kit.roles import token_server as token_auth

MARK = "@@registry-kit:"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"
NEW = ".registry-kit-new"


class FakeHost:
    """What an operation body touches of pyinfra's host: name, noop, its run's State."""

    def __init__(self, state: Any = None, name: str = "reg-host-1") -> None:
        self.name = name
        self.print_prefix = f"[{name}] "
        self.noops: list[str] = []
        self.state = state if state is not None else SimpleNamespace(failed_hosts=set())

    def noop(self, text: str) -> None:
        self.noops.append(text)


def shown(command: Any) -> str:
    if isinstance(command, str):
        return command
    if isinstance(command, FileUploadCommand):
        return f"UPLOAD {command.src.getvalue()!r} -> {command.dest}"
    if isinstance(command, FunctionCommand):
        return f"CALL {command.function.__name__}{tuple(command.args)!r}"
    if isinstance(command, StringCommand):
        return f"{type(command).__name__}: {command.get_raw_value()}"
    raise AssertionError(f"unexpected command {command!r}")


def run(op: Any, *args: Any, host: FakeHost | None = None, **kwargs: Any) \
        -> tuple[list[str], list[str]]:
    """(commands, no-op messages) of one operation call."""
    fake = host or FakeHost()
    with ctx_host.use(fake):
        commands = [shown(command) for command in op._inner(*args, **kwargs)]
    return commands, fake.noops


def systemctl_show(units: list[str]) -> list[str]:
    """"NAME ACTIVE-STATE UNIT-FILE-STATE" lines as the probe prints them: the names, then
    `systemctl show`'s block of each (registry_kit.facts.service_commands)."""
    lines = [" ".join(unit.split()[0] for unit in units)]
    for unit in units:
        name, active, enabled = unit.split()
        lines += [f"Id={name if '.' in name else name + '.service'}", f"ActiveState={active}",
                  f"UnitFileState={enabled}", ""]
    return lines


def probe(**sections: list[str]) -> HostState:
    """A probe snapshot, through the real parser, from its sections' lines. `files` lines are
    "SHA MODE OWNER GROUP PATH", given to the parser as the probe prints them: sha256sum's
    lines, then stat's (registry_kit.facts.path_commands); `services` lines are "NAME
    ACTIVE-STATE UNIT-FILE-STATE" (systemctl_show)."""
    files = [line.split(" ", 4) for line in sections.pop("files", [])]
    units = sections.pop("services", [])
    sections = {"files": [f"{sha}  {path}" for sha, *_, path in files],
                "modes": [" ".join(rest) for _, *rest in files],
                "services": systemctl_show(units) if units else [], **sections}
    lines: list[str] = []
    for name, body in sections.items():
        lines += [MARK + name, *body]
    return parse_probe(lines)


DEBIAN = ["debian", "", "bookworm"]
RUNNING_ENGINE = ["docker", "curl", "ActiveState=active", "UnitFileState=enabled"]


@pytest.fixture
def defaults(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


# --------------------------------------------------------------------------- engine

def test_install_docker_noop_when_installed(defaults: Settings) -> None:
    assert run(engine.install_docker, defaults, probe(os=DEBIAN, tools=["docker"])) == \
        ([], ["Docker is installed"])


def test_install_docker_on_debian(defaults: Settings) -> None:
    assert run(engine.install_docker, defaults, probe(os=DEBIAN)) == (
        [f"{APT} update -q", f"{APT} install -y -q docker.io"], [])


def test_install_docker_refused_when_method_none(make_settings: Callable[..., Settings]) \
        -> None:
    commands, _ = run(engine.install_docker, make_settings(docker_install_method="none"),
                      probe(os=DEBIAN))
    assert commands == ["CALL fail_host(\"reg-host-1: Docker is not installed and "
                        "docker_install_method='none'\",)"]


def test_install_curl() -> None:
    assert run(engine.install_curl, probe(os=DEBIAN)) == ([f"{APT} install -y -q curl"], [])
    assert run(engine.install_curl, probe(os=["rocky", "rhel centos fedora", ""])) == \
        (["dnf -y install curl"], [])
    assert run(engine.install_curl, probe(tools=["curl"])) == ([], ["curl is installed"])


def test_start_docker() -> None:
    stopped = probe(tools=["docker", "ActiveState=inactive", "UnitFileState=disabled"])
    assert run(engine.start_docker, stopped) == (["systemctl enable --now docker.service"], [])
    assert run(engine.start_docker, probe(tools=RUNNING_ENGINE)) == \
        ([], ["docker.service is enabled and running"])


DAEMON_WRITE = [
    f"install -d -m 0755 /etc/docker && install -m 0644 /dev/null /etc/docker/daemon.json{NEW}",
    "UPLOAD b'{\\n  \"registry-mirrors\": [\\n    \"https://m.example\"\\n  ]\\n}\\n' -> "
    f"/etc/docker/daemon.json{NEW}",
    "if dockerd --help 2>/dev/null | grep -q -- --validate; then dockerd --validate "
    f"--config-file /etc/docker/daemon.json{NEW} >/dev/null || {{ rm -f "
    f"/etc/docker/daemon.json{NEW}; echo 'registry-kit: daemon.json rejected' >&2; exit 1; }}; fi",
    f"mv -f /etc/docker/daemon.json{NEW} /etc/docker/daemon.json",
]
MIRRORS = {"registry-mirrors": ["https://m.example"]}


def test_configure_daemon() -> None:
    assert run(engine.configure_daemon, MIRRORS, dict(MIRRORS), probe(tools=RUNNING_ENGINE)) \
        == ([], ["daemon.json is as wanted"])
    # Engine not running: written, nothing to reload.
    assert run(engine.configure_daemon, {}, MIRRORS, probe(os=DEBIAN)) == (DAEMON_WRITE, [])
    # Running: registry-mirrors applies with a reload (containers keep running).
    assert run(engine.configure_daemon, {}, MIRRORS, probe(tools=RUNNING_ENGINE)) == \
        ([*DAEMON_WRITE, "systemctl reload docker.service"], [])


# --------------------------------------------------------------------------- files

def test_managed_file() -> None:
    same = FileState(sha256_of(b"hi\n"), "600", "root", "root")
    assert run(files.managed_file, "/etc/x", b"hi\n", "0600", same) == \
        ([], ["/etc/x is up to date"])
    loose = FileState(sha256_of(b"hi\n"), "644", "root", "root")
    assert run(files.managed_file, "/etc/x", b"hi\n", "0600", loose) == \
        (["chown root:root /etc/x && chmod 0600 /etc/x"], [])
    # New or changed content: the staging file has its final mode before any byte arrives.
    assert run(files.managed_file, "/etc/my x", b"hi\n", "0600", None) == ([
        f"install -m 0600 -o root -g root /dev/null '/etc/my x{NEW}'",
        f"UPLOAD b'hi\\n' -> /etc/my x{NEW}",
        f"mv -f '/etc/my x{NEW}' '/etc/my x'"], [])


def test_managed_dir_and_absent_paths() -> None:
    assert run(files.managed_dir, "/etc/x", "0700", None) == \
        (["install -d -m 0700 -o root -g root /etc/x"], [])
    assert run(files.managed_dir, "/etc/x", "0700", "700") == ([], ["/etc/x exists"])
    assert run(files.absent_paths, ["/a", "/b c"], ["/b c"]) == (["rm -rf '/b c'"], [])
    assert run(files.absent_paths, ["/a"], []) == ([], ["nothing to remove"])


# --------------------------------------------------------------------------- server

def test_ensure_image(defaults: Settings) -> None:
    assert run(server.ensure_image, defaults, probe(image=["sha256:abc"])) == \
        ([], ["image registry:2 is present"])
    assert run(server.ensure_image, defaults, probe()) == (["docker pull registry:2"], [])


@pytest.fixture
def spec(defaults: Settings) -> Any:
    return server.container_spec(defaults, b"config", None)


def test_ensure_container_up_to_date_or_stopped(defaults: Settings, spec: Any) -> None:
    running = probe(container=[f"{spec.spec_hash}|true|registry:2|"])
    assert run(server.ensure_container, defaults, spec, running) == \
        ([], [f"container registry is up to date ({spec.spec_hash})"])
    stopped = probe(container=[f"{spec.spec_hash}|false|registry:2|"])
    assert run(server.ensure_container, defaults, spec, stopped) == (["docker start registry"], [])


def test_ensure_container_replaces_a_changed_spec(defaults: Settings, spec: Any) -> None:
    old = probe(container=["0000|true|registry:2|"],
                server_version=["Server: Docker/26.1.5 (linux)"])
    assert run(server.ensure_container, defaults, spec, old) == ([
        "_ReplaceCommand: /usr/local/lib/registry-kit/replace-container.sh registry "
        "https://registry.example.internal:5000 registry.example.internal:5000:127.0.0.1 "
        "/etc/registry-kit/certs/ca.crt 60 /run/lock/registry-kit-registry.lock -- --name "
        "registry --restart=always -p 5000:5000 "
        "--mount type=bind,source=/etc/registry-kit,target=/etc/registry-kit,readonly "
        "--mount type=bind,source=/var/lib/registry-kit/data,target=/var/lib/registry"
        f" --label registry-kit.managed=true --label registry-kit.spec={spec.spec_hash} "
        "registry:2 serve /etc/registry-kit/config.yml"], [])


def test_a_failed_replacement_stops_the_rollout_of_its_run_only(defaults: Settings,
                                                                 spec: Any) -> None:
    old = probe(container=["0000|true|registry:2|"])
    this_run, next_run = SimpleNamespace(failed_hosts=set()), SimpleNamespace(failed_hosts=set())
    server._failed_replacements(this_run).append("reg-host-0")
    assert run(server.ensure_container, defaults, spec, old, host=FakeHost(this_run)) == \
        (["CALL _stop_rollout('reg-host-0',)"], [])
    commands, _ = run(server.ensure_container, defaults, spec, old, host=FakeHost(next_run))
    assert commands[0].startswith("_ReplaceCommand: ")


def _proof_inputs(settings: Settings) -> tuple[Any, dict[str, bytes], HostState]:
    """A running registry whose files on disk are the wanted ones but config.yml."""
    wanted = {"/etc/registry-kit/config.yml": b"new config",
              "/etc/registry-kit/auth/htpasswd": b"users"}
    state = probe(container=["0000|true|registry:2|"],
                  server_version=["Server: Docker/26.1.5 (linux)"])
    state.files = {path: FileState(sha256_of(content), "600", "root", "root")
                   for path, content in wanted.items()}
    return server.container_spec(settings, b"new config", None), wanted, state


def test_prove_files_costs_nothing_when_nothing_the_registry_reads_changed(
        defaults: Settings) -> None:
    spec, wanted, state = _proof_inputs(defaults)
    assert run(server.prove_files, defaults, spec, wanted, b"ro", state) == \
        ([], ["nothing to prove: the registry's files are unchanged"])
    users = {**wanted, "/etc/registry-kit/auth/htpasswd": b"other users"}
    assert run(server.prove_files, defaults, spec, users, b"ro", state) == \
        ([], ["nothing to prove: only htpasswd changed (read at its first use)"])
    # A first deploy: nothing runs yet that a refusal could take down.
    assert run(server.prove_files, defaults, spec, {**wanted, "/etc/registry-kit/config.yml":
                                                    b"other"}, b"ro", probe()) == \
        ([], ["nothing to prove: no registry container yet"])


def test_prove_files_stages_the_changed_files_and_proves_them_on_a_candidate(
        defaults: Settings) -> None:
    spec, wanted, state = _proof_inputs(defaults)
    staged = "/run/registry-kit/registry-candidate"
    changed = {**wanted, "/etc/registry-kit/config.yml": b"changed",
               "/etc/registry-kit/auth/htpasswd": b"other users",
               "/etc/registry-kit/certs/server.crt": b"cert"}
    assert run(server.prove_files, defaults, spec, changed, b"read-only", state) == ([
        f"docker rm -f registry-candidate >/dev/null 2>&1; rm -rf {staged} && "
        f"install -d -m 0700 /run/registry-kit {staged} && cp -a /etc/registry-kit/. {staged}",
        # Only what changed goes over the copy; config.yml is always the read-only variant.
        f"UPLOAD b'other users' -> {staged}/auth/htpasswd",
        f"UPLOAD b'cert' -> {staged}/certs/server.crt",
        f"UPLOAD b'read-only' -> {staged}/config.yml",
        "_ReplaceCommand: /usr/local/lib/registry-kit/prove-config.sh registry-candidate "
        f"{staged} https://registry.example.internal registry.example.internal "
        f"{staged}/certs/ca.crt 60 5000 -- -d --name registry-candidate "
        "-p 127.0.0.1::5000 "
        f"--mount type=bind,source={staged},target=/etc/registry-kit,readonly "
        "--mount type=bind,source=/var/lib/registry-kit/data,target=/var/lib/registry,readonly "
        "--label registry-kit.candidate=true registry:2 serve /etc/registry-kit/config.yml"], [])


def test_a_refused_proof_stops_the_rollout(defaults: Settings) -> None:
    spec, wanted, state = _proof_inputs(defaults)
    this_run = SimpleNamespace(failed_hosts=set())
    server._failed_replacements(this_run).append("reg-host-0")
    changed = {**wanted, "/etc/registry-kit/config.yml": b"changed"}
    assert run(server.prove_files, defaults, spec, changed, b"ro", state,
               host=FakeHost(this_run)) == (["CALL _stop_rollout('reg-host-0',)"], [])


def test_candidate_args_on_an_old_engine(defaults: Settings) -> None:
    spec = server.container_spec(defaults, b"config", None)
    assert spec.candidate_args("/run/x", "17.03.2") == [
        "-d", "--name", "registry-candidate", "-p", "127.0.0.1::5000",
        "-v", "/run/x:/etc/registry-kit:ro",
        "-v", "/var/lib/registry-kit/data:/var/lib/registry:ro",
        "--label", "registry-kit.candidate=true", "registry:2", "serve",
        "/etc/registry-kit/config.yml"]


# --------------------------------------------------------------------------- clients

HOSTS_WRITE = ("grep -v -e '# registry-kit$' /etc/hosts > /etc/hosts.registry-kit-new; "
               "echo '10.0.0.5 registry.lab # registry-kit' >> /etc/hosts.registry-kit-new; "
               "cat /etc/hosts.registry-kit-new > /etc/hosts; rm -f /etc/hosts.registry-kit-new")


def test_hosts_entries() -> None:
    wanted = {"registry.lab": "10.0.0.5"}
    assert run(client.hosts_entries, wanted, probe(os=DEBIAN)) == ([HOSTS_WRITE], [])
    assert run(client.hosts_entries, wanted,
               probe(hosts=["10.0.0.5 registry.lab # registry-kit"])) == \
        ([], ["/etc/hosts entries are in place"])


# --------------------------------------------------------------------------- packages, gc

def test_install_packages() -> None:
    assert run(packages.install_packages, ["haproxy", "socat"], ["haproxy", "socat"],
               probe(os=DEBIAN)) == ([
                   "DEBIAN_FRONTEND=noninteractive apt-get update -q && "
                   "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                   "--no-install-recommends haproxy socat"], [])


def test_disk_guard_installed_then_left_alone(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    commands, noops = run(disk_guard.install_guard, settings, probe())
    assert noops == []
    assert commands[-1] == ("systemctl daemon-reload && systemctl enable "
                            "registry-kit-disk-guard.timer >/dev/null 2>&1 && "
                            "systemctl restart registry-kit-disk-guard.timer")
    uploads = [c.rsplit(" -> ", 1)[1] for c in commands if c.startswith("UPLOAD ")]
    assert uploads == [f"/etc/systemd/system/registry-kit-disk-guard.service{NEW}",
                       f"/etc/systemd/system/registry-kit-disk-guard.timer{NEW}"]
    installed = probe(files=[
        f"{sha256_of(disk_guard.service_unit(settings))} 644 root root {disk_guard.SERVICE}",
        f"{sha256_of(disk_guard.timer_unit(settings))} 644 root root {disk_guard.TIMER}"])
    assert run(disk_guard.install_guard, settings, installed) == \
        ([], ["registry-kit-disk-guard.timer guards /var/lib/registry-kit/data (90%)"])


def removal_call(monkeypatch: pytest.MonkeyPatch, remove: Callable[..., None],
                 *args: Any) -> tuple[Any, ...]:
    """The arguments a role's remove function hands to services.remove_timer."""
    calls: list[tuple[Any, ...]] = []
    with monkeypatch.context() as patch:
        patch.setattr(services, "remove_timer", lambda *a, **_: calls.append(a))
        remove(*args)
    (call,) = calls
    return call[1:]


def test_disk_guard_removed_with_its_flag(make_settings: Callable[..., Settings],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings()
    guard = removal_call(monkeypatch, disk_guard.guard_remove, settings, probe())
    assert run(services.remove_timer, probe(), *guard) == ([], ["no disk guard"])
    flag = "/etc/registry-kit/disk-guard-readonly"
    state = probe(files=[f"{'0' * 64} 644 root root {disk_guard.TIMER}",
                         f"{'0' * 64} 600 root root {flag}"])
    assert run(services.remove_timer, state, *guard) == ([
        "systemctl disable --now registry-kit-disk-guard.timer >/dev/null 2>&1; true",
        f"rm -f {disk_guard.TIMER} {flag}", "systemctl daemon-reload"], [])


def test_schedule_remove_noop_without_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = removal_call(monkeypatch, gc_timer.schedule_remove, probe())
    assert run(services.remove_timer, probe(), *timer) == ([], ["no garbage collection timer"])


def test_install_timer_checks_the_calendar_first(make_settings: Callable[..., Settings]) \
        -> None:
    commands, noops = run(gc_timer.install_timer, make_settings(registry_gc_schedule="weekly"),
                          probe())
    assert noops == []
    assert commands[0].startswith("systemd-analyze calendar weekly >/dev/null 2>&1 || ")
    assert commands[-1] == ("systemctl daemon-reload && systemctl enable registry-kit-gc.timer "
                            ">/dev/null 2>&1 && systemctl restart registry-kit-gc.timer")
    uploads = [c for c in commands if c.startswith("UPLOAD ")]
    assert [u.rsplit(" -> ", 1)[1] for u in uploads] == [
        f"/etc/systemd/system/registry-kit-gc.service{NEW}",
        f"/etc/systemd/system/registry-kit-gc.timer{NEW}"]
    assert "OnCalendar=weekly\\n" in uploads[1]


def test_retention_timer_checks_the_calendar_then_installs(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_retention_schedule="daily",
                             registry_retention_rules=[{"repository": "ci/*", "keep_last": 3}])
    commands, noops = run(retention_timer.install_timer, settings, probe())
    assert noops == []
    assert commands[0].startswith("systemd-analyze calendar daily >/dev/null 2>&1 || ")
    assert "registry_retention_schedule=" in commands[0] and "is not a systemd OnCalendar" \
        in commands[0]
    assert commands[-1] == (
        "systemctl daemon-reload && systemctl enable registry-kit-retention.timer >/dev/null "
        "2>&1 && systemctl restart registry-kit-retention.timer")
    uploads = [c.rsplit(" -> ", 1)[1] for c in commands if c.startswith("UPLOAD ")]
    assert uploads == [f"{retention_timer.SERVICE}{NEW}", f"{retention_timer.TIMER}{NEW}"]
    units = {retention_timer.SERVICE: retention_timer.service_unit(settings),
             retention_timer.TIMER: retention_timer.timer_unit(settings)}
    current = probe(files=[f"{files.sha256_of(content)} 644 root root {path}"
                           for path, content in units.items()])
    assert run(retention_timer.install_timer, settings, current) == (
        [], ["registry-kit-retention.timer runs on 'daily'"])


def test_retention_timer_removed_with_its_runner_and_planner(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[list[str]] = []
    monkeypatch.setattr(files, "absent_paths", lambda paths, present, **_: removed.append(
        [path for path in paths if path in present]))
    planner = "/usr/local/lib/registry-kit/retention-planner"
    state = probe(files=[f"{'0' * 64} 644 root root {retention_timer.TIMER}",
                         f"{'0' * 64} 644 root root /etc/registry-kit/retention.json"],
                  dirs=[f"755 {planner}"])
    timer = removal_call(monkeypatch, retention_timer.retention_remove, make_settings(), state)
    assert run(services.remove_timer, state, *timer) == ([
        "systemctl disable --now registry-kit-retention.timer >/dev/null 2>&1; true",
        f"rm -f {retention_timer.TIMER}", "systemctl daemon-reload"], [])
    assert removed == [["/etc/registry-kit/retention.json", planner]]


# --------------------------------------------------------------------------- teardown

def test_remove_container(defaults: Settings) -> None:
    assert run(server.remove_container, defaults, probe(container=["abc|true|registry:2|"])) \
        == (["docker rm -f registry >/dev/null; docker rm -f registry-previous "
             "registry-candidate >/dev/null 2>&1; rm -rf /run/registry-kit/registry-candidate; "
             "true"], [])
    assert run(server.remove_container, defaults, probe()) == ([], ["no container registry"])


def test_remove_docker(make_settings: Callable[..., Settings], defaults: Settings) -> None:
    assert run(engine.remove_docker, make_settings(docker_remove_on_teardown=True),
               probe(os=DEBIAN, tools=["docker"])) == \
        (["DEBIAN_FRONTEND=noninteractive apt-get purge -y -q docker.io"], [])
    assert run(engine.remove_docker, defaults, probe(tools=["docker"])) == \
        ([], ["Docker stays (docker_remove_on_teardown=False)"])


# --------------------------------------------------------------------------- load balancer

HAPROXY_NEW = f"/etc/haproxy/haproxy.cfg{NEW}"


def test_haproxy_config_is_checked_before_it_replaces_the_old_one() -> None:
    assert run(loadbalancer.haproxy_config, b"cfg\n", probe()) == ([
        f"install -m 0644 -o root -g root /dev/null {HAPROXY_NEW}",
        f"UPLOAD b'cfg\\n' -> {HAPROXY_NEW}",
        f"haproxy -c -f {HAPROXY_NEW} >/dev/null || {{ rm -f {HAPROXY_NEW}; echo 'registry-kit: "
        "haproxy rejected the new configuration; /etc/haproxy/haproxy.cfg was not changed' "
        ">&2; exit 1; }",
        f"mv -f {HAPROXY_NEW} /etc/haproxy/haproxy.cfg",
        "systemctl reload-or-restart haproxy"], [])
    same = probe(files=[f"{sha256_of(b'cfg' + bytes([10]))} 644 root root "
                        "/etc/haproxy/haproxy.cfg"])
    assert run(loadbalancer.haproxy_config, b"cfg\n", same) == \
        ([], ["/etc/haproxy/haproxy.cfg is up to date"])
    assert run(services.start, probe(), "haproxy") == (["systemctl enable --now haproxy"], [])


HANDOVER = keepalived.Handover(vip="10.0.0.250", port=5000, preferred=True)
HANDOVER_SH = "/usr/local/lib/registry-kit/lb-handover.sh"


def test_haproxy_config_reloads_in_place_without_moving_the_address() -> None:
    """A haproxy.cfg change on an LB with a floating address: checked, swapped, reloaded,
    and no lb-handover.sh (moving the address resets the connections in flight; the
    master-worker reload keeps them). keepalived.conf changes still hand the address over."""
    commands, _ = run(loadbalancer.haproxy_config, b"cfg\n", probe())
    assert not [c for c in commands if "lb-handover" in c], commands
    assert commands[-2:] == [f"mv -f {HAPROXY_NEW} /etc/haproxy/haproxy.cfg",
                             "systemctl reload-or-restart haproxy"]


def test_lb_teardown_stops_keepalived_before_haproxy() -> None:
    running = probe(services=["keepalived active enabled", "haproxy active enabled"])
    rm = "rm -f /run/registry-kit-haproxy-down /run/registry-kit-lb-handover"
    assert run(loadbalancer.stop_lb, running, None) == (
        ["systemctl disable --now keepalived", "systemctl disable --now haproxy", rm], [])
    # Some LBs stay (pyinfra --limit): the address goes to one of them first.
    staying = keepalived.Handover(vip="10.0.0.250", port=5000, preferred=False)
    assert run(loadbalancer.stop_lb, running, staying)[0][0] == \
        f"{HANDOVER_SH} away 10.0.0.250 5000 10 0 /run/registry-kit-lb-handover"
    assert run(loadbalancer.stop_lb, probe(services=["haproxy active enabled"]), staying) == (
        ["systemctl disable --now haproxy", rm], [])
    assert run(loadbalancer.stop_lb, probe(), staying) == \
        ([], ["keepalived, haproxy: not running, not enabled"])


# --------------------------------------------------------------------------- trust, ownership

def test_bridge_ca_appends_the_old_ca_on_the_host() -> None:
    path = "/etc/docker/certs.d/r:5000/ca.crt"
    assert run(trust.bridge_ca, path, b"NEWCA") == ([
        f"install -m 0644 -o root -g root /dev/null {path}{NEW}",
        f"UPLOAD b'NEWCA\\n' -> {path}{NEW}",
        f"cat {path} >> {path}{NEW} && mv -f {path}{NEW} {path}"], [])


def test_owned_dir_creates_and_marks_or_adopts() -> None:
    (create,), noops = run(ownership.owned_dir, "/srv/reg", "0700", "registry_data_dir",
                           probe())
    assert noops == []
    assert create.startswith(f"mkdir -p /srv && rm -rf /srv/reg{NEW} && install -d -m 0700 "
                             f"-o root -g root /srv/reg{NEW} && printf %s ")
    assert create.endswith(f" > /srv/reg{NEW}/.registry-kit-owned && chmod 0644 "
                           f"/srv/reg{NEW}/.registry-kit-owned && mv -T /srv/reg{NEW} /srv/reg")
    assert run(ownership.owned_dir, "/srv/reg", "0700", "registry_data_dir",
               probe(dirs=["755 /srv/reg"])) == \
        ([], ["/srv/reg was there before registry-kit: used as it is, never deleted"])


# --------------------------------------------------------------------------- keepalived, roles

KEEPALIVED_NEW = f"{layout.KEEPALIVED_CONF}{NEW}"


def test_keepalived_config_is_checked_quietly_before_it_replaces_the_old_one() -> None:
    assert run(keepalived.keepalived_config, b"vrrp\n", probe()) == ([
        "install -d -m 0755 -o root -g root /etc/keepalived",
        f"install -m 0600 -o root -g root /dev/null {KEEPALIVED_NEW}",
        f"UPLOAD b'vrrp\\n' -> {KEEPALIVED_NEW}",
        f"keepalived -t -f {KEEPALIVED_NEW} >/dev/null 2>&1 || {{ rm -f {KEEPALIVED_NEW}; echo "
        "'registry-kit: keepalived rejected the new configuration; "
        f"{layout.KEEPALIVED_CONF} was not changed' >&2; exit 1; }}",
        f"mv -f {KEEPALIVED_NEW} {layout.KEEPALIVED_CONF}",
        "systemctl reload-or-restart keepalived"], [])
    conf = layout.KEEPALIVED_CONF
    same = probe(files=[f"{sha256_of(b'vrrp' + bytes([10]))} 600 root root {conf}"])
    assert run(keepalived.keepalived_config, b"vrrp\n", same) == \
        ([], [f"{layout.KEEPALIVED_CONF} is up to date"])
    # Same content but readable by others: rewritten 0600 (it holds the VRRP password).
    loose = probe(files=[f"{sha256_of(b'vrrp' + bytes([10]))} 644 root root {conf}"])
    assert run(keepalived.keepalived_config, b"vrrp\n", loose)[0][1].startswith(
        "install -m 0600")


def test_keepalived_config_with_a_handover_moves_the_address_unless_a_reload_keeps_it() -> None:
    """The checked file either keeps the VRRP instance (lb-handover.sh keeps: the reload
    applies it in place, `back` finds no mark and does nothing) or the address moves first."""
    commands, _ = run(keepalived.keepalived_config, b"vrrp\n", probe(), HANDOVER)
    assert commands[4:] == [
        f"{HANDOVER_SH} keeps {layout.KEEPALIVED_CONF} {KEEPALIVED_NEW} || "
        f"{HANDOVER_SH} away 10.0.0.250 5000 10 1 /run/registry-kit-lb-handover",
        f"mv -f {KEEPALIVED_NEW} {layout.KEEPALIVED_CONF}",
        "systemctl reload-or-restart keepalived",
        f"{HANDOVER_SH} back 10.0.0.250 5000 30 1 /run/registry-kit-lb-handover"]


def test_keepalived_start_and_removal() -> None:
    assert run(services.start, probe(), "keepalived") == (["systemctl enable --now keepalived"], [])
    assert run(services.start, probe(services=["keepalived active enabled"]), "keepalived") == \
        ([], ["keepalived is enabled and running"])
    # keepalived without the kit's files is someone else's: left running.
    assert run(keepalived.remove_keepalived, probe(services=["keepalived active enabled"])) == \
        ([], ["no floating address (registry_lb_vip=None)"])
    ours = probe(services=["keepalived active enabled"],
                 files=[f"{'0' * 64} 600 root root {layout.KEEPALIVED_CONF}"])
    assert run(keepalived.remove_keepalived, ours) == ([
        "systemctl disable --now keepalived", f"rm -f {layout.KEEPALIVED_CONF}"], [])


def test_removal_stops_and_removes_only_what_is_there() -> None:
    assert run(removal.stop_services, ["haproxy", "keepalived"],
               probe(services=["haproxy active enabled", "keepalived inactive disabled"])) == \
        (["systemctl disable --now haproxy"], [])
    assert run(removal.stop_services, ["redis-server"], probe()) == \
        ([], ["redis-server: not running, not enabled"])
    odd = "/etc/haproxy/it's.cfg"
    assert run(removal.remove_files, [odd, "/etc/x"],
               probe(files=[f"{'0' * 64} 644 root root {odd}"])) == \
        (["rm -f '/etc/haproxy/it'\"'\"'s.cfg'"], [])
    assert run(removal.remove_files, ["/etc/x"], probe()) == \
        ([], ["none of the kit's files left"])


# --------------------------------------------------------------------------- token auth

TOKEN_UNIT = "/etc/systemd/system/registry-kit-token.service"
TOKEN_DIR = "/etc/registry-kit/token"


def test_token_server_packages_installed_once() -> None:
    modules = [f"{'0' * 64} 644 root root {path}" for path in token_auth.MODULE_FILES]
    assert run(token_auth.install_python_packages, probe(files=modules)) == \
        ([], ["python3-jwt, python3-bcrypt and python3-cryptography are installed"])
    assert run(token_auth.install_python_packages, probe(files=modules[:2])) == ([
        "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -q --no-install-recommends python3 python3-jwt python3-bcrypt "
        "python3-cryptography"], [])


def test_token_service_started_or_restarted(defaults: Settings) -> None:
    running = probe(services=["registry-kit-token.service active enabled"])
    assert run(token_auth.token_service, defaults, running, restart=False) == \
        ([], ["registry-kit-token.service is running"])
    assert run(token_auth.token_service, defaults, probe(), restart=False) == \
        (["systemctl daemon-reload && systemctl enable --now registry-kit-token.service"], [])
    # Changed unit, script, key or TLS files: restarted even when it runs, then the run
    # waits until it answers on its realm.
    assert run(token_auth.token_service, defaults, running, restart=True) == ([
        "systemctl daemon-reload && systemctl enable registry-kit-token.service && "
        "{ systemctl reset-failed registry-kit-token.service 2>/dev/null; "
        "systemctl restart registry-kit-token.service || { journalctl "
        "_SYSTEMD_UNIT=registry-kit-token.service -o cat -n 1 --no-pager >&2; exit 1; }; } && "
        + token_auth.answers_command(defaults)], [])


def test_token_service_reload_renews_its_copies_without_a_restart(defaults: Settings) -> None:
    """Users or rules changed: `systemctl reload` (the unit's ExecReload renews the copies,
    the server re-reads them), started instead when it was not running, then the run waits
    until it answers; no drain behind load balancers, since nothing is refused."""
    assert run(token_auth.reload_token_service, defaults) == ([
        "systemctl reload-or-restart registry-kit-token.service && "
        + token_auth.answers_command(defaults)], [])


def test_token_service_restart_behind_load_balancers_is_drained(defaults: Settings) -> None:
    running = probe(services=["registry-kit-token.service active enabled"])
    rotation = Rotation(lb_hosts=("lb1",), backend="registry", drain_timeout=5, up_timeout=30)
    with ctx_host.use(FakeHost()):
        [command] = token_auth.token_service._inner(defaults, running, restart=True,
                                                   rotation=rotation)
    assert isinstance(command, OutOfRotation)
    assert command.rotation.backend == layout.TOKEN_BACKEND == "registry-token"
    assert command.rotation.lb_hosts == ("lb1",)


def test_waiting_until_a_url_answers() -> None:
    assert wait_until_answers_command("https://r.example:5443/token", "r.example:5443:10.0.0.1",
                                      "/etc/registry-kit/certs/ca.crt", 30) == (
        "n=0; until curl -s -o /dev/null --max-time 2 --resolve r.example:5443:10.0.0.1 "
        "--cacert /etc/registry-kit/certs/ca.crt https://r.example:5443/token; do "
        "n=$((n+1)); if [ $n -ge 150 ]; then echo 'registry-kit: "
        "https://r.example:5443/token did not answer within 30 s' >&2; exit 1; fi; "
        "sleep 0.2; done")
    assert "--cacert" not in wait_until_answers_command("http://r:5443/token", "r:5443:10.0.0.1",
                                                        "-", 5)


def test_token_server_removed_with_its_key_and_policy(defaults: Settings) -> None:
    assert run(token_auth.remove_token_service, probe()) == \
        ([], ["no registry-kit-token.service"])
    assert run(token_auth.remove_token_service,
               probe(files=[f"{'0' * 64} 644 root root {TOKEN_UNIT}"])) == ([
                   "systemctl disable --now registry-kit-token.service >/dev/null 2>&1; "
                   f"rm -f {TOKEN_UNIT} && systemctl daemon-reload"], [])
    assert run(token_auth.remove_token_files, defaults, probe()) == ([], [f"no {TOKEN_DIR}"])
    assert run(token_auth.remove_token_files, defaults, probe(dirs=[f"700 {TOKEN_DIR}"])) == \
        ([f"rm -f {TOKEN_DIR}/signing.key {TOKEN_DIR}/policy.json {TOKEN_DIR}/ldap.password "
          f"{TOKEN_DIR}/ldap-ca.crt && rmdir {TOKEN_DIR}"], [])


# --------------------------------------------------------------------------- backup, restore

BLOBS = {"a" * 64: 10, "b" * 64: 20}


def test_back_up_copies_only_when_blobs_or_the_tree_differ(defaults: Settings) -> None:
    root = "/backups/reg-host-1"
    assert run(backup.back_up, defaults, root, BLOBS, "tree1", dict(BLOBS), "tree1") == \
        ([], [f"backup in {root} is up to date (2 blobs, its newest generation has the same "
              "repositories tree)"])
    for backup_blobs, backup_tree in (({"a" * 64: 10}, "tree1"), (dict(BLOBS), "tree0")):
        (command,), noops = run(backup.back_up, defaults, root, BLOBS, "tree1", backup_blobs,
                                backup_tree)
        assert command.startswith("CALL _run_backup(") and noops == []
    # An empty registry (no tree yet) is still backed up: its index says so.
    (command,), _ = run(backup.back_up, defaults, root, {}, "", {}, "")
    assert command.startswith("CALL _run_backup(")
    # verify is read-only: it runs while planning; a good one is a no-op, a bad one fails.
    assert run(backup.verify_report, True, ["verify: all 3 blobs"]) == (
        [], ["registry-kit: verify: all 3 blobs"])
    (command,), noops = run(backup.verify_report, False, ["verify: MISMATCH x"])
    assert command.startswith("CALL _log_failure(") and noops == []


def test_restore_copies_only_what_the_server_lacks(defaults: Settings) -> None:
    root = "/backups/reg-host-1"
    gen = "20260101T000000.000Z"
    assert run(restore.restore, defaults, root, gen, [], {}, {}, True) == \
        ([], [f"{defaults.registry_data_dir} already holds the backup in {root}"])
    for missing, same_tree in ((["a" * 64], True), ([], False)):
        (command,), noops = run(restore.restore, defaults, root, gen, missing, {}, {}, same_tree)
        assert command.startswith("CALL _run_restore(") and noops == []


WEBUI = layout.WEBUI_SERVICE


def test_webui_restart_checks_the_config_first() -> None:
    assert run(services.restart_haproxy, layout.WEBUI_HAPROXY_CFG, layout.WEBUI_SERVICE) == ([
        "haproxy -c -q -f /etc/registry-kit-webui/haproxy.cfg && systemctl daemon-reload && "
        "systemctl restart registry-kit-webui"], [])


def test_webui_enabled_once() -> None:
    assert run(services.start, probe(services=["registry-kit-webui active enabled"]), WEBUI,
               True) == \
        ([], ["registry-kit-webui is enabled and running"])
    assert run(services.start, probe(services=["registry-kit-webui inactive enabled"]), WEBUI,
               True) == \
        (["systemctl daemon-reload && systemctl enable --now registry-kit-webui"], [])
    assert run(services.start, probe(), WEBUI, True) == \
        (["systemctl daemon-reload && systemctl enable --now registry-kit-webui"], [])


def test_webui_disabled_only_where_it_is() -> None:
    assert run(services.stop, probe(), WEBUI, layout.WEBUI_UNIT) == ([], ["no registry-kit-webui"])
    stopped_unit = probe(files=[f"{'0' * 64} 644 root root {layout.WEBUI_UNIT}"])
    for state in (stopped_unit, probe(services=["registry-kit-webui active disabled"])):
        assert run(services.stop, state, WEBUI, layout.WEBUI_UNIT) == \
            (["systemctl disable --now registry-kit-webui 2>/dev/null; true"], [])


def test_retention_deletes_only_when_planned_and_deployed(defaults: Settings) -> None:
    def tag(name: str, digest: str, pushed: float) -> retention.Tag:
        return retention.Tag(name, "sha256:" + digest * 64, pushed)

    manifests = {f"sha256:{d * 64}": retention.Manifest(f"sha256:{d * 64}", 10) for d in "ab"}
    repository = retention.Repository("app", (tag("new", "a", 2.0), tag("old", "b", 1.0)),
                                      manifests)
    rules = retention.parse("h", [{"repository": "app", "keep_last": 1}])
    plan = retention.plan([repository], rules, 3.0)
    running = probe(container=["0000|true|registry:2|"])
    commands, noops = run(retention_job.apply_retention, defaults, running, plan, "f" * 64)
    assert commands == ["ReportedCommand: " + retention_job.apply_command(defaults, plan,
                                                                          "f" * 64)] and not noops
    assert "rm -rf -- repositories/app/_manifests/tags/old repositories/app/_manifests/" \
        f"revisions/sha256/{'b' * 64} &&" in commands[0]
    nothing = retention.plan([repository], (), 3.0)
    assert run(retention_job.apply_retention, defaults, running, nothing, "f" * 64) == \
        ([], ["retention: nothing to delete"])
    commands, _ = run(retention_job.apply_retention, defaults, probe(), plan, "f" * 64)
    assert commands == ["CALL fail_host('reg-host-1: no container registry: run deploy.py "
                        "first',)"]
def test_metrics_filter_restarts_after_a_check_and_goes_only_where_it_is() -> None:
    assert run(services.restart_haproxy, layout.METRICS_HAPROXY_CFG, metrics.SERVICE) == ([
        "haproxy -c -q -f /etc/registry-kit-metrics/haproxy.cfg && systemctl daemon-reload && "
        "systemctl restart registry-kit-metrics"], [])
    assert run(services.start, probe(services=["registry-kit-metrics active enabled"]),
               metrics.SERVICE, True) \
        == ([], ["registry-kit-metrics is enabled and running"])
    assert run(services.start, probe(), metrics.SERVICE, True) == \
        (["systemctl daemon-reload && systemctl enable --now registry-kit-metrics"], [])
    assert run(services.stop, probe(), metrics.SERVICE, layout.METRICS_UNIT) == \
        ([], ["no registry-kit-metrics"])
    stopped_unit = probe(files=[f"{'0' * 64} 644 root root {layout.METRICS_UNIT}"])
    assert run(services.stop, stopped_unit, metrics.SERVICE, layout.METRICS_UNIT) == \
        (["systemctl disable --now registry-kit-metrics 2>/dev/null; true"], [])


def test_audit_receiver_restarts_and_goes_only_where_it_is() -> None:
    assert run(audit.restart_audit) == ([
        "systemctl daemon-reload && systemctl restart registry-kit-audit"], [])
    assert run(audit.enable_audit, probe(services=["registry-kit-audit active enabled"])) \
        == ([], ["registry-kit-audit is enabled and running"])
    assert run(audit.enable_audit, probe()) == \
        (["systemctl daemon-reload && systemctl enable --now registry-kit-audit"], [])
    assert run(audit.disable_audit, probe()) == ([], ["no registry-kit-audit"])
    stopped_unit = probe(files=[f"{'0' * 64} 644 root root {layout.AUDIT_UNIT}"])
    assert run(audit.disable_audit, stopped_unit) == \
        (["systemctl disable --now registry-kit-audit 2>/dev/null; true"], [])


def test_backup_time_recorded_after_a_backup_and_refreshed_hourly() -> None:
    """backup.py with registry_metrics: a new generation writes the fact (0644, root's,
    through the kit's upload); an up-to-date backup rewrites it only once the recorded time
    is an hour old (a second run right after changes nothing); no facts folder, nothing."""
    now = 1_800_000_000.4
    fact = prometheus.backup_facts(now)
    write = ["install -m 0644 -o root -g root /dev/null "
             f"{layout.FACTS_BACKUP}{NEW}",
             f"UPLOAD {fact.encode()!r} -> {layout.FACTS_BACKUP}{NEW}",
             f"mv -f {layout.FACTS_BACKUP}{NEW} {layout.FACTS_BACKUP}"]
    recent = prometheus.backup_facts(now - 600)
    old = prometheus.backup_facts(now - 3600)
    assert run(backup.record_success, now, recent, True) == (write, [])
    assert run(backup.record_success, now, "", False) == (write, [])
    assert run(backup.record_success, now, None, False) == (write, [])
    assert run(backup.record_success, now, old, False) == (write, [])
    assert run(backup.record_success, now, "registry_kit_backup_last_success_timestamp_"
               "seconds 1e99\n", False) == (write, [])  # not as the kit writes it
    assert run(backup.record_success, now, recent, False) == ([], [
        f"the backup is up to date; {layout.FACTS_BACKUP} records it 600 s ago"])
    commands, noops = run(backup.record_success, now, "no facts folder\n", True)
    assert commands == [] and "deploy with registry_metrics on first" in noops[0]
    assert backup.fact_command() == (
        "if test -d /var/lib/registry-kit-metrics; then cat "
        "/var/lib/registry-kit-metrics/backup.prom 2>/dev/null; true; else echo "
        "'no facts folder'; fi")


def test_every_operation_module_is_exercised_here() -> None:
    """A new role, job or operation module gets its own tests above (the status, deploy and
    teardown jobs have no operations of their own: they arrange the roles'; typed is the
    decorator itself; the cache's are one systemctl line each, covered by the scale-out
    e2e; usage has none, only its status: test_disk_guard_logic; status_json has none, it
    reads status sections: test_status_json.py, and so does metrics_status: test_metrics.py;
    the prometheus job writes the control machine's folder only: test_prometheus.py)."""
    kit = Path(server.__file__).resolve().parent.parent
    tested = {"engine", "files", "server", "client", "packages", "gc", "gc_timer", "disk_guard",
              "services", "retention_timer",
              "loadbalancer", "trust", "ownership", "keepalived", "removal",
              "token_server", "backup", "restore", "webui", "retention", "metrics", "audit",
              "exporters"}  # exporters: tests/unit/test_exporters.py
    found = {path.stem for folder in ("roles", "jobs", "operations")
             for path in (kit / folder).glob("*.py")}
    assert found == tested | {"cache", "status", "teardown", "deploy", "typed", "__init__",
                              "usage", "status_json", "metrics_status", "prometheus"}
