"""The disk guard: its settings, units and status columns, and its script run against a
config.yml the kit renders, with df, docker and curl replaced by stubs (the e2e test runs it
for real on a small filesystem in the lab). Storage usage: the status walk run on a storage
tree made here."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_kit.facts import FileState, HostState, parse_status
from registry_kit.model.settings import Settings, SettingsError
from registry_kit.package_data import SCRIPTS
from registry_kit.render.config import render_config
from registry_kit.roles import disk_guard, usage

STUBS = {
    # df -P DIR: blocks from $USED and $AVAIL.
    "df": 'echo "Filesystem 1024-blocks Used Available Capacity Mounted"\n'
          'echo "tmpfs $((USED + AVAIL)) $USED $AVAIL x% /data"\n',
    "docker": 'echo "docker $*" >>"$CALLS"\n'
              '[ "$1" = inspect ] && echo "${RUNNING:-true}"\ntrue\n',
    "curl": "printf 401\n",
}


@pytest.fixture
def guard(tmp_path: Path, make_settings: Callable[..., Settings]) -> Callable[..., str]:
    """Run the guard script once at USED of 100 blocks; returns what it printed."""
    bin_dir, config_dir = tmp_path / "bin", tmp_path / "config"
    bin_dir.mkdir()
    config_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (config_dir / "config.yml").write_text(render_config(make_settings(), "s"))

    def run(used: int, *, running: bool = True, facts: Path | None = None) -> str:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "USED": str(used),
               "AVAIL": str(100 - used), "CALLS": str(tmp_path / "calls"),
               "RUNNING": "true" if running else "false"}
        args = ["sh", str(SCRIPTS / disk_guard.SCRIPT), "registry", str(config_dir),
                str(tmp_path), "90", "85", "https://r:5000", "-", "-", "5",
                str(tmp_path / "lock"), str(config_dir / "disk-guard-readonly"),
                *([str(facts)] if facts else [])]
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        return done.stdout
    return run


def _calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    calls = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return [call for call in calls if not call.startswith("docker inspect")]


def test_script_switches_at_the_marks_and_only_then(
        guard: Callable[..., str], tmp_path: Path, make_settings: Callable[..., Settings]) \
        -> None:
    config, flag = tmp_path / "config" / "config.yml", tmp_path / "config" / "disk-guard-readonly"
    writable = render_config(make_settings(), "s")
    assert guard(89) == "" and _calls(tmp_path) == [] and not flag.exists()
    said = guard(90)
    assert said.startswith("<4>registry-kit: ") and "90% full (mark 90%)" in said
    # Byte for byte what the deploy renders read-only, so a deploy now changes nothing.
    assert config.read_text() == render_config(make_settings(), "s", read_only=True)
    assert flag.read_text().endswith("Z\n") and _calls(tmp_path) == ["docker restart registry"]
    # Between the marks, and at the mark again: read-only stays, no restart, no log line.
    assert guard(87) == guard(95) == "" and _calls(tmp_path) == []
    said = guard(84)
    assert said.startswith("<5>registry-kit: ") and "made writable again" in said
    assert config.read_text() == writable and not flag.exists()
    assert _calls(tmp_path) == ["docker restart registry"]
    assert guard(88) == "" and _calls(tmp_path) == []
    # The flag with a writable config (a deploy planned before a switch wrote it): read-only
    # again at the next check, between the marks too.
    flag.write_text("2026-12-07T03:00:00Z\n")
    assert guard(87).startswith("<4>registry-kit: ") and "enabled: true" in config.read_text()
    assert flag.read_text() == "2026-12-07T03:00:00Z\n"  # since the first switch


def test_script_leaves_a_stopped_registry_and_a_collection_alone(
        guard: Callable[..., str], tmp_path: Path) -> None:
    guard(99, running=False)
    assert _calls(tmp_path) == []  # config switched, the registry reads it when it starts
    # Read-only without the guard's flag (a hand edit): neither ended nor taken over.
    (tmp_path / "config" / "disk-guard-readonly").unlink()
    config = tmp_path / "config" / "config.yml"
    before = config.read_text()
    assert "enabled: true" in before and guard(10) == guard(99) == "" and \
        config.read_text() == before and _calls(tmp_path) == []
    assert not (tmp_path / "config" / "disk-guard-readonly").exists()
    (tmp_path / "config" / "disk-guard-readonly").write_text("2026-12-07T03:00:00Z\n")
    saved = tmp_path / "config" / "config.yml.registry-kit-saved"
    saved.write_text("x")  # garbage collection at work: it restores the config itself
    assert guard(10) == "" and (tmp_path / "config" / "disk-guard-readonly").exists()
    assert config.read_text() == before


def test_script_exports_its_state_when_it_changes(guard: Callable[..., str],
                                                  tmp_path: Path) -> None:
    """registry_metrics: the guard's state as gauges in the facts folder (only when that
    folder exists), rewritten only when the state changes."""
    facts = tmp_path / "facts" / "disk-guard.prom"
    guard(10, facts=facts)
    assert not facts.parent.exists()  # metrics off: nothing written, no folder made
    facts.parent.mkdir()
    guard(10, facts=facts)
    assert facts.read_text().splitlines()[-1] == "registry_kit_disk_guard_read_only 0"
    before = facts.stat().st_mtime_ns
    guard(20, facts=facts)
    assert facts.stat().st_mtime_ns == before
    guard(95, facts=facts)
    flag = tmp_path / "config" / "disk-guard-readonly"
    lines = facts.read_text().splitlines()
    assert "registry_kit_disk_guard_read_only 1" in lines and lines[-1] == \
        f"registry_kit_disk_guard_read_only_since_timestamp_seconds {int(flag.stat().st_mtime)}"
    assert oct(facts.stat().st_mode & 0o777) == "0o644"
    guard(50, facts=facts)
    assert facts.read_text().splitlines()[-1] == "registry_kit_disk_guard_read_only 0"


def test_percent_is_dfs_rounded_up(tmp_path: Path) -> None:
    done = subprocess.run(["sh", str(SCRIPTS / disk_guard.SCRIPT), "--percent", str(tmp_path)],
                          capture_output=True, text=True, check=True)
    assert 0 <= int(done.stdout) <= 100


def test_settings(make_settings: Callable[..., Settings]) -> None:
    assert make_settings().registry_disk_readonly_percent == 90
    assert make_settings().registry_disk_writable_percent == 85
    assert make_settings(registry_disk_readonly_percent=None).registry_disk_readonly_percent \
        is None
    for bad in (100, 49, "90", True, 90.5):
        with pytest.raises(SettingsError, match=r"registry_disk_readonly_percent=.*None"):
            make_settings(registry_disk_readonly_percent=bad)
    with pytest.raises(SettingsError, match=r"registry_disk_writable_percent=90 .*below "
                       r"registry_disk_readonly_percent \(90\)"):
        make_settings(registry_disk_writable_percent=90)


def test_guard_only_on_filesystem_storage(make_settings: Callable[..., Settings]) -> None:
    flag = FileState("0" * 64, "644", "root", "root")
    state = HostState(files={"/etc/registry-kit/disk-guard-readonly": flag})
    assert disk_guard.holds_read_only(make_settings(), state)
    assert not disk_guard.holds_read_only(make_settings(), HostState())
    off = make_settings(registry_disk_readonly_percent=None)
    memory = make_settings(registry_storage={"driver": "inmemory"})
    assert not disk_guard.holds_read_only(off, state)
    assert not disk_guard.wanted(off) and not disk_guard.wanted(memory)


def test_units(make_settings: Callable[..., Settings]) -> None:
    service = disk_guard.service_unit(make_settings()).decode()
    assert ("ExecStart=/usr/local/lib/registry-kit/registry-disk-guard.sh registry "
            "/etc/registry-kit /var/lib/registry-kit/data 90 85 ") in service
    assert "LogLevelMax=notice\n" in service and "%" not in service
    assert "OnUnitActiveSec=5s\n" in disk_guard.timer_unit(make_settings()).decode()


def test_status_columns(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    sections = {"disk": ["tmpfs 268435456 241591910 26843546 91% /data"],
                "guard": ["active"], "guard-since": ["2026-12-07T03:00:00Z"]}
    assert disk_guard.status_row(settings, sections) == {
        "disk size": "268.4 MB", "disk used": "241.6 MB (90%)", "disk free": "26.8 MB",
        "disk guard": "read-only since 2026-12-07T03:00:00Z"}
    again = {**sections, "guard-since": [], "guard-writable": ["2026-12-07T03:10:00+00:00"]}
    assert disk_guard.status_row(settings, again)["disk guard"] == \
        "writable since 2026-12-07T03:10:00+00:00"
    assert disk_guard.status_row(settings, {"guard": ["inactive"]})["disk guard"] == \
        "not running"
    s3 = make_settings(registry_storage={"driver": "inmemory"})
    assert disk_guard.status_row(s3, {})["disk guard"] == "- (inmemory)"


# --------------------------------------------------------------------------- usage


def _tree(root: Path, blobs: dict[str, int], links: dict[str, list[str]]) -> None:
    """A registry storage: blobs (digest -> size) and per repository the digests its
    layer links name (the first one also as a manifest revision)."""
    v2 = root / "docker" / "registry" / "v2"
    for digest, size in blobs.items():
        folder = v2 / "blobs" / "sha256" / digest[:2] / digest
        folder.mkdir(parents=True)
        (folder / "data").write_bytes(b"x" * size)
    for repo, digests in links.items():
        for index, digest in enumerate(digests):
            kinds = ["_layers"] + (["_manifests/revisions", "_manifests/tags/v1/index"]
                                   if index == 0 else [])
            for kind in kinds:
                folder = v2 / "repositories" / repo / kind / "sha256" / digest
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "link").write_text(f"sha256:{digest}")


def test_usage_walk_counts_unique_shared_and_unlinked(
        tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    digests = {name: name * 64 for name in "abcdef"}
    _tree(tmp_path, {digests["a"]: 1000, digests["b"]: 200, digests["c"]: 30,
                     digests["d"]: 4, digests["e"]: 5000},
          {"team/app": [digests["a"], digests["b"]], "base": [digests["c"], digests["b"]],
           "other": [digests["d"]], "lonely": [digests["f"]]})  # f: a link to no blob
    settings = make_settings()
    # The status command as it is, on this tree instead of registry_data_dir.
    command = usage.status_command(settings).replace(settings.registry_data_dir,
                                                     str(tmp_path))
    output = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                            check=True).stdout
    sections = parse_status(output.splitlines())
    assert sections["usage"] == ["R 1000 team/app", "R 30 base", "R 4 other", "R 0 lonely",
                                 "T 4 200 5000 6234"]
    lines = usage.status_lines(settings, sections)
    assert lines[0] == (f"usage ({settings.host}): 4 repositories, blobs 6.2 KB, shared between "
                        "repositories 200 B, linked by none (a GC frees) 5.0 KB")
    assert lines[1:3] == ["  largest 4 by unique bytes:", "  team/app  1.0 KB"]
    assert usage.status_row(settings, sections) == {"last gc": "never",
                                                    "last retention": "never"}
    record = {"last-gc": ["2026-12-07T03:00:00Z freed 5 bytes (x)"]}
    assert usage.status_row(settings, record)["last gc"] == "2026-12-07T03:00:00Z"


def test_usage_keeps_the_twenty_largest(tmp_path: Path,
                                        make_settings: Callable[..., Settings]) -> None:
    blobs = {f"{n:064x}": n + 1 for n in range(30)}
    _tree(tmp_path, blobs, {f"repo{n:02d}": [digest] for n, digest in enumerate(blobs)})
    output = subprocess.run(["sh", "-c", usage.walk_command(str(tmp_path))],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(output) == 21 and output[0] == "R 30 repo29" and output[19] == "R 11 repo10"
    assert output[20] == f"T 30 0 0 {sum(blobs.values())}"
    s3 = make_settings(registry_storage={"driver": "inmemory"})
    assert "find" not in usage.status_command(s3) and usage.status_lines(s3, {}) == []


@pytest.mark.parametrize("major", [2, 3])
def test_script_switch_gives_the_deploys_file_on_2_and_3(
        tmp_path: Path, make_settings: Callable[..., Settings], major: int) -> None:
    """The guard's edit of config.yml is byte for byte what the deploy renders read-only
    (and back), for registry 2 and 3 and with a secret that looks like the edited lines."""
    settings = make_settings(registry_delete_enabled=True)
    secret = "x\n    readonly:\n      enabled: false\n"
    writable = render_config(settings, secret, major=major)
    read_only = render_config(settings, secret, read_only=True, major=major)
    for now, want, source, wanted in (("false", "true", writable, read_only),
                                      ("true", "false", read_only, writable)):
        edit = f"/^    readonly:$/{{n;s/^      enabled: {now}$/      enabled: {want}/;}}"
        # The script's line, with $now and $want in place of the values above.
        line = 'sed "/^    readonly:\\$/{n;s/^      enabled: $now\\$/      enabled: $want/;}"'
        assert line in (SCRIPTS / disk_guard.SCRIPT).read_text()
        done = subprocess.run(["sed", edit], input=source, capture_output=True, text=True,
                              check=True).stdout
        assert done == wanted
