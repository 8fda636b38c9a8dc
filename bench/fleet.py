"""`python -m bench.fleet [--clients 50] [--rounds 5] [--parallel 10,20,51] [--pause 12]
[--keep]`:
1 server + 50 clients in one run (issue 29, item 3).

In the lab namespace REGISTRY_KIT_LAB_NAME (default `rk-fleet`), brought up once for the
whole run and taken down at its end (`lab down`, unless --keep): one server and --clients
clients, every one from the lab's `bookworm-docker` host image (Docker already installed,
so 50 clients do not each spend a cold install). The kit's control-machine state (CA,
secrets) is a folder of the run's own, so the CA rotation below touches nothing else.

1. cold deploy of 1 + N (Docker present, nothing of the kit's);
2. no-op rounds, each running every variant once in an order that rotates from round to
   round: pyinfra's floor (`exec -- true`) and the kit's no-op on 1 + 1 and on 1 + N, and
   the 1 + N no-op again with each `--parallel` value given (pyinfra's default is
   min(20 x CPUs, hosts)); every kit run must change nothing; --pause seconds before
   each run;
3. one 1 + N no-op with --debug: remote commands and SSH connections per host;
4. a trust change: the CA replaced (`.registry-kit/ca` removed, the documented way) and
   deployed to 1 + N; then every client is checked over SSH with its own tools (the trust
   file's sha256 against the new CA, and curl with that file alone answering 401 from the
   registry), and one more no-op must change nothing.

Per pyinfra run: wall time, CPU (user + sys of pyinfra and its children), the CPU the
run's lab hosts used meanwhile (their containers' cgroups: sshd, the session, the probe; on
the same cores here) and the peak resident memory of the control process (wait4's
ru_maxrss: the largest process of the tree, pyinfra itself). The 1-minute load average is
sampled every 5 s during the run. Results: bench/results/<date>-fleet.json and .md, with
the command line, the ratios 1 + N against 1 + 1, and the arithmetic for 1 + 500 from the
measured cost per host.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lab  # noqa: E402
from lab import state as lab_state  # noqa: E402
from lab.config import NAME_ENV  # noqa: E402
from lab.ssh import ssh_argv  # noqa: E402
from lab.state import HOSTS_ENV  # noqa: E402
from lab.topology import HostSpec  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")
DEFAULT_NAMESPACE = "rk-fleet"
RELEASE = "bookworm-docker"
SERVER = "fleet-reg"
DOMAIN = "registry.lab"  # lab.site's domain: the server carries it as its alias
ADDRESS = f"{DOMAIN}:5000"
TRUST_FILE = f"/etc/docker/certs.d/{ADDRESS}/ca.crt"
INVENTORY = "inventories/lab.py"
EXTRAPOLATE_TO = 500
INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
CGROUP = Path("/sys/fs/cgroup")
KEYS = ("wall_s", "cpu_s", "hosts_cpu_s", "rss_mb")


def say(text: str) -> None:
    print(f"bench.fleet: {text}", file=sys.stderr, flush=True)


def clients(n: int) -> list[str]:
    return [f"fleet-c{i}" for i in range(1, n + 1)]


@dataclass
class Measured:
    """One pyinfra run: wall and CPU seconds, peak RSS (MB), output."""

    wall: float
    cpu: float
    rss_mb: float
    stdout: str
    stderr: str
    hosts_cpu: float = 0.0

    def changed(self) -> dict[str, int]:
        """Operation -> how many hosts it changed, for those that changed any."""
        results = json.loads(self.stdout)["results"]
        return {op["name"]: len(op["success"]) for op in results["operations"]
                if op["success"]}


class LoadSampler(threading.Thread):
    """The 1-minute load average every `every` seconds until stopped."""

    def __init__(self, every: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        return {"min": round(min(self.samples), 1), "median":
                round(statistics.median(self.samples), 1), "max": round(max(self.samples), 1)}


class Fleet:
    """The run's namespace, hosts and control-machine state dir."""

    def __init__(self, namespace: str, n: int, state_dir: Path) -> None:
        self.namespace, self.n, self.state_dir = namespace, n, state_dir
        self.all = [SERVER, *clients(n)]
        self.one = [SERVER, clients(n)[0]]
        state = lab_state.load(namespace)
        names = [state["hosts"][h]["container"] for h in self.all]
        ids = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", *names], check=True,
                             capture_output=True, text=True).stdout.split()
        self.container_ids = dict(zip(self.all, ids, strict=True))

    def hosts_cpu(self, hosts: list[str]) -> float:
        """CPU seconds the lab containers of `hosts` have used so far (their cgroups)."""
        return sum(container_cpu(self.container_ids[h]) for h in hosts)

    def pyinfra(self, hosts: list[str], *args: str) -> Measured:
        """Run pyinfra on `hosts` of the lab inventory; wall, CPU and peak RSS from wait4."""
        env = {**os.environ, NAME_ENV: self.namespace, HOSTS_ENV: ",".join(hosts),
               "PYTHONPATH": str(ROOT)}
        argv = [PYINFRA, "-y", "--json", "--data", f"registry_state_dir={self.state_dir}",
                *args]
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            hosts_before = self.hosts_cpu(hosts)
            started = time.monotonic()
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            run = Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                           out.read(), err.read(), self.hosts_cpu(hosts) - hosts_before)
        if proc.returncode != 0:
            raise SystemExit(f"bench.fleet: {' '.join(args)} on {len(hosts)} hosts failed:\n"
                             f"{run.stderr[-4000:]}")
        return run

    def deploy(self, hosts: list[str], *extra: str) -> Measured:
        return self.pyinfra(hosts, *extra, INVENTORY, "deploy.py")

    def noop(self, hosts: list[str], *extra: str) -> Measured:
        run = self.deploy(hosts, *extra)
        if run.changed():
            raise SystemExit(f"bench.fleet: the no-op on {len(hosts)} hosts changed "
                             f"{run.changed()}")
        return run

    def ssh(self, host: str, command: str) -> str:
        state = lab_state.load(self.namespace)
        argv = ssh_argv(Path(state["key"]), int(state["hosts"][host]["port"]), [command])
        return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL).stdout


def container_cpu(container_id: str) -> float:
    """CPU seconds used by a container's cgroup (v1 cpuacct, else v2 cpu.stat)."""
    v1 = CGROUP / "cpuacct" / "docker" / container_id / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text()) / 1e9
    stat = CGROUP / "system.slice" / f"docker-{container_id}.scope" / "cpu.stat"
    usage = dict(line.split() for line in stat.read_text().splitlines())
    return int(usage["usage_usec"]) / 1e6


def bring_up(namespace: str, n: int) -> float:
    # Each host's systemd takes inotify instances of the one root user: the kernel's default
    # (128) runs out at about 20 hosts (bench/__main__.py).
    if int(INOTIFY_INSTANCES.read_text()) < 1024:
        say("raising fs.inotify.max_user_instances to 1024 for 50 systemd hosts")
        INOTIFY_INSTANCES.write_text("1024\n")
    specs = [HostSpec(SERVER, RELEASE, (DOMAIN,), ("registry_servers",)),
             *(HostSpec(c, RELEASE, (), ("registry_clients",)) for c in clients(n))]
    started = time.monotonic()
    lab.up(specs, prune=True, name=namespace)
    return time.monotonic() - started


def figures(run: Measured) -> dict[str, float]:
    return {"wall_s": round(run.wall, 3), "cpu_s": round(run.cpu, 3),
            "hosts_cpu_s": round(run.hosts_cpu, 3), "rss_mb": round(run.rss_mb, 1)}


def variants(fleet: Fleet, parallel: list[int]) -> dict[str, Any]:
    """Label -> a function making one measured run, in the order of the first round."""
    n = fleet.n
    table: dict[str, Any] = {
        "floor 1+1": lambda: fleet.pyinfra(fleet.one, INVENTORY, "exec", "--", "true"),
        f"floor 1+{n}": lambda: fleet.pyinfra(fleet.all, INVENTORY, "exec", "--", "true"),
        "no-op 1+1": lambda: fleet.noop(fleet.one),
        f"no-op 1+{n}": lambda: fleet.noop(fleet.all),
    }
    for value in parallel:
        table[f"no-op 1+{n} --parallel {value}"] = \
            lambda value=value: fleet.noop(fleet.all, "--parallel", str(value))
    return table


def rounds(fleet: Fleet, parallel: list[int], count: int,
           pause: float) -> dict[str, list[dict[str, float]]]:
    table = variants(fleet, parallel)
    labels = list(table)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for index in range(count):
        shift = index % len(labels)
        for label in labels[shift:] + labels[:shift]:
            # Every run starts from the same hosts: root's systemd user manager, started by
            # pam_systemd at the first login, stays UserStopDelaySec (10 s) after the last
            # session, and a run within it skips that start (about half the hosts' CPU of
            # a no-op; seen: 5 s against 12 s on 51 hosts). A pause longer than that makes
            # every run pay it, as a deploy after a quiet while does.
            time.sleep(pause)
            runs[label].append(figures(table[label]()))
            say(f"round {index + 1}/{count} {label}: {runs[label][-1]}")
    return runs


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median of each figure per variant, and the fastest wall time (the run least slowed
    by the other work on this shared machine)."""
    return {label: {**{key: round(statistics.median(r[key] for r in rows), 3) for key in KEYS},
                    "wall_min_s": min(r["wall_s"] for r in rows)}
            for label, rows in runs.items()}


def count_remote(stderr: str, hosts: list[str]) -> dict[str, float]:
    """Remote commands (most on one host) and SSH connections per host, from --debug."""
    commands = {h: len(re.findall(rf"Running command on {re.escape(h)}:", stderr))
                for h in hosts}
    connections = len(re.findall(r"\[pyinfra\.connectors\.ssh\] Connecting to:", stderr))
    return {"remote_commands_per_host_max": max(commands.values()),
            "remote_commands_per_host_min": min(commands.values()),
            "ssh_connections_per_host": round(connections / len(hosts), 2)}


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def scaling(med: dict[str, dict[str, float]], n: int,
            to: int = EXTRAPOLATE_TO) -> dict[str, Any]:
    """Ratios 1 + n against 1 + 1, cost per added host, and 1 + `to` by arithmetic."""
    one, many = med["no-op 1+1"], med[f"no-op 1+{n}"]
    floor_one, floor_many = med["floor 1+1"], med[f"floor 1+{n}"]
    out: dict[str, Any] = {}
    for key in (*KEYS, "wall_min_s"):
        per_host = (many[key] - one[key]) / (n - 1)
        out[key] = {"ratio": ratio(many[key], one[key]),
                    "floor_ratio": ratio(floor_many[key], floor_one[key]),
                    "per_added_host": round(per_host, 4),
                    f"estimate_1+{to}": round(one[key] + (to - 1) * per_host, 1)}
    return out


def check_trust(fleet: Fleet, new_ca: bytes) -> dict[str, Any]:
    """Every client, over SSH with its own tools: the trust file is the new CA, and curl
    trusting that file alone gets the registry's 401 (the new certificate verifies)."""
    want = hashlib.sha256(new_ca).hexdigest()
    command = (f"sha256sum {TRUST_FILE} | cut -d' ' -f1; curl -s -o /dev/null -w "
               f"'%{{http_code}}\\n' --cacert {TRUST_FILE} https://{ADDRESS}/v2/")

    def one(host: str) -> tuple[str, str]:
        return host, fleet.ssh(host, command)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = dict(pool.map(one, clients(fleet.n)))
    bad = {h: a.split() for h, a in answers.items() if a.split() != [want, "401"]}
    return {"clients_checked": len(answers), "clients_with_new_ca_and_401":
            len(answers) - len(bad), "failures": bad}


def rotate_ca(fleet: Fleet) -> dict[str, Any]:
    ca_dir = fleet.state_dir / "ca"
    old = (ca_dir / "ca.crt").read_bytes()
    shutil.rmtree(ca_dir)  # the documented way to start a new CA
    run = fleet.deploy(fleet.all)
    new = (ca_dir / "ca.crt").read_bytes()
    if new == old:
        raise SystemExit("bench.fleet: the CA was not replaced")
    changed = run.changed()
    checked = check_trust(fleet, new)
    after = fleet.noop(fleet.all)
    return {"deploy": figures(run), "operations_changed": changed, **checked,
            "noop_after": figures(after)}


def markdown(report: dict[str, Any]) -> str:
    n, med, scale = report["clients"], report["medians"], report["scaling"]
    load = report["load_average_1min"]
    lines = [f"# 1 server + {n} clients in one run, {report['date']}", "",
             f"`{report['command']}`", "",
             f"Lab `{report['lab']}`, hosts from `{RELEASE}` (Docker installed), "
             f"{report['cpus']} CPUs, {report['machine']}; lab up in "
             f"{report['lab_up_s']:.0f} s; {report['rounds']} rounds, order rotating; "
             f"pyinfra's default `--parallel` here: {report['default_parallel']}. Load average "
             f"(1 min) during the run: {load['min']} to {load['max']}, median {load['median']}.",
             "", "CPU: pyinfra and its children on the control machine; hosts' CPU: the lab "
             "containers of the run's hosts (sshd, the probe, and their idle background), "
             "from their cgroups, on the same 2 cores.", "",
             "| run | wall (fastest) | CPU (control) | hosts' CPU | peak RSS (control) |",
             "| --- | --- | --- | --- | --- |"]
    rot = report["ca_rotation"]
    rows = {f"cold deploy 1+{n}": report["cold_deploy"], **{f"{k} (median)": v for k, v in
            med.items()}, f"CA rotation 1+{n}": rot["deploy"]}
    for label, row in rows.items():
        fastest = f" ({row['wall_min_s']:.2f} s)" if "wall_min_s" in row else ""
        lines.append(f"| {label} | {row['wall_s']:.2f} s{fastest} | {row['cpu_s']:.2f} s | "
                     f"{row['hosts_cpu_s']:.2f} s | {row['rss_mb']:.0f} MB |")
    w, c, m = scale["wall_s"], scale["cpu_s"], scale["rss_mb"]
    h = scale["hosts_cpu_s"]
    remote = report["noop_remote"]
    fast = scale["wall_min_s"]
    lines += ["", f"No-op 1+{n} against 1+1: wall {w['ratio']}x (fastest runs: "
              f"{fast['ratio']}x; the floor's own: "
              f"{w['floor_ratio']}x), CPU {c['ratio']}x, hosts' CPU {h['ratio']}x, peak RSS "
              f"{m['ratio']}x. Each added host: {w['per_added_host'] * 1000:.0f} ms wall, "
              f"{c['per_added_host'] * 1000:.0f} ms CPU on the control machine, "
              f"{h['per_added_host'] * 1000:.0f} ms on the host, "
              f"{m['per_added_host']:.2f} MB. By that arithmetic, 1+{EXTRAPOLATE_TO}: "
              f"{w[f'estimate_1+{EXTRAPOLATE_TO}']} s wall, {c[f'estimate_1+{EXTRAPOLATE_TO}']}"
              f" s CPU, {m[f'estimate_1+{EXTRAPOLATE_TO}']} MB.", "",
              f"No-op remote commands per host: {remote['remote_commands_per_host_min']} to "
              f"{remote['remote_commands_per_host_max']}; SSH connections per host: "
              f"{remote['ssh_connections_per_host']}.", "",
              f"CA rotation: {rot['clients_with_new_ca_and_401']} of {rot['clients_checked']} "
              f"clients hold the new CA and reach the registry with it alone (curl: 401); "
              f"operations changed (hosts): {rot['operations_changed']}; the no-op after it "
              f"changed nothing ({rot['noop_after']['wall_s']:.2f} s)."]
    return "\n".join(lines) + "\n"


def measure(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    say(f"cold deploy of 1 + {fleet.n}")
    cold = fleet.deploy(fleet.all)
    say(f"cold deploy: {figures(cold)}; settling no-op")
    fleet.noop(fleet.all)
    runs = rounds(fleet, args.parallel, args.rounds, args.pause)
    med = medians(runs)
    debug = fleet.noop(fleet.all, "--debug")
    say("CA rotation")
    rotation = rotate_ca(fleet)
    return {"cold_deploy": figures(cold), "runs": runs, "medians": med,
            "scaling": scaling(med, fleet.n),
            "noop_remote": count_remote(debug.stderr, fleet.all), "ca_rotation": rotation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--parallel", default="10,20,51",
                        help="--parallel values tried on the 1 + N no-op besides the default")
    parser.add_argument("--pause", type=float, default=12.0,
                        help="seconds between runs (over systemd's UserStopDelaySec, 10 s)")
    parser.add_argument("--keep", action="store_true", help="keep the lab afterwards")
    args = parser.parse_args(argv)
    args.parallel = [int(v) for v in args.parallel.split(",") if v]
    namespace = os.environ.get(NAME_ENV) or DEFAULT_NAMESPACE
    sampler = LoadSampler()
    sampler.start()
    up_s = bring_up(namespace, args.clients)
    say(f"lab up: {up_s:.0f} s")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-state-") as tmp:
            fleet = Fleet(namespace, args.clients, Path(tmp))
            report = measure(fleet, args)
    finally:
        sampler.done.set()
        if not args.keep:
            lab.down(name=namespace)
    report = {"date": datetime.date.today().isoformat(),
              "command": "python -m bench.fleet " + " ".join(argv or sys.argv[1:]),
              "lab": namespace, "clients": args.clients, "rounds": args.rounds,
              "cpus": os.cpu_count(), "machine": platform.platform(), "lab_up_s": round(up_s),
              "default_parallel": min(20 * (os.cpu_count() or 1), args.clients + 1),
              "load_average_1min": sampler.summary(), **report}
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{report['date']}-fleet"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
