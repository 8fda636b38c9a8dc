"""`make bench` / `python -m bench`: how long the kit takes, measured in the lab.

Figures, each the median of --runs runs, all on this machine in one run:
- cold deploy (fresh hosts without Docker), warm deploy (Docker present, no registry: after
  teardown.py), and no-op rerun, for 1 server + 1, 5 and 20 clients;
- remote commands and SSH connections per host in the no-op run (from pyinfra's --debug);
- the floor: one SSH round trip per host (`ssh host true`);
- push and pull throughput of a random (incompressible) image through the deployed
  TLS + auth registry, against the tutorial's plain `docker run -p 5000:5000 registry:2`
  on the same server, as a ratio.
Results go to bench/results/<date>.json and .md. The lab is a namespace of its own
(`rk-bench`), so the main lab and its tests are left alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402
from lab import state as lab_state  # noqa: E402
from lab.site import site_data  # noqa: E402
from lab.ssh import ssh_argv  # noqa: E402
from lab.topology import HostSpec  # noqa: E402

NAMESPACE = "rk-bench"
SERVER = "bench-reg"
DOMAIN = "registry.lab"
RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
PLAIN_PORT = 5001


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def clients(n: int) -> list[str]:
    return [f"bench-c{i}" for i in range(1, n + 1)]


def write_inventory(path: Path, n: int) -> Path:
    state = lab_state.load(NAMESPACE)
    data = site_data(state)

    def entry(name: str) -> tuple[str, dict[str, Any]]:
        host_name, host_data = lab_state.pyinfra_host(name, state)
        return host_name, {**host_data, **data}

    path.write_text(f"registry_servers = {[entry(SERVER)]!r}\n"
                    f"registry_clients = {[entry(c) for c in clients(n)]!r}\n")
    return path


def run_pyinfra(inventory: Path, script: str, *extra: str) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run([PYINFRA, "-y", *extra, str(inventory), script], cwd=ROOT,
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "REGISTRY_KIT_LAB_NAME": NAMESPACE})
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench: {script} failed:\n{proc.stderr[-4000:]}")
    return elapsed, proc.stderr + proc.stdout


def ssh(name: str, command: str, *, timeout: int = 900) -> str:
    state = lab_state.load(NAMESPACE)
    port = int(state["hosts"][name]["port"])
    proc = subprocess.run(ssh_argv(Path(state["key"]), port, [command]), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {name}: {command!r} failed: {proc.stderr}")
    return proc.stdout


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")


def allow_many_systemd_hosts() -> None:
    """Each lab host's systemd takes inotify instances of the one root user; the kernel's
    default (128) runs out at about 20 hosts and systemd then hangs in `initializing`."""
    if int(INOTIFY_INSTANCES.read_text()) < 1024:
        say("raising fs.inotify.max_user_instances to 1024 for 20+ systemd hosts")
        INOTIFY_INSTANCES.write_text("1024\n")


def bring_up(n: int) -> None:
    allow_many_systemd_hosts()
    specs = [HostSpec(SERVER, "bookworm", (DOMAIN,), ("registry_servers",)),
             *(HostSpec(c, "bookworm", (), ("registry_clients",)) for c in clients(n))]
    lab.up(specs, name=NAMESPACE)


def measure_size(n: int, runs: int, cold_runs: int, tmp: Path) -> dict[str, Any]:
    say(f"1 server + {n} clients")
    bring_up(n)
    hosts = [SERVER, *clients(n)]
    inventory = write_inventory(tmp / f"bench-{n}.py", n)
    result: dict[str, Any] = {"clients": n}

    cold = []
    for attempt in range(cold_runs):
        for host in hosts:
            lab.reset_host(host, name=NAMESPACE)
        elapsed, _ = run_pyinfra(inventory, "deploy.py")
        say(f"  cold deploy {attempt + 1}/{cold_runs}: {elapsed:.1f} s")
        cold.append(elapsed)
    result["cold_deploy_s"] = median(cold) if cold else None

    if not cold:
        run_pyinfra(inventory, "deploy.py")
    warm = []
    for attempt in range(runs):
        run_pyinfra(inventory, "teardown.py")
        elapsed, _ = run_pyinfra(inventory, "deploy.py")
        say(f"  warm deploy {attempt + 1}/{runs}: {elapsed:.1f} s")
        warm.append(elapsed)
    result["warm_deploy_s"] = median(warm)

    noop = []
    for _ in range(runs):
        elapsed, _ = run_pyinfra(inventory, "deploy.py")
        noop.append(elapsed)
    result["noop_s"] = median(noop)
    say(f"  no-op: {result['noop_s']} s")

    _, debug = run_pyinfra(inventory, "deploy.py", "--debug")
    commands = {h: len(re.findall(rf"Running command on {re.escape(h)}:", debug)) for h in hosts}
    uploads = {h: len(re.findall(rf"Uploading file.*{re.escape(h)}", debug)) for h in hosts}
    connections = len(re.findall(r"\[pyinfra\.connectors\.ssh\] Connecting to:", debug))
    result["noop_remote_commands_per_host"] = max(commands.values())
    result["noop_uploads_per_host"] = max(uploads.values())
    result["ssh_connections_per_host"] = round(connections / len(hosts), 2)

    state = lab_state.load(NAMESPACE)
    floor = []
    for host in hosts:
        port = int(state["hosts"][host]["port"])
        started = time.monotonic()
        subprocess.run(ssh_argv(Path(state["key"]), port, ["true"]), check=True,
                       capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
        floor.append(time.monotonic() - started)
    result["ssh_true_per_host_s"] = median(floor)
    result["noop_over_ssh_floor"] = round(result["noop_s"] / result["ssh_true_per_host_s"], 1)
    return result


def measure_throughput(size_mb: int, runs: int) -> dict[str, Any]:
    """Push and pull of distinct random images from bench-c1: deployed vs plain registry."""
    client = "bench-c1"
    say(f"throughput: {size_mb} MB images, {runs} runs each")
    ssh(SERVER, f"docker rm -f plain >/dev/null 2>&1; docker run -d --name plain -p "
                f"{PLAIN_PORT}:5000 registry:2 >/dev/null")
    # The tutorial's registry is plain HTTP: the client lists it as insecure (a key the
    # kit keeps, as it keeps any it does not own).
    ssh(client, "python3 - <<'EOF'\nimport json\np='/etc/docker/daemon.json'\n"
                "d=json.load(open(p))\nentry='" + f"{DOMAIN}:{PLAIN_PORT}" + "'\n"
                "if entry not in d.setdefault('insecure-registries', []):\n"
                "    d['insecure-registries'].append(entry)\n"
                "json.dump(d, open(p, 'w'), indent=2)\nEOF\nsystemctl reload docker; sleep 1")
    targets = {"deployed": f"{DOMAIN}:5000", "plain": f"{DOMAIN}:{PLAIN_PORT}"}
    timings: dict[str, dict[str, list[float]]] = {k: {"push": [], "pull": []} for k in targets}
    for attempt in range(runs):
        for label, address in targets.items():
            image = f"{address}/bench/random:{label}-{attempt}-{time.time_ns()}"
            ssh(client, f"rm -rf /tmp/bench && mkdir /tmp/bench && head -c {size_mb}M "
                        f"/dev/urandom > /tmp/bench/blob && tar -C /tmp/bench -c blob | "
                        f"docker import - {image} >/dev/null && rm -rf /tmp/bench")
            started = time.monotonic()
            ssh(client, f"docker push {image} >/dev/null")
            timings[label]["push"].append(time.monotonic() - started)
            ssh(client, f"docker rmi {image} >/dev/null")
            started = time.monotonic()
            ssh(client, f"docker pull {image} >/dev/null")
            timings[label]["pull"].append(time.monotonic() - started)
            ssh(client, f"docker rmi {image} >/dev/null")
    ssh(SERVER, "docker rm -f plain >/dev/null")
    out: dict[str, Any] = {"image_mb": size_mb}
    for label in targets:
        for op in ("push", "pull"):
            seconds = median(timings[label][op])
            out[f"{label}_{op}_s"] = seconds
            out[f"{label}_{op}_mb_s"] = round(size_mb / seconds, 1)
    for op in ("push", "pull"):
        out[f"{op}_ratio_deployed_to_plain"] = round(
            out[f"deployed_{op}_mb_s"] / out[f"plain_{op}_mb_s"], 2)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [f"Benchmarks, {report['date']} on {report['machine']} (medians of "
             f"{report['runs']} runs)", "",
             "| hosts | cold deploy | warm deploy | no-op | ssh true | commands/host | "
             "ssh connections/host |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for size in report["sizes"]:
        cold = f"{size['cold_deploy_s']:.1f} s" if size["cold_deploy_s"] else "-"
        lines.append(f"| 1 + {size['clients']} | {cold} | {size['warm_deploy_s']:.1f} s | "
                     f"{size['noop_s']:.2f} s | {size['ssh_true_per_host_s']:.2f} s | "
                     f"{size['noop_remote_commands_per_host']} | "
                     f"{size['ssh_connections_per_host']} |")
    if len(report["sizes"]) > 1:
        base = report["sizes"][0]["noop_s"]
        lines += ["", "No-op growth: " + ", ".join(
            f"1 + {s['clients']}: {s['noop_s'] / base:.2f}x" for s in report["sizes"])]
    t = report.get("throughput")
    if t:
        lines += ["", f"Throughput ({t['image_mb']} MB random image, from a client):", "",
                  "| registry | push MB/s | pull MB/s |", "| --- | --- | --- |",
                  f"| deployed (TLS + auth) | {t['deployed_push_mb_s']} | "
                  f"{t['deployed_pull_mb_s']} |",
                  f"| plain `registry:2` (HTTP) | {t['plain_push_mb_s']} | "
                  f"{t['plain_pull_mb_s']} |",
                  f"| ratio | {t['push_ratio_deployed_to_plain']} | "
                  f"{t['pull_ratio_deployed_to_plain']} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--sizes", default="1,5,20", help="client counts (default 1,5,20)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold deploys per size")
    parser.add_argument("--image-mb", type=int, default=200, help="throughput image size")
    parser.add_argument("--keep", action="store_true", help="keep the bench lab afterwards")
    args = parser.parse_args(argv)
    tmp = ROOT / ".lab" / "bench"
    tmp.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "runs": args.runs, "sizes": [],
    }
    for n in [int(x) for x in args.sizes.split(",")]:
        report["sizes"].append(measure_size(n, args.runs, args.cold_runs, tmp))
    if args.image_mb:
        report["throughput"] = measure_throughput(args.image_mb, args.runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / report["date"]
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if not args.keep:
        lab.down(name=NAMESPACE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
