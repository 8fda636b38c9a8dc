"""Unit tests for registry_kit.facts: the one-round-trip probe command and its parser,
plus the client paths the probe is asked about."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_kit.commands import OSInfo
from registry_kit.facts import (
    ContainerState,
    FileState,
    HostState,
    parse_engine_version,
    parse_probe,
    probe_command,
)
from registry_kit.model.settings import Settings
from registry_kit.roles import client, server

MARK = "@@registry-kit:"  # spelled out: the parser and the command must agree on it
SECTIONS = ["os", "tools", "server_version", "daemon_json", "files", "modes", "dirs",
            "container", "image", "htpasswd", "auths", "login_marker", "hosts"]
SHA = "a" * 64
HTPASSWD_LINE = "ci:$2y$10$" + "x" * 53
DAEMON_JSON = ['{', '  "log-driver": "journald",', '  "live-restore": true', '}']


def _synthetic_output() -> list[str]:
    body = {
        "os": ["rocky", "rhel centos fedora", ""],
        "tools": ["docker", "curl", "ActiveState=active", "UnitFileState=enabled"],
        "server_version": ["Server: Docker/26.1.5 (linux)\r"],
        "daemon_json": DAEMON_JSON,
        # sha256sum's lines, then stat's, in the same order (path_commands)
        "files": [f"{SHA}  /etc/registry-kit/config.yml",
                  f"{'b' * 64}  /etc/my certs/server 1.crt"],
        "modes": ["600 root root /etc/registry-kit/config.yml",
                  "644 root docker /etc/my certs/server 1.crt"],
        "dirs": ["700 /etc/registry-kit", "755 /srv/with space"],
        "container": ["0123456789abcdef|true"],
        "image": ["sha256:abc"],
        "htpasswd": [HTPASSWD_LINE, "ops:$2y$10$" + "y" * 53],
        "auths": ["auths", "reg.example:5000", "  "],
        "login_marker": ["ci:$2y$10$" + "z" * 53],
        "hosts": ["10.0.0.5 reg.example # registry-kit", ""],
    }
    lines: list[str] = []
    for name in SECTIONS:
        lines.append(MARK + name)
        lines.extend(body[name])
    return lines


def test_parse_probe_synthetic() -> None:
    state = parse_probe(_synthetic_output())
    assert state.os == OSInfo(id="rocky", id_like="rhel centos fedora", codename="")
    assert state.os.family == "rhel"
    assert (state.docker_installed, state.curl_installed, state.docker_active,
            state.docker_enabled) == (True, True, True, True)
    assert state.server_version == "26.1.5"
    assert state.daemon_json == "\n".join(DAEMON_JSON)
    assert state.files == {
        "/etc/registry-kit/config.yml": FileState(sha256=SHA, mode="600", owner="root",
                                                  group="root"),
        "/etc/my certs/server 1.crt": FileState(sha256="b" * 64, mode="644", owner="root",
                                                group="docker"),
    }
    assert state.dirs == {"/etc/registry-kit": "700", "/srv/with space": "755"}
    assert state.container == ContainerState(
        spec_hash="0123456789abcdef", running=True)
    assert state.image_id == "sha256:abc"
    assert state.htpasswd == f"{HTPASSWD_LINE}\nops:$2y$10${'y' * 53}\n"
    assert state.docker_auths == ["auths", "reg.example:5000"]
    assert state.login_marker == f"ci:$2y$10${'z' * 53}\n"
    assert state.hosts_lines == ["10.0.0.5 reg.example # registry-kit"]


@pytest.mark.parametrize(("lines", "version"), [
    (["Server: Docker/20.10.24+dfsg1 (linux)\r"], "20.10.24+dfsg1"),
    (["server: docker/1.6.0"], "1.6.0"),
    (["26.1.5"], "26.1.5"),
    (["Docker version 1.5.0, build a8a31ef"], "1.5.0"),
    (["", "  "], None),
    ([], None),
])
def test_parse_engine_version(lines: list[str], version: str | None) -> None:
    assert parse_engine_version(lines) == version


@pytest.mark.parametrize(("unit", "active", "enabled"), [
    (["ActiveState=active", "UnitFileState=enabled"], True, True),
    (["ActiveState=reloading", "UnitFileState=static"], True, True),
    (["ActiveState=inactive", "UnitFileState=disabled"], False, False),
    (["ActiveState=failed", "UnitFileState=masked"], False, False),
    (["ActiveState=inactive", "UnitFileState="], False, False),  # no such unit
    ([], False, False),  # no systemctl
])
def test_parse_probe_unit_states(unit: list[str], active: bool, enabled: bool) -> None:
    state = parse_probe([MARK + "tools", "docker", *unit])
    assert (state.docker_active, state.docker_enabled) == (active, enabled)


def test_parse_probe_reads_the_image_and_version_labels() -> None:
    """The running container's image reference and both OCI version labels (the registry's
    major version: registry_kit.model.registry_version); "<no value>" and "" mean none."""
    lines = [MARK + "container",
             "abc|true|registry:3|<no value>",
             MARK + "image", "sha256:i|3.0.0"]
    state = parse_probe(lines)
    assert state.container is not None
    assert (state.container.image, state.container.version_label) == ("registry:3", "")
    assert (state.image_id, state.image_version_label) == ("sha256:i", "3.0.0")
    lines = [MARK + "container", "abc|true|reg@sha256:" + "a" * 64 + "|2.8.3",
             MARK + "image", "sha256:i|<no value>"]
    state = parse_probe(lines)
    assert state.container is not None and state.container.version_label == "2.8.3"
    assert (state.image_id, state.image_version_label) == ("sha256:i", "")
    # Older probe output (five fields, no label) still reads.
    assert parse_probe([MARK + "image", "sha256:i"]).image_version_label == ""


def test_parse_probe_unlabelled_stopped_container() -> None:
    lines = [MARK + "container", "<no value>|false|registry:2"]
    assert parse_probe(lines).container == ContainerState(
        spec_hash="", running=False, image="registry:2")


@pytest.mark.parametrize("output", [[], [MARK + name for name in SECTIONS]])
def test_parse_probe_empty_gives_defaults(output: list[str]) -> None:
    state = parse_probe(output)
    assert state == HostState()
    assert state.os == OSInfo(id="unknown")
    assert state.docker_installed is False
    assert state.server_version is None
    assert state.daemon_json is None
    assert state.files == {} and state.dirs == {}
    assert state.container is None and state.image_id is None
    assert state.htpasswd == "" and state.login_marker == ""
    assert state.docker_auths == [] and state.hosts_lines == []


def test_probe_command_has_every_section_in_order() -> None:
    command = probe_command(files=["/a"], dirs=["/d"], container="registry", image="registry:2",
                            htpasswd="/h", login_marker="/m")
    positions = [command.index(f"echo {MARK}{name};") if name != "hosts"
                 else command.index(f"echo {MARK}{name}") for name in SECTIONS]
    assert positions == sorted(positions)
    assert "docker inspect --type container --format" in command
    assert ("docker image inspect --format '{{.Id}}|{{with .Config.Labels}}{{index . "
            "\"org.opencontainers.image.version\"}}{{end}}' registry:2") in command


def test_probe_command_quotes_paths_with_spaces() -> None:
    command = probe_command(files=["/etc/my certs/server.crt", "/plain"],
                            dirs=["/srv/with space"], container="reg;rm -rf /",
                            image="registry:2", htpasswd="/etc/a b/htpasswd",
                            login_marker="/x y/marker")
    assert "for f in '/etc/my certs/server.crt' /plain; do" in command
    assert "for d in '/srv/with space'; do" in command
    assert "cat '/etc/a b/htpasswd' 2>/dev/null" in command
    assert "cat '/x y/marker' 2>/dev/null" in command
    assert "'reg;rm -rf /'" in command
    shlex.split(command)  # balanced quoting


def test_probe_command_without_optional_parts() -> None:
    command = probe_command()
    assert "for f in" not in command and "for d in" not in command
    assert "docker inspect" not in command and "docker image inspect" not in command


def test_probe_command_holds_no_secrets(make_settings: Callable[..., Settings],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGKIT_PW", "Pa55-word-in-env")
    monkeypatch.setenv("REGKIT_HTTP", "http-secret-in-env")
    settings = make_settings(registry_users=[{"name": "ci", "password_env": "REGKIT_PW"}],
                             registry_client_login_user="ci",
                             registry_http_secret={"env": "REGKIT_HTTP"})
    commands = [probe_command(**server.probe_args(settings)),
                probe_command(**client.probe_args(settings))]
    for command in commands:
        assert "Pa55-word-in-env" not in command
        assert "http-secret-in-env" not in command
        assert "REGKIT_PW" not in command
    assert "/etc/registry-kit/auth/htpasswd" in commands[0]
    assert "/etc/registry-kit-client/login-registry.example.internal_5000" in commands[1]


def test_client_paths(make_settings: Callable[..., Settings]) -> None:
    tls443 = make_settings(registry_domain="reg.example", registry_port=443)
    assert client.trust_dir(tls443) == "/etc/docker/certs.d/reg.example"
    assert client.login_marker_path(tls443) == "/etc/registry-kit-client/login-reg.example"
    plain = make_settings(registry_domain="reg.example", registry_port=443,
                          registry_tls_mode="none")
    assert client.trust_dir(plain) == "/etc/docker/certs.d/reg.example:443"
    assert client.login_marker_path(plain) == "/etc/registry-kit-client/login-reg.example_443"
    args = client.probe_args(make_settings(registry_domain="reg.example"))
    assert args["files"] == ["/etc/docker/certs.d/reg.example:5000/ca.crt",
                             "/usr/local/share/ca-certificates/registry-kit-reg.example.crt",
                             "/etc/pki/ca-trust/source/anchors/registry-kit-reg.example.crt"]
    assert args["dirs"] == ["/etc/docker/certs.d", "/etc/docker/certs.d/reg.example:5000",
                            "/etc/registry-kit-client"]


# --------------------------------------------------------------------------- real shell
#
# The probe run by /bin/sh on this machine, with every absolute system path it reads
# pointed at a temporary file and a PATH that holds only coreutils and grep (no docker,
# systemctl or curl): checks the command and the parser together, offline.

SYSTEM_PATHS = ("/etc/os-release", "/etc/docker/daemon.json", "/root/.docker/config.json",
                "/etc/hosts")
TOOLS = ("cat", "grep", "cut", "sha256sum", "stat")


def _run_probe(tmp_path: Path, command: str, system: dict[str, str]) -> HostState:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        link = bindir / tool
        if not link.exists():
            link.symlink_to(found)
    fake = tmp_path / "system"
    fake.mkdir(exist_ok=True)
    for index, path in enumerate(SYSTEM_PATHS):
        assert path in command
        local = fake / f"file{index}"
        if path in system:
            local.write_text(system[path])
        command = command.replace(path, str(local))
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                            env={"PATH": str(bindir)}, timeout=10, check=False)
    assert result.returncode == 0, result.stderr
    return parse_probe(result.stdout.split("\n")[:-1])


def _managed_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "with space"
    folder.mkdir()
    managed = folder / "server 1.crt"
    managed.write_bytes(b"certificate\n")
    managed.chmod(0o640)
    htpasswd = folder / "htpasswd"
    htpasswd.write_text(HTPASSWD_LINE + "\n")
    return folder, managed, htpasswd


def _owner(path: Path) -> tuple[str, str]:
    import grp
    import pwd

    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name


def test_probe_runs_in_a_real_shell(tmp_path: Path) -> None:
    folder, managed, htpasswd = _managed_tree(tmp_path)
    os.chmod(folder, 0o750)
    command = probe_command(files=[str(managed), str(folder / "missing")], dirs=[str(folder)],
                            container="registry", image="registry:2", htpasswd=str(htpasswd),
                            login_marker=str(folder / "no-marker"))
    state = _run_probe(tmp_path, command, {
        "/etc/os-release": 'ID=debian\nID_LIKE=""\nVERSION_CODENAME=bookworm\n',
        "/etc/docker/daemon.json": '{\n  "log-driver": "journald"\n}\n',
        "/root/.docker/config.json": '{\n\t"auths": {\n\t\t"reg.example:5000": {\n'
                                     '\t\t\t"auth": "c2VjcmV0"\n\t\t}\n\t}\n}\n',
        "/etc/hosts": "127.0.0.1 localhost\n10.0.0.5 reg.example # registry-kit\n",
    })
    owner, group = _owner(managed)
    assert state.os == OSInfo(id="debian", id_like="", codename="bookworm")
    assert state.docker_installed is False and state.curl_installed is False
    assert state.server_version is None
    assert state.daemon_json == '{\n  "log-driver": "journald"\n}'
    assert state.files == {str(managed): FileState(
        sha256=hashlib.sha256(b"certificate\n").hexdigest(), mode="640", owner=owner,
        group=group)}
    assert state.dirs == {str(folder): "750"}
    assert state.container is None and state.image_id is None
    assert state.htpasswd == HTPASSWD_LINE + "\n"
    assert state.docker_auths == ["auths", "reg.example:5000"]
    assert "c2VjcmV0" not in repr(state)
    assert state.login_marker == ""
    assert state.hosts_lines == ["10.0.0.5 reg.example # registry-kit"]


def test_probe_reads_several_files_and_folders_in_a_real_shell(tmp_path: Path) -> None:
    """One sha256sum and one stat for all files (issue 29): each regular file by its own path,
    folders, missing paths and a file asked for as a folder left out."""
    folder, managed, htpasswd = _managed_tree(tmp_path)
    other = tmp_path / "other dir"
    other.mkdir(mode=0o701)
    other.chmod(0o701)
    command = probe_command(files=[str(managed), str(folder), str(tmp_path / "gone"),
                                   str(htpasswd)],
                            dirs=[str(other), str(managed), str(tmp_path / "none"), str(folder)])
    state = _run_probe(tmp_path, command, {})
    owner, group = _owner(managed)
    assert state.files == {
        str(managed): FileState(sha256=hashlib.sha256(b"certificate\n").hexdigest(),
                                mode="640", owner=owner, group=group),
        str(htpasswd): FileState(
            sha256=hashlib.sha256(HTPASSWD_LINE.encode() + b"\n").hexdigest(),
            mode=f"{htpasswd.stat().st_mode & 0o777:o}", owner=owner, group=group)}
    assert state.dirs == {str(other): "701", str(folder): f"{folder.stat().st_mode & 0o777:o}"}


def test_probe_daemon_json_without_final_newline(tmp_path: Path) -> None:
    _, managed, _ = _managed_tree(tmp_path)
    command = probe_command(files=[str(managed)])
    state = _run_probe(tmp_path, command, {"/etc/docker/daemon.json": '{"log-driver": "local"}'})
    assert state.daemon_json == '{"log-driver": "local"}'
    assert list(state.files) == [str(managed)]


# Stand-ins for systemctl, curl and docker that log each call, to check which engine query
# the probe makes in which state.
_STAND_INS = {
    "systemctl": 'echo "systemctl $*" >> "$LOG"; printf "%s\\n" "$UNIT_STATE"',
    "curl": 'echo "curl $*" >> "$LOG"; [ -n "$CURL_HEADER" ] || exit 7; '
            'printf "HTTP/1.1 200 OK\\r\\n%s\\r\\n\\r\\n" "$CURL_HEADER"',
    "docker": 'echo "docker $*" >> "$LOG"; [ -n "$CLI_VERSION" ] || exit 1; '
              'echo "$CLI_VERSION"',
    "dockerd": 'echo "dockerd $*" >> "$LOG"; echo "Docker version 1.5.0, build a8a31ef"',
}


def _stand_in_bin(tmp_path: Path, stand_ins: dict[str, str]) -> tuple[Path, Path]:
    """A PATH folder: each stand-in a shell script, TOOLS linked to the real ones (skipped
    when one is missing); and the empty log the stand-ins append their calls to."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, body in stand_ins.items():
        script = bindir / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    for tool in TOOLS:
        found = shutil.which(tool)
        if found is None:
            pytest.skip(f"{tool} is not installed")
        (bindir / tool).symlink_to(found)
    log = tmp_path / "calls"
    log.touch()
    return bindir, log


@pytest.mark.parametrize(("unit", "curl", "header", "cli", "version", "asked"), [
    # active, curl answers: the engine's Server header, the docker CLI not started
    ("ActiveState=active", True, "Server: Docker/20.10.24+dfsg1 (linux)", "", "20.10.24+dfsg1",
     ["curl"]),
    # active, curl cannot reach the socket: the docker CLI instead
    ("ActiveState=active", True, "", "26.1.5", "26.1.5", ["curl", "docker"]),
    # active, no curl on the host
    ("ActiveState=active", False, "", "26.1.5", "26.1.5", ["docker"]),
    # stopped engine: nothing asks the socket (docker.socket would start the engine); the
    # binary tells the version it would start with
    ("ActiveState=inactive", True, "Server: Docker/26.1.5", "26.1.5", "1.5.0", ["dockerd"]),
])
def test_probe_engine_query_in_a_real_shell(tmp_path: Path, unit: str, curl: bool, header: str,
                                            cli: str, version: str | None,
                                            asked: list[str]) -> None:
    bindir, log = _stand_in_bin(tmp_path, {name: body for name, body in _STAND_INS.items()
                                           if curl or name != "curl"})
    result = subprocess.run(["/bin/sh", "-c", probe_command()], capture_output=True, text=True,
                            timeout=10, check=False,
                            env={"PATH": str(bindir), "LOG": str(log), "CURL_HEADER": header,
                                 "CLI_VERSION": cli,
                                 "UNIT_STATE": f"{unit}\nUnitFileState=enabled"})
    assert result.returncode == 0, result.stderr
    state = parse_probe(result.stdout.split("\n")[:-1])
    assert state.server_version == version
    assert state.docker_active is unit.endswith("=active")
    calls = log.read_text().splitlines()
    assert calls[0] == ("systemctl show --property=ActiveState --property=UnitFileState "
                        "docker.service")
    assert [call.split()[0] for call in calls[1:]] == asked
    assert all(call == "dockerd --version" for call in calls if call.startswith("dockerd"))


# --------------------------------------------------------------------------- engine's API
#
# The container and the image come from the engine's JSON (curl on its socket) while the
# engine runs, from the docker CLI's template line otherwise: both forms parse the same.

_CONTAINER_JSON = ('{"Id":"c0ffee","State":{"Status":"running","Running":true,"Pid":42},'
                   '"Image":"sha256:i","Name":"/registry","Config":{"Hostname":"c0ffee",'
                   '"Image":"registry:2","Labels":{"registry-kit.spec":"0123456789abcdef",'
                   '"org.opencontainers.image.version":"2.8.3"}}}')
_IMAGE_JSON = ('{"Id":"sha256:i","RepoTags":["registry:2"],"Config":{"Labels":'
               '{"org.opencontainers.image.version":"2.8.3"}}}')


@pytest.mark.parametrize(("api", "cli"), [
    ([_CONTAINER_JSON], ["0123456789abcdef|true|registry:2|2.8.3"]),
    # stopped, no labels at all (the template's `with` prints nothing; JSON null)
    (['{"State":{"Running":false},"Config":{"Image":"registry:2","Labels":null}}'],
     ["|false|registry:2|"]),
    # labels without the kit's (the template's index gives "<no value>")
    (['{"State":{"Running":true},"Config":{"Image":"reg@sha256:ab","Labels":{"x":"y"}}}'],
     ["<no value>|true|reg@sha256:ab|<no value>"]),
    # no such container: the engine's message, the CLI's silence
    (['{"message":"No such container: registry"}'], []),
])
def test_parse_probe_container_from_the_api_and_the_cli(api: list[str], cli: list[str]) -> None:
    from_api = parse_probe([MARK + "container", *api])
    assert from_api.container == parse_probe([MARK + "container", *cli]).container


@pytest.mark.parametrize(("api", "cli", "expected"), [
    ([_IMAGE_JSON], ["sha256:i|2.8.3"], ("sha256:i", "2.8.3")),
    (['{"Id":"sha256:j","Config":{"Labels":null}}'], ["sha256:j|"], ("sha256:j", "")),
    (['{"Id":"sha256:j","Config":{"Labels":{"a":"b"}}}'], ["sha256:j|<no value>"],
     ("sha256:j", "")),
    (['{"message":"No such image: registry:2"}'], [], (None, "")),
    (["{not json"], [], (None, "")),
])
def test_parse_probe_image_from_the_api_and_the_cli(api: list[str], cli: list[str],
                                                    expected: tuple[str | None, str]) -> None:
    for lines in (api, cli):
        state = parse_probe([MARK + "image", *lines])
        assert (state.image_id, state.image_version_label) == expected


def test_parse_probe_api_answer_without_final_newline() -> None:
    """curl prints the engine's JSON as it comes: the next marker may end its line."""
    state = parse_probe([MARK + "container", _CONTAINER_JSON + MARK + "image",
                         _IMAGE_JSON + MARK + "htpasswd"])
    assert state.container == ContainerState(spec_hash="0123456789abcdef", running=True,
                                             image="registry:2", version_label="2.8.3")
    assert (state.image_id, state.image_version_label) == ("sha256:i", "2.8.3")


def test_probe_command_asks_the_engine_api_with_quoted_names() -> None:
    command = probe_command(container="registry", image="reg.example:5000/ns/registry:2")
    assert ("--unix-socket /var/run/docker.sock http://localhost/containers/registry/json"
            in command)
    assert "http://localhost/images/reg.example:5000/ns/registry:2/json" in command
    hostile = probe_command(container="reg;rm -rf /", image="a b")
    assert "http://localhost/containers/reg%3Brm%20-rf%20%2F/json " in hostile
    assert "http://localhost/images/a%20b/json" in hostile
    shlex.split(hostile)


# curl answering the engine's API, and the docker CLI: each logs its call.
_API_STAND_INS = {
    "systemctl": 'echo "systemctl $*" >> "$LOG"; printf "%s\\n" "$UNIT_STATE"',
    "curl": 'echo "curl $*" >> "$LOG"; [ -n "$API" ] || exit 7; case "$*" in '
            '*/_ping*) printf "HTTP/1.1 200 OK\\r\\nServer: Docker/26.1.5 (linux)\\r\\n\\r\\n";; '
            '*/containers/*) printf "%s\\n" "$CONTAINER_JSON";; '
            '*/images/*) printf "%s\\n" "$IMAGE_JSON";; esac',
    "docker": 'echo "docker $*" >> "$LOG"; case "$*" in version*) echo 26.1.5;; '
              '*--type\\ container*) echo "0123456789abcdef|true|registry:2|2.8.3";; '
              'image\\ inspect*) echo "sha256:i|2.8.3";; esac',
    "dockerd": 'echo "dockerd $*" >> "$LOG"; echo "Docker version 26.1.5, build a"',
}


@pytest.mark.parametrize(("unit", "api", "asked"), [
    # running engine, socket answers: curl alone, no docker CLI
    ("ActiveState=active", True, ["curl", "curl", "curl"]),
    # running engine, socket does not answer: the CLI for each
    ("ActiveState=active", False, ["curl", "docker", "curl", "docker", "curl", "docker"]),
    # stopped engine: the CLI, as before (no curl on the socket)
    ("ActiveState=inactive", True, ["dockerd", "docker", "docker"]),
])
def test_probe_container_and_image_in_a_real_shell(tmp_path: Path, unit: str, api: bool,
                                                   asked: list[str]) -> None:
    bindir, log = _stand_in_bin(tmp_path, _API_STAND_INS)
    result = subprocess.run(
        ["/bin/sh", "-c", probe_command(container="registry", image="registry:2")],
        capture_output=True, text=True, timeout=10, check=False,
        env={"PATH": str(bindir), "LOG": str(log), "API": "yes" if api else "",
             "CONTAINER_JSON": _CONTAINER_JSON, "IMAGE_JSON": _IMAGE_JSON,
             "UNIT_STATE": f"{unit}\nUnitFileState=enabled"})
    assert result.returncode == 0, result.stderr
    state = parse_probe(result.stdout.split("\n")[:-1])
    assert state.container == ContainerState(spec_hash="0123456789abcdef", running=True,
                                             image="registry:2", version_label="2.8.3")
    assert (state.image_id, state.image_version_label) == ("sha256:i", "2.8.3")
    calls = log.read_text().splitlines()
    assert [call.split()[0] for call in calls[1:]] == asked


# --------------------------------------------------------------------------- services

def test_probe_command_asks_systemctl_once_for_every_service() -> None:
    command = probe_command(services=["registry-kit-token.service", "haproxy"])
    assert command.count("systemctl") == 2  # the engine's, and this one
    assert ("echo registry-kit-token.service haproxy; systemctl show --property=Id "
            "--property=ActiveState --property=UnitFileState -- "
            "registry-kit-token.service haproxy 2>/dev/null; true") in command
    assert "systemctl show" not in probe_command().split("services")[-1]


@pytest.mark.parametrize(("block", "expected"), [
    (["Id=haproxy.service", "ActiveState=active", "UnitFileState=enabled"], (True, True)),
    (["Id=haproxy.service", "ActiveState=inactive", "UnitFileState=disabled"], (False, False)),
    # is-active says "reloading", is-enabled "static": neither counts, as before
    (["Id=haproxy.service", "ActiveState=reloading", "UnitFileState=static"], (False, False)),
    (["Id=haproxy.service", "ActiveState=failed", "UnitFileState=enabled"], (False, True)),
    # no such unit
    (["Id=haproxy.service", "ActiveState=inactive", "UnitFileState="], (False, False)),
    # an alias (is-enabled says "alias"; is-active follows it)
    (["Id=haproxy2.service", "ActiveState=active", "UnitFileState=enabled"], (True, False)),
    # no systemctl: the names alone
    ([], (False, False)),
])
def test_parse_probe_services(block: list[str], expected: tuple[bool, bool]) -> None:
    timer = ["Id=registry-kit-gc.timer", "ActiveState=active", "UnitFileState=enabled"]
    lines = ["registry-kit-gc.timer haproxy", *timer, "", *block, ""] if block else \
        ["registry-kit-gc.timer haproxy"]
    services = parse_probe([MARK + "services", *lines, MARK + "entries"]).services
    assert services == {"registry-kit-gc.timer": (True, True) if block else (False, False),
                        "haproxy": expected}


def test_probe_services_in_a_real_shell(tmp_path: Path) -> None:
    """The names and systemctl's blocks, in the order asked (a stand-in prints them)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(
        '#!/bin/sh\n[ "$1" = show ] || exit 1\nshift 5\nfor u in "$@"; do case "$u" in '
        '*.*) id=$u;; *) id=$u.service;; esac; printf "Id=%s\\nActiveState=active\\n'
        'UnitFileState=%s\\n\\n" "$id" "$([ "$u" = b ] && echo disabled || echo enabled)"; '
        'done\n')
    (bindir / "systemctl").chmod(0o755)
    result = subprocess.run(["/bin/sh", "-c", probe_command(services=["a", "b", "c.timer"])],
                            capture_output=True, text=True, timeout=10, check=False,
                            env={"PATH": str(bindir)})
    assert result.returncode == 0, result.stderr
    assert parse_probe(result.stdout.split("\n")[:-1]).services == {
        "a": (True, True), "b": (True, False), "c.timer": (True, True)}
