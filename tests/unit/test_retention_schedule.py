"""Scheduled retention (registry_retention_schedule): the setting refused before any host is
touched, one line each; the role's units, the runner's JSON and the planner's files; and the
runner (scripts/registry-retention.py) on a storage folder, with a stand-in registry-gc.sh.
No host, no pyinfra run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import script_module

import registry_kit
from registry_kit.jobs import retention as job
from registry_kit.model import retention
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.roles import gc_timer, retention_timer


def _runner() -> ModuleType:
    path = Path(registry_kit.__file__).parent / "scripts" / "registry-retention.py"
    return script_module.load(path, "registry_retention_runner")


RUNNER = _runner()
HOST = "reg-host-1"  # conftest.HOST
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


# --- the role: units, the runner's JSON, the planner's files --------------------------------

def scheduled(make_settings: Callable[..., Settings], **data: Any) -> Settings:
    return make_settings(registry_retention_schedule="*-*-* 02:30:00",
                         registry_retention_rules=RULES, **data)


def test_units(make_settings: Callable[..., Settings]) -> None:
    settings = scheduled(make_settings, registry_gc_delete_untagged=True)
    timer = retention_timer.timer_unit(settings).decode()
    assert "OnCalendar=*-*-* 02:30:00\n" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    service = retention_timer.service_unit(settings).decode()
    exec_start = [line for line in service.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == [
        "ExecStart=/usr/bin/flock /run/lock/registry-kit-maintenance.lock "
        "/usr/bin/python3 /usr/local/lib/registry-kit/registry-retention.py "
        "/etc/registry-kit/retention.json"]
    assert "Type=oneshot" in service and "%" not in service
    assert retention_timer.service_unit(settings) == retention_timer.service_unit(settings)


def test_gc_and_retention_share_one_lock(make_settings: Callable[..., Settings]) -> None:
    settings = scheduled(make_settings, registry_gc_schedule="weekly",
                         registry_container_name="rk_1")
    gc = gc_timer.service_unit(settings).decode()
    lock = "/usr/bin/flock /run/lock/registry-kit-maintenance.lock "
    assert f"ExecStart={lock}/usr/local/lib/registry-kit/registry-gc.sh rk_1 " in gc
    assert f"ExecStart={lock}/usr/bin/python3 " in \
        retention_timer.service_unit(settings).decode()
    # retention.py's apply holds it for the whole run (fd 9 of its shell).
    listing = retention.read_listing([])
    command = job.apply_command(settings, retention.plan(listing.repositories, (), 0.0), "f")
    assert command.startswith("exec 9>>/run/lock/registry-kit-maintenance.lock && "
                              "/usr/bin/flock 9 || exit 1; ")
    # Under the disk guard's read-only no check step: retention frees its disk.
    assert "; { [ -e /etc/registry-kit/disk-guard-readonly ] || /usr/local/lib/registry-kit/" \
        "registry-gc.sh --step check " in command


def test_runner_config(make_settings: Callable[..., Settings]) -> None:
    settings = scheduled(make_settings, registry_data_dir="/srv/reg",
                         registry_gc_delete_untagged=True)
    config = json.loads(retention_timer.runner_config(settings))
    assert sorted(config) == sorted(RUNNER.CONFIG_KEYS)
    assert config["rules"] == [{"repository": "ci/*", "tags": ["*"], "exclude": [],
                                "keep_last": 3, "untagged": "keep"}]
    # The rules read back are the settings' own.
    assert retention.parse(HOST, config["rules"]) == settings.registry_retention_rules
    assert config["storage"] == "/srv/reg/docker/registry/v2"
    assert config["listing"] == retention_timer.listing_command(settings) == \
        job.listing_command(settings)
    assert config["gc"][:2] == ["/usr/local/lib/registry-kit/registry-gc.sh", "registry"]
    assert "--delete-untagged" not in config["gc"]  # only what the rules selected goes
    assert config["record"] == "/etc/registry-kit/last-retention"
    assert config["planner"] == "/usr/local/lib/registry-kit/retention-planner"
    assert config["guard_flag"] == "/etc/registry-kit/disk-guard-readonly"
    assert config["facts"] == "/var/lib/registry-kit-metrics/retention.prom"


@pytest.mark.parametrize("rule", [
    {"repository": "a/*", "tags": ["v*"], "exclude": ["v1*"], "keep_days": 3,
     "keep_always": ["latest"], "untagged": "delete"},
    {"repository": "b", "untagged": "delete"},
    {"repository": "c", "keep_last": 0, "keep_days": 7}])
def test_rule_documents_read_back(make_settings: Callable[..., Settings],
                                  rule: dict[str, Any]) -> None:
    rules = make_settings(registry_retention_rules=[rule]).registry_retention_rules
    assert retention.parse(HOST, [retention.rule_document(r) for r in rules]) == rules


def test_planner_files_are_the_package_modules() -> None:
    found = retention_timer.planner_files()
    root = "/usr/local/lib/registry-kit/retention-planner/registry_kit"
    assert sorted(found) == [f"{root}/__init__.py", f"{root}/model/__init__.py",
                             f"{root}/model/access.py", f"{root}/model/retention.py"]
    assert found[f"{root}/model/retention.py"] == Path(retention.__file__).read_bytes()
    assert retention_timer.planner_dirs() == [
        "/usr/local/lib/registry-kit/retention-planner", root, f"{root}/model"]


# --- the runner (scripts/registry-retention.py) ----------------------------------------------

@pytest.mark.parametrize(("argv", "expected"), [
    (["/etc/rk/retention.json"], ("/etc/rk/retention.json", False)),
    (["--report", "c.json"], ("c.json", True)),
    (["c.json", "--report"], ("c.json", True))])
def test_runner_arguments(argv: list[str], expected: tuple[str, bool]) -> None:
    assert RUNNER.parse_args(argv) == expected


@pytest.mark.parametrize("argv", [[], ["a.json", "b.json"], ["--dry-run"], ["--report"],
                                  ["-x", "a.json"]])
def test_runner_refuses_other_arguments(argv: list[str]) -> None:
    with pytest.raises(RUNNER.Usage, match=r"^usage: registry-retention\.py CONFIG\.json"):
        RUNNER.parse_args(argv)


@pytest.mark.parametrize("text", ["", "[]", '{"host": "x"}', json.dumps(
    {key: "x" for key in RUNNER.CONFIG_KEYS})])
def test_runner_refuses_a_bad_config(text: str) -> None:
    with pytest.raises(RUNNER.Usage, match=r"^registry-kit: retention: "):
        RUNNER.load_config(text)


def test_runner_gc_steps() -> None:
    config = {"gc": ["/x/registry-gc.sh", "registry", "/etc/rk"]}
    assert RUNNER.gc_step(config, "collect") == ["/x/registry-gc.sh", "--step", "collect",
                                                 "registry", "/etc/rk"]


DIGEST_HEX = {"old": "a" * 64, "new": "b" * 64}


def _storage(v2: Path, now: float) -> None:
    """team/app with tags old (10 days) and new, each its own manifest and 1000-byte layer."""
    for tag, fill in DIGEST_HEX.items():
        layer = (fill[:1] * 64).replace(fill[0], "c" if tag == "old" else "d")
        manifest = json.dumps({"schemaVersion": 2, "layers": [
            {"digest": f"sha256:{layer}", "size": 1000}]}).encode()
        for hex_, content in ((fill, manifest), (layer, b"x" * 1000)):
            blob = v2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data"
            blob.parent.mkdir(parents=True)
            blob.write_bytes(content)
        repo = v2 / "repositories" / "team" / "app" / "_manifests"
        link = repo / "tags" / tag / "current" / "link"
        link.parent.mkdir(parents=True)
        link.write_text(f"sha256:{fill}")
        age = 10 * 86400 if tag == "old" else 60
        os.utime(link, (now - age, now - age))
        revision = repo / "revisions" / "sha256" / fill / "link"
        revision.parent.mkdir(parents=True)
        revision.write_text(f"sha256:{fill}")


def _site(tmp_path: Path, make_settings: Callable[..., Settings], steps: str) -> Path:
    """A storage, the planner's files as a server holds them, a stand-in registry-gc.sh that
    logs its steps (and runs `steps`' shell for the readonly step), and the JSON."""
    data = tmp_path / "data"
    _storage(data / "docker" / "registry" / "v2", time.time())
    planner = tmp_path / "planner"
    for path, content in retention_timer.planner_files().items():
        local = planner / path.removeprefix("/usr/local/lib/registry-kit/retention-planner/")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(content)
    gc = tmp_path / "registry-gc.sh"
    gc.write_text(f'#!/bin/sh\n[ "$1" = --retention-result ] && {{ echo "result=$3" '
                  f'>>{tmp_path}/steps; exit 0; }}\necho "$2" >>{tmp_path}/steps\n'
                  f'[ "$2" = readonly ] && {{ {steps or "true"}; }}\nexit 0\n')
    gc.chmod(0o755)
    settings = make_settings(registry_retention_schedule="daily",
                             registry_retention_rules=[{"repository": "team/*",
                                                        "keep_last": 1}])
    config = json.loads(retention_timer.runner_config(settings))
    # The storage here, not on a server (a plain path: q() leaves it as it is).
    v2 = str(data / "docker" / "registry" / "v2")
    config.update(planner=str(planner), gc=[str(gc), *config["gc"][1:]],
                  record=str(tmp_path / "last-retention"), storage=v2,
                  guard_flag=str(tmp_path / "disk-guard-readonly"),
                  facts=str(tmp_path / "retention.prom"),
                  listing=config["listing"].replace(config["storage"], v2))
    (tmp_path / "retention.json").write_text(json.dumps(config))
    return data / "docker" / "registry" / "v2" / "repositories" / "team" / "app"


def _run(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    runner = Path(registry_kit.__file__).parent / "scripts" / "registry-retention.py"
    # -I: the planner comes from the installed files, not from this checkout.
    return subprocess.run([sys.executable, "-I", str(runner), str(tmp_path / "retention.json"),
                           *extra], capture_output=True, text=True, check=False, cwd="/")


def test_runner_applies_the_plan_with_registry_gc_steps(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    repo = _site(tmp_path, make_settings, "")
    report = _run(tmp_path, "--report")
    assert report.returncode == 0, report.stderr
    assert "delete team/app:old" in report.stdout and not (tmp_path / "steps").exists()
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "steps").read_text().split() == ["check", "readonly", "collect",
                                                        "writable", "result=0"]
    assert sorted(p.name for p in (repo / "_manifests" / "tags").iterdir()) == ["new"]
    assert sorted(p.name for p in (repo / "_manifests" / "revisions" / "sha256").iterdir()) \
        == [DIGEST_HEX["new"]]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["result"] == "ok" and line["tags"] == ["team/app:old"]
    assert line["manifests"] == [f"team/app@sha256:{DIGEST_HEX['old']}"]
    assert (line["tags_deleted"], line["manifests_deleted"]) == (1, 1)
    assert line["bytes_planned"] == 1000 + len(json.dumps({"schemaVersion": 2, "layers": [
        {"digest": "sha256:" + "c" * 64, "size": 1000}]}))
    record = (tmp_path / "last-retention").read_text()
    assert record.startswith(line["time"] + " retention (timer): ok: 1 tags and 1 manifests "
                             "deleted, 0 bytes of blobs freed (planned ")
    again = _run(tmp_path)  # nothing left to delete: no step runs
    assert again.returncode == 0 and json.loads(again.stdout)["result"] == \
        "ok: nothing to delete"
    steps = (tmp_path / "steps").read_text().split()
    assert steps.count("readonly") == 1 and steps[-1] == "result=0"  # metrics: a run, fine


def test_runner_refuses_when_a_push_came_meanwhile(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    repo = _site(tmp_path, make_settings, "")
    link = repo / "_manifests" / "tags" / "new" / "current" / "link"
    # A push between the listing and the read-only restart rewrites a tag's link.
    gc = tmp_path / "registry-gc.sh"
    gc.write_text(gc.read_text().replace(
        "{ true; }", f"{{ touch -d @1 {link}; }}"))
    done = _run(tmp_path)
    assert done.returncode == 1
    assert (tmp_path / "steps").read_text().split() == ["check", "readonly", "writable",
                                                        "result=1"]
    assert sorted(p.name for p in (repo / "_manifests" / "tags").iterdir()) == ["new", "old"]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert line["result"].startswith("refused: the storage changed since it was read")
    assert (line["tags"], line["tags_deleted"], line["bytes_planned"]) == ([], 0, 0)
    assert " retention (timer): refused: " in (tmp_path / "last-retention").read_text()


def test_status_shows_the_timer_and_its_last_run(make_settings: Callable[..., Settings]) -> None:
    from registry_kit.facts import parse_status
    from registry_kit.roles import status_json

    mark = "@@registry-kit-status:"
    sections = parse_status([f"{mark}retention-timer", "active", f"{mark}retention-last",
                             "loaded", "success", "2026-12-07T02:30:09Z"])
    settings = scheduled(make_settings)
    assert retention_timer.status_row(settings, sections) == {"retention timer": "active"}
    assert status_json.server_facts(settings, sections)["retention"] == {
        "timer": "active", "last_run": "2026-12-07T02:30:09Z", "last_result": "success"}
    assert retention_timer.status_row(settings, {}) == {"retention timer": "-"}
    assert status_json.server_facts(settings, parse_status([
        f"{mark}retention-last", "not-found", "success"]))["retention"] == {
        "timer": None, "last_run": None, "last_result": None}
    command = retention_timer.status_command(settings)
    assert "systemctl is-active registry-kit-retention.timer" in command
    assert "registry-kit-retention.service" in command


def test_runner_under_the_disk_guard_skips_the_check_step(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """The disk guard holds the registry read-only (its flag): retention must still free
    space, so the check step (which wants the deployed, writable config) is skipped."""
    repo = _site(tmp_path, make_settings, "")
    (tmp_path / "disk-guard-readonly").write_text("2026-12-07T03:00:00Z\n")
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "steps").read_text().split() == ["readonly", "collect", "writable",
                                                        "result=0"]
    assert sorted(p.name for p in (repo / "_manifests" / "tags").iterdir()) == ["new"]
