"""The text renderers (haproxy.cfg, redis.conf, systemd units, /etc/hosts, the curl config)
fed hostile strings: each output parses back to the same structure with the value intact,
or the renderer refuses with ValueError. Settings are built valid and then replaced field by
field (dataclasses.replace), so these tests hold whatever settings.py lets through."""

from __future__ import annotations

import base64
import dataclasses
import http.server
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from registry_kit.commands import OSInfo
from registry_kit.facts import HOSTS_MARKER, HostState
from registry_kit.model import topology as scaleout
from registry_kit.model.settings import Secret, Settings, User
from registry_kit.render import textfile
from registry_kit.roles import cache, client, gc_timer, loadbalancer, server

S3 = {"driver": "inmemory"}
# Strings that would change a line-based file's structure if pasted in as they are.
STRUCTURAL = [
    "x\nextra line", "x\r\ny", "a b", "a\tb", "\u00a0nbsp", "a\u2028b", "a\x85b", "a\x0bb",
    "a\x00b", "\x1b[31m", "trailing ", " leading", "",
]
QUOTING = ['"quoted"', "it's", "back\\slash", "#comment", "a#b", "${HOME}", "$(reboot)"]


@pytest.fixture
def lb_topology(make_settings: Callable[..., Settings]) -> Callable[..., scaleout.Topology]:
    def build(*, mode: str = "passthrough", replica: dict[str, Any] | None = None,
              **lb: Any) -> scaleout.Topology:
        base = make_settings(registry_storage=S3, registry_lb_mode=mode)
        first = {"host": "rep0", "registry_internal_address": "10.9.0.10", **(replica or {})}
        servers = (dataclasses.replace(base, **first),
                   dataclasses.replace(base, host="rep1", registry_internal_address="10.9.0.11"))
        lbs = (dataclasses.replace(base, host="lb0", registry_internal_address="10.9.0.20",
                                   **lb),)
        return scaleout.Topology(servers=servers, lbs=lbs, caches=())

    return build


def _structure(text: str) -> list[tuple[str, int]]:
    """haproxy/redis: each line's keyword and number of words, comments left out."""
    lines = [line.split() for line in text.splitlines()]
    return [(words[0], len(words)) for words in lines if words and not words[0].startswith("#")]


# --- textfile itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", STRUCTURAL)
def test_word_refuses_whitespace_control_and_empty(value: str) -> None:
    with pytest.raises(ValueError, match=r"^registry-kit: f: x=.* cannot be written: "):
        textfile.word(value, file="f", field="x")


@pytest.mark.parametrize("value", ["plain", "10.0.0.5", "r\u00e9gistry.lab", "p%w$x", "a#b"])
def test_word_keeps_printable_words(value: str) -> None:
    assert textfile.word(value, file="f", field="x") == value


def test_secret_never_in_the_message() -> None:
    with pytest.raises(ValueError) as error:
        textfile.word("hunter2 x", file="f", field="password", secret=True)
    assert "hunter2" not in str(error.value) and "(secret)" in str(error.value)


# --- haproxy.cfg -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [*STRUCTURAL, *QUOTING])
@pytest.mark.parametrize("mode", ["passthrough", "terminate"])
def test_haproxy_refuses_hostile_domain(lb_topology: Callable[..., scaleout.Topology],
                                        value: str, mode: str) -> None:
    topology = lb_topology(mode=mode, registry_domain=value)
    with pytest.raises(ValueError, match=r"haproxy\.cfg: registry_domain="):
        loadbalancer.render(topology.lbs[0], topology)


@pytest.mark.parametrize("field", ["registry_internal_address", "host"])
@pytest.mark.parametrize("value", ["10.9.0.10\n    server evil 6.6.6.6:80", "10.9.0.10 backup",
                                   "10.9.0.10#", '"10.9.0.10"'])
def test_haproxy_refuses_hostile_replica(lb_topology: Callable[..., scaleout.Topology],
                                         field: str, value: str) -> None:
    topology = lb_topology(replica={field: value})
    if field == "host":  # server names are made safe by scaleout.server_name
        text = loadbalancer.render(topology.lbs[0], topology)
        assert _structure(text) == _structure(loadbalancer.render(lb_topology().lbs[0],
                                                                  lb_topology()))
        return
    with pytest.raises(ValueError, match="registry_internal_address="):
        loadbalancer.render(topology.lbs[0], topology)


@pytest.mark.parametrize("value", ["127.0.0.1:8404\nlisten evil", "127.0.0.1:8404 #",
                                   "127.0.0.1:8404\\"])
def test_haproxy_refuses_hostile_stats(lb_topology: Callable[..., scaleout.Topology],
                                       value: str) -> None:
    topology = lb_topology(registry_lb_stats=value)
    with pytest.raises(ValueError, match="registry_lb_stats="):
        loadbalancer.render(topology.lbs[0], topology)


@pytest.mark.parametrize("mode", ["passthrough", "terminate"])
def test_haproxy_unicode_domain_keeps_structure(lb_topology: Callable[..., scaleout.Topology],
                                                mode: str) -> None:
    reference = loadbalancer.render(lb_topology(mode=mode).lbs[0], lb_topology(mode=mode))
    odd = lb_topology(mode=mode, registry_domain="r\u00e9gistry.\u4f8b")
    text = loadbalancer.render(odd.lbs[0], odd)
    assert _structure(text) == _structure(reference)
    assert len(text.splitlines()) == len(reference.splitlines())
    assert "hdr Host r\u00e9gistry.\u4f8b\n" in text


# --- redis.conf --------------------------------------------------------------------------------

def _redis(make_settings: Callable[..., Settings], password: str = "pw-0123",
           **fields: Any) -> str:
    settings = dataclasses.replace(make_settings(),
                                   **{"registry_internal_address": "10.9.0.30", **fields})
    return cache.render(settings, password, cache.family(HostState(os=OSInfo(id="debian"))))


@pytest.mark.parametrize("value", [*STRUCTURAL, '"quoted"', "it's", "pw\" 'x"])
def test_redis_refuses_hostile_password(make_settings: Callable[..., Settings],
                                        value: str) -> None:
    with pytest.raises(ValueError, match=r"registry_cache_password=\(secret\)") as error:
        _redis(make_settings, value)
    if value.strip():
        assert value not in str(error.value)


@pytest.mark.parametrize("value", ["p#w", "back\\slash", "$(reboot)", "%s%n", "\u00e9t\u00e9",
                                   "requirepass", "x" * 512])
def test_redis_password_kept_as_one_word(make_settings: Callable[..., Settings],
                                         value: str) -> None:
    text = _redis(make_settings, value)
    assert _structure(text) == _structure(_redis(make_settings))
    # What verify_command's `sed -n 's/^requirepass //p'` reads back.
    assert [line[len("requirepass "):] for line in text.splitlines()
            if line.startswith("requirepass ")] == [value]


@pytest.mark.parametrize("field", ["registry_internal_address", "registry_cache_maxmemory"])
@pytest.mark.parametrize("value", ["10.0.0.1\nrequirepass x", "10.0.0.1 0.0.0.0", '"x"', ""])
def test_redis_refuses_hostile_values(make_settings: Callable[..., Settings], field: str,
                                      value: str) -> None:
    with pytest.raises(ValueError, match=rf"redis\.conf: {field}="):
        _redis(make_settings, **{field: value})


# --- systemd units -----------------------------------------------------------------------------

def _systemd_words(line: str) -> list[str]:
    """An Exec line as systemd splits it: specifiers and "$$" undone, whole-word quotes."""
    assert "%" not in line.replace("%%", "") and "$" not in line.replace("$$", "")
    return shlex.split(line.replace("%%", "%").replace("$$", "$"))


def _exec_start(unit: bytes) -> str:
    lines = [line for line in unit.decode().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1
    return lines[0].removeprefix("ExecStart=")


@pytest.mark.parametrize("value", ["/srv/%n/reg", "/srv/$HOME/x", "/srv/$(reboot)", "/srv/${X}",
                                   "/srv/%%", "/srv/r\u00e9g#1"])
def test_service_unit_escapes_percent_and_dollar(make_settings: Callable[..., Settings],
                                                 value: str) -> None:
    settings = dataclasses.replace(make_settings(registry_gc_schedule="daily"),
                                   registry_config_dir=value)
    unit = gc_timer.service_unit(settings)
    reference = gc_timer.service_unit(make_settings(registry_gc_schedule="daily"))
    assert len(unit.splitlines()) == len(reference.splitlines())
    assert _systemd_words(_exec_start(unit)) == gc_timer.locked(
        gc_timer.gc_arguments(settings, dry_run=False))


@pytest.mark.parametrize("value", [*STRUCTURAL, '"quoted"', "it's", "back\\slash", ";",
                                                "/srv/a;b"])
def test_service_unit_refuses_hostile_arguments(make_settings: Callable[..., Settings],
                                                value: str) -> None:
    settings = dataclasses.replace(make_settings(registry_gc_schedule="daily"),
                                   registry_container_name=value)
    with pytest.raises(ValueError, match=r"registry-kit-gc\.service: ExecStart argument 3="):
        gc_timer.service_unit(settings)


def test_timer_unit_escapes_percent(make_settings: Callable[..., Settings]) -> None:
    settings = dataclasses.replace(make_settings(registry_gc_schedule="daily"),
                                   registry_gc_schedule="Sun *-*-* 03:00:00 %H")
    timer = gc_timer.timer_unit(settings).decode()
    assert "OnCalendar=Sun *-*-* 03:00:00 %%H\n" in timer


@pytest.mark.parametrize("value", ["daily\nExecStart=/bin/sh", "daily\\", "daily\r", "daily\t1",
                                   " daily", "daily  x", "", "daily\u2028x"])
def test_timer_unit_refuses_hostile_schedule(make_settings: Callable[..., Settings],
                                             value: str) -> None:
    settings = dataclasses.replace(make_settings(registry_gc_schedule="daily"),
                                   registry_gc_schedule=value)
    with pytest.raises(ValueError, match=r"registry-kit-gc\.timer: registry_gc_schedule="):
        gc_timer.timer_unit(settings)


# --- /etc/hosts --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [*STRUCTURAL, "registry.lab # registry-kit", "#", "a#b"])
@pytest.mark.parametrize("where", ["name", "ip"])
def test_hosts_lines_refuse_hostile_values(value: str, where: str) -> None:
    wanted = {value: "10.0.0.5"} if where == "name" else {"registry.lab": value}
    with pytest.raises(ValueError, match="/etc/hosts: registry_client_hosts_entries"):
        client.hosts_lines(wanted)


@pytest.mark.parametrize("value", ["r\u00e9gistry.lab", "$(reboot)", "it's", "%n"])
def test_hosts_lines_keep_one_entry_per_line(value: str) -> None:
    lines = client.hosts_lines({value: "10.0.0.5", "other.lab": "10.0.0.6"})
    assert len("\n".join(lines).splitlines()) == 2
    parsed = [line.split("#", 1)[0].split() for line in lines]
    assert sorted(map(tuple, parsed)) == sorted([("10.0.0.5", value), ("10.0.0.6", "other.lab")])
    assert all(line.endswith(" " + HOSTS_MARKER) for line in lines)


# --- curl config (the server's /v2/ check) -----------------------------------------------------

class _AuthEcho(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl CLI")
@pytest.mark.parametrize("password", ['pw"with quotes"', "back\\slash\\", "new\nline",
                                      "cr\rtab\tvt\x0b", "# not a comment", "$(reboot) %s",
                                      "p\u00e9\u2603", "user = \"evil:x\""])
def test_curlrc_gives_curl_the_credentials_intact(tmp_path: Path, password: str) -> None:
    """The real curl reads the config the verify step writes and sends name:password."""
    config = tmp_path / "verify.curlrc"
    config.write_text(server.curlrc_text(User(name="ci", password=Secret(password))))
    assert len(config.read_text().splitlines()) == 1
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _AuthEcho)
    thread = threading.Thread(target=httpd.handle_request, daemon=True)
    thread.start()
    try:
        subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", "-K", str(config),
                        f"http://127.0.0.1:{httpd.server_port}/v2/"], check=True)
        thread.join(5)
    finally:
        httpd.server_close()
    scheme, _, encoded = _AuthEcho.seen.pop().partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"ci:{password}"
