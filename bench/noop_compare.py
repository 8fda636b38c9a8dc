"""`python -m bench.noop_compare [--base REV] [--runs N]`: the no-op deploy, old code against
this checkout, alternating on the same lab hosts in one run.

The old code is `git archive REV` in a temporary folder (its own deploy.py, group_data and
registry_kit; the lab state linked in), so both run the same inventory, the same settings
and the same control-machine state (`registry_state_dir` given absolute to both). First
one deploy with this checkout makes sure there is nothing to do; then each round runs old
and new once (order alternating), recording wall time and the CPU time of pyinfra and its
children. Every run must change nothing. Results: bench/results/<date>-noop-compare.json
and .md. Uses the lab of REGISTRY_KIT_LAB_NAME (default lab), whose hosts must be up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def checkout(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    (into / ".lab").symlink_to(ROOT / ".lab")
    return into


def run(tree: Path, state_dir: Path) -> tuple[float, float, dict[str, Any]]:
    """(wall s, CPU s, pyinfra's JSON results) of one no-op deploy from `tree`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # PYTHONPATH: the tree's own registry_kit, not the one installed in this venv.
    proc = subprocess.run([PYINFRA, "-y", "--json", "--data",
                           f"registry_state_dir={state_dir}", "inventories/lab.py",
                           "deploy.py"], cwd=tree, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"bench: deploy from {tree} failed:\n{proc.stderr[-3000:]}")
    return wall, cpu, json.loads(proc.stdout)["results"]


def changed(results: dict[str, Any]) -> list[str]:
    return [op["name"] for op in results["operations"] if op["success"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the old code (a git revision)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    base = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base],
                          check=True, capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          check=True, capture_output=True, text=True).stdout.strip()
    state_dir = ROOT / ".registry-kit"
    with tempfile.TemporaryDirectory() as tmp:
        old = checkout(base, Path(tmp) / "old")
        say(f"settling: one deploy with this checkout ({head})")
        run(ROOT, state_dir)
        times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
        for index in range(args.runs):
            order = [("old", old), ("new", ROOT)]
            for label, tree in order if index % 2 == 0 else reversed(order):
                wall, cpu, results = run(tree, state_dir)
                if changed(results):
                    raise SystemExit(f"bench: the {label} no-op changed {changed(results)}")
                times[label].append((wall, cpu))
                say(f"round {index + 1} {label}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    summary = {label: {"wall_median_s": round(statistics.median(w for w, _ in runs), 3),
                       "cpu_median_s": round(statistics.median(c for _, c in runs), 3),
                       "runs": [[round(w, 3), round(c, 3)] for w, c in runs]}
               for label, runs in times.items()}
    stamp = datetime.date.today().isoformat()
    report = {"date": stamp, "base": base, "head": head, "machine": platform.platform(),
              "cpus": os.cpu_count(), "lab": os.environ.get("REGISTRY_KIT_LAB_NAME", "lab"),
              "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}-noop-compare.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# No-op deploy: {base} (old) against {head} (new), {stamp}", "",
             f"Lab `{report['lab']}` (inventories/lab.py), {args.runs} alternating rounds, "
             f"{report['cpus']} CPUs, {report['machine']}.", "",
             "| code | wall median | CPU median (pyinfra + children) |", "| --- | --- | --- |"]
    for label, rev in (("old", base), ("new", head)):
        lines.append(f"| {label} ({rev}) | {summary[label]['wall_median_s']:.2f} s | "
                     f"{summary[label]['cpu_median_s']:.2f} s |")
    (RESULTS / f"{stamp}-noop-compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
