"""One probe fact per host: everything the kit compares against, in one remote command.

pyinfra 3.10 does not cache facts, and its file operations ask two or three facts per
file. The kit instead reads, in one round trip, the engine, daemon.json, the registry
container, and the checksum and mode of every file it manages; each operation then
compares its wanted state with this snapshot and yields commands only for differences.
Read-only: the probe never changes anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from pyinfra.api import FactBase

from registry_kit.commands import OSInfo, join, q
from registry_kit.model.layout import DAEMON_JSON, DOCKER_SOCKET
from registry_kit.model.settings import masked_repr

_SECTION = "@@registry-kit:"
HOSTS_MARKER = "# registry-kit"
# Only the registry names of root's docker logins, never the credentials themselves.
AUTHS_COMMAND = ("grep -o '\"[^\"]*\": *{' /root/.docker/config.json 2>/dev/null"
                 " | cut -d'\"' -f2 || true")
HOSTS_COMMAND = f"grep -e {q(HOSTS_MARKER + '$')} /etc/hosts 2>/dev/null || true"


@dataclass(frozen=True)
class FileState:
    sha256: str
    mode: str  # octal, e.g. "600"
    owner: str
    group: str


@dataclass(frozen=True)
class ContainerState:
    spec_hash: str
    running: bool
    image: str = ""  # the reference it was started with (.Config.Image)
    version_label: str = ""  # its image's org.opencontainers.image.version, if any


# The htpasswd hashes and the login marker (a hash of the client password) are secrets.
@masked_repr("htpasswd", "login_marker")
@dataclass
class HostState:
    os: OSInfo = field(default_factory=lambda: OSInfo(id="unknown"))
    docker_installed: bool = False
    server_version: str | None = None
    docker_active: bool = False
    docker_enabled: bool = False
    curl_installed: bool = False
    daemon_json: str | None = None
    files: dict[str, FileState] = field(default_factory=dict)
    dirs: dict[str, str] = field(default_factory=dict)  # path -> mode
    container: ContainerState | None = None
    image_id: str | None = None
    # registry_image's org.opencontainers.image.version label ("" when none or not present).
    image_version_label: str = ""
    htpasswd: str = ""
    docker_auths: list[str] = field(default_factory=list)
    login_marker: str = ""
    hosts_lines: list[str] = field(default_factory=list)
    commands: set[str] = field(default_factory=set)  # asked-for commands that are installed
    services: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # (active, enabled)
    # Names in each asked-for folder that exists (teardown: what else a folder holds).
    entries: dict[str, set[str]] = field(default_factory=dict)
    # Asked-for names -> their addresses on the host, in getent's order (a cache's remote).
    resolved: dict[str, list[str]] = field(default_factory=dict)


# The engine's version. A running engine is asked (the Server header of its /_ping through
# curl, which costs a tenth of `dockerd --help` and half of `docker info`: both start a
# large Go binary, and /info and /version also make the engine run runc and docker-init;
# the docker CLI without curl or when the socket is elsewhere). A stopped engine is not:
# a query on its socket would start it through docker.socket, and the probe changes
# nothing. Its binary tells the version it will start with, so an old engine is refused
# before anything starts it.
_ENGINE_RUNS = "*ActiveState=active*|*ActiveState=reloading*"
ENGINE_VERSION_QUERY = (
    f"case \"$unit\" in {_ENGINE_RUNS})"
    " { command -v curl >/dev/null 2>&1 && curl -s -o /dev/null -D - --max-time 10"
    f" --unix-socket {q(DOCKER_SOCKET)} http://localhost/_ping 2>/dev/null"
    " | grep -i '^server: *docker/'; }"
    " || docker version --format '{{.Server.Version}}' 2>/dev/null;;"
    " *) dockerd --version 2>/dev/null;; esac; true")

_SPEC_LABEL = "registry-kit.spec"
_VERSION_KEY = "org.opencontainers.image.version"
# An image's (or container's) OCI version label, empty when it has none.
_VERSION_LABEL = f'{{{{with .Config.Labels}}}}{{{{index . "{_VERSION_KEY}"}}}}{{{{end}}}}'

# systemctl is-enabled answers 0 for these unit file states.
_ENABLED_STATES = {"enabled", "enabled-runtime", "static", "alias", "indirect", "generated"}


def parse_engine_version(lines: Iterable[str]) -> str | None:
    """`Server: Docker/20.10.24+dfsg1 (linux)` (curl), `26.1.5` (docker CLI) or
    `Docker version 1.5.0, build a8a31ef` (`dockerd --version`)."""
    for line in lines:
        line = line.strip()
        if line.lower().startswith("server:"):
            line = line.partition("/")[2]
        elif line.startswith("Docker version "):
            line = line[len("Docker version "):]
        words = line.replace(",", " ").split()
        if words:
            return words[0]
    return None


def probe_section_command(name: str) -> str:
    return f"echo {q(_SECTION + name)}"


# The engine and the OS, on every probe.
_ENGINE_COMMANDS = [
    probe_section_command("os"),
    "( . /etc/os-release 2>/dev/null; echo \"${ID:-unknown}\"; echo \"${ID_LIKE:-}\";"
    " echo \"${VERSION_CODENAME:-}\" )",
    probe_section_command("tools"),
    "command -v docker >/dev/null 2>&1 && echo docker;"
    " command -v curl >/dev/null 2>&1 && echo curl;"
    # One systemctl call for both states; its output gates the engine query below.
    " unit=$(systemctl show --property=ActiveState --property=UnitFileState"
    " docker.service 2>/dev/null); echo \"$unit\"",
    probe_section_command("server_version"),
    ENGINE_VERSION_QUERY,
    probe_section_command("daemon_json"),
    f"cat {q(DAEMON_JSON)} 2>/dev/null || true",
]


def path_commands(files: Iterable[str], dirs: Iterable[str]) -> list[str]:
    """Checksum, mode and owner of each file; mode of each folder. One sha256sum and one stat
    for all the files, one stat for all the folders: a subshell, sha256sum, cut and stat per
    file made the probe of a server (25 files) spend most of its time starting processes
    (issue 29). `[ -f ]` and `[ -d ]` are the shell's own: they start none. `[ -z "$1" ]`
    tells an empty list (no path is empty) without a `#`, which shlex reads as a comment."""
    parts = [probe_section_command("files")]
    file_list = " ".join(q(path) for path in files)
    if file_list:
        parts.append(f"set --; for f in {file_list}; do [ -f \"$f\" ] && set -- \"$@\" \"$f\";"
                     " done; [ -z \"$1\" ] || sha256sum \"$@\" 2>/dev/null; true")
    parts.append(probe_section_command("modes"))
    if file_list:
        parts.append("[ -z \"$1\" ] || stat -c '%a %U %G %n' \"$@\" 2>/dev/null; true")
    parts.append(probe_section_command("dirs"))
    dir_list = " ".join(q(path) for path in dirs)
    if dir_list:
        parts.append(f"set --; for d in {dir_list}; do [ -d \"$d\" ] && set -- \"$@\" \"$d\";"
                     " done; [ -z \"$1\" ] || stat -c '%a %n' \"$@\" 2>/dev/null; true")
    return parts


def entries_commands(listings: Iterable[str]) -> list[str]:
    """What each listed folder holds."""
    entries = [probe_section_command("entries")]
    listing_list = " ".join(q(path) for path in listings)
    if listing_list:
        # Full paths, dot files included (a glob that matches nothing stays literal: -e/-L
        # drop it); no ls, whose output format differs between implementations.
        entries.append(f"for d in {listing_list}; do [ -d \"$d\" ] && for e in \"$d\"/* "
                       "\"$d\"/.[!.]* \"$d\"/..?*; do { [ -e \"$e\" ] || [ -L \"$e\" ]; } && "
                       "echo \"$e\"; done; done; true")
    return entries


def engine_get_command(path: str, cli: list[str]) -> str:
    """GET PATH (URL-encoded) of the engine's API through curl on its socket (its JSON), or
    the docker CLI command CLI when the engine is not running, curl is missing or the
    socket does not answer. The CLI costs about 47 ms a call (it starts, pings the engine,
    then asks), curl a few (issue 29). A stopped engine gets the CLI, as before: a query on
    its socket would start it through docker.socket all the same. $unit: the engine's state,
    from the probe's engine part (_ENGINE_COMMANDS)."""
    url = "http://localhost" + path
    return (f"case \"$unit\" in {_ENGINE_RUNS}) command -v curl >/dev/null 2>&1 && curl -s"
            f" --max-time 10 --unix-socket {q(DOCKER_SOCKET)} {q(url)} 2>/dev/null;;"
            f" *) false;; esac || {join(cli)} 2>/dev/null || true")


def docker_commands(container: str | None, image: str | None) -> list[str]:
    parts = [probe_section_command("container")]
    if container:
        # `with`: `index` on an image or container without any label is a template error,
        # which would hide the whole line.
        fmt = (f'{{{{with .Config.Labels}}}}{{{{index . "{_SPEC_LABEL}"}}}}{{{{end}}}}|'
               '{{.State.Running}}|{{.Config.Image}}|' + _VERSION_LABEL)
        parts.append(engine_get_command(f"/containers/{quote(container, safe='')}/json",
                                        ["docker", "inspect", "--type", "container", "--format",
                                         fmt, container]))
    parts.append(probe_section_command("image"))
    if image:
        # The label may tell the registry's version (registry_kit.model.registry_version).
        parts.append(engine_get_command(f"/images/{quote(image, safe='/:@')}/json",
                                        ["docker", "image", "inspect", "--format",
                                         "{{.Id}}|" + _VERSION_LABEL, image]))
    return parts


def service_commands(commands: Iterable[str], services: Iterable[str]) -> list[str]:
    parts = [probe_section_command("commands")]
    command_list = " ".join(q(name) for name in commands)
    if command_list:
        parts.append(f"for c in {command_list}; do command -v \"$c\" >/dev/null 2>&1 && "
                     "echo \"$c\"; done; true")
    parts.append(probe_section_command("services"))
    service_list = " ".join(q(name) for name in services)
    if service_list:
        # The names, then one systemctl call for every unit (is-active and is-enabled per
        # unit were two each: issue 29): a block of properties per name, in their order.
        parts.append(f"echo {service_list}; systemctl show --property=Id"
                     " --property=ActiveState --property=UnitFileState --"
                     f" {service_list} 2>/dev/null; true")
    return parts


_UNIT_TYPES = {"service", "socket", "target", "device", "mount", "automount", "swap", "timer",
               "path", "slice", "scope"}


def _services(lines: list[str]) -> dict[str, tuple[bool, bool]]:
    """(active, enabled) per unit name, as `systemctl is-active` and `is-enabled` answer:
    active only in ActiveState "active", enabled only in UnitFileState "enabled", and not
    when the name is an alias of another unit (its Id differs: is-enabled says "alias")."""
    if not lines:
        return {}
    names = lines[0].split()
    blocks: list[dict[str, str]] = [{}]
    for line in lines[1:]:
        key, sep, value = line.strip().partition("=")
        if sep:
            blocks[-1][key] = value
        elif blocks[-1]:
            blocks.append({})
    found = {}
    for index, name in enumerate(names):
        block = blocks[index] if index < len(blocks) else {}
        unit = name if name.rpartition(".")[2] in _UNIT_TYPES else f"{name}.service"
        found[name] = (block.get("ActiveState") == "active",
                       block.get("UnitFileState") == "enabled" and block.get("Id") == unit)
    return found


def resolve_commands(names: Iterable[str]) -> list[str]:
    """Each name's addresses as the host resolves it (DNS, /etc/hosts: nsswitch), one
    `NAME ADDRESS` line each; a name that resolves nowhere prints nothing."""
    parts = [probe_section_command("resolve")]
    name_list = " ".join(q(name) for name in names)
    if name_list:
        parts.append(f"for n in {name_list}; do getent ahosts \"$n\" 2>/dev/null | "
                     "while read -r a _; do echo \"$n $a\"; done; done; true")
    return parts


def probe_command(*, files: Iterable[str] = (), dirs: Iterable[str] = (),
                  container: str | None = None, image: str | None = None,
                  htpasswd: str | None = None, login_marker: str | None = None,
                  commands: Iterable[str] = (), services: Iterable[str] = (),
                  listings: Iterable[str] = (), resolve: Iterable[str] = ()) -> str:
    parts = _ENGINE_COMMANDS + path_commands(files, dirs) + docker_commands(container, image)
    parts.append(probe_section_command("htpasswd"))
    if htpasswd:
        parts.append(f"cat {q(htpasswd)} 2>/dev/null || true")
    parts += [probe_section_command("auths"), AUTHS_COMMAND,
              probe_section_command("login_marker")]
    if login_marker:
        parts.append(f"cat {q(login_marker)} 2>/dev/null || true")
    parts += [probe_section_command("hosts"), HOSTS_COMMAND]
    parts += service_commands(commands, services) + entries_commands(listings)
    resolve = list(resolve)
    return "; ".join(parts + (resolve_commands(resolve) if resolve else []))


def split_sections(lines: Iterable[str], marker_text: str = _SECTION) -> dict[str, list[str]]:
    """Output lines of a probe command, by the section markers it echoed."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        # A file without a final newline leaves the next marker at the end of its last line.
        before, marker, after = line.partition(marker_text)
        if marker:
            if before and current is not None:
                current.append(before)
            current = sections.setdefault(after.strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def _label_value(text: str) -> str:
    """A label read through a template: "<no value>" (a map without the key) is none."""
    return "" if text.strip() == "<no value>" else text.strip()


def _files(sums: list[str], modes: list[str]) -> dict[str, FileState]:
    """sha256sum's "SHA  PATH" lines and stat's "MODE OWNER GROUP PATH" lines, by path. (A
    path with a backslash or a line break would come escaped from sha256sum: the kit's paths
    have neither, settings refuse them.)"""
    found = {}
    for line in sums:
        sha, sep, path = line.partition("  ")
        if sep and path:
            found[path] = sha
    files = {}
    for line in modes:
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[3] in found:
            mode, owner, group, path = parts
            files[path] = FileState(sha256=found[path], mode=mode, owner=owner, group=group)
    return files


def _inspected(lines: list[str]) -> dict | None:
    """The engine's JSON (engine_get_command), or None when the lines are the CLI's."""
    text = "\n".join(lines).strip()
    if not text.startswith("{"):
        return None
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _labels(found: dict) -> dict:
    return (found.get("Config") or {}).get("Labels") or {}


def _container(lines: list[str]) -> ContainerState | None:
    """The container from the engine's JSON (no "State": {"message": "No such container"})
    or from the CLI's "SPEC|RUNNING|IMAGE|VERSION" line (nothing: no such container)."""
    found = _inspected(lines)
    if found is not None:
        if not isinstance(found.get("State"), dict):
            return None
        labels = _labels(found)
        return ContainerState(spec_hash=str(labels.get(_SPEC_LABEL, "")),
                              running=found["State"].get("Running") is True,
                              image=str((found.get("Config") or {}).get("Image", "")),
                              version_label=str(labels.get(_VERSION_KEY, "")))
    piped = [line for line in lines if "|" in line]
    if not piped:
        return None
    spec, running, image, label = (piped[0].split("|") + [""] * 4)[:4]
    return ContainerState(spec_hash=_label_value(spec), running=running == "true", image=image,
                          version_label=_label_value(label))


def _image(lines: list[str]) -> tuple[str | None, str]:
    """(Id, OCI version label) from the engine's JSON ({"message": "No such image"}: no Id)
    or from the CLI's "ID|VERSION" line."""
    found = _inspected(lines)
    if found is not None:
        return (str(found.get("Id") or "") or None,
                str(_labels(found).get(_VERSION_KEY, "")) if found.get("Id") else "")
    image_id, _, label = "".join(lines).strip().partition("|")
    return image_id or None, _label_value(label)


def parse_probe(lines: Iterable[str]) -> HostState:
    sections = split_sections(lines)
    state = HostState()
    os_lines = [*sections.get("os", []), "", "", ""]
    state.os = OSInfo(id=os_lines[0].strip() or "unknown", id_like=os_lines[1].strip(),
                      codename=os_lines[2].strip())
    tools = {line.strip() for line in sections.get("tools", [])}
    state.docker_installed = "docker" in tools
    state.curl_installed = "curl" in tools
    unit = dict(line.partition("=")[::2] for line in tools if "=" in line)
    state.docker_active = unit.get("ActiveState") in ("active", "reloading")
    state.docker_enabled = unit.get("UnitFileState") in _ENABLED_STATES
    state.server_version = parse_engine_version(sections.get("server_version", []))
    daemon_lines = sections.get("daemon_json", [])
    state.daemon_json = "\n".join(daemon_lines) if daemon_lines else None
    state.files = _files(sections.get("files", []), sections.get("modes", []))
    for line in sections.get("dirs", []):
        mode, _, path = line.partition(" ")
        if path:
            state.dirs[path] = mode
    state.container = _container(sections.get("container", []))
    state.image_id, state.image_version_label = _image(sections.get("image", []))
    state.htpasswd = "".join(line + "\n" for line in sections.get("htpasswd", []))
    state.docker_auths = [line.strip() for line in sections.get("auths", []) if line.strip()]
    state.login_marker = "".join(line + "\n" for line in sections.get("login_marker", []))
    state.hosts_lines = [line for line in sections.get("hosts", []) if line.strip()]
    state.commands = {line.strip() for line in sections.get("commands", []) if line.strip()}
    state.services = _services(sections.get("services", []))
    for line in sections.get("entries", []):
        folder, _, name = line.rpartition("/")
        if folder and name:
            state.entries.setdefault(folder, set()).add(name)
    for line in sections.get("resolve", []):
        name, _, address = line.strip().partition(" ")
        known = state.resolved.setdefault(name, []) if name and address else []
        if address and address not in known:
            known.append(address)
    return state


class RegistryHostState(FactBase):
    """Snapshot of everything registry-kit manages on a host (see module docstring)."""

    def command(self, files=(), dirs=(), container=None, image=None, htpasswd=None,
                login_marker=None, commands=(), services=(), listings=(), resolve=()):
        return probe_command(files=files, dirs=dirs, container=container, image=image,
                             htpasswd=htpasswd, login_marker=login_marker, commands=commands,
                             services=services, listings=listings, resolve=resolve)

    def process(self, output):
        return parse_probe(output)

    @staticmethod
    def default():
        return HostState()


class EngineVersion(FactBase):
    """The engine's (server's) version, not the client's: `docker info` ServerVersion."""

    def command(self):
        return "docker info --format '{{.ServerVersion}}' 2>/dev/null || true"

    def process(self, output):
        return "".join(output).strip() or None


# --- status.py: each role's read-only status command (its sections), run as one command ---

STATUS_SECTION = "@@registry-kit-status:"


def section_command(name: str) -> str:
    """The marker before a status section's output (roles' status_command)."""
    return f"echo {q(STATUS_SECTION + name)}"


def parse_status(lines: Iterable[str]) -> dict[str, list[str]]:
    return split_sections(lines, STATUS_SECTION)


def first_line(sections: dict[str, list[str]], name: str) -> str:
    """A status section's output as one stripped string."""
    return "".join(sections.get(name, [])).strip()
