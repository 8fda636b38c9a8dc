"""Every string a setting can take is refused with one line, or harmless (issue 12).

Property-based (hypothesis): for each string-valued setting, at least 2,000 generated
values mixing shell, YAML, haproxy, redis and systemd metacharacters, newlines, NUL, '%',
commas and unicode (line separators, bidi controls, emoji), half of them built by
mutating a valid value so the accepted path is exercised too. Each value is either refused
by the settings loader with exactly one clean line naming host and setting, or every
command built from it splits (shlex.split) into the intended words with the value whole,
and every file rendered from it parses back (yaml.safe_load, json.loads, the line structure
of haproxy.cfg, redis.conf, systemd units and /etc/hosts lines) with the value intact and
no extra key or line. The counts are printed in pytest's summary.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registry_kit import facts
from registry_kit.commands import OSInfo, docker_install_commands, join
from registry_kit.model import settings as settings_mod
from registry_kit.model import topology as scaleout
from registry_kit.model.layout import Endpoints
from registry_kit.model.settings import Settings, SettingsError, unsafe_character
from registry_kit.render import daemon_json
from registry_kit.render.config import render_config
from registry_kit.roles import (
    cache,
    gc_timer,
    keepalived,
    loadbalancer,
    metrics,
    retention_timer,
    server,
)
from registry_kit.roles import client as client_mod

HOST = "hostile-host"
EXAMPLES = 2000
# What pytest's summary prints (tests/unit/conftest.py): setting -> [tried, refused].
COUNTS: dict[str, list[int]] = {}

_SECRETS_DIR = Path(tempfile.mkdtemp(prefix="registry-kit-hostile-"))
_KNOWN = settings_mod.known_keys()

META = list("'\"$`\\;&|<>(){}[]*?!#~%,:=@+^ \t\n\r\x00\x0b\x0c\x1b\x7f-._/")
UNICODE = ["\u2028", "\u2029", "\u0085", "\ufeff", "\u202e", "\u200b", "é", "ß", "Ω",
           "\U0001f600", "\ud7ff", "０", "İ"]
ALPHABET = st.sampled_from(META + UNICODE + list("abcXYZ0129"))
HOSTILE = st.text(alphabet=ALPHABET, max_size=48)
INJECTIONS = st.sampled_from([
    "$(id)", "`id`", "';id;'", '"; id; "', "\nid", "\r\n", "\x00", "%n", "%%", "$$", "${HOME}",
    ",source=/etc", "\nauth: {}", "#", " # c", ": x", "{{x}}", "\u2028", "fe80::1%eth0",
    " --privileged", "\\", "*", "\tbind 0.0.0.0", "\nrequirepass x", "\n[Service]",
    "\nExecStart=/bin/sh", "\n10.0.0.9 evil", "%", "\u202e", "..", "/../", "&&", "|",
])

# A valid value for each setting; mutations insert injections into them.
VALID = {
    "registry_domain": ["registry.example.internal", "10.0.0.5", "fd00::5"],
    "registry_image": ["registry:2", "host:5000/library/registry:2.8.3",
                       "registry@sha256:" + "a" * 64],
    "registry_container_name": ["registry", "rk_1.x-y"],
    "registry_config_dir": ["/etc/registry-kit", "/srv/rk+conf"],
    "registry_data_dir": ["/var/lib/registry-kit/data", "/srv/reg@1"],
    "registry_tls_extra_names": ["alt.example.internal"],
    "registry_tls_extra_ips": ["10.0.0.7", "fd00::7"],
    "registry_users.name": ["ci", "ci.bot@x-1"],
    "registry_users.password": ["p4ss'w\"o$rd %,;"],
    "registry_http_secret": ["s3cr3t: {x} # '\"%"],
    "registry_cache_password": ["abcdefghijklmnop$%#"],
    "registry_client_hosts_entries.name": ["registry.example.internal"],
    "registry_client_hosts_entries.ip": ["10.0.0.5", "fd00::5"],
    "registry_gc_schedule": ["Sun *-*-* 03:00:00", "weekly"],
    "registry_retention_schedule": ["*-*-* 02:30:00", "daily"],
    "docker_ce_repo_url": ["https://download.example/linux"],
    "docker_min_version": ["1.6.0"],
    "docker_registry_mirrors": ["http://mirror.example:5000", "https://[fd00::1]/"],
    "registry_internal_address": ["10.0.0.11", "reg1.internal", "fd00::11"],
    "registry_lb_stats": ["127.0.0.1:8404"],
    "registry_debug_addr": ["127.0.0.1:5001"],
    "registry_cache_maxmemory": ["256mb"],
    "registry_bind_address": ["10.0.0.5", "fd00::5"],
    "registry_storage.bucket": ["images"],
    "registry_storage.regionendpoint": ["https://s3.example.internal"],
    "registry_storage.extra": ["v4"],
    "registry_log_level": ["info"],
    "registry_tls_mode": ["self-signed"],
    "registry_lb_mode": ["passthrough"],
    "docker_install_method": ["distro"],
    "registry_state_dir": [".registry-kit"],
    "registry_version": ["2"],  # the default image is registry:2: a "3" would disagree
    "registry_lb_vip": ["10.0.0.250", "10.0.0.250/24"],
    "registry_lb_vip_interface": ["eth0", "ens3.100"],
    "registry_lb_vrrp_password": ["Ab$%&(~|", "x"],
}


def _secret_file(name: str, value: str) -> str:
    path = _SECRETS_DIR / name
    path.write_bytes(value.encode("utf-8", "surrogatepass"))
    return str(path)


_FIXED_PASSWORD_FILE = _secret_file("fixed-pw", "fixed-password")


def _data(key: str, value: str) -> dict[str, Any]:
    """The host data that puts `value` into `key`."""
    user = {"name": "ci", "password_file": _FIXED_PASSWORD_FILE}
    base: dict[str, Any] = {"registry_users": [user]}
    if key == "registry_users.name":
        return {"registry_users": [{**user, "name": value}]}
    if key == "registry_users.password":
        return {"registry_users": [{"name": "ci", "password_file": _secret_file("pw", value)}],
                "registry_client_login_user": "ci"}
    if key in ("registry_http_secret", "registry_cache_password", "registry_lb_vrrp_password"):
        return {**base, key: {"file": _secret_file(key, value)}}
    if key == "registry_client_hosts_entries.name":
        return {**base, "registry_client_hosts_entries": {value: "10.0.0.5"}}
    if key == "registry_client_hosts_entries.ip":
        return {**base, "registry_client_hosts_entries": {"registry.example.internal": value}}
    if key in ("registry_tls_extra_names", "registry_tls_extra_ips", "docker_registry_mirrors"):
        return {**base, key: [value]}
    if key == "registry_retention_schedule":  # a schedule applies rules
        return {**base, key: value, "registry_retention_rules": [{"repository": "ci/*",
                                                                  "keep_last": 3}]}
    if key == "docker_ce_repo_url":
        return {**base, key: value, "docker_install_method": "docker-ce"}
    if key.startswith("registry_storage."):
        param = key.partition(".")[2]
        storage = {"driver": "s3", "bucket": "images", "region": "us-east-1",
                   "forcepathstyle": True}
        storage[param] = value
        return {**base, "registry_storage": storage, "registry_storage_check": False}
    return {**base, key: value}


def _where(key: str) -> str:
    return key.partition(".")[0]


def value_strategy(key: str) -> st.SearchStrategy[str]:
    mutated = st.builds(lambda base, insert, at: base[:at % (len(base) + 1)] + insert
                        + base[at % (len(base) + 1):],
                        st.sampled_from(VALID[key]), st.one_of(INJECTIONS, HOSTILE),
                        st.integers(min_value=0, max_value=64))
    return st.one_of(HOSTILE, mutated, st.sampled_from(VALID[key]))


# --- what an accepted value must look like in every command and file -----------------------

def _words(command: str) -> list[str]:
    return shlex.split(command)


@functools.lru_cache(maxsize=4096)
def _tokens(command: str) -> tuple[str, ...]:
    """The shell's words of a compound command: ; && | ( ) are tokens of their own.
    Remembered: most values leave the long probe command as it was."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return tuple(lexer)


# libyaml's parser where PyYAML has it (the same YAML 1.1 reading, much faster); the
# kit's own output is what is parsed, whichever parser reads it.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # a safe loader (CSafeLoader or SafeLoader)


def _check_commands(s: Settings) -> None:
    probe: dict[str, Any] = {"files": [], "dirs": []}
    for part in (server.probe_args(s), gc_timer.probe_args(s), client_mod.probe_args(s),
                 retention_timer.probe_args(s)):
        for key, value in part.items():
            probe[key] = probe.get(key, []) + value if isinstance(value, list) else value
    words = _tokens(facts.probe_command(**probe))
    for path in probe["files"] + probe["dirs"]:
        assert path in words, path
    for name in ("container", "image", "htpasswd", "login_marker"):
        if probe.get(name):
            assert probe[name] in words, (name, probe[name])

    cert = None
    spec = server.container_spec(s, b"config", cert)
    argv = ["docker", "create", *spec.create_args("26.1.5")]
    assert _words(join(argv)) == argv
    assert [a for a in argv if a.startswith("type=bind")] == [
        f"type=bind,source={s.registry_config_dir},target=/etc/registry-kit,readonly",
        *([f"type=bind,source={s.registry_data_dir},target=/var/lib/registry"]
          if s.registry_storage.driver == "filesystem" else [])]
    assert argv[argv.index("--name") + 1] == s.registry_container_name
    assert argv[-3:] == [s.registry_image, "serve", "/etc/registry-kit/config.yml"]

    args = gc_timer.gc_arguments(s, dry_run=True)
    assert _words(join(args)) == args

    if s.docker_install_method == "docker-ce" and s.docker_ce_repo_url:
        commands = docker_install_commands(OSInfo("debian", codename="bookworm"),
                                          "docker-ce", s.docker_ce_repo_url)
        source = _words(commands[6])
        assert s.docker_ce_repo_url.rstrip("/") + "/debian" in source

    _, resolve, _ = server.health_target(s)
    words = _tokens(server.status_command(s))
    assert s.registry_container_name in words and s.registry_data_dir in words
    assert resolve in words
    words = _tokens(cache.verify_command(s))
    assert s.registry_internal_address in words


def _lines(text: str) -> list[str]:
    return text.splitlines()


@functools.cache
def _baseline(key: str) -> Settings:
    """The same setting with its first valid value: rendered files must have that shape."""
    return settings_mod.load(HOST, _data(key, VALID[key][0]), known=_KNOWN)


def _check_files(s: Settings, key: str, value: str) -> None:
    plain_settings = _baseline(key)
    cache_password = s.registry_cache_password.reveal() if s.registry_cache_password \
        else "cache-password-0123"
    http_secret = s.registry_http_secret.reveal() if s.registry_http_secret else "secret"
    target = scaleout.CacheTarget(addr=settings_mod.host_port(s.registry_internal_address,
                                                              s.registry_cache_port),
                                  password=cache_password, db=s.registry_cache_db)
    config = _yaml(render_config(s, http_secret, cache=target, drain_timeout=5))
    plain = _yaml(render_config(plain_settings, "secret", cache=target, drain_timeout=5))
    assert set(config) == set(plain)
    assert set(config["http"]) == set(plain["http"])
    assert config["http"]["secret"] == http_secret
    assert config["redis"]["password"] == cache_password
    assert config["http"]["host"] == Endpoints.of(s).url.removesuffix(":443")
    storage = config["storage"][s.registry_storage.driver] or {}
    for name, param in s.registry_storage.params.items():
        assert storage[name] == (param.reveal() if hasattr(param, "reveal") else param)

    merged = daemon_json.merge({}, mirrors=s.docker_registry_mirrors, live_restore=None,
                               insecure_add=client_mod.insecure_entries(s)[0],
                               insecure_remove=[])
    assert json.loads(daemon_json.render(merged)).get("registry-mirrors", []) == \
        list(s.docker_registry_mirrors)

    topology = scaleout.Topology(servers=(s,), lbs=(s,), caches=())
    haproxy = loadbalancer.render(s, topology)
    assert len(_lines(haproxy)) == len(_lines(loadbalancer.render(
        plain_settings, scaleout.Topology(servers=(plain_settings,), lbs=(plain_settings,),
                                          caches=()))))
    server_lines = [line.split() for line in _lines(haproxy) if line.strip().startswith(
        "server ")]
    # The registry's backend, then (users: token auth) the token servers' backend.
    ports = [s.registry_port, *([s.registry_token_port] if s.registry_access else [])]
    assert server_lines == [["server", scaleout.server_name(HOST),
                             settings_mod.host_port(s.registry_internal_address, port)]
                            for port in ports]

    family = cache.FAMILIES["debian"]
    redis = cache.render(s, cache_password, family)
    assert len(_lines(redis)) == len(_lines(cache.render(plain_settings, "cache-password-0123",
                                                         family)))
    assert [line.split() for line in _lines(redis) if line.startswith("requirepass ")] == \
        [["requirepass", cache_password]]
    assert [line.split()[1] for line in _lines(redis) if line.startswith("maxmemory ")] == \
        [s.registry_cache_maxmemory]

    if s.registry_gc_schedule is not None:
        timer = gc_timer.timer_unit(s).decode()
        assert len(_lines(timer)) == len(_lines(gc_timer.timer_unit(
            settings_mod.load(HOST, _data("registry_gc_schedule", "weekly"),
                              known=_KNOWN)).decode()))
        assert f"OnCalendar={s.registry_gc_schedule}" in _lines(timer)
    service = gc_timer.service_unit(s).decode()
    exec_line = [line for line in _lines(service) if line.startswith("ExecStart=")]
    assert len(exec_line) == 1
    # systemd unescapes %% to %; then its quoting is a shell's for these words.
    assert _words(exec_line[0].removeprefix("ExecStart=").replace("%%", "%")) == \
        gc_timer.locked(gc_timer.gc_arguments(s, dry_run=False))
    # The facts server (registry_metrics): the data folder one whole argument too.
    facts = [line for line in _lines(metrics.facts_unit(s).decode())
             if line.startswith("ExecStart=")]
    assert len(facts) == 1
    assert _words(facts[0].removeprefix("ExecStart=").replace("%%", "%")) == \
        metrics.facts_arguments(s)

    if s.registry_retention_schedule is not None:
        _check_retention_units(s, plain_settings)
    _check_keepalived(s, plain_settings)

    for name, ip in s.registry_client_hosts_entries.items():
        line = f"{ip} {name} # registry-kit"
        assert line.split() == [ip, name, "#", "registry-kit"]


def _check_retention_units(s: Settings, plain_settings: Settings) -> None:
    timer = retention_timer.timer_unit(s).decode()
    reference = retention_timer.timer_unit(plain_settings).decode()
    assert len(_lines(timer)) == len(_lines(reference))
    assert f"OnCalendar={s.registry_retention_schedule}" in _lines(timer)
    service = retention_timer.service_unit(s).decode()
    exec_line = [line for line in _lines(service) if line.startswith("ExecStart=")]
    assert len(exec_line) == 1
    assert _words(exec_line[0].removeprefix("ExecStart=").replace("%%", "%")) == \
        retention_timer.runner_arguments(s)


def _keepalived_conf(s: Settings) -> str:
    with_vip = dataclasses.replace(s, registry_lb_vip=s.registry_lb_vip or "10.0.0.250")
    topology = scaleout.Topology(servers=(), lbs=(with_vip,), caches=())
    password = s.registry_lb_vrrp_password.reveal() if s.registry_lb_vrrp_password else "pw"
    return keepalived.render(with_vip, topology, s.registry_lb_vip_interface or "eth0",
                             password)


def _check_keepalived(s: Settings, plain_settings: Settings) -> None:
    """keepalived.conf: the same lines as with a plain value, each value one whole word."""
    conf = _lines(_keepalived_conf(s))
    assert len(conf) == len(_lines(_keepalived_conf(plain_settings)))
    assert sum(line.count("{") - line.count("}") for line in conf) == 0
    words = [line.split() for line in conf]
    password = s.registry_lb_vrrp_password.reveal() if s.registry_lb_vrrp_password else "pw"
    assert ["auth_pass", password] in words
    interface = s.registry_lb_vip_interface or "eth0"
    assert ["interface", interface] in words
    assert [s.registry_lb_vip or "10.0.0.250", "dev", interface] in words


def check_value(key: str, value: str) -> bool:
    """True when the value was refused (with one clean line), else checks it is harmless."""
    try:
        s = settings_mod.load(HOST, _data(key, value), known=_KNOWN)
    except SettingsError as error:
        message = str(error)
        assert unsafe_character(message) is None, repr(message)
        assert message.startswith(f"{HOST}: setting {_where(key)}="), message
        assert " is not allowed: " in message
        return True
    _check_commands(s)
    _check_files(s, key, value)
    return False


KEYS = sorted(VALID)


@pytest.mark.parametrize("key", KEYS)
def test_every_value_is_refused_or_harmless(key: str) -> None:
    counts = COUNTS.setdefault(key, [0, 0])

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(value=value_strategy(key))
    @example(value=VALID[key][0].replace(" ", "  ", 1) + " ")  # repeated, trailing spaces
    @example(value=VALID[key][0] + "\n")
    def run(value: str) -> None:
        refused = check_value(key, value)
        counts[0] += 1
        counts[1] += int(refused)

    run()
    assert counts[0] >= EXAMPLES, f"{key}: only {counts[0]} values tried"


def test_the_valid_values_are_accepted() -> None:
    """The mutation seeds are themselves accepted: the accepted path is exercised."""
    for key, values in VALID.items():
        for value in values:
            assert check_value(key, value) is False, (key, value)


@pytest.mark.parametrize(("key", "value"), [
    ("registry_config_dir", "/etc/rk';id;'"),
    ("docker_ce_repo_url", "https://x/$(id -un)"),
    ("registry_tls_extra_ips", "fe80::1%\nbind 0.0.0.0"),
    ("registry_data_dir", "/srv/reg,source=/etc"),
    ("registry_users.name", "ci\n"),
    ("registry_image", "registry:2\n"),
    ("registry_container_name", "registry\n"),
    ("registry_gc_schedule", "weekly\n"),
    ("registry_http_secret", "x\nauth: {}"),
    ("registry_cache_password", "abcdefghijklmnopq\nauth: {}"),
    ("registry_config_dir", "/etc/ssl"),
    ("registry_data_dir", "/var/lib"),
])
def test_the_issue_examples_are_refused(key: str, value: str) -> None:
    assert check_value(key, value) is True

