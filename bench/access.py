"""`python -m bench.access`: what the kit's auth (token auth, with or without
registry_access_rules, or htpasswd) costs against the tutorial's plain registry.

In one run, on the lab's server (lab-reg) and a client (lab-client1) of the lab named by
REGISTRY_KIT_LAB_NAME (brought up if needed), for each of --modes (`users`: users and no
rules, the default token auth; `rules`: access rules; `htpasswd`: registry_auth_mode
"htpasswd"), the kit deployed in that mode:
- push and pull throughput of distinct random (incompressible) images of --image-mb MB with
  the docker CLI: the kit's registry (TLS + its auth) against the tutorial's plain
  `docker run -p 5001:5000 registry:2` on the same server, as a ratio, runs alternating;
- `docker login` plus the first pull of a 1-layer image (1 MB, not on the client yet), the
  same command against both registries (the plain one accepts any login);
- what one `docker pull` and one `docker push` cost in token requests and bcrypt checks,
  counted from the token server's own log lines (one per token request, with its bcrypt
  count), and the same right after the token server restarted (its bcrypt memory empty);
- how many HTTP requests one pull and one push make to the registry (its access log): what
  an authenticating proxy, or the registry's own htpasswd auth, checks with bcrypt each.
Results: bench/results/<date>-access-<modes>.json and .md.
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


MODES: dict[str, dict[str, Any]] = {
    "users": {},
    "rules": {"registry_access_rules": [{"repository": "bench/*",
                                         "actions": ["pull", "push"], "users": [USER]}]},
    "htpasswd": {"registry_auth_mode": "htpasswd"},
}


def deploy(work: Path, mode: str) -> str:
    """The kit's registry in `mode` (MODES) on lab-reg; lab-client1 trusts it."""
    state = lab_state.load()
    password = "bench-password-0001"
    secret = work / "bench.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    data = {"registry_domain": DOMAIN, "registry_port": PORT,
            "registry_state_dir": str(work / "state"),
            "docker_registry_mirrors": [state["upstream"]["url"]],
            "registry_users": [{"name": USER, "password_file": str(secret)}], **MODES[mode]}

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


def timed(command: str, *, stdin: str | None = None) -> float:
    started = time.monotonic()
    ssh(CLIENT, command, stdin=stdin)
    return time.monotonic() - started


def start_plain() -> None:
    """The tutorial's registry on lab-reg (port 5001); lab-client1 allows it over HTTP."""
    ssh(SERVER, f"docker rm -f plain >/dev/null 2>&1; docker run -d --name plain -p "
                f"{PLAIN_PORT}:5000 registry:2 >/dev/null")
    ssh(CLIENT, "python3 - <<'EOF'\nimport json\np='/etc/docker/daemon.json'\n"
                "d=json.load(open(p))\nentry='" + f"{DOMAIN}:{PLAIN_PORT}" + "'\n"
                "if entry not in d.setdefault('insecure-registries', []):\n"
                "    d['insecure-registries'].append(entry)\n"
                "json.dump(d, open(p, 'w'), indent=2)\nEOF\nsystemctl reload docker; sleep 1")


TARGETS = {"kit": f"{DOMAIN}:{PORT}", "plain": f"{DOMAIN}:{PLAIN_PORT}"}


def login_and_first_pull(address: str, password: str, tag: str) -> float:
    """`docker login` plus the first pull of a 1-layer image (1 MB) the client has not got."""
    image = f"{address}/bench/one:{tag}"
    make_image(image, 1)
    ssh(CLIENT, f"docker push {image} >/dev/null && docker rmi {image} >/dev/null && "
                f"docker logout {address} >/dev/null")
    seconds = timed(f"docker login -u {USER} --password-stdin {address} >/dev/null && "
                    f"docker pull {image} >/dev/null", stdin=password)
    ssh(CLIENT, f"docker rmi {image} >/dev/null")
    return seconds


def one_round(label: str, tag: str, image_mb: int, password: str, cursor: str,
              out: dict[str, Any]) -> str:
    """Push, pull, login + first pull against one registry; appends to `out`."""
    address = TARGETS[label]
    image = f"{address}/bench/random:{tag}"
    make_image(image, image_mb)
    _, cursor = token_log_since(cursor)
    for op, command in (("push", f"docker push {image} >/dev/null"),
                        ("pull", f"docker pull {image} >/dev/null")):
        mark = registry_requests(label)
        out[label][op].append(timed(command))
        lines, cursor = token_log_since(cursor)
        if label == "plain":
            out["requests"][op].append(registry_requests(label) - mark)
        else:
            out["per_op"][op].append(costs(lines))
        ssh(CLIENT, f"docker rmi {image} >/dev/null")
    out[label]["login_pull"].append(login_and_first_pull(address, password, tag))
    _, cursor = token_log_since(cursor)
    return cursor


def cold_pull(cursor: str) -> list[str]:
    """A pull right after the token server restarted (its bcrypt memory empty): its log."""
    ssh(SERVER, "systemctl restart registry-kit-token && sleep 1")
    image = f"{TARGETS['kit']}/bench/random:cold-{time.time_ns()}"
    make_image(image, 1)
    ssh(CLIENT, f"docker push {image} >/dev/null && docker rmi {image} >/dev/null")
    ssh(SERVER, "systemctl restart registry-kit-token && sleep 1")
    _, cursor = token_log_since(cursor)
    ssh(CLIENT, f"docker pull {image} >/dev/null && docker rmi {image} >/dev/null")
    return token_log_since(cursor)[0]


def measure_mode(mode: str, work: Path, runs: int, image_mb: int) -> dict[str, Any]:
    say(f"deploying the registry: {mode}")
    password = deploy(work, mode)
    tokens = mode != "htpasswd"
    ssh(CLIENT, f"docker login -u {USER} --password-stdin {TARGETS['kit']} >/dev/null",
        stdin=password)
    out: dict[str, Any] = {label: {"push": [], "pull": [], "login_pull": []}
                           for label in TARGETS}
    out |= {"requests": {"push": [], "pull": []}, "per_op": {"push": [], "pull": []}}
    cursor = token_log_since("")[1] if tokens else ""
    for attempt in range(runs):
        for label in (TARGETS if attempt % 2 == 0 else reversed(TARGETS)):
            say(f"{mode}: run {attempt + 1}/{runs}: {label}")
            cursor = one_round(label, f"{mode}-{label}-{attempt}-{time.time_ns()}", image_mb,
                               password, cursor if tokens else "", out)
    result: dict[str, Any] = {}
    for label in TARGETS:
        for op in ("push", "pull"):
            seconds = statistics.median(out[label][op])
            result[f"{label}_{op}_s"] = [round(v, 3) for v in out[label][op]]
            result[f"{label}_{op}_mb_s"] = round(image_mb / seconds, 1)
        result[f"{label}_login_pull_s"] = [round(v, 3) for v in out[label]["login_pull"]]
        result[f"{label}_login_pull_median_s"] = round(
            statistics.median(out[label]["login_pull"]), 3)
    for op in ("push", "pull"):
        result[f"{op}_ratio_kit_to_plain"] = round(
            result[f"kit_{op}_mb_s"] / result[f"plain_{op}_mb_s"], 2)
        result[f"per_{op}"] = out["per_op"][op] if tokens else None
        result[f"registry_requests_per_{op}"] = out["requests"][op]
    result["login_pull_ratio_kit_to_plain"] = round(
        result["kit_login_pull_median_s"] / result["plain_login_pull_median_s"], 2)
    if tokens:
        cold = cold_pull(cursor)
        result["pull_after_token_server_restart"] = costs(cold)
        result["pull_after_token_server_restart_log"] = cold
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.access", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image-mb", type=int, default=200)
    parser.add_argument("--modes", default="users,htpasswd",
                        help="comma-separated, from " + ", ".join(MODES))
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    if set(modes) - set(MODES):
        parser.error(f"--modes: each one of {', '.join(MODES)}")
    work = ROOT / ".lab" / "bench-access"
    work.mkdir(parents=True, exist_ok=True)
    lab.up()
    start_plain()
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.access " + " ".join(argv if argv is not None
                                                       else sys.argv[1:]),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0], "runs": args.runs, "image_mb": args.image_mb,
        "registry_image": "registry:2", "client": "docker CLI on lab-client1 (bookworm)",
        "modes": {mode: measure_mode(mode, work, args.runs, args.image_mb) for mode in modes},
    }
    ssh(SERVER, "docker rm -f plain >/dev/null")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{result['date']}-access-{'-'.join(modes)}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


LABELS = {"users": "kit, TLS + users, token auth (no rules)",
          "rules": "kit, TLS + access rules (token auth)",
          "htpasswd": "kit, TLS + htpasswd auth"}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"Auth cost against the plain registry, {r['date']} on {r['machine']} (medians of "
             f"{r['runs']} runs; {r['image_mb']} MB random image, {r['client']}; "
             f"`{r['command']}`)", "",
             "| registry on lab-reg | push MB/s | pull MB/s | push ratio | pull ratio | "
             "login + first pull (1 layer) | ratio |", "| --- " * 7 + "|"]
    for mode, m in r["modes"].items():
        lines += [f"| {LABELS[mode]} | {m['kit_push_mb_s']} | {m['kit_pull_mb_s']} | "
                  f"{m['push_ratio_kit_to_plain']} | {m['pull_ratio_kit_to_plain']} | "
                  f"{m['kit_login_pull_median_s']} s | {m['login_pull_ratio_kit_to_plain']} |",
                  f"| plain `registry:2` (HTTP, no auth), same rounds | {m['plain_push_mb_s']} | "
                  f"{m['plain_pull_mb_s']} | | | {m['plain_login_pull_median_s']} s | |"]
    lines.append("")
    for mode, m in r["modes"].items():
        if m.get("per_pull"):
            pull, push = m["per_pull"][0], m["per_push"][0]
            cold = m["pull_after_token_server_restart"]
            lines += [f"{LABELS[mode]}: one `docker pull`: {pull['token_requests']} token "
                      f"request(s), {pull['bcrypt_checks']} bcrypt check(s); right after the "
                      f"token server restarted: {cold['token_requests']} token request(s), "
                      f"{cold['bcrypt_checks']} bcrypt check(s). One `docker push`: "
                      f"{push['token_requests']} token request(s), {push['bcrypt_checks']} "
                      "bcrypt check(s).", ""]
        lines += [f"{LABELS[mode]}: HTTP requests to the plain registry (its access log): one "
                  f"pull {m['registry_requests_per_pull']}, one push "
                  f"{m['registry_requests_per_push']}: each a bcrypt check under htpasswd "
                  "auth.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
