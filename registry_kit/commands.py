"""Shell commands the kit runs on hosts, built in one place with proper quoting.

Nothing secret is ever part of a command: secrets travel as uploaded files (SFTP) and
are read by the command from there.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from registry_kit.model import layout
from registry_kit.model.settings import host_port
from registry_kit.model.versions import parse_version

DEBIAN_FAMILY = ("debian", "ubuntu")
RHEL_FAMILY = ("rhel", "rocky", "almalinux", "centos", "fedora")
# Packages that conflict with Docker's own (Docker's install docs remove them first).
DEBIAN_CONFLICTS = ("docker.io", "docker-doc", "docker-compose", "podman-docker", "containerd",
                    "runc")
RHEL_CONFLICTS = ("docker", "docker-client", "docker-common", "docker-latest", "docker-engine",
                  "podman-docker", "runc")
DOCKER_CE_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io")
MOUNT_FLAG_SINCE = (17, 6, 0)  # `docker run --mount` appeared in Docker 17.06
# pyinfra's "auth" connector arguments (pyinfra.api.arguments.ConnectorArguments).
AUTH_ARGUMENTS = ("_sudo", "_sudo_user", "_use_sudo_login", "_sudo_password",
                  "_preserve_sudo_env", "_su_user", "_use_su_login", "_preserve_su_env",
                  "_su_shell", "_su_password", "_doas", "_doas_user", "_dzdo", "_dzdo_user")


def auth_arguments(connector_arguments: dict[str, Any]) -> dict[str, Any]:
    """The elevation (--sudo & co.) of an operation, for commands it runs by hand."""
    return {key: value for key, value in connector_arguments.items()
            if key in AUTH_ARGUMENTS}


class UnsupportedOS(ValueError):
    pass


def q(value: object) -> str:
    return shlex.quote(str(value))


def join(args: Sequence[object]) -> str:
    return " ".join(q(arg) for arg in args)


def wait_until_answers_command(url: str, resolve: str, cacert: str, timeout: int) -> str:
    """A loop that ends once URL (by its name over RESOLVE; CACERT, or "-" for plain HTTP)
    answers at all (any HTTP status: curl exits 0), and fails after TIMEOUT seconds."""
    curl = join(["curl", "-s", "-o", "/dev/null", "--max-time", "2", "--resolve", resolve,
                 *(["--cacert", cacert] if cacert != "-" else []), url])
    late = q("registry-kit: " + url + " did not answer within " + str(timeout) + " s")
    return (f"n=0; until {curl}; do n=$((n+1)); if [ $n -ge {q(timeout * 5)} ]; then "
            f"echo {late} >&2; exit 1; fi; sleep 0.2; done")


@dataclass(frozen=True)
class OSInfo:
    id: str
    id_like: str = ""
    codename: str = ""

    @property
    def family(self) -> str:
        names = [self.id, *self.id_like.split()]
        if any(name in DEBIAN_FAMILY for name in names):
            return "debian"
        if any(name in RHEL_FAMILY for name in names):
            return "rhel"
        return "unsupported"


# Wait for dpkg's lock rather than fail: an install left running on the host by a killed
# run holds it, and the rerun must converge (apt >= 1.9.11; older apt ignores the option).
APT_GET = "DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"


def _apt_command(*args: str) -> str:
    """apt-get ARGS, each quoted."""
    return f"{APT_GET} " + join(args)


def docker_install_commands(os_info: OSInfo, method: str, repo_url: str | None) -> list[str]:
    """Commands that install a Docker engine; raises UnsupportedOS with a clear reason."""
    family = os_info.family
    if family == "unsupported":
        raise UnsupportedOS(f"operating system {os_info.id!r} is not supported "
                            "(Debian/Ubuntu or RHEL family: Rocky, Alma, CentOS Stream, Fedora)")
    if family == "debian" and method == "distro":
        return [_apt_command("update", "-q"), _apt_command("install", "-y", "-q", "docker.io")]
    if method == "distro":
        raise UnsupportedOS(f"{os_info.id} has no distro Docker engine: "
                            "use docker_install_method='docker-ce'")
    assert repo_url, "validated in settings"
    base = repo_url.rstrip("/")
    if family == "debian":
        distro = "ubuntu" if os_info.id == "ubuntu" or "ubuntu" in os_info.id_like.split() \
            else "debian"
        if not os_info.codename:
            raise UnsupportedOS(f"{os_info.id}: no VERSION_CODENAME in /etc/os-release")
        # echo joins its words with spaces: the options part (which must expand) is one
        # word, the URL and the codename (from the host's os-release) are quoted words.
        source = (f"echo \"deb [arch=$(dpkg --print-architecture) "
                  f"signed-by=/etc/apt/keyrings/docker.asc]\" {q(base + '/' + distro)} "
                  f"{q(os_info.codename)} stable")
        return [
            # One at a time and only if installed: apt refuses a list with unknown names.
            f"for pkg in {join(DEBIAN_CONFLICTS)}; do dpkg -s \"$pkg\" >/dev/null 2>&1"
            f" && {APT_GET} remove -y -q \"$pkg\"; done; true",
            _apt_command("update", "-q"),
            _apt_command("install", "-y", "-q", "ca-certificates", "curl"),
            "install -m 0755 -d /etc/apt/keyrings",
            f"curl -fsSL {q(base + '/' + distro + '/gpg')} -o /etc/apt/keyrings/docker.asc",
            "chmod a+r /etc/apt/keyrings/docker.asc",
            f"{source} > /etc/apt/sources.list.d/docker.list",
            _apt_command("update", "-q"),
            _apt_command("install", "-y", "-q", *DOCKER_CE_PACKAGES),
        ]
    distro = "fedora" if os_info.id == "fedora" else (
        "rhel" if os_info.id == "rhel" else "centos")
    return [
        "dnf -y remove " + join(RHEL_CONFLICTS),
        f"curl -fsSL {q(base + '/' + distro + '/docker-ce.repo')}"
        " -o /etc/yum.repos.d/docker-ce.repo",
        "dnf -y install " + join(DOCKER_CE_PACKAGES),
    ]


ENABLE_DOCKER = "systemctl enable --now docker.service"


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    port: int
    config_dir: str
    data_dir: str | None  # None: no data mount (non-filesystem storage)
    debug_port: int | None = None
    spec_hash: str = ""
    bind_address: str | None = None  # publish on this address only (None: every address)
    # (name, address) the container resolves as its host does (a cache's remote): Docker
    # gives it neither the host's /etc/hosts nor loopback nameservers.
    extra_hosts: tuple[tuple[str, str], ...] = ()

    def run_args(self, engine_version: str | None = None) -> list[str]:
        """`docker run` arguments (after `docker run`): the container's spec, which its
        spec_hash covers (server.container_spec)."""
        return ["-d", *self.create_args(engine_version)]

    def create_args(self, engine_version: str | None = None) -> list[str]:
        """`docker create` arguments (after `docker create`): replace-container.sh creates
        the new container while the old one still serves, then stops the old and starts
        it. Folders are bind-mounted, never single files: a file replaced by rename keeps
        its old inode inside the container."""
        published = f"{self.port}:{layout.CONTAINER_PORT}" if self.bind_address is None \
            else f"{host_port(self.bind_address, self.port)}:{layout.CONTAINER_PORT}"
        args = ["--name", self.name, "--restart=always", "-p", published,
                *self._host_args()]
        if self.debug_port:
            args += ["-p", f"127.0.0.1:{self.debug_port}:{layout.CONTAINER_DEBUG_PORT}"]
        args += self._mounts(self.config_dir, False, engine_version)
        # The config file is named explicitly: registry 2.x images default to
        # /etc/docker/registry/config.yml and 3.x to /etc/distribution/config.yml, so with
        # `serve FILE` an upgrade across the major version runs the kit's config unchanged.
        args += ["--label", "registry-kit.managed=true",
                 "--label", f"registry-kit.spec={self.spec_hash}",
                 self.image, "serve", layout.CONTAINER_CONFIG_FILE]
        return args

    def candidate_args(self, staged_dir: str, engine_version: str | None = None) -> list[str]:
        """`docker run` arguments of the candidate that proves new files (server.prove_files):
        the same image and data, the staged folder where the config folder goes, on a port
        the engine picks on loopback only, no restart policy (a refusal exits and stays
        down), the data folder read-only."""
        args = ["-d", "--name", layout.candidate(self.name),
                "-p", f"127.0.0.1::{layout.CONTAINER_PORT}", *self._host_args()]
        args += self._mounts(staged_dir, True, engine_version)
        return [*args, "--label", "registry-kit.candidate=true",
                self.image, "serve", layout.CONTAINER_CONFIG_FILE]

    def _host_args(self) -> list[str]:
        """--add-host for each name the container must resolve as its host does; the
        candidate too, or a cache's change would be refused for a name only the host knows.
        NAME:ADDRESS splits at the first colon: Docker 20.10 takes IPv6 bare, not in
        brackets (those came with 25), and later engines still take it bare."""
        return [arg for name, address in self.extra_hosts
                for arg in ("--add-host", f"{name}:{address}")]

    def _mounts(self, config_dir: str, data_readonly: bool,
                engine_version: str | None) -> list[str]:
        use_mount = engine_version is None or parse_version(engine_version) >= MOUNT_FLAG_SINCE
        mounts = [(config_dir, layout.CONTAINER_CONFIG_DIR, True)]
        if self.data_dir:
            mounts.append((self.data_dir, layout.CONTAINER_DATA_DIR, data_readonly))
        args: list[str] = []
        for source, target, readonly in mounts:
            if use_mount:  # --mount: a missing source is an error, not a new empty folder
                args += ["--mount", f"type=bind,source={source},target={target}"
                         + (",readonly" if readonly else "")]
            else:
                args += ["-v", f"{source}:{target}" + (":ro" if readonly else "")]
        return args
