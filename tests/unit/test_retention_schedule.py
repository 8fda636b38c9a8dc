"""Scheduled retention (registry_retention_schedule): the setting refused before any host is
touched, one line each. Pure: no host, no pyinfra run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from registry_kit.model.settings import Settings, SettingsError

RULES = [{"repository": "ci/*", "keep_last": 3}]


# --- settings ------------------------------------------------------------------------------

def test_no_schedule_by_default(make_settings: Callable[..., Settings]) -> None:
    assert make_settings().registry_retention_schedule is None


@pytest.mark.parametrize("value", ["daily", "*-*-* 02:30:00", "Mon..Fri 22:00"])
def test_schedule_accepted_with_rules(make_settings: Callable[..., Settings], value: str) -> None:
    made = make_settings(registry_retention_schedule=value, registry_retention_rules=RULES)
    assert made.registry_retention_schedule == value


@pytest.mark.parametrize("value", ["", "daily; rm -rf /", "daily\nExecStart=x", 5, "$(x)",
                                   "weekly\\"])
def test_schedule_refused_like_gcs(make_settings: Callable[..., Settings], value: object) -> None:
    with pytest.raises(SettingsError, match="registry_retention_schedule") as error:
        make_settings(registry_retention_schedule=value, registry_retention_rules=RULES)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("rules", [None, []])
def test_schedule_needs_rules(make_settings: Callable[..., Settings], rules: object) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(registry_retention_schedule="daily", registry_retention_rules=rules)
    assert str(error.value) == (
        "reg-host-1: setting registry_retention_schedule='daily' is not allowed: None while "
        "registry_retention_rules is empty (a scheduled run applies the rules)")


@pytest.mark.parametrize("storage", [
    {"driver": "s3", "bucket": "images", "region": "us-east-1"},
    {"driver": "inmemory"}])
def test_schedule_refused_off_filesystem_storage(make_settings: Callable[..., Settings],
                                                 storage: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as error:
        make_settings(registry_retention_schedule="daily", registry_retention_rules=RULES,
                      registry_storage=storage, registry_storage_check=False)
    assert str(error.value).startswith(
        "reg-host-1: setting registry_retention_schedule='daily' is not allowed: None with "
        f"registry_storage driver {storage['driver']!r}: scheduled retention runs on "
        "filesystem storage only")
    assert "\n" not in str(error.value)
