"""`python -m bench.usage [HOST] [--repos N] [--runs N]`: how long status.py's storage walk
(registry_kit.roles.usage) takes on a lab server for N repositories (default 1,000).

A storage tree is made on HOST (default lab-reg) in a folder of its own, cheaply: each
repository gets its own manifest and config blob (a few hundred bytes, so every repository
has unique bytes) and links to 3 of 5 shared layer blobs (1 MB each), as the registry lays
them out (blobs/sha256/xx/DIGEST/data, repositories/NAME/_layers|_manifests/.../link). Then
the walk, exactly as status.py sends it, runs --runs times in one SSH session; each run's
time on the server and the round trip of a whole `ssh HOST WALK` are measured. The folder
is removed afterwards. Results: bench/results/<date>-usage.json and .md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import subprocess
import time
from pathlib import Path

from lab.ssh import ssh_argv
from lab.state import load
from registry_kit.roles import usage

RESULTS = Path(__file__).resolve().parent / "results"
FOLDER = "/srv/registry-kit-usage-bench"

# Makes the tree: $1 folder, $2 repositories. Digests are made-up hex (the walk reads names
# and sizes only, never the content).
MAKE = r"""
set -eu
root=$1/docker/registry/v2 n=$2
rm -rf "$1"
hex() { printf '%064x' "$1"; }
blob() { d=$(hex "$1"); mkdir -p "$root/blobs/sha256/$(echo "$d" | cut -c1-2)/$d"
         head -c "$2" /dev/zero >"$root/blobs/sha256/$(echo "$d" | cut -c1-2)/$d/data"; }
link() { mkdir -p "$root/repositories/$1/$2/sha256/$3"
         echo "sha256:$3" >"$root/repositories/$1/$2/sha256/$3/link"; }
for s in 1 2 3 4 5; do blob "$s" 1000000; done
i=0
while [ "$i" -lt "$n" ]; do
    repo=team$((i % 10))/app$i
    m=$((1000 + 2 * i)); c=$((m + 1))
    blob "$m" $((300 + i % 100)); blob "$c" 200
    link "$repo" _manifests/revisions "$(hex $m)"
    link "$repo" "_manifests/tags/v1/index" "$(hex $m)"
    mkdir -p "$root/repositories/$repo/_manifests/tags/v1/current"
    echo "sha256:$(hex $m)" >"$root/repositories/$repo/_manifests/tags/v1/current/link"
    link "$repo" _layers "$(hex $c)"
    for s in $((i % 5 + 1)) $(((i + 1) % 5 + 1)) $(((i + 2) % 5 + 1)); do
        link "$repo" _layers "$(hex "$s")"
    done
    i=$((i + 1))
done
find "$1" -type f | wc -l
"""

TIMED = r"""
i=0
while [ "$i" -lt "$2" ]; do
    s=$(date +%s%N); sh -c "$1" >/tmp/registry-kit-usage-bench.out; e=$(date +%s%N)
    echo "run $(( (e - s) / 1000000 ))"
    i=$((i + 1))
done
cat /tmp/registry-kit-usage-bench.out; rm -f /tmp/registry-kit-usage-bench.out
"""


def _ssh(lab: dict, host: str, command: list[str], stdin: str | None = None) -> str:
    argv = ssh_argv(Path(lab["key"]), lab["hosts"][host]["port"], command)
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=1800,
                          check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("host", nargs="?", default="lab-reg")
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    lab = load()
    start = time.monotonic()
    files = _ssh(lab, args.host, ["sh", "-s", FOLDER, str(args.repos)], MAKE).strip()
    made = round(time.monotonic() - start, 1)
    walk = usage.walk_command(FOLDER)
    out = _ssh(lab, args.host, ["sh", "-s", shlex.quote(walk), str(args.runs)],
               TIMED).splitlines()
    server_ms = [int(line.split()[1]) for line in out if line.startswith("run ")]
    walk_output = [line for line in out if not line.startswith("run ")]
    trips = []
    for _ in range(args.runs):
        start = time.monotonic()
        _ssh(lab, args.host, ["sh", "-c", shlex.quote(walk)])
        trips.append(round(time.monotonic() - start, 3))
    _ssh(lab, args.host, ["rm", "-rf", FOLDER])
    result = {
        "what": "status.py storage walk (registry_kit.roles.usage.walk_command)",
        "host": args.host, "repositories": args.repos, "files_in_tree": int(files),
        "tree_made_seconds": made, "runs": args.runs,
        "walk_on_server_ms": server_ms,
        "walk_on_server_median_ms": statistics.median(server_ms),
        "ssh_round_trip_with_walk_s": trips,
        "ssh_round_trip_with_walk_median_s": statistics.median(trips),
        "walk_output_head": walk_output[:3], "walk_output_total": walk_output[-1:],
    }
    day = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{day}-usage.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{day}-usage.md").write_text(
        f"# Storage walk of status.py, {args.repos} repositories ({day})\n\n"
        f"`python -m bench.usage {args.host} --repos {args.repos} --runs {args.runs}` on the "
        f"lab ({int(files)} files in the tree):\n\n"
        f"- on the server: median {result['walk_on_server_median_ms']} ms "
        f"(runs: {server_ms})\n"
        f"- `ssh HOST WALK` from the control machine: median "
        f"{result['ssh_round_trip_with_walk_median_s']} s (runs: {trips})\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
