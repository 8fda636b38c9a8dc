"""Settings: group_data -> host.data -> one typed, frozen Settings object, validated once.

This is the only module that reads host data. Every other module takes a Settings
argument. A bad value raises SettingsError with one line naming the host, the key, the
value and what is allowed, before any host is touched. Secrets (passwords, the http
secret, storage keys) are read here from the environment or from files on the control
machine and wrapped in Secret so they never show in a repr or a log line.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry_kit.model import access
from registry_kit.model.registry_version import RegistryVersionError, major_from_tag, resolve
from registry_kit.model.versions import is_valid_version

# The package's defaults (a module of plain literals, read fresh for every run).
DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "defaults.py"

TLS_MODES = ("self-signed", "provided", "none")
INSTALL_METHODS = ("distro", "docker-ce", "none")
LOG_LEVELS = ("error", "warn", "info", "debug")
STORAGE_DRIVERS = ("filesystem", "s3", "azure", "gcs", "inmemory")
# Keys a storage driver needs before the registry can work; the registry itself starts
# without them and fails every upload later.
STORAGE_REQUIRED = {
    "filesystem": (),
    "s3": ("bucket", "region"),
    "azure": ("accountname", "container"),
    "gcs": ("bucket",),
    "inmemory": (),
}
# Storage parameters that are secrets: given as <key>_env or <key>_file, never inline.
STORAGE_SECRETS = {"s3": ("accesskey", "secretkey"), "azure": ("accountkey",), "gcs": ()}
LB_MODES = ("passthrough", "terminate")
# Folders the operating system or other software own: the kit chmods the folders it is
# given and teardown removes them, so none of these may be registry_config_dir or
# registry_data_dir. A dedicated folder below them is fine (/srv/registry).
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/lost+found", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/snap",
    "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log", "/var/cache",
    "/var/spool", "/var/opt", "/var/mail", "/var/local", "/var/backups", "/var/www",
    "/etc/default", "/etc/registry-kit-client", "/usr/local", "/usr/local/lib",
})
# ...and folders whose whole subtree belongs to someone else (or vanishes on reboot).
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                "/run", "/sbin", "/sys", "/tmp", "/usr", "/var/tmp", "/var/run", "/var/lock",
                "/var/log", "/var/cache", "/var/spool", "/var/lib/docker",
                "/var/lib/containerd", "/var/lib/dpkg", "/var/lib/apt", "/var/lib/systemd",
                "/etc/docker", "/etc/ssl", "/etc/pki", "/etc/systemd", "/etc/apt",
                "/etc/ca-certificates", "/etc/registry-kit-client")
# Characters a host path may hold: it reaches shell commands (quoted), docker --mount
# (comma-separated, so no commas), systemd units and scripts.
_HOST_PATH_RE = re.compile(r"(/[A-Za-z0-9._@+-]+)+")
# Storage parameters the kit sets itself (the data folder is registry_data_dir).
STORAGE_OWNED_KEYS = {"filesystem": ("rootdirectory",)}
BCRYPT_MAX_BYTES = 72  # bcrypt ignores everything past 72 bytes: refuse rather than truncate

# Every pattern here is used with fullmatch: a bare `$` would also accept a trailing newline.
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# systemd OnCalendar: letters, digits, and * - : , . / ~ space; systemd-analyze checks the rest.
# Words separated by single spaces (the timer unit's line is written as it is).
_CALENDAR_RE = re.compile(r"(?=.{1,100}\Z)[A-Za-z0-9*][A-Za-z0-9*:,./~-]*( [A-Za-z0-9*:,./~-]+)*")
_CACHE_PASSWORD_RE = re.compile(r"[!#-&(-\[\]-~]{16,256}")  # printable, no space ' " \\
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# distribution/reference grammar, simplified: [domain[:port]/]path[:tag][@digest]
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REF_DOMAIN = rf"(?:{_REF_LABEL}(?:\.{_REF_LABEL})*(?::[0-9]+)?)"
# Docker's package repository: https, a host name, then a plain path (it is written into an
# apt/dnf source line and fetched with curl).
_REPO_URL_RE = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~+-]+)*/?")
_IMAGE_REF_RE = re.compile(
    rf"(?:{_REF_DOMAIN}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class SettingsError(ValueError):
    """A bad setting. str() is the one line shown to the user."""


class SettingsRefused(SystemExit):
    """Stops a pyinfra run on a bad setting with exactly one line on stderr and exit code 1.

    pyinfra prints a DeployError as "pyinfra error in <the kit's file> line N: ...", which
    names the kit's source instead of the setting; a SystemExit with a message is printed
    as the message alone, after pyinfra has disconnected (nothing has run by then)."""

    def __init__(self, error: SettingsError) -> None:
        super().__init__(str(error))


class Secret:
    """A secret value that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_T = TypeVar("_T")


def masked_repr(*names: str) -> Callable[[type[_T]], type[_T]]:
    """A class decorator, above @dataclass: its repr shows *** for the named fields (which
    hold a secret or something derived from one) when they are set."""
    def decorate(cls: type[_T]) -> type[_T]:
        def __repr__(self: Any) -> str:
            shown = []
            for item in dataclasses.fields(self):
                value = getattr(self, item.name)
                if item.name in names:
                    shown.append(f"{item.name}=***" if value else f"{item.name}={value!r}")
                elif item.repr:
                    shown.append(f"{item.name}={value!r}")
            return f"{type(self).__qualname__}({', '.join(shown)})"
        cls.__repr__ = __repr__  # type: ignore[method-assign]
        return cls
    return decorate


@masked_repr("password_hash")
@dataclass(frozen=True)
class User:
    name: str
    password: Secret | None  # None when only a ready bcrypt hash was given
    password_hash: str | None = None


@dataclass(frozen=True)
class Storage:
    driver: str
    params: Mapping[str, Any] = field(default_factory=dict)  # secrets already resolved
    secret_keys: tuple[str, ...] = ()  # which params hold secrets (for masking)


@dataclass(frozen=True)
class Settings:
    host: str
    registry_domain: str
    registry_port: int
    registry_image: str
    registry_image_archive: Path | None
    registry_container_name: str
    registry_config_dir: str
    registry_data_dir: str
    registry_storage: Storage
    registry_delete_enabled: bool
    registry_http_secret: Secret | None
    registry_log_level: str
    registry_debug_addr: str | None
    registry_verify_timeout: int
    registry_tls_mode: str
    registry_tls_cert_file: Path | None
    registry_tls_key_file: Path | None
    registry_tls_ca_file: Path | None
    registry_tls_extra_names: tuple[str, ...]
    registry_tls_extra_ips: tuple[str, ...]
    registry_tls_none_acknowledged: bool
    registry_anonymous_acknowledged: bool
    registry_bind_address: str | None
    registry_users: tuple[User, ...]
    registry_allow_plain_passwords: bool
    registry_client_login_user: str | None
    registry_client_system_trust: bool
    registry_client_hosts_entries: Mapping[str, str]
    registry_state_dir: Path
    docker_install_method: str
    docker_ce_repo_url: str | None
    docker_min_version: str
    docker_registry_mirrors: tuple[str, ...]
    docker_live_restore: bool | None
    registry_purge_data: bool = False
    registry_gc_dry_run: bool = False
    registry_gc_delete_untagged: bool = False
    registry_gc_schedule: str | None = None
    docker_remove_on_teardown: bool = False
    # Scale-out (registry_lb, registry_cache); see registry_kit.model.topology.
    registry_internal_address: str = ""
    registry_storage_redirect_disabled: bool = False
    registry_storage_check: bool = True
    registry_lb_mode: str = "passthrough"
    registry_lb_stats: str | None = None
    registry_lb_drain_timeout: int = 10
    registry_cache_port: int = 6379
    registry_cache_password: Secret | None = None
    registry_cache_db: int = 0
    registry_cache_maxmemory: str = "256mb"
    # A floating address across the registry_lb hosts (keepalived); see registry_kit.keepalived.
    registry_lb_vip: str | None = None
    registry_lb_vip_interface: str | None = None
    registry_lb_vrrp_password: Secret | None = None
    registry_lb_vrrp_router_id: int = 51
    registry_lb_vrrp_unicast: bool = False
    registry_packages_remove_on_teardown: bool = False
    # The registry's major version when registry_image's tag does not tell it (see
    # registry_kit.model.registry_version); None: from the tag or the image's label.
    registry_version: int | None = None
    # Access control per repository (registry_kit.model.access); None: every user may do all.
    registry_access: access.Policy | None = None
    registry_token_port: int = 5443
    # Backup and restore (registry_kit.backup, registry_kit.restore).
    registry_backup_dir: str | None = None
    registry_backup_host: str | None = None
    registry_backup_verify: bool = False
    registry_backup_keep: int = 7
    registry_backup_tree_max_bytes: int = 4 << 30
    registry_restore_from: str | None = None
    registry_restore_generation: str | None = None
    # A registry or a pull-through cache of another one (registry_kit.model.pull_through).
    registry_mode: str = "registry"
    registry_proxy_remoteurl: str | None = None
    registry_proxy_username: str | None = None
    registry_proxy_password: Secret | None = None
    registry_proxy_ttl: str | None = None
    registry_proxy_anonymous_acknowledged: bool = False
    registry_proxy_plaintext_acknowledged: bool = False
    # The registry web page (registry_kit.roles.webui).
    registry_webui_enabled: bool = False
    registry_webui_port: int = 5444

    @property
    def tls_enabled(self) -> bool:
        return self.registry_tls_mode != "none"

    @property
    def registry_address(self) -> str:
        """What clients type before the image name: no ":443" on the TLS default port."""
        if self.tls_enabled and self.registry_port == 443:
            return url_host(self.registry_domain)
        return host_port(self.registry_domain, self.registry_port)

    @property
    def registry_url(self) -> str:
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{host_port(self.registry_domain, self.registry_port)}"

    def user(self, name: str) -> User | None:
        return next((user for user in self.registry_users if user.name == name), None)


def known_keys() -> dict[str, Any]:
    """The settings and their defaults, read from the package (registry_kit/defaults.py)."""
    namespace: dict[str, Any] = {}
    exec(compile(DEFAULTS_FILE.read_text(), str(DEFAULTS_FILE), "exec"), namespace)
    return {
        key: value
        for key, value in namespace.items()
        if key.startswith(("registry_", "docker_"))
    }


def _is_secret_key(key: str) -> bool:
    return key in ("registry_users", "registry_http_secret", "registry_cache_password",
                   "registry_lb_vrrp_password", "registry_proxy_password",
                   "registry_storage")


def _fail(host: str, key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"{host}: setting {key}={value!r} is not allowed: {allowed}")


class _Reader:
    """Reads and checks one host's data; each method returns a typed value or raises."""

    def __init__(self, host: str, data: Mapping[str, Any], base_dir: Path) -> None:
        self.host = host
        self.data = data
        self.base_dir = base_dir

    def raw(self, key: str) -> Any:
        return self.data[key]

    def fail(self, key: str, value: Any, allowed: str) -> SettingsError:
        return _fail(self.host, key, value, allowed)

    def boolean(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self.fail(key, value, "True or False")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key)
        if value not in choices:
            raise self.fail(key, value, "one of " + ", ".join(choices))
        return str(value)

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.raw(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, value, f"a whole number from {low} to {high}")
        return value

    def host_dir(self, key: str) -> str:
        """A folder on the hosts that the kit creates, chmods and (teardown) removes."""
        value = self.raw(key)
        path = value.rstrip("/") if isinstance(value, str) and value != "/" else value
        why = check_host_path(path) if isinstance(path, str) else "an absolute path"
        if why is not None:
            raise self.fail(key, value, why)
        return str(path)

    def local_path(self, key: str, value: Any, *, must_exist: bool = True) -> Path:
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise self.fail(key, value, "a path on the control machine")
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.is_file():
            raise self.fail(key, value, f"an existing file on the control machine ({path})")
        return path

    def optional_local_file(self, key: str) -> Path | None:
        value = self.raw(key)
        return None if value is None else self.local_path(key, value)

    def string_list(self, key: str, check: Any, allowed: str) -> tuple[str, ...]:
        value = self.raw(key)
        if not isinstance(value, list | tuple):
            raise self.fail(key, value, f"a list of {allowed}")
        for item in value:
            if not isinstance(item, str) or not check(item):
                raise self.fail(key, item, allowed)
        return tuple(value)

    def text(self, key: str, pattern: re.Pattern[str], allowed: str, *,
             optional: bool = False) -> str | None:
        """A string matching `pattern` as a whole (None allowed when `optional`)."""
        value = self.raw(key)
        if value is None and optional:
            return None
        if not (isinstance(value, str) and pattern.fullmatch(value)):
            raise self.fail(key, value, allowed)
        return value

    def clean_secret(self, key: str, source: Any, secret: Secret) -> Secret:
        """A secret ends up in files (config.yml, htpasswd, redis.conf) and on stdin: one
        line of text. The value itself is never shown, only where it came from."""
        if unsafe_character(secret.reveal()) is not None:
            raise self.fail(key, source, "a secret without line breaks or control characters")
        return secret

    def optional_secret(self, key: str, what: str) -> Secret | None:
        """None, or the secret a {'env': NAME} / {'file': PATH} setting names."""
        source = self.raw(key)
        if source is None:
            return None
        if not isinstance(source, Mapping):
            raise self.fail(key, "***", "{'env': NAME} or {'file': PATH}")
        return self.secret_source(key, source, what)

    def secret_source(self, key: str, source: Mapping[str, Any], what: str) -> Secret:
        """Resolve {"env": NAME} / {"file": PATH} (or <what>_env / <what>_file keys)."""
        env = source.get("env", source.get(f"{what}_env"))
        file = source.get("file", source.get(f"{what}_file"))
        if (env is None) == (file is None):
            raise self.fail(key, dict(source), f"exactly one of {what}_env or {what}_file")
        if env is not None:
            if not isinstance(env, str) or not env:
                raise self.fail(key, env, "the name of an environment variable")
            value = os.environ.get(env)
            if value is None:
                raise self.fail(key, env, "an environment variable that is set")
            return self.clean_secret(key, env, Secret(value))
        path = self.local_path(key, file)
        try:
            # One trailing newline is how editors save files; it is not part of the secret.
            return self.clean_secret(key, file, Secret(
                path.read_text().removesuffix("\n").removesuffix("\r")))
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise self.fail(key, file, f"a readable text file ({reason})") from None


def is_ip(text: object) -> bool:
    """An IPv4 or IPv6 address. Scope IDs (fe80::1%eth0) are refused: Python accepts any
    text after the '%', newlines included, and no file the kit writes has room for it."""
    if not isinstance(text, str) or "%" in text:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_hostname(text: object) -> bool:
    return isinstance(text, str) and bool(_HOSTNAME_RE.fullmatch(text))


def host_port(address: str, port: int) -> str:
    """address:port as URLs, curl and `docker -p` want it: IPv6 in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def is_image_reference(text: object) -> bool:
    return isinstance(text, str) and len(text) <= 255 and bool(_IMAGE_REF_RE.fullmatch(text))


def is_mirror_url(text: object) -> bool:
    """http(s)://HOST[:PORT][/] for daemon.json registry-mirrors; HOST a name or an IP
    (IPv6 in brackets)."""
    if not isinstance(text, str):
        return False
    match = re.fullmatch(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?/?", text)
    if not match:
        return False
    host = match[1]
    if host.startswith("["):
        return ":" in host and is_ip(host[1:-1])
    return is_hostname(host) or is_ip(host)


def unsafe_character(text: str) -> str | None:
    """The first character no setting may hold: control characters (newline, NUL, ESC...),
    line and paragraph separators (YAML reads them as line breaks), format characters
    (invisible), surrogates. None when the text is clean."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            return char
    return None


def _find_unsafe(value: Any) -> str | None:
    """The first string inside a setting's value (keys included) with an unsafe character."""
    if isinstance(value, str):
        return value if unsafe_character(value) is not None else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = _find_unsafe(key) or _find_unsafe(item)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for item in value:
            found = _find_unsafe(item)
            if found is not None:
                return found
    return None


def check_host_path(path: str) -> str | None:
    """Why `path` cannot be a folder the kit owns on a host, or None when it can."""
    system = ("a folder of the registry's own, not one the operating system or other "
              "software owns (e.g. /srv/registry, /var/lib/registry-kit/data)")
    if path in SYSTEM_DIRS:
        return system
    if not _HOST_PATH_RE.fullmatch(path) or any(part in (".", "..")
                                                 for part in path.split("/")):
        return ("an absolute path of letters, digits and . _ @ + - between slashes, "
                "without '.' or '..' parts")
    if any(path == tree or path.startswith(tree + "/") for tree in SYSTEM_TREES):
        return system
    return None


def check_unknown_keys(host: str, data: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    """Typos in the kit's own keys: every unknown registry_* key, and a docker_* key only when
    it is one slip away from one of the kit's (other deploys use docker_* keys of their own)."""
    for key in data:
        if key in known or not key.startswith(("registry_", "docker_")):
            continue
        close = difflib.get_close_matches(key, list(known), n=1,
                                          cutoff=0.6 if key.startswith("registry_") else 0.9)
        if key.startswith("docker_") and not close:
            continue
        hint = f"did you mean {close[0]}?" if close else "see registry_kit/defaults.py"
        raise _fail(host, key, data[key], f"unknown setting; {hint}")


def _read_users(r: _Reader, allow_plain: bool) -> tuple[User, ...]:
    key = "registry_users"
    value = r.raw(key)
    if not isinstance(value, list | tuple):
        raise r.fail(key, value, "a list of {'name': ..., 'password_env'|'password_file'|...}")
    users: list[User] = []
    for entry in value:
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise r.fail(key, entry, "a mapping with a 'name'")
        name = entry["name"]
        if not isinstance(name, str) or not _USER_RE.fullmatch(name):
            raise r.fail(key, name, "a user name of letters, digits, '.', '_', '@', '-' (no ':')")
        if any(user.name == name for user in users):
            raise r.fail(key, name, "each user name once")
        sources = [s for s in ("password_env", "password_file", "password_hash", "password")
                   if s in entry]
        unknown = set(entry) - {"name", "password_env", "password_file", "password_hash",
                                "password"}
        if unknown or len(sources) != 1:
            raise r.fail(key, {k: ("***" if "password" in k else v) for k, v in entry.items()},
                         f"user {name!r}: exactly one of password_env, password_file, "
                         "password_hash")
        source = sources[0]
        if source == "password_hash":
            hashed = entry[source]
            if not isinstance(hashed, str) or not _BCRYPT_RE.fullmatch(hashed):
                raise r.fail(key, hashed, f"user {name!r}: a bcrypt hash ($2y$/$2b$/$2a$); "
                             "the registry ignores other hashes")
            users.append(User(name=name, password=None, password_hash=hashed))
            continue
        if source == "password":
            if not allow_plain:
                raise r.fail(key, "***", f"user {name!r}: password_env, password_file or "
                             "password_hash (plain passwords need "
                             "registry_allow_plain_passwords=True)")
            secret = Secret(str(entry["password"]))
        else:
            secret = r.secret_source(key, {source: entry[source]}, "password")
        raw = secret.reveal()
        where = f"user {name!r}: password from {source}={entry[source]!r}" if source != \
            "password" else f"user {name!r}: password"
        if not raw:
            raise r.fail(key, "<empty>", f"{where} must not be empty")
        if len(raw.encode()) > BCRYPT_MAX_BYTES:
            raise r.fail(key, f"<{len(raw.encode())} bytes>",
                         f"{where} must be at most {BCRYPT_MAX_BYTES} bytes (bcrypt's limit)")
        if "\n" in raw:
            raise r.fail(key, "<multi-line>", f"{where} must be one line")
        users.append(User(name=name, password=secret))
    return tuple(users)


def _read_storage(r: _Reader) -> Storage:
    key = "registry_storage"
    value = r.raw(key)
    if not isinstance(value, Mapping) or "driver" not in value:
        raise r.fail(key, value, "a mapping with a 'driver'")
    driver = value["driver"]
    if driver not in STORAGE_DRIVERS:
        raise r.fail(key, driver, "driver one of " + ", ".join(STORAGE_DRIVERS))
    params: dict[str, Any] = {}
    secret_keys: list[str] = []
    secrets = STORAGE_SECRETS.get(driver, ())
    for name, item in value.items():
        if name == "driver":
            continue
        if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", name)):
            raise r.fail(key, name, f"{driver} parameter names of lower-case letters, digits "
                         "and '_'")
        if name in STORAGE_OWNED_KEYS.get(driver, ()):
            raise r.fail(key, {name: item}, f"no {name} for {driver} storage: the kit sets it "
                         "(a path inside the container); choose the folder on the server "
                         "with registry_data_dir")
        base = name.removesuffix("_env").removesuffix("_file")
        if base in secrets:
            if base == name:
                raise r.fail(key, f"{name}=***", f"{driver} {base} from {base}_env or "
                             f"{base}_file, never inline")
            params[base] = r.secret_source(key, {name: item}, base)
            secret_keys.append(base)
        else:
            params[name] = item
    for required in STORAGE_REQUIRED[driver]:
        if not params.get(required):
            raise r.fail(key, {k: v for k, v in value.items() if k not in secrets},
                         f"{driver} storage needs '{required}'")
    return Storage(driver=driver, params=params, secret_keys=tuple(secret_keys))


def _read_registry_version(r: _Reader, image: str) -> int | None:
    """registry_version: None, or the major version 2 or 3 (an int; "2"/"3" as written in
    image tags are accepted too). Where the image's tag names a version the two must agree,
    and a tag naming another major version is refused here, before any host is touched.
    Whether the version can be told at all is known only after the probe (the image's label
    may tell it): registry_kit.jobs.deploy checks that."""
    value = r.raw("registry_version")
    if value is None:
        version = None
    elif (type(value) is int and value in (2, 3)) or value in ("2", "3"):
        version = int(value)
    else:
        raise r.fail("registry_version", value, "None, 2 or 3 (the registry's major version, "
                     "for an image whose tag does not tell it)")
    try:
        # Without a setting and without a version tag, the label may still tell (later).
        if version is not None or major_from_tag(image) is not None:
            resolve(r.host, image, version)
    except RegistryVersionError as error:
        raise SettingsError(str(error)) from None
    return version


def _read_loopback_address(r: _Reader, key: str, port: int) -> str | None:
    """None or 127.0.0.1:PORT on a port other than the registry's (debug and stats pages
    that must not be reachable from other hosts)."""
    value = r.raw(key)
    if value is not None:
        match = re.fullmatch(r"127\.0\.0\.1:(\d{1,5})", str(value))
        if not (isinstance(value, str) and match and 1 <= int(match[1]) <= 65535
                and int(match[1]) != port):
            raise r.fail(key, value, "None or 127.0.0.1:PORT (1-65535, not registry_port)")
    return value


def _read_webui(r: _Reader, port: int, tls_mode: str, debug_addr: str | None,
                token_port: int | None) -> dict[str, Any]:
    """The web page (registry_kit.roles.webui): its own port, over the registry's TLS
    only. token_port: the token server's, when access rules are on."""
    enabled = r.boolean("registry_webui_enabled")
    webui_port = r.integer("registry_webui_port", 1, 65535)
    taken = {port} | ({int(debug_addr.rsplit(":", 1)[1])} if debug_addr else set())
    if token_port is not None:
        taken.add(token_port)
    if webui_port in taken:
        raise r.fail("registry_webui_port", webui_port, "a port other than registry_port, "
                     "registry_token_port and registry_debug_addr's")
    if enabled and tls_mode == "none":
        raise r.fail("registry_webui_enabled", True, "False when registry_tls_mode='none' "
                     "(the page sends passwords: it is served over the registry's TLS only)")
    return {"registry_webui_enabled": enabled, "registry_webui_port": webui_port}


def _read_scale_out(r: _Reader, data: Mapping[str, Any], port: int) -> dict[str, Any]:
    """Scale-out settings (registry_kit.model.topology checks how hosts fit together)."""
    address = r.raw("registry_internal_address")
    if address is None:
        # Where the control machine reaches the host is the best default guess.
        address = data.get("ssh_hostname") or r.host
    if not isinstance(address, str) or not (is_hostname(address) or is_ip(address)):
        raise r.fail("registry_internal_address", address,
                     "None or a DNS name or IP address other kit hosts reach this host at")
    stats = _read_loopback_address(r, "registry_lb_stats", port)
    password = r.optional_secret("registry_cache_password", "password")
    if password is not None and not _CACHE_PASSWORD_RE.fullmatch(password.reveal()):
        raise r.fail("registry_cache_password", "***", "16 to 256 characters, without "
                     "spaces, quotes or backslashes (it goes into redis.conf)")
    maxmemory = r.raw("registry_cache_maxmemory")
    if not (isinstance(maxmemory, str) and re.fullmatch(r"[1-9][0-9]{0,5}(kb|mb|gb)", maxmemory)):
        raise r.fail("registry_cache_maxmemory", maxmemory, "a size like 64mb or 1gb")
    return {
        "registry_internal_address": address,
        "registry_storage_redirect_disabled": r.boolean("registry_storage_redirect_disabled"),
        "registry_storage_check": r.boolean("registry_storage_check"),
        "registry_lb_mode": r.choice("registry_lb_mode", LB_MODES),
        "registry_lb_stats": stats,
        "registry_lb_drain_timeout": r.integer("registry_lb_drain_timeout", 0, 600),
        "registry_cache_port": r.integer("registry_cache_port", 1, 65535),
        "registry_cache_password": password,
        "registry_cache_db": r.integer("registry_cache_db", 0, 15),
        "registry_cache_maxmemory": maxmemory,
        **_read_floating_address(r),
    }


_VIP_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?")
_INTERFACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # a Linux interface name (IFNAMSIZ)
# keepalived.conf reads # ! " ' { } \\ as syntax; VRRP PASS auth is at most 8 characters.
_VRRP_PASSWORD_RE = re.compile(r"[$-&(-\[\]-z|~]{1,8}")


def _read_floating_address(r: _Reader) -> dict[str, Any]:
    """registry_lb_vip and its VRRP settings (registry_kit.keepalived)."""
    vip = r.raw("registry_lb_vip")
    if vip is not None:
        match = _VIP_RE.fullmatch(vip) if isinstance(vip, str) else None
        if not (match and is_ip(match[1]) and (match[2] is None or 8 <= int(match[2]) <= 32)):
            raise r.fail("registry_lb_vip", vip, "None or an IPv4 address, optionally with "
                         "its prefix length (8-32), like 10.0.0.100 or 10.0.0.100/24")
        address = ipaddress.ip_address(match[1])
        if address.is_loopback or address.is_multicast or address.is_unspecified:
            raise r.fail("registry_lb_vip", vip, "an address clients can reach (not "
                         "loopback, multicast or 0.0.0.0)")
    interface = r.raw("registry_lb_vip_interface")
    if interface is not None and not (isinstance(interface, str) and
                                      _INTERFACE_RE.fullmatch(interface)):
        raise r.fail("registry_lb_vip_interface", interface, "None (the interface whose network "
                     "holds registry_lb_vip) or a network interface name like eth0")
    password = r.optional_secret("registry_lb_vrrp_password", "password")
    if password is not None and not _VRRP_PASSWORD_RE.fullmatch(password.reveal()):
        raise r.fail("registry_lb_vrrp_password", "***", "1 to 8 characters (VRRP's "
                     "limit), printable, without spaces, quotes, backslashes, #, !, { or }")
    return {
        "registry_lb_vip": vip,
        "registry_lb_vip_interface": interface,
        "registry_lb_vrrp_password": password,
        "registry_lb_vrrp_router_id": r.integer("registry_lb_vrrp_router_id", 1, 255),
        "registry_lb_vrrp_unicast": r.boolean("registry_lb_vrrp_unicast"),
        "registry_packages_remove_on_teardown":
            r.boolean("registry_packages_remove_on_teardown"),
    }


REGISTRY_MODES = ("registry", "pull-through-cache")
# Backup folders: an absolute path of the characters host paths may hold (it reaches tar
# commands, quoted, on the control machine or a backup host).
_BACKUP_PATH_RE = re.compile(r"(/[A-Za-z0-9._@+-]+)+/?")
# A backup generation's folder name: its UTC time to the millisecond (sorts by age).
BACKUP_GENERATION_RE = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{3}Z")
_PROXY_TTL_RE = re.compile(r"[1-9][0-9]{0,5}(m|h)")
_PROXY_USER_RE = re.compile(r"[!#-&(-\[\]-~]{1,128}")  # printable, no space ' " \\


def _read_backup_and_mode(r: _Reader, users: Sequence[User], server: bool) -> dict[str, Any]:
    """backup.py / restore.py folders, and the pull-through cache settings."""
    found: dict[str, Any] = {}
    for key in ("registry_backup_dir", "registry_restore_from"):
        value = r.raw(key)
        if value is not None and not (isinstance(value, str) and _BACKUP_PATH_RE.fullmatch(value)
                                      and "/../" not in value + "/" and value != "/"):
            raise r.fail(key, value, "None or an absolute folder path (letters, digits, "
                         "'. _ @ + -' between slashes)")
        found[key] = value.rstrip("/") if isinstance(value, str) else None
    backup_host = r.raw("registry_backup_host")
    if backup_host is not None and not (isinstance(backup_host, str)
                                        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}",
                                                         backup_host)):
        raise r.fail("registry_backup_host", backup_host, "None (the control machine) or the "
                     "name of a host in the inventory")
    found["registry_backup_host"] = backup_host
    found["registry_backup_verify"] = r.boolean("registry_backup_verify")
    found["registry_backup_keep"] = r.integer("registry_backup_keep", 1, 1000)
    found["registry_backup_tree_max_bytes"] = r.integer("registry_backup_tree_max_bytes",
                                                        1 << 20, 1 << 40)
    generation = r.raw("registry_restore_generation")
    if generation is not None and not (isinstance(generation, str)
                                       and BACKUP_GENERATION_RE.fullmatch(generation)):
        raise r.fail("registry_restore_generation", generation, "None (the newest) or the "
                     "name of a generation folder, like 20260101T120000.000Z")
    found["registry_restore_generation"] = generation
    mode = r.choice("registry_mode", REGISTRY_MODES)
    remote_url = r.raw("registry_proxy_remoteurl")
    if remote_url is not None and not is_mirror_url(remote_url):
        raise r.fail("registry_proxy_remoteurl", remote_url, "None or the URL of the registry "
                     "to cache, like https://registry.example.com or http://10.0.0.5:5000")
    if mode == "pull-through-cache" and remote_url is None:
        raise r.fail("registry_proxy_remoteurl", None, "the URL of the registry to cache "
                     "when registry_mode='pull-through-cache'")
    username = r.raw("registry_proxy_username")
    if username is not None and not (isinstance(username, str)
                                     and _PROXY_USER_RE.fullmatch(username)):
        raise r.fail("registry_proxy_username", username, "None or a user name without "
                     "spaces or quotes")
    password = r.optional_secret("registry_proxy_password", "password")
    if (username is None) != (password is None):
        raise r.fail("registry_proxy_username", username, "set together with "
                     "registry_proxy_password (both or neither)")
    ttl = r.raw("registry_proxy_ttl")
    if ttl is not None and not (isinstance(ttl, str) and _PROXY_TTL_RE.fullmatch(ttl)):
        raise r.fail("registry_proxy_ttl", ttl, "None (the registry's 168h) or a duration "
                     "like 72h or 90m")
    anonymous = r.boolean("registry_proxy_anonymous_acknowledged")
    plaintext = r.boolean("registry_proxy_plaintext_acknowledged")
    if mode == "pull-through-cache" and username is not None:
        # The cache pulls with these credentials for whoever asks it: without users of its
        # own, anyone who reaches it reads the private upstream.
        if server and not users and not anonymous:
            raise r.fail("registry_proxy_username", username, "None on a cache without "
                         "registry_users: anyone who reaches the cache could pull the private "
                         "upstream's images with these credentials; add registry_users or set "
                         "registry_proxy_anonymous_acknowledged=True")
        if str(remote_url).lower().startswith("http://") and not plaintext:
            raise r.fail("registry_proxy_remoteurl", remote_url, "an https:// URL when "
                         "registry_proxy_username is set: the upstream password would cross "
                         "the network in clear; use https or set "
                         "registry_proxy_plaintext_acknowledged=True")
    found.update(registry_mode=mode, registry_proxy_remoteurl=remote_url,
                 registry_proxy_username=username, registry_proxy_password=password,
                 registry_proxy_ttl=ttl, registry_proxy_anonymous_acknowledged=anonymous,
                 registry_proxy_plaintext_acknowledged=plaintext)
    return found


def load(host: str, data: Mapping[str, Any], *, base_dir: Path | None = None,
         known: Mapping[str, Any] | None = None, server: bool = True) -> Settings:
    """Validate one host's data (defaults filled from the package's defaults) into Settings.
    `server`: the host runs a registry (registry_servers), so the open-registry check
    applies to it. Relative paths (the state folder, password and certificate files) are
    the user's: they resolve against `base_dir`, by default the current directory."""
    base_dir = Path.cwd() if base_dir is None else base_dir
    known = known if known is not None else known_keys()
    check_unknown_keys(host, data, known)
    merged = {**known, **{k: v for k, v in data.items() if k in known}}
    r = _Reader(host, merged, base_dir)
    # First, for every setting: no value reaches a file or a command with a line break,
    # NUL or another control character in it (repr shows them escaped, on one line).
    for key in sorted(merged):
        found = _find_unsafe(merged[key])
        if found is not None:
            shown = "***" if _is_secret_key(key) else found
            raise r.fail(key, shown, "text without line breaks or control characters")

    domain = r.raw("registry_domain")
    if not isinstance(domain, str) or not (is_hostname(domain) or is_ip(domain)):
        raise r.fail("registry_domain", domain,
                     "a DNS name or IP address, without scheme, port, path or spaces")
    port = r.integer("registry_port", 1, 65535)
    image = r.raw("registry_image")
    if not is_image_reference(image):
        raise r.fail("registry_image", image, "an image reference like registry:2, "
                     "registry:2.8.3 or host:5000/library/registry@sha256:<64 hex>")
    version = _read_registry_version(r, image)
    tls_mode = r.choice("registry_tls_mode", TLS_MODES)
    cert_file = key_file = ca_file = None
    if tls_mode == "provided":
        for name in ("registry_tls_cert_file", "registry_tls_key_file"):
            if r.raw(name) is None:
                raise r.fail(name, None, "a certificate/key file path when "
                             "registry_tls_mode='provided'")
        cert_file = r.optional_local_file("registry_tls_cert_file")
        key_file = r.optional_local_file("registry_tls_key_file")
        ca_file = r.optional_local_file("registry_tls_ca_file")
    users = _read_users(r, r.boolean("registry_allow_plain_passwords"))
    try:
        access_policy = access.parse(host, r.raw("registry_groups"),
                                     r.raw("registry_access_rules"), [u.name for u in users])
    except access.AccessError as error:
        raise SettingsError(str(error)) from None
    token_port = r.integer("registry_token_port", 1, 65535)
    if access_policy is not None and token_port == port:
        raise r.fail("registry_token_port", token_port, "a port other than registry_port "
                     "(the token server listens beside the registry)")
    anonymous = r.boolean("registry_anonymous_acknowledged")
    if server and not users and not anonymous:
        raise r.fail("registry_users", [], "at least one user: without users anyone who "
                     "reaches the port can push and overwrite images; set "
                     "registry_anonymous_acknowledged=True if that is what you want")
    bind_address = r.raw("registry_bind_address")
    if bind_address is not None and not is_ip(bind_address):
        raise r.fail("registry_bind_address", bind_address, "None (every address) or one "
                     "IP address of the server to publish the port on")
    acknowledged = r.boolean("registry_tls_none_acknowledged")
    if tls_mode == "none" and users and not acknowledged:
        raise r.fail("registry_tls_mode", "none", "plain HTTP with users sends passwords in "
                     "clear; set registry_tls_none_acknowledged=True or use TLS")

    login_user = r.raw("registry_client_login_user")
    if login_user is not None:
        user = next((u for u in users if u.name == login_user), None)
        if user is None or user.password is None:
            raise r.fail("registry_client_login_user", login_user,
                         "a name from registry_users with a password_env or password_file")

    http_secret = r.optional_secret("registry_http_secret", "secret")

    debug_addr = _read_loopback_address(r, "registry_debug_addr", port)

    hosts_entries = r.raw("registry_client_hosts_entries")
    if not isinstance(hosts_entries, Mapping) or not all(
            isinstance(k, str) and is_hostname(k) and isinstance(v, str) and is_ip(v)
            for k, v in hosts_entries.items()):
        raise r.fail("registry_client_hosts_entries", hosts_entries,
                     "a mapping of host name to IP address")

    config_dir = r.host_dir("registry_config_dir")
    data_dir = r.host_dir("registry_data_dir")
    if config_dir == data_dir or data_dir.startswith(config_dir + "/") or \
            config_dir.startswith(data_dir + "/"):
        raise r.fail("registry_data_dir", data_dir, "a folder apart from registry_config_dir "
                     f"({config_dir}): neither may hold the other")

    scale_out = _read_scale_out(r, data, port)
    install_method = r.choice("docker_install_method", INSTALL_METHODS)
    repo_url = r.raw("docker_ce_repo_url")
    if install_method == "docker-ce" and not (
            isinstance(repo_url, str) and _REPO_URL_RE.fullmatch(repo_url)):
        raise r.fail("docker_ce_repo_url", repo_url, "the https:// base URL of Docker's "
                     "package repository when docker_install_method='docker-ce'")
    min_version = r.raw("docker_min_version")
    # Strict: the engine-version parser is tolerant ("1.x" reads as 1.0.0), a setting is not.
    if not (is_valid_version(min_version) and re.fullmatch(r"\d+(\.\d+){0,2}", min_version)):
        raise r.fail("docker_min_version", min_version, "a version like 1.6.0")
    live_restore = r.raw("docker_live_restore")
    if live_restore is not None and not isinstance(live_restore, bool):
        raise r.fail("docker_live_restore", live_restore, "True, False or None")
    gc_schedule = r.raw("registry_gc_schedule")
    if gc_schedule is not None and not (isinstance(gc_schedule, str) and _CALENDAR_RE.fullmatch(
            gc_schedule)):
        raise r.fail("registry_gc_schedule", gc_schedule, "None or a systemd OnCalendar "
                     "expression like 'Sun *-*-* 03:00:00' or 'weekly'")
    webui = _read_webui(r, port, tls_mode, debug_addr,
                        token_port if access_policy is not None else None)
    remove_docker = r.boolean("docker_remove_on_teardown")
    if remove_docker and install_method == "none":
        raise r.fail("docker_remove_on_teardown", True, "False when docker_install_method="
                     "'none' (the kit did not install the engine)")
    state_dir = r.raw("registry_state_dir")
    if not isinstance(state_dir, str) or not state_dir:
        raise r.fail("registry_state_dir", state_dir, "a folder path on the control machine")
    archive = r.raw("registry_image_archive")
    container_name = r.raw("registry_container_name")
    if not isinstance(container_name, str) or not re.fullmatch(
            r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", container_name):
        raise r.fail("registry_container_name", container_name, "a Docker container name")

    return Settings(
        host=host,
        registry_domain=domain.lower(),
        registry_port=port,
        registry_image=image,
        registry_image_archive=None if archive is None
        else r.local_path("registry_image_archive", archive),
        registry_container_name=container_name,
        registry_config_dir=config_dir,
        registry_data_dir=data_dir,
        registry_storage=_read_storage(r),
        registry_delete_enabled=r.boolean("registry_delete_enabled"),
        registry_http_secret=http_secret,
        registry_log_level=r.choice("registry_log_level", LOG_LEVELS),
        registry_debug_addr=debug_addr,
        registry_verify_timeout=r.integer("registry_verify_timeout", 5, 600),
        registry_tls_mode=tls_mode,
        registry_tls_cert_file=cert_file,
        registry_tls_key_file=key_file,
        registry_tls_ca_file=ca_file,
        registry_tls_extra_names=r.string_list("registry_tls_extra_names", is_hostname,
                                               "DNS names"),
        registry_tls_extra_ips=r.string_list("registry_tls_extra_ips", is_ip, "IP addresses"),
        registry_tls_none_acknowledged=acknowledged,
        registry_anonymous_acknowledged=anonymous,
        registry_bind_address=bind_address,
        registry_users=users,
        registry_allow_plain_passwords=r.boolean("registry_allow_plain_passwords"),
        registry_client_login_user=login_user,
        registry_client_system_trust=r.boolean("registry_client_system_trust"),
        registry_client_hosts_entries=dict(hosts_entries),
        registry_state_dir=(base_dir / state_dir) if not Path(state_dir).is_absolute()
        else Path(state_dir),
        docker_install_method=install_method,
        docker_ce_repo_url=repo_url,
        docker_min_version=min_version,
        docker_registry_mirrors=r.string_list(
            "docker_registry_mirrors", is_mirror_url,
            "mirror URLs like https://mirror.example:5000"),
        docker_live_restore=live_restore,
        registry_purge_data=r.boolean("registry_purge_data"),
        registry_gc_dry_run=r.boolean("registry_gc_dry_run"),
        registry_gc_delete_untagged=r.boolean("registry_gc_delete_untagged"),
        registry_gc_schedule=gc_schedule,
        docker_remove_on_teardown=remove_docker,
        registry_version=version,
        registry_access=access_policy,
        registry_token_port=token_port,
        **scale_out,
        **_read_backup_and_mode(r, users, server),
        **webui,
    )


def check_group_conflicts(host: str, groups_data: Mapping[str, Mapping[str, Any]],
                          host_data: Mapping[str, Any]) -> None:
    """A host in several groups whose group data disagree on a key it does not set itself:
    which value wins depends on group order, so refuse instead of guessing."""
    seen: dict[str, tuple[str, Any]] = {}
    for group, data in groups_data.items():
        for key, value in data.items():
            if not key.startswith(("registry_", "docker_")) or key in host_data:
                continue
            if key in seen and seen[key][1] != value:
                other_group, other = seen[key]
                raise _fail(host, key, value, f"one value; group {other_group} sets {other!r} "
                            f"and group {group} sets {value!r}: set it for the host instead")
            seen[key] = (group, value)


# The inventory groups the kit acts on; a host in several must not get conflicting values.
KIT_GROUPS = ("registry_servers", "registry_clients", "registry_lb", "registry_cache")


def _host_data(target: Any) -> dict[str, Any]:
    """The host's data as pyinfra merges it (overrides, host, groups, all), without the
    data_defaults of a @deploy: the kit fills its defaults itself, with the API's
    `settings=` above them, the same way for every host (pyinfra adds deploy data to the
    current host only)."""
    datas = getattr(target.data, "datas", None)
    deploy_data = getattr(target, "get_deploy_data", None)
    if datas is None or deploy_data is None:
        return dict(target.data.dict())
    merged: dict[str, Any] = {}
    for data in reversed(datas):
        if data == deploy_data:
            continue
        merged.update(data() if callable(data) else data)
    return merged


def load_inventory(inventory: Any, *, check: Any = None, groups: Sequence[str] = KIT_GROUPS,
                   server_group: str = "registry_servers",
                   defaults: Mapping[str, Any] | None = None) -> dict[str, Settings]:
    """Every inventory host's Settings (host data with group data and overrides, as pyinfra
    merged them), validated; `check(host, settings)` adds checks of the caller's. `groups`:
    the kit's groups (their data must agree), `server_group` the servers' group; `defaults`
    replace package defaults (the API's `settings=`). Raises SettingsError for the first bad
    value."""
    known = known_keys()
    if defaults:
        check_unknown_keys("settings", defaults, known)
        known = {**known, **{key: defaults[key] for key in defaults if key in known}}
    loaded: dict[str, Settings] = {}
    for target in inventory:
        kit_groups = [group for group in target.groups if group in groups]
        if len(kit_groups) > 1:
            check_group_conflicts(
                target.name, {group: inventory.get_group_data(group) for group in kit_groups},
                {**inventory.get_host_data(target.name), **inventory.get_override_data()})
        loaded[target.name] = load(target.name, _host_data(target), known=known,
                                   server=server_group in target.groups)
        if check is not None:
            check(target, loaded[target.name])
    return loaded
