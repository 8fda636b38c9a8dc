"""`python -m bench.access`: what access control (token auth, registry_access_rules) costs.

In one run, on the lab's server (lab-reg) and a client (lab-client1) of the lab named by
REGISTRY_KIT_LAB_NAME (brought up if needed):
- push and pull throughput of distinct random (incompressible) images of --image-mb MB with
  the docker CLI: the kit's registry with access rules (TLS + token auth) against the
  tutorial's plain `docker run -p 5001:5000 registry:2` on the same server, as a ratio;
- what one `docker pull` and one `docker push` cost in token requests and bcrypt checks,
  counted from the token server's own log lines (one per token request, with its bcrypt
  count), and the same right after the token server restarted (its bcrypt memory empty);
- how many HTTP requests one pull and one push make to the registry (its access log): what
  an authenticating proxy, or the registry's own htpasswd auth, checks with bcrypt each.
Results: bench/results/<date>-access.json and .md.
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
from lab.ssh import ssh_argv  # noqa: E402

SERVER, CLIENT = "lab-reg", "lab-client1"
DOMAIN, PORT, PLAIN_PORT = "registry.lab", 5000, 5001
USER = "bench"
RESULTS = ROOT / "bench" / "results"
PYINFRA = str(Path(sys.executable).parent / "pyinfra")


def say(text: str) -> None:
    print(f"bench.access: {text}", file=sys.stderr, flush=True)


def ssh(name: str, command: str, *, stdin: str | None = None) -> str:
    state = lab_state.load()
    port = int(state["hosts"][name]["port"])
    proc = subprocess.run(ssh_argv(Path(state["key"]), port, [command]), capture_output=True,
                          text=True, timeout=900, input=stdin,
                          **({} if stdin is not None else {"stdin": subprocess.DEVNULL}))
    if proc.returncode != 0:
        raise SystemExit(f"bench.access: {name}: {command!r} failed: {proc.stderr}")
    return proc.stdout


def deploy(work: Path) -> str:
    """The kit's registry with access rules on lab-reg; lab-client1 trusts it."""
    state = lab_state.load()
    password = "bench-password-0001"
    secret = work / "bench.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    data = {"registry_domain": DOMAIN, "registry_port": PORT,
            "registry_state_dir": str(work / "state"),
            "docker_registry_mirrors": [state["upstream"]["url"]],
            "registry_users": [{"name": USER, "password_file": str(secret)}],
            "registry_access_rules": [{"repository": "bench/*", "actions": ["pull", "push"],
                                       "users": [USER]}]}

    def entry(name: str) -> tuple[str, dict[str, Any]]:
        host_name, host_data = lab_state.pyinfra_host(name, state)
        return host_name, {**host_data, **data}

    inventory = work / "inventory.py"
    inventory.write_text(f"registry_servers = {[entry(SERVER)]!r}\n"
                         f"registry_clients = {[entry(CLIENT)]!r}\n")
    proc = subprocess.run([PYINFRA, "-y", str(inventory), "deploy.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"bench.access: deploy failed:\n{proc.stderr[-4000:]}")
    return password


def token_log_since(cursor: str) -> tuple[list[str], str]:
    """The token server's request lines after `cursor`, and the new cursor."""
    out = ssh(SERVER, "journalctl -u registry-kit-token -o cat --show-cursor --no-pager "
              + (f"--after-cursor='{cursor}'" if cursor else "-n 0"))
    lines = out.splitlines()
    new = next((line.split("cursor: ", 1)[1] for line in lines if line.startswith("-- cursor:")),
               cursor)
    return [line for line in lines if "registry-token-server: token " in line
            or "registry-token-server: refused" in line], new


def costs(lines: list[str]) -> dict[str, int]:
    return {"token_requests": len(lines),
            "bcrypt_checks": sum(int(m) for line in lines
                                 for m in re.findall(r"bcrypt=(\d+)", line))}


def registry_requests(label: str) -> int:
    """HTTP requests the plain registry has answered so far (its access log lines)."""
    if label != "plain":
        return 0
    return int(ssh(SERVER, "docker logs plain 2>&1 | grep -c 'HTTP/1.1\" ' || true").strip())


def make_image(image: str, size_mb: int) -> None:
    ssh(CLIENT, f"rm -rf /tmp/bench && mkdir /tmp/bench && head -c {size_mb}M /dev/urandom "
                f"> /tmp/bench/blob && tar -C /tmp/bench -c blob | docker import - {image} "
                ">/dev/null && rm -rf /tmp/bench")


def timed(command: str) -> float:
    started = time.monotonic()
    ssh(CLIENT, command)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image-mb", type=int, default=200)
    args = parser.parse_args(argv)
    work = ROOT / ".lab" / "bench-access"
    work.mkdir(parents=True, exist_ok=True)
    lab.up()
    say("deploying the registry with access rules")
    password = deploy(work)
    ssh(CLIENT, f"docker login -u {USER} --password-stdin {DOMAIN}:{PORT} >/dev/null",
        stdin=password)
    ssh(SERVER, f"docker rm -f plain >/dev/null 2>&1; docker run -d --name plain -p "
                f"{PLAIN_PORT}:5000 registry:2 >/dev/null")
    ssh(CLIENT, "python3 - <<'EOF'\nimport json\np='/etc/docker/daemon.json'\n"
                "d=json.load(open(p))\nentry='" + f"{DOMAIN}:{PLAIN_PORT}" + "'\n"
                "if entry not in d.setdefault('insecure-registries', []):\n"
                "    d['insecure-registries'].append(entry)\n"
                "json.dump(d, open(p, 'w'), indent=2)\nEOF\nsystemctl reload docker; sleep 1")
    targets = {"access": f"{DOMAIN}:{PORT}", "plain": f"{DOMAIN}:{PLAIN_PORT}"}
    requests: dict[str, list[int]] = {"push": [], "pull": []}
    timings: dict[str, dict[str, list[float]]] = {k: {"push": [], "pull": []} for k in targets}
    per_op: dict[str, list[dict[str, int]]] = {"push": [], "pull": []}
    _, cursor = token_log_since("")
    for attempt in range(args.runs):
        for label, address in targets.items():
            image = f"{address}/bench/random:{label}-{attempt}-{time.time_ns()}"
            say(f"run {attempt + 1}/{args.runs}: {label}")
            make_image(image, args.image_mb)
            _, cursor = token_log_since(cursor)
            mark = registry_requests(label)
            timings[label]["push"].append(timed(f"docker push {image} >/dev/null"))
            lines, cursor = token_log_since(cursor)
            if label == "plain":
                requests["push"].append(registry_requests(label) - mark)
            if label == "access":
                per_op["push"].append(costs(lines))
            ssh(CLIENT, f"docker rmi {image} >/dev/null")
            mark = registry_requests(label)
            timings[label]["pull"].append(timed(f"docker pull {image} >/dev/null"))
            lines, cursor = token_log_since(cursor)
            if label == "plain":
                requests["pull"].append(registry_requests(label) - mark)
            if label == "access":
                per_op["pull"].append(costs(lines))
            ssh(CLIENT, f"docker rmi {image} >/dev/null")
    # A pull right after the token server restarted: its bcrypt memory is empty.
    ssh(SERVER, "systemctl restart registry-kit-token && sleep 1")
    image = f"{targets['access']}/bench/random:cold-{time.time_ns()}"
    make_image(image, 1)
    ssh(CLIENT, f"docker push {image} >/dev/null && docker rmi {image} >/dev/null")
    ssh(SERVER, "systemctl restart registry-kit-token && sleep 1")
    _, cursor = token_log_since(cursor)
    ssh(CLIENT, f"docker pull {image} >/dev/null && docker rmi {image} >/dev/null")
    cold_lines, cursor = token_log_since(cursor)
    ssh(SERVER, "docker rm -f plain >/dev/null")

    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "runs": args.runs, "image_mb": args.image_mb,
        "registry_image": "registry:2", "client": "docker CLI on lab-client1 (bookworm)",
    }
    for label in targets:
        for op in ("push", "pull"):
            seconds = round(statistics.median(timings[label][op]), 3)
            result[f"{label}_{op}_s"] = seconds
            result[f"{label}_{op}_mb_s"] = round(args.image_mb / seconds, 1)
    for op in ("push", "pull"):
        result[f"{op}_ratio_access_to_plain"] = round(
            result[f"access_{op}_mb_s"] / result[f"plain_{op}_mb_s"], 2)
        result[f"per_{op}"] = per_op[op]
    result["registry_requests_per_push"] = requests["push"]
    result["registry_requests_per_pull"] = requests["pull"]
    result["pull_after_token_server_restart"] = costs(cold_lines)
    result["pull_after_token_server_restart_log"] = cold_lines
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{result['date']}-access"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    pull, push = r["per_pull"][0], r["per_push"][0]
    cold = r["pull_after_token_server_restart"]
    return "\n".join([
        f"Access control cost, {r['date']} on {r['machine']} (medians of {r['runs']} runs; "
        f"{r['image_mb']} MB random image, {r['client']})", "",
        "| registry on lab-reg | push MB/s | pull MB/s |", "| --- | --- | --- |",
        f"| kit, TLS + access rules (token auth) | {r['access_push_mb_s']} | "
        f"{r['access_pull_mb_s']} |",
        f"| plain `registry:2` (HTTP, no auth) | {r['plain_push_mb_s']} | "
        f"{r['plain_pull_mb_s']} |",
        f"| ratio | {r['push_ratio_access_to_plain']} | {r['pull_ratio_access_to_plain']} |",
        "",
        f"One `docker pull`: {pull['token_requests']} token request(s), "
        f"{pull['bcrypt_checks']} bcrypt check(s); right after the token server restarted: "
        f"{cold['token_requests']} token request(s), {cold['bcrypt_checks']} bcrypt check(s). "
        f"One `docker push`: {push['token_requests']} token request(s), "
        f"{push['bcrypt_checks']} bcrypt check(s).", "",
        f"HTTP requests to the registry (plain, from its access log): one pull "
        f"{r['registry_requests_per_pull']}, one push {r['registry_requests_per_push']}: "
        "each a bcrypt check under an authenticating proxy or the registry's htpasswd auth.",
        ""])


if __name__ == "__main__":
    sys.exit(main())
