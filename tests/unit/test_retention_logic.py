"""Retention (registry_kit.model.retention): the rules refused before any host is touched,
one line each, and the planner, rule by rule and for indexes, artifacts and shared
manifests. Pure: no host, no pyinfra."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from registry_kit.model import retention
from registry_kit.model.retention import Rule
from registry_kit.model.settings import Settings, SettingsError

HOST = "reg-host-1"  # conftest.HOST


# --- settings ------------------------------------------------------------------------------

def test_defaults_no_rules_and_report_only(make_settings: Callable[..., Settings]) -> None:
    made = make_settings()
    assert made.registry_retention_rules == () and made.registry_retention_apply is False


def test_a_full_rule_is_read(make_settings: Callable[..., Settings]) -> None:
    made = make_settings(registry_retention_rules=[
        {"repository": "ci/*", "tags": ["*"], "exclude": ["release-*"], "keep_last": 3,
         "keep_days": 7, "keep_always": ["latest", "v*"], "untagged": "delete"},
        {"repository": "tmp", "untagged": "delete"}], registry_retention_apply=True)
    assert made.registry_retention_rules == (
        Rule("ci/*", ("*",), ("release-*",), 3, 7, ("latest", "v*"), True),
        Rule("tmp", untagged_delete=True))
    assert made.registry_retention_apply is True


@pytest.mark.parametrize(("value", "allowed"), [
    ([{"repository": "a", "keep_last": 1, "keep_first": 2}], "no other keys"),
    ([{"keep_last": 1}], "a rule with 'repository'"),
    (["a"], "a rule with 'repository'"),
    ({"repository": "a"}, "a list of rules"),
    ([{"repository": "a", "keep_last": -1}], "keep_last: a whole number from 0"),
    ([{"repository": "a", "keep_days": -5}], "keep_days: a whole number from 0"),
    ([{"repository": "a", "keep_last": True}], "keep_last: a whole number"),
    ([{"repository": "a", "keep_last": "3"}], "keep_last: a whole number"),
    ([{"repository": "A/b", "keep_last": 1}], "repository pattern 'A/b'"),
    ([{"repository": "a//b", "keep_last": 1}], "repository pattern"),
    ([{"repository": "-a", "keep_last": 1}], "repository pattern"),
    ([{"repository": "a", "keep_last": 1, "tags": [".x*"]}], "tags: a list of tag patterns"),
    ([{"repository": "a", "keep_last": 1, "tags": []}], "tags: at least one"),
    ([{"repository": "a", "keep_last": 1, "exclude": ["a b"]}], "exclude: a list of tag"),
    ([{"repository": "a", "keep_always": ["-*"]}], "keep_always: a list of tag patterns"),
    ([{"repository": "a", "keep_always": "latest"}], "keep_always: a list of tag patterns"),
    ([{"repository": "a", "keep_last": 1, "tags": ["x" * 129]}], "tags: a list of tag"),
    ([{"repository": "a", "keep_last": 0}], "keep_last 0 (or keep_days 0) with no other"),
    ([{"repository": "a", "keep_last": 0, "keep_days": 0}], "keep_last 0"),
    ([{"repository": "a", "keep_last": 0, "untagged": "delete"}], "keep_last 0"),
    ([{"repository": "a"}], "one or more of 'keep_last'"),
    ([{"repository": "a", "tags": ["v*"]}], "one or more of 'keep_last'"),
    ([{"repository": "a", "untagged": "remove"}], "untagged: 'delete' or 'keep'"),
    ([{"repository": "a", "untagged": "keep"}], "one or more of 'keep_last'"),
])
def test_bad_rules_are_refused_in_one_line(make_settings: Callable[..., Settings], value: Any,
                                           allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(registry_retention_rules=value)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{HOST}: setting registry_retention_rules=")
    assert re.search(r" is not allowed: .*" + re.escape(allowed), message), message


@pytest.mark.parametrize("rule", [
    {"repository": "a", "keep_last": 0, "keep_days": 1},
    {"repository": "a", "keep_last": 0, "keep_always": ["latest"]},
    {"repository": "*", "keep_days": 30},
    {"repository": "team-a/*/x", "keep_always": ["*"], "tags": ["*.sig", "_x"]},
    {"repository": "a", "keep_last": 1_000_000},
])
def test_good_rules_pass(make_settings: Callable[..., Settings], rule: dict[str, Any]) -> None:
    assert len(make_settings(registry_retention_rules=[rule]).registry_retention_rules) == 1


def test_apply_must_be_a_boolean(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(SettingsError, match="registry_retention_apply='yes' is not allowed"):
        make_settings(registry_retention_apply="yes")


def test_tag_patterns() -> None:
    assert retention.is_tag_pattern("v*") and retention.is_tag_pattern("*.sig")
    assert retention.is_tag_pattern("_") and retention.is_tag_pattern("*")
    assert not retention.is_tag_pattern(".*") and not retention.is_tag_pattern("*/x")
    assert not retention.is_tag_pattern("") and not retention.is_tag_pattern(3)
