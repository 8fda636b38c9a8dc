"""Unit tests for registry_kit.commands (install commands, docker run arguments) and
registry_kit.roles.server.container_spec (the spec hash that decides a recreate)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_kit.commands import ContainerSpec, OSInfo, UnsupportedOS, docker_install_commands
from registry_kit.model.layout import ServerLayout
from registry_kit.model.settings import Settings
from registry_kit.render.tls import ServerCertificate
from registry_kit.roles.server import container_spec

REPO = "https://packages.example/linux"
APT = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"


# --------------------------------------------------------------------------- install


def test_os_family() -> None:
    assert OSInfo("debian").family == "debian"
    assert OSInfo("linuxmint", id_like="ubuntu debian").family == "debian"
    assert OSInfo("rocky", id_like="rhel centos fedora").family == "rhel"
    assert OSInfo("alpine").family == "unsupported"
    assert OSInfo("unknown").family == "unsupported"


def test_debian_distro() -> None:
    assert docker_install_commands(OSInfo("debian", codename="bookworm"), "distro", None) == [
        f"{APT} update -q",
        f"{APT} install -y -q docker.io",
    ]


def _apt_docker_ce(distro: str, codename: str) -> list[str]:
    return [
        "for pkg in docker.io docker-doc docker-compose podman-docker containerd runc; do dpkg -s"
        f' "$pkg" >/dev/null 2>&1 && {APT} remove -y -q "$pkg"; done; true',
        f"{APT} update -q",
        f"{APT} install -y -q ca-certificates curl",
        "install -m 0755 -d /etc/apt/keyrings",
        f"curl -fsSL {REPO}/{distro}/gpg -o /etc/apt/keyrings/docker.asc",
        "chmod a+r /etc/apt/keyrings/docker.asc",
        'echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc]"'
        f' {REPO}/{distro} {codename} stable > /etc/apt/sources.list.d/docker.list',
        f"{APT} update -q",
        f"{APT} install -y -q docker-ce docker-ce-cli containerd.io",
    ]


def test_debian_docker_ce() -> None:
    os_info = OSInfo("debian", codename="bookworm")
    assert docker_install_commands(os_info, "docker-ce", REPO) == \
        _apt_docker_ce("debian", "bookworm")
    # a trailing slash on the repo URL gives the same commands
    assert docker_install_commands(os_info, "docker-ce", REPO + "/") == \
        _apt_docker_ce("debian", "bookworm")


def test_ubuntu_docker_ce() -> None:
    os_info = OSInfo("ubuntu", id_like="debian", codename="noble")
    assert docker_install_commands(os_info, "docker-ce", REPO) == \
        _apt_docker_ce("ubuntu", "noble")


def test_hostile_codename_and_url_stay_single_words() -> None:
    """The codename comes from the host's os-release, the URL from settings: each is one
    quoted word of the source line, whatever it holds."""
    os_info = OSInfo("debian", codename="x; touch /tmp/pwned")
    source = docker_install_commands(os_info, "docker-ce", "https://h/$(id)")[6]
    words = shlex.split(source)
    assert words[words.index(">") - 3:words.index(">")] == \
        ["https://h/$(id)/debian", "x; touch /tmp/pwned", "stable"]


def test_debian_docker_ce_without_codename() -> None:
    with pytest.raises(UnsupportedOS, match="debian: no VERSION_CODENAME in /etc/os-release"):
        docker_install_commands(OSInfo("debian"), "docker-ce", REPO)


@pytest.mark.parametrize(("os_info", "repo_dir"), [
    (OSInfo("rocky", id_like="rhel centos fedora"), "centos"),
    (OSInfo("almalinux", id_like="rhel centos fedora"), "centos"),
    (OSInfo("centos", id_like="rhel fedora"), "centos"),
    (OSInfo("fedora"), "fedora"),
    (OSInfo("rhel", id_like="fedora"), "rhel"),
])
def test_rhel_family_docker_ce(os_info: OSInfo, repo_dir: str) -> None:
    assert docker_install_commands(os_info, "docker-ce", REPO) == [
        "dnf -y remove docker docker-client docker-common docker-latest docker-engine"
        " podman-docker runc",
        f"curl -fsSL {REPO}/{repo_dir}/docker-ce.repo -o /etc/yum.repos.d/docker-ce.repo",
        "dnf -y install docker-ce docker-ce-cli containerd.io",
    ]


def test_rocky_distro_is_unsupported() -> None:
    with pytest.raises(UnsupportedOS) as caught:
        docker_install_commands(OSInfo("rocky", id_like="rhel centos fedora"), "distro", None)
    assert str(caught.value) == ("rocky has no distro Docker engine: "
                                 "use docker_install_method='docker-ce'")


@pytest.mark.parametrize("method", ["distro", "docker-ce"])
def test_alpine_is_unsupported(method: str) -> None:
    with pytest.raises(UnsupportedOS) as caught:
        docker_install_commands(OSInfo("alpine"), method, REPO)
    message = str(caught.value)
    assert message.startswith("operating system 'alpine' is not supported")
    assert "Debian/Ubuntu or RHEL family" in message


# --------------------------------------------------------------------------- docker run


def _spec(**overrides: object) -> ContainerSpec:
    fields: dict = {"name": "registry", "image": "registry:2", "port": 5000,
                    "config_dir": "/etc/registry-kit", "data_dir": "/var/lib/registry-kit/data",
                    "spec_hash": "0123456789abcdef"}
    fields.update(overrides)
    return ContainerSpec(**fields)


TAIL = ["--label", "registry-kit.managed=true", "--label", "registry-kit.spec=0123456789abcdef",
        "registry:2", "serve", "/etc/registry-kit/config.yml"]


def test_run_args_modern_engine() -> None:
    expected = [
        "-d", "--name", "registry", "--restart=always", "-p", "5000:5000",
        "--mount", "type=bind,source=/etc/registry-kit,target=/etc/registry-kit,readonly",
        "--mount", "type=bind,source=/var/lib/registry-kit/data,target=/var/lib/registry",
        *TAIL,
    ]
    assert _spec().run_args() == expected
    assert _spec().run_args("26.1.5") == expected
    assert _spec().run_args("17.06.0-ce") == expected


@pytest.mark.parametrize("version", ["17.03.0-ce", "1.13.1"])
def test_run_args_old_engine_uses_v(version: str) -> None:
    args = _spec(port=443).run_args(version)
    assert "--mount" not in args
    assert args == [
        "-d", "--name", "registry", "--restart=always", "-p", "443:5000",
        "-v", "/etc/registry-kit:/etc/registry-kit:ro",
        "-v", "/var/lib/registry-kit/data:/var/lib/registry",
        *TAIL,
    ]


def test_run_args_without_data_dir() -> None:
    args = _spec(data_dir=None).run_args()
    assert args.count("--mount") == 1
    assert not any("/var/lib/registry" in arg for arg in args)


def test_run_args_debug_port_on_loopback_only() -> None:
    args = _spec(debug_port=5001).run_args()
    published = [args[i + 1] for i, arg in enumerate(args) if arg == "-p"]
    assert published == ["5000:5000", "127.0.0.1:5001:5001"]


# --------------------------------------------------------------------------- spec hash


CONFIG = b"version: 0.1\n"


def _cert(cert: bytes = b"CERT", key: bytes = b"KEY", ca: bytes = b"CA") -> ServerCertificate:
    return ServerCertificate(cert_pem=cert, key_pem=key, ca_pem=ca, reissued=False)


def test_server_paths() -> None:
    paths = ServerLayout("/etc/rk")
    assert (paths.config, paths.cert, paths.key, paths.ca, paths.htpasswd) == (
        "/etc/rk/config.yml", "/etc/rk/certs/server.crt", "/etc/rk/certs/server.key",
        "/etc/rk/certs/ca.crt", "/etc/rk/auth/htpasswd")


def test_container_spec_fields(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(registry_debug_addr="127.0.0.1:5002", registry_port=443)
    spec = container_spec(settings, CONFIG, _cert())
    assert re.fullmatch(r"[0-9a-f]{16}", spec.spec_hash)
    assert (spec.name, spec.image, spec.port, spec.config_dir, spec.data_dir,
            spec.debug_port) == ("registry", "registry:2", 443, "/etc/registry-kit",
                                 "/var/lib/registry-kit/data", 5002)
    assert f"registry-kit.spec={spec.spec_hash}" in spec.run_args()
    s3 = make_settings(registry_storage={"driver": "inmemory"})
    assert container_spec(s3, CONFIG, None).data_dir is None


def test_spec_hash_stable_for_same_inputs(make_settings: Callable[..., Settings]) -> None:
    first = container_spec(make_settings(), CONFIG, _cert()).spec_hash
    assert container_spec(make_settings(), CONFIG, _cert()).spec_hash == first


@pytest.mark.parametrize(("data", "config", "cert"), [
    ({}, b"version: 0.1\n# changed\n", _cert()),
    ({"registry_image": "registry:2.8.3"}, CONFIG, _cert()),
    ({"registry_port": 443}, CONFIG, _cert()),
    ({}, CONFIG, _cert(cert=b"CERT2")),
    ({}, CONFIG, _cert(key=b"KEY2")),
    ({}, CONFIG, None),
    ({"registry_debug_addr": "127.0.0.1:5001"}, CONFIG, _cert()),
    ({"registry_data_dir": "/srv/registry"}, CONFIG, _cert()),
], ids=["config", "image", "port", "cert", "key", "no-cert", "debug", "data-dir"])
def test_spec_hash_changes(make_settings: Callable[..., Settings], data: dict,
                           config: bytes, cert: ServerCertificate | None) -> None:
    base = container_spec(make_settings(), CONFIG, _cert()).spec_hash
    assert container_spec(make_settings(**data), config, cert).spec_hash != base


def test_old_engine_args_carry_the_same_label(make_settings: Callable[..., Settings]) -> None:
    # the hash is computed once; the engine version only picks --mount or -v
    spec = container_spec(make_settings(), CONFIG, _cert())
    assert spec.run_args("17.03.0-ce")[-4] == f"registry-kit.spec={spec.spec_hash}"
    assert spec.run_args()[-4] == f"registry-kit.spec={spec.spec_hash}"


def test_spec_hash_changes_with_served_chain(make_settings: Callable[..., Settings],
                                             tmp_path: Path) -> None:
    for name in ("server.crt", "server.key"):
        (tmp_path / name).write_text(name)
    settings = make_settings(registry_tls_mode="provided", registry_tls_cert_file="server.crt",
                             registry_tls_key_file="server.key")
    before = container_spec(settings, CONFIG, _cert(ca=b"INTERMEDIATE-OLD"))
    after = container_spec(settings, CONFIG, _cert(ca=b"INTERMEDIATE-NEW"))
    assert after.spec_hash != before.spec_hash
