"""What a setting's value may be: the value types (Secret, User, Storage), the tests of one
value (is_ip, check_host_path, ...) and the checks the declarations in
registry_kit.model.settings name (`check=whole(1, 65535)`). A check takes the Reader (host,
data, base folder), the key and the raw value, and returns the typed value or raises
SettingsError with the house line: "HOST: setting KEY=VALUE is not allowed: WHAT".
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from registry_kit.errors import SettingsError
from registry_kit.model.versions import is_valid_version

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
# Storage parameters the kit sets itself (the data folder is registry_data_dir).
STORAGE_OWNED_KEYS = {"filesystem": ("rootdirectory",)}
BCRYPT_MAX_BYTES = 72  # bcrypt ignores everything past 72 bytes: refuse rather than truncate

# Every pattern here is used with fullmatch: a bare `$` would also accept a trailing newline.
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# distribution/reference grammar, simplified: [domain[:port]/]path[:tag][@digest]
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REF_DOMAIN = rf"(?:{_REF_LABEL}(?:\.{_REF_LABEL})*(?::[0-9]+)?)"
_IMAGE_REF_RE = re.compile(
    rf"(?:{_REF_DOMAIN}/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_VIP_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})(?:/(\d{1,2}))?")
# Backup folders: an absolute path of the characters host paths may hold (it reaches tar
# commands, quoted, on the control machine or a backup host).
_BACKUP_PATH_RE = re.compile(r"(/[A-Za-z0-9._@+-]+)+/?")
# A backup generation's folder name: its UTC time to the millisecond (sorts by age).
BACKUP_GENERATION_RE = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{3}Z")


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


# --- tests of one value -------------------------------------------------------------------

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


def find_unsafe(value: Any) -> str | None:
    """The first string inside a setting's value (keys included) with an unsafe character."""
    if isinstance(value, str):
        return value if unsafe_character(value) is not None else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            found = find_unsafe(key) or find_unsafe(item)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for item in value:
            found = find_unsafe(item)
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


def fail(host: str, key: str, value: Any, allowed: str) -> SettingsError:
    return SettingsError(f"{host}: setting {key}={value!r} is not allowed: {allowed}")


# --- the Reader and the checks the declarations name ----------------------------------------

@dataclass
class Reader:
    """One host's data being read: `data` every setting (defaults filled in), `host_data`
    the host's own (for ssh_hostname), `server` whether it runs a registry."""
    host: str
    data: Mapping[str, Any]
    base_dir: Path
    host_data: Mapping[str, Any] = field(default_factory=dict)
    server: bool = True

    def raw(self, key: str) -> Any:
        return self.data[key]

    def fail(self, key: str, value: Any, allowed: str) -> SettingsError:
        return fail(self.host, key, value, allowed)

    def local_path(self, key: str, value: Any, *, must_exist: bool = True) -> Path:
        """A path on the control machine, relative ones against the base folder."""
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise self.fail(key, value, "a path on the control machine")
        path = Path(value)
        if not path.is_absolute():
            path = self.base_dir / path
        if must_exist and not path.is_file():
            raise self.fail(key, value, f"an existing file on the control machine ({path})")
        return path

    def clean_secret(self, key: str, source: Any, secret: Secret) -> Secret:
        """A secret ends up in files (config.yml, htpasswd, redis.conf) and on stdin: one
        line of text. The value itself is never shown, only where it came from."""
        if unsafe_character(secret.reveal()) is not None:
            raise self.fail(key, source, "a secret without line breaks or control characters")
        return secret

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


Check = Callable[[Reader, str, Any], Any]


def as_given(r: Reader, key: str, value: Any) -> Any:
    """Taken as it is here; its section's check reads it with the settings it depends on."""
    return value


def boolean(r: Reader, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise r.fail(key, value, "True or False")
    return value


def optional_boolean(r: Reader, key: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise r.fail(key, value, "True, False or None")
    return value


def whole(low: int, high: int) -> Check:
    def check(r: Reader, key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise r.fail(key, value, f"a whole number from {low} to {high}")
        return value
    return check


def one_of(*choices: str) -> Check:
    def check(r: Reader, key: str, value: Any) -> str:
        if value not in choices:
            raise r.fail(key, value, "one of " + ", ".join(choices))
        return str(value)
    return check


def matching(pattern: str, allowed: str, *, optional: bool = False) -> Check:
    """A string matching `pattern` as a whole (None too when `optional`)."""
    compiled = re.compile(pattern)

    def check(r: Reader, key: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not (isinstance(value, str) and compiled.fullmatch(value)):
            raise r.fail(key, value, allowed)
        return value
    return check


def address(*, optional: bool, allowed: str) -> Check:
    """A DNS name or an IP address (lower-cased), or None when `optional`."""
    def check(r: Reader, key: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not (is_hostname(value) or is_ip(value)):
            raise r.fail(key, value, allowed)
        return value.lower()
    return check


def ip_address(allowed: str) -> Check:
    def check(r: Reader, key: str, value: Any) -> str | None:
        if value is not None and not is_ip(value):
            raise r.fail(key, value, allowed)
        return value
    return check


def internal_address(r: Reader, key: str, value: Any) -> str:
    if value is None:
        # Where the control machine reaches the host is the best default guess.
        value = r.host_data.get("ssh_hostname") or r.host
    if not isinstance(value, str) or not (is_hostname(value) or is_ip(value)):
        raise r.fail(key, value, "None or a DNS name or IP address other kit hosts reach "
                     "this host at")
    return value


def image_reference(r: Reader, key: str, value: Any) -> str:
    if not is_image_reference(value):
        raise r.fail(key, value, "an image reference like registry:2, registry:2.8.3 or "
                     "host:5000/library/registry@sha256:<64 hex>")
    return str(value)


def registry_major(r: Reader, key: str, value: Any) -> int | None:
    """None, or the major version 2 or 3 (an int; "2"/"3" as written in image tags too)."""
    if value is None:
        return None
    if (type(value) is int and value in (2, 3)) or value in ("2", "3"):
        return int(value)
    raise r.fail(key, value, "None, 2 or 3 (the registry's major version, for an image whose "
                 "tag does not tell it)")


def host_dir(r: Reader, key: str, value: Any) -> str:
    """A folder on the hosts that the kit creates, chmods and (teardown) removes."""
    path = value.rstrip("/") if isinstance(value, str) and value != "/" else value
    why = check_host_path(path) if isinstance(path, str) else "an absolute path"
    if why is not None:
        raise r.fail(key, value, why)
    return str(path)


def local_file(r: Reader, key: str, value: Any) -> Path | None:
    """None, or an existing file on the control machine."""
    return None if value is None else r.local_path(key, value)


def control_dir(r: Reader, key: str, value: Any) -> Path:
    """A folder on the control machine; a relative one is the user's (base folder)."""
    if not isinstance(value, str) or not value:
        raise r.fail(key, value, "a folder path on the control machine")
    return r.base_dir / value if not Path(value).is_absolute() else Path(value)


def backup_path(r: Reader, key: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and _BACKUP_PATH_RE.fullmatch(value)
                                  and "/../" not in value + "/" and value != "/"):
        raise r.fail(key, value, "None or an absolute folder path (letters, digits, "
                     "'. _ @ + -' between slashes)")
    return value.rstrip("/") if isinstance(value, str) else None


LOOPBACK_RULE = "None or 127.0.0.1:PORT (1-65535, not registry_port)"


def loopback_address(r: Reader, key: str, value: Any) -> str | None:
    """None or 127.0.0.1:PORT (a page other hosts must not reach); its section checks the
    port against the registry's."""
    match = re.fullmatch(r"127\.0\.0\.1:(\d{1,5})", str(value))
    if value is not None and not (isinstance(value, str) and match
                                  and 1 <= int(match[1]) <= 65535):
        raise r.fail(key, value, LOOPBACK_RULE)
    return value


def string_list(test: Callable[[object], bool], allowed: str) -> Check:
    def check(r: Reader, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise r.fail(key, value, f"a list of {allowed}")
        for item in value:
            if not isinstance(item, str) or not test(item):
                raise r.fail(key, item, allowed)
        return tuple(value)
    return check


def hosts_entries(r: Reader, key: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and is_hostname(k) and isinstance(v, str) and is_ip(v)
            for k, v in value.items()):
        raise r.fail(key, value, "a mapping of host name to IP address")
    return dict(value)


def secret(what: str, pattern: str | None = None, allowed: str = "") -> Check:
    """None, or the secret a {'env': NAME} / {'file': PATH} setting names (matching
    `pattern` as a whole, when given; only `allowed` is shown, never the value)."""
    compiled = re.compile(pattern) if pattern else None

    def check(r: Reader, key: str, value: Any) -> Secret | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise r.fail(key, "***", "{'env': NAME} or {'file': PATH}")
        found = r.secret_source(key, value, what)
        if compiled is not None and not compiled.fullmatch(found.reveal()):
            raise r.fail(key, "***", allowed)
        return found
    return check


def networks(r: Reader, key: str, value: Any) -> tuple[str, ...]:
    """A list of IPv4/IPv6 networks (CIDR; a bare address is its /32 or /128), written
    back in ipaddress' own spelling (host bits cleared), so a file holds only that."""
    allowed = "a list of networks like 10.0.0.0/24, 10.0.0.5/32 or fd00::/64"
    if not isinstance(value, list | tuple):
        raise r.fail(key, value, allowed)
    found = []
    for item in value:
        if not isinstance(item, str) or "%" in item or not item.strip() == item:
            raise r.fail(key, item, allowed)
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise r.fail(key, item, allowed) from None
    return tuple(found)


def vip(r: Reader, key: str, value: Any) -> str | None:
    if value is None:
        return None
    match = _VIP_RE.fullmatch(value) if isinstance(value, str) else None
    if not (match and is_ip(match[1]) and (match[2] is None or 8 <= int(match[2]) <= 32)):
        raise r.fail(key, value, "None or an IPv4 address, optionally with its prefix length "
                     "(8-32), like 10.0.0.100 or 10.0.0.100/24")
    found = ipaddress.ip_address(match[1])
    if found.is_loopback or found.is_multicast or found.is_unspecified:
        raise r.fail(key, value, "an address clients can reach (not loopback, multicast or "
                     "0.0.0.0)")
    return value


def min_version(r: Reader, key: str, value: Any) -> str:
    # Strict: the engine-version parser is tolerant ("1.x" reads as 1.0.0), a setting is not.
    if not (is_valid_version(value) and re.fullmatch(r"\d+(\.\d+){0,2}", value)):
        raise r.fail(key, value, "a version like 1.6.0")
    return str(value)


def users(r: Reader, key: str, value: Any) -> tuple[User, ...]:
    """registry_users: each with exactly one password source (registry_allow_plain_passwords
    allows an inline one)."""
    if not isinstance(value, list | tuple):
        raise r.fail(key, value, "a list of {'name': ..., 'password_env'|'password_file'|...}")
    found: list[User] = []
    for entry in value:
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise r.fail(key, entry, "a mapping with a 'name'")
        name = entry["name"]
        if not isinstance(name, str) or not _USER_RE.fullmatch(name):
            raise r.fail(key, name, "a user name of letters, digits, '.', '_', '@', '-' (no ':')")
        if any(user.name == name for user in found):
            raise r.fail(key, name, "each user name once")
        found.append(_user(r, key, name, entry))
    return tuple(found)


def _user(r: Reader, key: str, name: str, entry: Mapping[str, Any]) -> User:
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
        return User(name=name, password=None, password_hash=hashed)
    if source == "password":
        if not boolean(r, "registry_allow_plain_passwords",
                       r.raw("registry_allow_plain_passwords")):
            raise r.fail(key, "***", f"user {name!r}: password_env, password_file or "
                         "password_hash (plain passwords need "
                         "registry_allow_plain_passwords=True)")
        password = Secret(str(entry["password"]))
        where = f"user {name!r}: password"
    else:
        password = r.secret_source(key, {source: entry[source]}, "password")
        where = f"user {name!r}: password from {source}={entry[source]!r}"
    raw = password.reveal()
    if not raw:
        raise r.fail(key, "<empty>", f"{where} must not be empty")
    if len(raw.encode()) > BCRYPT_MAX_BYTES:
        raise r.fail(key, f"<{len(raw.encode())} bytes>",
                     f"{where} must be at most {BCRYPT_MAX_BYTES} bytes (bcrypt's limit)")
    if "\n" in raw:
        raise r.fail(key, "<multi-line>", f"{where} must be one line")
    return User(name=name, password=password)


def storage(r: Reader, key: str, value: Any) -> Storage:
    """registry_storage: a driver and its parameters, secret ones from *_env / *_file."""
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
