"""Unit tests for the lifecycle pieces: CA rotation bundle (trust), teardown's daemon.json
reset, gc commands and units, the read-only config the GC script derives, status tables,
and the lifecycle settings."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from registry_kit.commands import OSInfo
from registry_kit.facts import HostState, parse_status
from registry_kit.jobs import status, teardown
from registry_kit.model.inventory import merge_probe
from registry_kit.model.keystore import ensure_server_certificate
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS as _SCRIPTS
from registry_kit.render import daemon_json
from registry_kit.render.config import render_config
from registry_kit.roles import client, engine, gc_timer, server

# --------------------------------------------------------------------------- teardown


def test_live_reset_only_for_keys_that_go() -> None:
    current = {"registry-mirrors": ["http://m"], "insecure-registries": ["r:5000", "x:1"],
               "live-restore": True, "log-level": "warn"}
    wanted = {"insecure-registries": ["x:1"], "log-level": "warn"}
    assert daemon_json.live_reset(current, wanted) == {"registry-mirrors": [],
                                                    "live-restore": False}
    assert daemon_json.live_reset(wanted, wanted) == {}


@pytest.mark.parametrize(("os_info", "method", "expected"), [
    (OSInfo("debian", "", "bookworm"), "distro", "apt-get purge -y -q docker.io"),
    (OSInfo("ubuntu", "debian", "noble"), "docker-ce", "purge -y -q docker-ce docker-ce-cli"),
    (OSInfo("rocky", "rhel centos fedora", ""), "docker-ce", "dnf -y remove docker-ce"),
])
def test_remove_docker_commands(make_settings: Callable[..., Settings], os_info: OSInfo,
                                method: str, expected: str) -> None:
    data = {"docker_install_method": method}
    if method == "docker-ce":
        data["docker_ce_repo_url"] = "https://download.example/linux"
    state = HostState(os=os_info)
    commands = engine.remove_docker_commands(make_settings(**data), state)
    assert expected in commands[0]


def test_teardown_probe_covers_server_and_client(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    probe = teardown.probe_args(settings, True, True)
    assert settings.registry_data_dir in probe["dirs"]
    assert "/etc/docker/certs.d/registry.example.internal:5000" in probe["dirs"]
    assert gc_timer.TIMER in probe["files"] and gc_timer.SERVICE in probe["files"]
    assert probe["container"] == "registry"
    assert len(probe["dirs"]) == len(set(probe["dirs"]))


def test_merge_probe_joins_lists_without_repeats() -> None:
    merged = merge_probe([{"files": ["a", "b"], "container": "x"}, {"files": ["b", "c"]}])
    assert merged == {"files": ["a", "b", "c"], "dirs": [], "container": "x"}


def test_purge_warning_names_host_and_path(make_settings: Callable[..., Settings]) -> None:
    line = server.purge_warning(make_settings(registry_data_dir="/srv/reg"))
    assert line.startswith("reg-host-1: ") and "/srv/reg" in line and "DELETING" in line


# --------------------------------------------------------------------------- gc


@pytest.mark.parametrize("secret", ["secret", "x\n    readonly:\n      enabled: false\n",
                                    "    readonly:", "      enabled: false"])
def test_readonly_config_from_the_gc_script(make_settings: Callable[..., Settings],
                                            secret: str) -> None:
    """The script derives read-only mode from the deployed file: it must give exactly what
    render_config(read_only=True) gives, and nothing else may change (a secret that looks
    like the lines it edits included)."""
    settings = make_settings(registry_delete_enabled=True)
    normal = render_config(settings, secret)
    wanted = render_config(settings, secret, read_only=True)
    assert normal != wanted
    derived = subprocess.run(["sh", str(_SCRIPTS / gc_timer.SCRIPT), "--readonly-config"],
                             input=normal, capture_output=True, text=True, check=True).stdout
    assert derived == wanted
    assert yaml.safe_load(derived)["storage"]["maintenance"]["readonly"] == {"enabled": True}


def test_gc_arguments(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_gc_delete_untagged=True)
    args = gc_timer.gc_arguments(settings, dry_run=True)
    assert args[:4] == ["/usr/local/lib/registry-kit/registry-gc.sh", "registry",
                        "/etc/registry-kit", "/var/lib/registry-kit/data"]
    assert args[-3:] == ["--dry-run", "--delete-untagged",
                         "--facts=/var/lib/registry-kit-metrics/gc.prom"]
    assert "--dry-run" not in gc_timer.gc_arguments(make_settings(), dry_run=False)
    s3 = make_settings(registry_storage={"driver": "inmemory"})
    assert gc_timer.gc_arguments(s3, dry_run=False)[3] == "-"  # no folder to measure


@pytest.mark.parametrize("fails", [False, True])
def test_gc_script_exports_its_result(make_settings: Callable[..., Settings], tmp_path: Path,
                                      fails: bool) -> None:
    """registry_metrics: a whole collection leaves its result and end time in the facts
    folder, failed or not (docker and curl are stubs here; the e2e test runs it for real)."""
    bin_dir, config_dir, facts = tmp_path / "bin", tmp_path / "config", tmp_path / "facts"
    for folder in (bin_dir, config_dir, facts):
        folder.mkdir()
    stubs = {"docker": '[ "$1" = inspect ] && { echo true; exit 0; }\n'
                       '[ "$1" = exec ] && { [ -n "${FAIL:-}" ] && exit 1; '
                       'echo "1 blobs marked, 0 blobs and 0 manifests eligible"; }\ntrue\n',
             "curl": "printf 401\n"}
    for name, body in stubs.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    (config_dir / "config.yml").write_text(render_config(make_settings(), "s"))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           **({"FAIL": "1"} if fails else {})}
    args = ["sh", str(_SCRIPTS / gc_timer.SCRIPT), "registry", str(config_dir), "-",
            "https://r:5000", "-", "-", "5", "/etc/registry-kit/config.yml", str(tmp_path / "log")]
    started = int(time.time())
    done = subprocess.run([*args, f"--facts={facts / 'gc.prom'}"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == (1 if fails else 0), done.stderr
    values = {line.split()[0]: int(line.split()[1])
              for line in (facts / "gc.prom").read_text().splitlines() if line[0] != "#"}
    assert values["registry_kit_gc_last_success"] == (0 if fails else 1)
    assert started <= values["registry_kit_gc_last_end_timestamp_seconds"] <= time.time() + 1
    # A dry run and a step leave nothing; nor does a run without the facts folder.
    (facts / "gc.prom").unlink()
    subprocess.run([*args, "--dry-run", f"--facts={facts / 'gc.prom'}"], env=env,
                   capture_output=True)
    subprocess.run([args[0], args[1], "--step", "check", *args[2:],
                    f"--facts={facts / 'gc.prom'}"], env=env, capture_output=True)
    assert not (facts / "gc.prom").exists()
    subprocess.run([*args, f"--facts={tmp_path / 'none' / 'gc.prom'}"], env=env,
                   capture_output=True)
    assert not (tmp_path / "none").exists()
    # retention.py's run leaves its result through the same script.
    subprocess.run(["sh", args[1], "--retention-result", str(facts / "retention.prom"),
                    "0" if not fails else "1"], check=True)
    assert f"registry_kit_retention_last_success {0 if fails else 1}\n" in \
        (facts / "retention.prom").read_text()


def test_timer_units(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_gc_schedule="Sun *-*-* 03:00:00")
    timer = gc_timer.timer_unit(settings).decode()
    assert "OnCalendar=Sun *-*-* 03:00:00\n" in timer and "WantedBy=timers.target" in timer
    service = gc_timer.service_unit(settings).decode()
    assert "ExecStart=/usr/bin/flock /run/lock/registry-kit-maintenance.lock " \
        "/usr/local/lib/registry-kit/registry-gc.sh registry " in service
    assert "%" not in service  # systemd would read it as a specifier
    assert gc_timer.service_unit(settings) == gc_timer.service_unit(settings)  # deterministic


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("value", ["weekly", "Sun *-*-* 03:00:00", "*-*-01 04:30",
                                   "Mon..Fri 22:00"])
def test_gc_schedule_accepted(make_settings: Callable[..., Settings], value: str) -> None:
    assert make_settings(registry_gc_schedule=value).registry_gc_schedule == value


@pytest.mark.parametrize("value", ["", "weekly; rm -rf /", "daily\nExecStart=x", 5, "$(x)"])
def test_gc_schedule_refused(make_settings: Callable[..., Settings], value: object) -> None:
    with pytest.raises(SettingsError, match="registry_gc_schedule") as error:
        make_settings(registry_gc_schedule=value)
    assert "\n" not in str(error.value)


def test_remove_docker_needs_an_installing_method(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError, match="docker_remove_on_teardown=True"):
        make_settings(docker_remove_on_teardown=True, docker_install_method="none")
    assert make_settings(docker_remove_on_teardown=True).docker_remove_on_teardown


@pytest.mark.parametrize("key", ["registry_purge_data", "registry_gc_dry_run",
                                 "registry_gc_delete_untagged", "docker_remove_on_teardown"])
def test_lifecycle_flags_are_booleans(make_settings: Callable[..., Settings], key: str) -> None:
    assert getattr(make_settings(), key) is False
    with pytest.raises(SettingsError, match=f"setting {key}='yes' .*True or False"):
        make_settings(**{key: "yes"})


# --------------------------------------------------------------------------- status


def test_status_rows(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    cert = ensure_server_certificate(tmp_path, "registry.example.internal", (), ())
    settings = make_settings(registry_state_dir=str(tmp_path),
                             registry_users=[{"name": "ci", "password_hash": "$2y$10$" + "a" * 53}],
                             registry_client_login_user=None)
    sections = parse_status([
        "@@registry-kit-status:docker", "24.0.7",
        "@@registry-kit-status:container", "registry:2.8.2|running|2024-01-01T00:00:00Z|0",
        "@@registry-kit-status:uptime", "90061",
        "@@registry-kit-status:version", "/bin/registry github.com/docker/distribution 2.8.2+ds1",
        "@@registry-kit-status:health", "401",
        "@@registry-kit-status:cert", *cert.cert_pem.decode().splitlines(),
        "@@registry-kit-status:bytes", "1251680",
        "@@registry-kit-status:repos", "2",
        "@@registry-kit-status:tags", "1",
        "@@registry-kit-status:timer", "inactive",
        "@@registry-kit-status:trust", *cert.ca_pem.decode().splitlines(),
        "@@registry-kit-status:auths", "registry.example.internal:5000",
        "@@registry-kit-status:hosts", "10.0.0.5 registry.example.internal # registry-kit",
        "@@registry-kit-status:marker", "ci",
    ])
    row = server.status_row(settings, sections) | gc_timer.status_row(settings, sections)
    assert row["image"] == "registry:2.8.2" and row["state"] == "running"
    assert row["version"] == "2.8.2"
    assert row["uptime"] == "1d1h" and row["/v2/"] == "401"
    assert 820 <= int(row["cert days"]) <= 825
    assert row["storage"] == "1.3 MB" and (row["repos"], row["tags"]) == ("2", "1")
    crow = client.status_row(settings, sections)
    assert crow["trust"] == "ok" and crow["login"] == "yes (ci)"
    assert crow["hosts entries"] == "1" and crow["docker"] == "24.0.7"
    lines = status.table([row])
    assert lines[0].startswith("SERVER") and "registry:2.8.2" in lines[1]


def test_status_without_anything(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    row = server.status_row(settings, {})
    assert (row["state"], row["uptime"], row["/v2/"], row["cert days"], row["version"]) == \
        ("no container", "-", "-", "-", "-")
    crow = client.status_row(settings, {})
    assert (crow["trust"], crow["login"], crow["docker"]) == ("missing", "not asked",
                                                              "not running")


@pytest.mark.parametrize(("seconds", "text"), [("5", "5s"), ("65", "1m5s"), ("3700", "1h1m"),
                                               ("x", "-")])
def test_human_duration(seconds: str, text: str) -> None:
    assert server.human_duration(seconds) == text


def test_function_commands_receive_state_and_host() -> None:
    """pyinfra's FunctionCommand passes state and host only to parameters named exactly
    so; any other names would shift the arguments at run time."""
    import inspect

    from registry_kit.model.inventory import fail_host
    from registry_kit.roles import server

    for function in (server._announce, fail_host, server._stop_rollout):
        assert list(inspect.signature(function).parameters)[:2] == ["state", "host"], function


def test_only_the_first_refusal_of_a_run_is_raised() -> None:
    """pyinfra plans every host at once in greenlets: the first refusal is the SettingsError
    itself (the entry scripts turn it into exit code 1 and its line; a second SystemExit
    would print a traceback after the one line, seen in the scale-out e2e), so later
    refusals end their greenlet quietly. No SystemExit from inside the kit."""
    from types import SimpleNamespace

    from gevent import GreenletExit
    from pyinfra.context import ctx_state

    from registry_kit.model.inventory import refusal, validated_settings
    from registry_kit.model.settings import SettingsError

    with ctx_state.use(SimpleNamespace()):
        error = SettingsError("h1: setting x=1 is not allowed: y")
        first = refusal(error)
        assert first is error and not isinstance(first, SystemExit)
        assert isinstance(refusal(SettingsError("h2: setting x=1 is not allowed: y")),
                          GreenletExit)
        with pytest.raises(GreenletExit):
            validated_settings()
    with ctx_state.use(SimpleNamespace()):  # a new run starts clean
        assert isinstance(refusal(SettingsError("h1: x")), SettingsError)
