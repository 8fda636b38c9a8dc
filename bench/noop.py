"""`python -m bench.noop [--pairs N] [--base REV] [--pyc] [--hosts A,B]`: the kit's no-op
against pyinfra's floor on the same lab hosts, in one run (issue 29, item 2).

- floor: `pyinfra -y --json inventories/lab.py exec -- true` (pyinfra's start, the
  inventory, one SSH connection and one command per host);
- kit: `pyinfra -y --json inventories/lab.py deploy.py` of the committed code (`git archive
  HEAD`, bench.noop_compare), a full deploy (server + client) with nothing to do; every run
  must change nothing;
- base (with --base REV): the same deploy from `git archive REV`, so the figures before and
  after a change come from the same run;
- with --pyc, each kit variant also as `<name>+pyc`: the same tree with its bytecode compiled
  beforehand (`compileall`), as pip leaves an installed wheel. Without it, Python compiles
  the kit's modules on every run when PYTHONDONTWRITEBYTECODE is set (as on the machines
  here), while pyinfra's own modules come compiled from their install.

Each round runs every variant once, in an order that rotates from round to round. Wall time
and CPU time (user + sys of pyinfra and its children) per run; medians, and kit/floor
ratios of the medians. The hosts are REGISTRY_KIT_LAB_HOSTS (default: `lab-reg,lab-client1`,
one server and one client) of the lab REGISTRY_KIT_LAB_NAME, which must be up. Results:
bench/results/<date>-noop.json and .md, with the command line that made them.
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
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.noop_compare import changed, checkout

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
INVENTORY = "inventories/lab.py"
NO_PYC = "PYTHONDONTWRITEBYTECODE"


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def timed(argv: list[str], tree: Path) -> tuple[float, float, str]:
    """(wall s, CPU s of the process and its children, stdout) of one pyinfra run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # PYTHONPATH: the tree's own registry_kit, not the one the venv has installed.
    proc = subprocess.run([PYINFRA, "-y", "--json", *argv], cwd=tree, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} in {tree} failed:\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def floor(tree: Path, state_dir: Path) -> tuple[float, float]:
    wall, cpu, _ = timed([INVENTORY, "exec", "--", "true"], tree)
    return wall, cpu


def kit(tree: Path, state_dir: Path) -> tuple[float, float]:
    # registry_state_dir given absolute: the old tree uses the same CA and secrets.
    wall, cpu, out = timed(["--data", f"registry_state_dir={state_dir}", INVENTORY,
                            "deploy.py"], tree)
    done = changed(json.loads(out)["results"])
    if done:
        raise SystemExit(f"bench: the no-op from {tree} changed {done}")
    return wall, cpu


def summarize(times: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        label: {"wall_median_s": round(statistics.median(w for w, _ in runs), 3),
                "cpu_median_s": round(statistics.median(c for _, c in runs), 3),
                "runs": [[round(w, 3), round(c, 3)] for w, c in runs]}
        for label, runs in times.items()}
    for label in times:
        if label != "floor":
            for what in ("wall", "cpu"):
                summary[label][f"{what}_ratio"] = round(
                    summary[label][f"{what}_median_s"] / summary["floor"][f"{what}_median_s"], 3)
    return summary


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# No-op deploy against pyinfra's floor, {report['date']}", "",
             f"`{report['command']}`", "",
             f"Lab `{report['lab']}`, hosts {report['hosts']}, {report['pairs']} rounds "
             f"(order rotating), {report['cpus']} CPUs, {report['machine']}, "
             f"{report['bytecode']}, load average at the end {report['load_average'][0]:.1f}.",
             "",
             "| run | wall median | CPU median | wall / floor | CPU / floor |",
             "| --- | --- | --- | --- | --- |"]
    for label, row in report["summary"].items():
        name = "floor: `exec -- true`" if label == "floor" else \
            f"{label}: `deploy.py` ({report['revisions'][label]})"
        ratios = (f"{row['wall_ratio']:.2f}x | {row['cpu_ratio']:.2f}x" if label != "floor"
                  else "1.00x | 1.00x")
        lines.append(f"| {name} | {row['wall_median_s']:.2f} s | {row['cpu_median_s']:.2f} s "
                     f"| {ratios} |")
    return "\n".join(lines) + "\n"


def rev(name: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", name], check=True,
                          capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="rounds (each runs every variant)")
    parser.add_argument("--base", help="also run the deploy of this git revision")
    parser.add_argument("--pyc", action="store_true", help="also each kit variant compiled")
    parser.add_argument("--hosts", default="lab-reg,lab-client1")
    args = parser.parse_args()
    os.environ.setdefault("REGISTRY_KIT_LAB_HOSTS", args.hosts)
    state_dir = ROOT / ".registry-kit"
    revisions = {"kit": rev("HEAD")}
    if args.base:
        revisions["base"] = rev(args.base)
    with tempfile.TemporaryDirectory() as tmp:
        variants: list[tuple[str, Any, Path]] = [("floor", floor, ROOT)]
        for label, revision in sorted(revisions.items()):
            variants.append((label, kit, checkout(revision, Path(tmp) / label)))
            if args.pyc:
                tree = checkout(revision, Path(tmp) / f"{label}+pyc")
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)],
                               check=True)
                variants.append((f"{label}+pyc", kit, tree))
                revisions[f"{label}+pyc"] = revisions[label]
        head = variants[-1][2]
        say("settling: one deploy with the committed code, then one no-op")
        timed(["--data", f"registry_state_dir={state_dir}", INVENTORY, "deploy.py"], head)
        kit(head, state_dir)
        times: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in variants}
        for index in range(args.pairs):
            shift = index % len(variants)
            for label, measure, tree in variants[shift:] + variants[:shift]:
                wall, cpu = measure(tree, state_dir)
                times[label].append((wall, cpu))
                say(f"round {index + 1} {label}: {wall:.2f} s wall, {cpu:.2f} s CPU")
    stamp = datetime.date.today().isoformat()
    report = {"date": stamp, "command": "python -m bench.noop " + " ".join(sys.argv[1:]),
              "hosts": os.environ["REGISTRY_KIT_LAB_HOSTS"], "pairs": args.pairs,
              "bytecode": f"PYTHONDONTWRITEBYTECODE={os.environ.get(NO_PYC, '')}",
              "revisions": revisions, "machine": platform.platform(), "cpus": os.cpu_count(),
              "lab": os.environ.get("REGISTRY_KIT_LAB_NAME", "lab"),
              "load_average": os.getloadavg(), "summary": summarize(times)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}-noop.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / f"{stamp}-noop.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
