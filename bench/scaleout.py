"""`python -m bench.scaleout`: push and pull throughput through the load balancer with one
and with two replicas on the shared Ceph bucket.

Not a test (reported, never asserted; moved out of tests/e2e/test_scaleout.py, which keeps
every check). In the lab named by REGISTRY_KIT_LAB_NAME: that test's scale-out site (Ceph
RGW, two replicas, haproxy, redis, a client; tests/e2e/test_scaleout.py's scale_site), one
deploy, then --rounds rounds, alternating one replica (the other in haproxy maintenance) and
two, so that a busy moment on this shared machine does not favour one side. Each round:
--clients concurrent skopeo clients push, then pull, a fresh random image of --size bytes.
Results: bench/results/<date>-scaleout-throughput.json (each round and the medians).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

import harness  # noqa: E402
import test_scaleout as scaleout  # noqa: E402

import lab  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def say(text: str) -> None:
    print(f"bench.scaleout: {text}", file=sys.stderr, flush=True)


def throughput(scale: scaleout.Scale, label: str, clients: int, size: int) -> dict[str, float]:
    layouts = []
    for index in range(clients):
        layout = scale.tmp / f"{label}-{index}"
        scaleout._random_image(layout, size)
        layouts.append(layout)

    def push(index: int) -> None:
        proc = scale.skopeo(["copy", "--dest-cert-dir", "@CERTS@", f"oci:{layouts[index]}",
                             f"docker://{scaleout.ADDRESS}/bench/{label}-{index}:1"])
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)

    def pull(index: int) -> None:
        proc = scale.skopeo(["copy", "--src-cert-dir", "@CERTS@",
                             f"docker://{scaleout.ADDRESS}/bench/{label}-{index}:1",
                             f"dir:{scale.tmp}/{label}-out-{index}"])
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)

    figures = {}
    for verb, action in (("push", push), ("pull", pull)):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(action, range(clients)))
        seconds = time.monotonic() - started
        figures[f"{verb}_MBps"] = round(clients * size / seconds / 1e6, 1)
        figures[f"{verb}_seconds"] = round(seconds, 2)
    return figures


def measure(scale: scaleout.Scale, rounds: int, clients: int, size: int) -> dict[str, Any]:
    sides: dict[str, list[dict[str, float]]] = {"one_replica": [], "two_replicas": []}
    for number in range(rounds):
        scaleout._haproxy(f"set server registry/{scaleout.REP2} state maint")
        try:
            scaleout._wait_states({scaleout.REP1: "UP", scaleout.REP2: "MAINT"})
            sides["one_replica"].append(throughput(scale, f"one{number}", clients, size))
        finally:
            scaleout._haproxy(f"set server registry/{scaleout.REP2} state ready")
        scaleout._wait_states({scaleout.REP1: "UP", scaleout.REP2: "UP"})
        sides["two_replicas"].append(throughput(scale, f"two{number}", clients, size))
        say(f"round {number + 1}/{rounds}: one {sides['one_replica'][-1]}, "
            f"two {sides['two_replicas'][-1]}")
    medians = {f"{side}_median_{key}": round(statistics.median(r[key] for r in runs), 1)
               for side, runs in sides.items() for key in ("push_MBps", "pull_MBps")}
    return {"clients": clients, "bytes_per_client": size, "rounds": sides, **medians}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--size", type=int, default=16_000_000)
    args = parser.parse_args()
    lab.up()
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp, \
            scaleout.scale_site(Path(tmp)) as scale:
        say("deploying the scale-out site")
        harness.run_kit(scale.inventory("deploy")).assert_ok()
        figures = measure(scale, args.rounds, args.clients, args.size)
    result = {"date": datetime.date.today().isoformat(), **figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{result['date']}-scaleout-throughput.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=1))
    say(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
