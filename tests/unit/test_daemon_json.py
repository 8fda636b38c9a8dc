"""Unit tests for registry_kit.render.daemon_json (merge/unmerge of the kit's keys) and the
insecure-registries entry registry_kit.roles.client asks for."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from registry_kit.model.settings import Settings
from registry_kit.render import daemon_json
from registry_kit.render.daemon_json import DaemonJsonError, merge, needs_restart, unmerge
from registry_kit.roles.client import insecure_entries

MIRROR = "https://mirror.example:5000"
KIT = "reg.example:5000"


def _current() -> dict[str, Any]:
    return {"log-driver": "journald", "data-root": "/srv/docker",
            "insecure-registries": ["other.example:5000"], "log-opts": {"tag": "x"}}


def test_merge_keeps_foreign_keys_and_order() -> None:
    current = _current()
    wanted = merge(current, mirrors=[MIRROR], live_restore=True, insecure_add=[KIT])
    assert list(wanted) == ["log-driver", "data-root", "insecure-registries", "log-opts",
                            "registry-mirrors", "live-restore"]
    assert wanted == {"log-driver": "journald", "data-root": "/srv/docker",
                      "insecure-registries": ["other.example:5000", KIT],
                      "log-opts": {"tag": "x"}, "registry-mirrors": [MIRROR],
                      "live-restore": True}
    assert current == _current()  # input not mutated


def test_merge_without_settings_changes_nothing() -> None:
    current = {"log-driver": "journald", "registry-mirrors": ["https://theirs.example"],
               "live-restore": False, "insecure-registries": ["other.example:5000"]}
    wanted = merge(current, mirrors=(), live_restore=None)
    assert wanted == current
    assert list(wanted) == list(current)


def test_merge_replaces_mirrors_in_place() -> None:
    current = {"registry-mirrors": ["https://old.example"], "debug": True}
    wanted = merge(current, mirrors=[MIRROR], live_restore=False)
    assert list(wanted) == ["registry-mirrors", "debug", "live-restore"]
    assert wanted["registry-mirrors"] == [MIRROR]
    assert wanted["live-restore"] is False


def test_merge_adds_kit_insecure_entry_once() -> None:
    current = {"insecure-registries": [KIT]}
    assert merge(current, mirrors=(), live_restore=None, insecure_add=[KIT]) == current
    assert merge({}, mirrors=(), live_restore=None, insecure_add=[KIT]) == {
        "insecure-registries": [KIT]}


def test_merge_removes_only_kit_insecure_entry() -> None:
    current = {"insecure-registries": ["a.example:5000", KIT, "b.example:5000"]}
    wanted = merge(current, mirrors=(), live_restore=None, insecure_remove=[KIT])
    assert wanted == {"insecure-registries": ["a.example:5000", "b.example:5000"]}
    alone = merge({"insecure-registries": [KIT], "x": 1}, mirrors=(), live_restore=None,
                  insecure_remove=[KIT])
    assert alone == {"x": 1}  # an emptied list is removed, not left as []


def test_unmerge_removes_exactly_what_merge_added() -> None:
    current = _current()
    merged = merge(current, mirrors=[MIRROR], live_restore=True, insecure_add=[KIT])
    restored = unmerge(merged, mirrors=[MIRROR], live_restore=True, insecure=[KIT])
    assert restored == current
    assert list(restored) == list(current)


def test_unmerge_leaves_values_the_kit_did_not_set() -> None:
    current = {"registry-mirrors": ["https://theirs.example"], "live-restore": False,
               "insecure-registries": ["other.example:5000"]}
    assert unmerge(current, mirrors=[MIRROR], live_restore=True, insecure=[KIT]) == current


@pytest.mark.parametrize(("text", "expected"),
                         [(None, {}), ("", {}), ("  \n", {}), ('{"a": [1]}', {"a": [1]})])
def test_parse(text: str | None, expected: dict[str, Any]) -> None:
    assert daemon_json.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1,}', "/etc/docker/daemon.json is not valid JSON"),
    ("{oops", "/etc/docker/daemon.json is not valid JSON"),
    ("[1, 2]", "/etc/docker/daemon.json is not a JSON object"),
    ('"text"', "/etc/docker/daemon.json is not a JSON object"),
])
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(DaemonJsonError) as caught:
        daemon_json.parse(text)
    assert str(caught.value).startswith(message)


def test_render_round_trips() -> None:
    data = merge(_current(), mirrors=[MIRROR], live_restore=True)
    text = daemon_json.render(data)
    assert text.endswith("}\n")
    assert text.startswith('{\n  "log-driver": "journald",\n')
    assert json.loads(text) == data
    assert daemon_json.parse(text) == data


@pytest.mark.parametrize(("before", "after", "restart"), [
    ({}, {}, False),
    ({"log-driver": "journald"}, {"log-driver": "journald", "registry-mirrors": [MIRROR]}, False),
    ({"insecure-registries": ["a"]}, {}, False),
    ({"live-restore": False}, {"live-restore": True}, False),
    ({"log-driver": "journald"}, {"log-driver": "json-file"}, True),
    ({}, {"data-root": "/srv/docker"}, True),
    ({"debug": True, "live-restore": True}, {"live-restore": True}, True),
])
def test_needs_restart(before: dict[str, Any], after: dict[str, Any], restart: bool) -> None:
    assert needs_restart(before, after) is restart


@pytest.mark.parametrize(("data", "add", "remove"), [
    ({"registry_tls_mode": "none"}, ["reg.example:5000"], []),
    ({"registry_tls_mode": "none", "registry_port": 443}, ["reg.example:443"], []),
    ({}, [], ["reg.example:5000"]),
    ({"registry_port": 443}, [], ["reg.example:443"]),
])
def test_client_insecure_entries(make_settings: Callable[..., Settings], data: dict[str, Any],
                                 add: list[str], remove: list[str]) -> None:
    settings = make_settings(registry_domain="reg.example", **data)
    assert insecure_entries(settings) == (add, remove)
