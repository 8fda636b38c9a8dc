#!/usr/bin/python3
# Managed by registry-kit: scheduled retention (registry_retention_schedule), run by
# registry-kit-retention.service under the lock the GC timer takes too. The same steps as
# retention.py with registry_retention_apply=True (registry_kit/jobs/retention.py): list the
# storage (retention.py's own listing command), plan with the kit's planner
# (registry_kit/model/retention.py, installed beside this script: one source), and when
# something goes: registry-gc.sh's check and readonly steps, list again and compare (a push
# since then refuses the run, nothing deleted), remove the selected tag folders and
# revisions, registry-gc.sh's collect step (never --delete-untagged), and writable again
# whatever happened. Each run leaves one JSON line in the journal and one line in the
# last-retention record status.py reads.
# Usage: registry-retention.py CONFIG.json [--report]
#   --report: print the plan and delete nothing (no record written).
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

CONFIG_KEYS = ("host", "rules", "planner", "storage", "listing", "gc", "record", "guard_flag",
               "facts")
LIST_MAX = 200  # names per list in the journal line (journald splits lines over 48 KiB)
USAGE = "usage: registry-retention.py CONFIG.json [--report]"


class Usage(Exception):
    """Bad arguments or configuration: one line, exit code 2."""


def parse_args(argv: list[str]) -> tuple[str, bool]:
    """(config path, report only) from the arguments after the script's name."""
    args = list(argv)
    report = "--report" in args
    if report:
        args.remove("--report")
    if len(args) != 1 or args[0].startswith("-"):
        raise Usage(USAGE)
    return args[0], report


def load_config(text: str) -> dict[str, Any]:
    """The JSON the deploy rendered (registry_kit/roles/retention_timer.py), checked."""
    try:
        config = json.loads(text)
    except ValueError as error:
        raise Usage(f"registry-kit: retention: the configuration is not JSON: {error}") \
            from None
    if not isinstance(config, dict) or sorted(config) != sorted(CONFIG_KEYS):
        raise Usage(f"registry-kit: retention: the configuration needs exactly the keys "
                    f"{', '.join(CONFIG_KEYS)}")
    if not isinstance(config["gc"], list) or not config["gc"] or \
            not all(isinstance(arg, str) for arg in config["gc"]):
        raise Usage("registry-kit: retention: 'gc' must be registry-gc.sh's arguments")
    return config


def gc_step(config: dict[str, Any], step: str) -> list[str]:
    """registry-gc.sh's arguments for one step: `--step STEP` after the script's path."""
    gc = config["gc"]
    return [gc[0], "--step", step, *gc[1:]]


def list_storage(config: dict[str, Any], retention: Any) -> Any:
    out = subprocess.run(["sh", "-c", config["listing"]], capture_output=True, text=True,
                         check=True).stdout
    return retention.read_listing(out.splitlines())


def blob_bytes(storage: str) -> int:
    out = subprocess.run(["du", "-sb", "blobs"], cwd=storage, capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def step_ok(config: dict[str, Any], step: str) -> bool:
    # registry-gc.sh's own lines go to the journal as they are.
    return subprocess.run(gc_step(config, step), check=False).returncode == 0


def delete_and_collect(config: dict[str, Any], retention: Any, plan: Any,
                       fingerprint: str) -> tuple[str, int]:
    """On a read-only registry: (result, bytes of blobs freed)."""
    if list_storage(config, retention).fingerprint != fingerprint:
        return ("refused: the storage changed since it was read (a push?); nothing was "
                "deleted"), 0
    storage = config["storage"]
    before = blob_bytes(storage)
    for path in retention.delete_paths(plan):
        # Names matched the registry's grammar when the listing was read: no '..' in them.
        shutil.rmtree(os.path.join(storage, path), ignore_errors=True)
    ok = step_ok(config, "collect")
    freed = before - blob_bytes(storage)
    return ("ok" if ok else "failed: garbage collection (see registry-gc.sh's lines above)"), \
        freed


def apply(config: dict[str, Any], retention: Any, plan: Any, fingerprint: str) \
        -> tuple[str, int]:
    # Held read-only by the disk guard (its flag): the check step, which wants the deployed
    # writable config, is skipped; the readonly step pauses the guard (it waits while a saved
    # config exists), and writable puts back the guard's read-only config, which the guard
    # turns writable once the collection brought the disk below its low mark.
    steps = ["readonly"] if os.path.exists(config["guard_flag"]) else ["check", "readonly"]
    if not all(step_ok(config, step) for step in steps):
        return "failed: the registry could not be made read-only; nothing was deleted", 0
    result, freed = "failed: interrupted", 0
    try:
        result, freed = delete_and_collect(config, retention, plan, fingerprint)
    except (OSError, ValueError, subprocess.CalledProcessError) as error:
        result = f"failed: {error}"
    finally:
        if not step_ok(config, "writable"):
            result = f"{result}; failed: the registry is not writable again"
    return result, freed


def entry(plan: Any, result: str, freed: int, seconds: float, now: str) -> dict[str, Any]:
    """The run's journal line (JSON): what was deleted, bytes freed, seconds, result."""
    deleted = not result.startswith(("refused", "failed: the registry could not"))
    tags = [f"{r.name}:{d.tag.name}" for r in plan.repositories for d in r.deleted_tags] \
        if deleted else []
    manifests = [f"{r.name}@{digest}" for r in plan.repositories
                 for digest, _ in r.delete_manifests] if deleted else []
    return {"registry_kit": "retention", "time": now, "result": result,
            "tags_deleted": len(tags), "manifests_deleted": len(manifests),
            "tags": tags[:LIST_MAX], "manifests": manifests[:LIST_MAX],
            "bytes_freed": freed, "bytes_planned": plan.freed_bytes if deleted else 0,
            "seconds": round(seconds, 1)}


def record_line(item: dict[str, Any]) -> str:
    """The last-retention record: its first word is the time status.py shows."""
    return (f"{item['time']} retention (timer): {item['result']}: {item['tags_deleted']} tags "
            f"and {item['manifests_deleted']} manifests deleted, {item['bytes_freed']} bytes "
            f"of blobs freed (planned {item['bytes_planned']}) in {item['seconds']} s\n")


def write_record(path: str, line: str) -> None:
    with open(f"{path}.new", "w", encoding="utf-8") as out:
        out.write(line)
    os.replace(f"{path}.new", path)


def main(argv: list[str]) -> int:
    try:
        path, report = parse_args(argv)
        with open(path, encoding="utf-8") as source:
            config = load_config(source.read())
    except (Usage, OSError) as error:
        print(error, file=sys.stderr)
        return 2
    sys.path.insert(0, config["planner"])
    from registry_kit.model import retention  # the kit's planner, installed beside

    start = time.monotonic()
    rules = retention.parse(config["host"], config["rules"])
    listing = list_storage(config, retention)
    plan = retention.plan(listing.repositories, rules, listing.now)
    if report:
        print("\n".join(retention.report_lines(plan)))
        return 0
    if plan.empty:
        result, freed = "ok: nothing to delete", 0
    else:
        result, freed = apply(config, retention, plan, listing.fingerprint)
    item = entry(plan, result, freed, time.monotonic() - start,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(item, sort_keys=True), flush=True)
    write_record(config["record"], record_line(item))
    code = 0 if result.startswith("ok") else 1
    # The result for Prometheus (registry_metrics), as retention.py's apply leaves it.
    subprocess.run([config["gc"][0], "--retention-result", config["facts"], str(code)],
                   check=False)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
