"""`python -m bench.swap [--base REV] [--runs N]`: how long one server's registry does not
answer while the kit replaces its container (an image change), old code against this
checkout, alternating on the same lab host in one run.

Each deploy switches `registry_image` between two tags the lab serves (registry:2 and
registry:2.8.2), so every run replaces the container (scripts/replace-container.sh). Meanwhile
a probe on the server asks /v2/ on the registry's port every 20 ms (curl, 1 s limit); the
figure is the longest gap between two answered probes (200 or 401) during the run: the
seconds a client gets no answer. The old code is `git archive REV` (bench.noop_compare's
checkout), both trees using the same control-machine state. Results:
bench/results/<date>-swap.json and .md. Uses the lab of REGISTRY_KIT_LAB_NAME (one server:
`make demo`'s lab), whose hosts must be up.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.noop_compare import checkout
from lab.ssh import ssh_argv
from lab.state import load

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
IMAGES = ("registry:2", "registry:2.8.2")
# The probe: one curl every 20 ms against the registry's port on the server itself, each
# line "TIME CODE"; stops when its flag file goes.
PROBE = """: > /tmp/swap-probe.log; touch /tmp/swap-probe.run
while [ -e /tmp/swap-probe.run ]; do
  c=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)
  echo "$(date +%s.%N) $c" >> /tmp/swap-probe.log; sleep 0.02
done
"""


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def on_server(state: dict, host: str, command: list[str], stdin: str | None = None) -> str:
    port = int(state["hosts"][host]["port"])
    # ssh joins its arguments into one remote command line: quote them into one.
    proc = subprocess.run(ssh_argv(Path(state["key"]), port, [shlex.join(command)]), input=stdin,
                          capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout


def deploy(tree: Path, state_dir: Path, image: str) -> float:
    started = time.monotonic()
    proc = subprocess.run([PYINFRA, "-y", "--data", f"registry_state_dir={state_dir}",
                           "--data", f"registry_image={image}", "inventories/lab.py",
                           "deploy.py"], cwd=tree, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(tree)})
    if proc.returncode != 0:
        raise SystemExit(f"bench: deploy from {tree} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def longest_silence(log: str) -> tuple[float, int]:
    """(longest gap between answered probes in s, probes that got no answer)."""
    answered, unanswered = [], 0
    for line in log.splitlines():
        stamp, _, code = line.partition(" ")
        if code in ("200", "401"):
            answered.append(float(stamp))
        else:
            unanswered += 1
    gaps = [b - a for a, b in itertools.pairwise(answered)]
    return (max(gaps) if gaps else float("nan")), unanswered


def swap(state: dict, server: str, url: str, tree: Path, state_dir: Path,
         image: str) -> dict[str, float]:
    on_server(state, server, ["sh", "-c", "cat > /tmp/swap-probe.sh"], stdin=PROBE)
    on_server(state, server, ["sh", "-c", "nohup sh /tmp/swap-probe.sh \"$0\" >/dev/null "
                              "2>&1 & sleep 0.5", url])
    try:
        seconds = deploy(tree, state_dir, image)
    finally:
        on_server(state, server, ["sh", "-c", "rm -f /tmp/swap-probe.run; sleep 0.3"])
    silence, unanswered = longest_silence(on_server(state, server,
                                                    ["cat", "/tmp/swap-probe.log"]))
    return {"silence_s": round(silence, 3), "unanswered_probes": unanswered,
            "deploy_s": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default="main", help="the old code (a git revision)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--server", default="lab-reg")
    parser.add_argument("--url", default="https://127.0.0.1:5000/v2/")
    args = parser.parse_args()

    def short(rev: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev],
                              check=True, capture_output=True, text=True).stdout.strip()

    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--",
                            "registry_kit"], check=True, capture_output=True, text=True).stdout
    base, head = short(args.base), short("HEAD") + (" + uncommitted" if dirty else "")
    state, state_dir = load(), ROOT / ".registry-kit"
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = checkout(base, Path(tmp) / "old")
        say(f"settling: both images pulled, {IMAGES[0]} running ({head})")
        deploy(ROOT, state_dir, IMAGES[1])
        deploy(ROOT, state_dir, IMAGES[0])
        turn = 1
        for index in range(args.runs):
            order = [("old", old), ("new", ROOT)]
            for label, tree in order if index % 2 == 0 else reversed(order):
                figures = swap(state, args.server, args.url, tree, state_dir, IMAGES[turn])
                turn = 1 - turn
                runs[label].append(figures)
                say(f"round {index + 1} {label}: {figures}")
    summary = {label: {"silence_median_s": statistics.median(r["silence_s"] for r in rs),
                       "runs": rs} for label, rs in runs.items()}
    stamp = datetime.date.today().isoformat()
    report = {"date": stamp, "base": base, "head": head, "machine": platform.platform(),
              "cpus": os.cpu_count(), "lab": os.environ.get("REGISTRY_KIT_LAB_NAME", "lab"),
              "load_average": os.getloadavg(), "summary": summary}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stamp}-swap.json").write_text(json.dumps(report, indent=2) + "\n")
    ratio = summary["new"]["silence_median_s"] / summary["old"]["silence_median_s"]
    lines = [f"# Container swap silence: {base} (old) against {head} (new), {stamp}", "",
             f"Lab `{report['lab']}`, {args.runs} alternating rounds, {report['cpus']} CPUs, "
             f"load average at the end {report['load_average'][0]:.1f}.", "",
             "| code | silence median | silences |", "| --- | --- | --- |"]
    for label, rev in (("old", base), ("new", head)):
        lines.append(f"| {label} ({rev}) | {summary[label]['silence_median_s']:.2f} s | "
                     + ", ".join(f"{r['silence_s']:.2f}" for r in runs[label]) + " |")
    lines += ["", f"new / old: {ratio:.2f}"]
    (RESULTS / f"{stamp}-swap.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
