"""A pull-through cache keeps serving (issue 25): the remote's name resolved on the server
and given to the container (`--add-host`), refused in one line when it resolves nowhere;
registry 2.8 refused as a cache; registry 3 started without the start-up request to the
remote (`proxy.exec`)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from registry_kit.commands import ContainerSpec
from registry_kit.facts import parse_probe, probe_command, resolve_commands
from registry_kit.model import layout, pull_through
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.render.config import render_config
from registry_kit.roles.server import container_spec, probe_args

HOST = "reg-host-1"
URL = "http://upstream.example:5000"


def _cache(make_settings: Callable[..., Settings], **data: Any) -> Settings:
    return make_settings(**{"registry_mode": "pull-through-cache",
                            "registry_proxy_remoteurl": URL, "registry_image": "registry:3",
                            **data})


def test_registry_2_as_a_cache_is_refused_in_one_line(
        make_settings: Callable[..., Settings]) -> None:
    settings = _cache(make_settings, registry_image="registry:2.8.3")
    with pytest.raises(SettingsError) as refused:
        pull_through.check_version(settings, 2)
    assert str(refused.value) == (
        f"{HOST}: setting registry_image='registry:2.8.3' is not allowed: registry 2.8 as a "
        "pull-through cache does not start while its remote is down (it asks the remote at "
        'start and panics); set registry_image = "registry:3"')
    pull_through.check_version(settings, 3)
    pull_through.check_version(make_settings(), 2)  # not a cache: 2.8 is fine


def test_registry_3_without_credentials_skips_the_start_up_request(
        make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = yaml.safe_load(render_config(_cache(make_settings), "s", major=3))["proxy"]
    assert proxy == {"remoteurl": URL,
                     "exec": {"command": layout.CONTAINER_NO_CREDENTIAL_HELPER}}
    assert layout.CONTAINER_NO_CREDENTIAL_HELPER.startswith(layout.CONTAINER_CONFIG_DIR + "/")
    # With credentials the registry needs them in config.yml: no helper.
    monkeypatch.setenv("UP_PW", "up-secret")
    with_login = _cache(make_settings, registry_proxy_remoteurl="https://upstream.example",
                        registry_proxy_username="mirror",
                        registry_proxy_password={"env": "UP_PW"},
                        registry_proxy_anonymous_acknowledged=True)
    proxy = yaml.safe_load(render_config(with_login, "s", major=3))["proxy"]
    assert "exec" not in proxy and proxy["username"] == "mirror"


@pytest.mark.parametrize(("url", "name"), [
    ("http://upstream.example:5000", "upstream.example"),
    ("https://Registry.Example.COM", "registry.example.com"),
    ("http://10.0.0.5:5000", None),
    ("http://[fd00::5]:5000", None),
])
def test_remote_name(make_settings: Callable[..., Settings], url: str,
                     name: str | None) -> None:
    assert pull_through.remote_name(_cache(make_settings, registry_proxy_remoteurl=url)) == name
    assert pull_through.remote_name(make_settings()) is None


@pytest.mark.parametrize(("addresses", "picked"), [
    (["10.0.0.5"], "10.0.0.5"),
    (["fd00::5", "10.0.0.5", "10.0.0.6"], "10.0.0.5"),  # IPv4 first: the default bridge
    (["fd00::5", "fd00::6"], "fd00::5"),
    ([], None),
    (["garbage"], None),
    # What a server's getent answers is not trusted: a scoped address carries any text.
    (["fe80::1%$(touch /x)", "fd00::7"], "fd00::7"),
])
def test_pick_address(addresses: list[str], picked: str | None) -> None:
    assert pull_through.pick_address(addresses) == picked


def test_extra_hosts_from_the_servers_answer(make_settings: Callable[..., Settings]) -> None:
    settings = _cache(make_settings)
    assert pull_through.extra_hosts(settings, {"upstream.example": ["10.0.0.5"]}) == (
        ("upstream.example", "10.0.0.5"),)
    by_ip = _cache(make_settings, registry_proxy_remoteurl="http://10.0.0.5:5000")
    assert pull_through.extra_hosts(by_ip, {}) == ()
    assert pull_through.extra_hosts(make_settings(), {}) == ()


def test_a_name_the_server_does_not_resolve_is_refused(
        make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError) as refused:
        pull_through.extra_hosts(_cache(make_settings), {})
    assert str(refused.value) == (
        f"{HOST}: setting registry_proxy_remoteurl='{URL}' is not allowed: upstream.example "
        f"does not resolve on {HOST} (getent ahosts); use a name the server resolves (DNS or "
        "its /etc/hosts) or an IP address")
    with pytest.raises(SettingsError) as refused:
        pull_through.extra_hosts(_cache(make_settings), {"upstream.example": ["127.0.1.1"]})
    assert str(refused.value) == (
        f"{HOST}: setting registry_proxy_remoteurl='{URL}' is not allowed: upstream.example "
        f"resolves to 127.0.1.1 on {HOST}, which inside the registry container is the "
        "container itself; use the remote's network address")


def test_add_host_arguments() -> None:
    spec = ContainerSpec(name="registry", image="registry:3", port=5000,
                         config_dir="/etc/registry-kit", data_dir=None,
                         extra_hosts=(("up.example", "10.0.0.5"), ("v6.example", "fd00::5")))
    args = spec.run_args("20.10.24+dfsg1")
    assert args[:10] == ["-d", "--name", "registry", "--restart=always", "-p", "5000:5000",
                         "--add-host", "up.example:10.0.0.5", "--add-host", "v6.example:fd00::5"]
    plain = ContainerSpec(name="registry", image="registry:3", port=5000,
                          config_dir="/etc/registry-kit", data_dir=None)
    assert "--add-host" not in plain.run_args()
    # The candidate that proves new files resolves the remote as the registry does: else a
    # cache's change would be refused for a name only the host knows.
    candidate = spec.candidate_args("/run/registry-kit/registry-candidate", "20.10.24+dfsg1")
    assert candidate[:9] == ["-d", "--name", "registry-candidate", "-p", "127.0.0.1::5000",
                             "--add-host", "up.example:10.0.0.5",
                             "--add-host", "v6.example:fd00::5"]
    assert "--add-host" not in plain.candidate_args("/run/x")


def test_a_changed_address_recreates_an_unchanged_one_does_not(
        make_settings: Callable[..., Settings]) -> None:
    settings = _cache(make_settings)
    first = container_spec(settings, b"c", None, (("upstream.example", "10.0.0.5"),))
    again = container_spec(settings, b"c", None, (("upstream.example", "10.0.0.5"),))
    moved = container_spec(settings, b"c", None, (("upstream.example", "10.0.0.6"),))
    assert first.spec_hash == again.spec_hash != moved.spec_hash
    # A server that is no cache keeps the hash it had before extra hosts existed.
    assert container_spec(make_settings(), b"c", None).run_args().count("--add-host") == 0


def test_the_probe_asks_for_the_remote_only_on_a_cache_by_name(
        make_settings: Callable[..., Settings]) -> None:
    assert probe_args(_cache(make_settings))["resolve"] == ["upstream.example"]
    assert "resolve" not in probe_args(
        _cache(make_settings, registry_proxy_remoteurl="http://10.0.0.5:5000"))
    assert "resolve" not in probe_args(make_settings())
    assert "getent" not in probe_command()


def test_the_resolve_command_on_this_machine() -> None:
    """The probe's part run by a real shell: localhost resolves (/etc/hosts), a name under
    .invalid resolves nowhere and prints nothing."""
    command = "; ".join(resolve_commands(["localhost", "nowhere.invalid"]))
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    state = parse_probe(out.stdout.splitlines())
    assert "nowhere.invalid" not in state.resolved
    assert set(state.resolved["localhost"]) <= {"127.0.0.1", "::1"}
    assert state.resolved["localhost"]
    # Repeats (one line per socket type) are read once, in getent's order.
    lines = ["@@registry-kit:resolve", "up.example 10.0.0.5", "up.example 10.0.0.5",
             "up.example fd00::5"]
    assert parse_probe(lines).resolved == {"up.example": ["10.0.0.5", "fd00::5"]}
