"""`python -m bench.ldap_tokens`: what a directory (LDAP) user costs against a local user.

Not a test (reported, never asserted). In the lab named by REGISTRY_KIT_LAB_NAME (brought
up if needed): lab-reg reset, Debian's slapd on a fresh lab-ldap host seeded by
tests/e2e/ldap_directory.py (LDAPS, "stats" log level: one log line per bind), and the kit
deployed twice (the second run must change nothing) as tests/e2e/test_ldap.py's site:
registry_ldap, the access rules (team-a/* to the directory group team-a, everything to the
local user ci). Then --runs rounds, the user going first alternating, for the directory
user dana and the local user ci:
- tokens/s: one curl process asking --tokens tokens in a row (a TLS handshake each, as each
  docker command makes one), and the binds slapd logged meanwhile (as the user, as the
  service account);
- pulls/s: one loop on lab-client1 of --pulls `docker pull`s, each of two images removed
  before each pull: team-a/app:bench is busybox, whose layers stay on the client under its
  own tag (a pull is the token and the manifest: the token's share at its largest), and
  team-a/app:layers a 1 MB random layer of its own, downloaded by every pull; over those
  pulls: slapd's binds, the token server's token lines and the registry's own HTTP
  requests (its access log lines).
Before the rounds, the first directory token since the deploy restarted the token server
is counted apart: it also opens the service account's connection (one bind, kept).
Results: bench/results/<date>-ldap-tokens.json and .md (medians, each run, the ratios
directory / local, the command).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

import harness  # noqa: E402
import ldap_directory  # noqa: E402
import test_ldap as scenario  # noqa: E402

import lab  # noqa: E402

RESULTS = ROOT / "bench" / "results"
IMAGES = {"manifest": f"{scenario.ADDRESS}/team-a/app:bench",
          "layers": f"{scenario.ADDRESS}/team-a/app:layers"}
USERS = {"dana": scenario.DIRECTORY_USERS["dana"], "ci": scenario.LOCAL["ci"]}
KIND = {"dana": "directory", "ci": "local"}


def say(text: str) -> None:
    print(f"bench.ldap_tokens: {text}", file=sys.stderr, flush=True)


def bring_up(work: Path) -> scenario.Site:
    """lab-reg fresh, slapd on a fresh lab-ldap (installed while the first deploy runs),
    the kit deployed twice."""
    lab.up()
    lab.remove_host(scenario.DIRECTORY_HOST.name)
    lab.up([scenario.DIRECTORY_HOST])
    directory = ldap_directory.Directory(
        scenario.DIRECTORY_HOST.name, "ldap.lab", admin_password="lab-directory-admin-1",
        service_password=scenario.SERVICE_PASSWORD, users=dict(scenario.DIRECTORY_USERS),
        groups={group: list(members) for group, members in scenario.DIRECTORY_GROUPS.items()})
    material = ldap_directory.tls_material(directory.name)
    directory.ca_pem = material[0]
    lab.reset_host(scenario.SERVER)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        installed = pool.submit(ldap_directory.install, directory, material)
        site = scenario.Site(work, directory, installed)
        say(f"deploying {site.image} with registry_ldap (twice) while slapd comes up")
        site.twice("deploy")
    say(f"deployed: {json.dumps(scenario.TIMES)}")
    return site


def seed() -> None:
    """IMAGES, pushed by ci: busybox from the lab's mirror, and an image of one random 1 MB
    layer no other tag on the client holds."""
    assert scenario.login("ci", USERS["ci"]).returncode == 0
    manifest, layers = IMAGES["manifest"], IMAGES["layers"]
    pushed = scenario.docker(
        f"docker pull -q busybox >/dev/null && docker tag busybox {manifest} && docker push "
        f"{manifest} >/dev/null && rm -rf /tmp/bench && mkdir /tmp/bench && head -c 1M "
        "/dev/urandom > /tmp/bench/blob && tar -C /tmp/bench -c blob | docker import - "
        f"{layers} >/dev/null && rm -rf /tmp/bench && docker push {layers} >/dev/null")
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr


def bind_count(site: scenario.Site) -> int:
    return len(ldap_directory.binds(site.ldap))


def binds_since(site: scenario.Site, mark: int, user: str) -> dict[str, int]:
    new = ldap_directory.binds(site.ldap)[mark:]
    as_user, as_service = new.count(site.ldap.dn(user)), new.count(ldap_directory.SERVICE_DN)
    return {"user": as_user, "service": as_service, "other": len(new) - as_user - as_service}


def token_cursor() -> str:
    out = harness.ssh(scenario.SERVER, "journalctl -u registry-kit-token.service -n 0 "
                      "--show-cursor --no-pager").stdout
    return out.rpartition("-- cursor: ")[2].strip()


def token_lines_after(cursor: str, user: str) -> int:
    out = harness.ssh(scenario.SERVER, "journalctl -u registry-kit-token.service -o cat "
                      f"--no-pager --after-cursor='{cursor}'").stdout
    return sum(f"token user={user} " in line for line in out.splitlines())


def registry_requests_since(since: str) -> int:
    """The registry's HTTP requests answered since `since` (its access log: one combined
    log line each, `"GET /v2/ HTTP/1.1" 401 ...`, on 2.8 and 3.0)."""
    out = harness.ssh(scenario.SERVER, f"docker logs --since {since} registry 2>&1 | "
                      "grep -c ' HTTP/1.1\" [0-9]' || true").stdout
    return int(out.strip() or 0)


def first_directory_token(site: scenario.Site) -> dict[str, int]:
    """The binds of the first directory token since the token server started."""
    mark = bind_count(site)
    code, _ = site.token_status("dana", USERS["dana"], "repository:team-a/app:pull")
    assert code == 200, code
    return binds_since(site, mark, "dana")


def token_round(site: scenario.Site, user: str, count: int) -> dict[str, Any]:
    mark = bind_count(site)
    rate = site.token_rate(user, USERS[user], count)
    return {"tokens_s": rate, "tokens": count, "binds": binds_since(site, mark, user)}


def pull_round(site: scenario.Site, user: str, count: int, image: str) -> dict[str, Any]:
    assert scenario.login(user, USERS[user]).returncode == 0
    mark, cursor = bind_count(site), token_cursor()
    since = harness.ssh(scenario.SERVER, "date +%s.%N").stdout.strip()
    started = time.monotonic()
    loop = scenario.docker(f"for i in $(seq {count}); do docker rmi {image} >/dev/null 2>&1; "
                           f"docker pull -q {image} >/dev/null || exit 1; done")
    seconds = time.monotonic() - started
    assert loop.returncode == 0, loop.stdout + loop.stderr
    return {"pulls_s": round(count / seconds, 2), "pulls": count,
            "binds": binds_since(site, mark, user),
            "token_requests": token_lines_after(cursor, user),
            "registry_requests": registry_requests_since(since)}


def measure(site: scenario.Site, runs: int, tokens: int, pulls: int) -> dict[str, Any]:
    each: dict[str, dict[str, list[dict[str, Any]]]] = {
        user: {"tokens": [], **{kind: [] for kind in IMAGES}} for user in USERS}
    for attempt in range(runs):
        order = list(USERS) if attempt % 2 == 0 else list(reversed(USERS))
        for user in order:
            say(f"run {attempt + 1}/{runs}: {user} ({KIND[user]})")
            each[user]["tokens"].append(token_round(site, user, tokens))
            for kind, image in IMAGES.items():
                each[user][kind].append(pull_round(site, user, pulls, image))
    return each


def summary(each: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for user, rounds in each.items():
        tokens = rounds["tokens"]
        asked = sum(r["tokens"] for r in tokens)
        out[user] = {
            "kind": KIND[user],
            "median_tokens_s": round(statistics.median(r["tokens_s"] for r in tokens), 1),
            "user_binds_per_token": round(sum(r["binds"]["user"] for r in tokens) / asked, 3),
            "service_binds_over_tokens": sum(r["binds"]["service"] for r in tokens)}
        for kind in IMAGES:
            pulls = rounds[kind]
            pulled = sum(r["pulls"] for r in pulls)
            out[user][kind] = {
                "median_pulls_s": round(statistics.median(r["pulls_s"] for r in pulls), 2),
                "user_binds_per_pull": round(sum(r["binds"]["user"] for r in pulls) / pulled, 3),
                "service_binds": sum(r["binds"]["service"] for r in pulls),
                "token_requests_per_pull": round(
                    sum(r["token_requests"] for r in pulls) / pulled, 3),
                "registry_requests_per_pull": round(
                    sum(r["registry_requests"] for r in pulls) / pulled, 2)}
    directory, local = out["dana"], out["ci"]
    out["ratio_directory_to_local"] = {
        "tokens_s": round(directory["median_tokens_s"] / local["median_tokens_s"], 2),
        **{f"pulls_s_{kind}": round(directory[kind]["median_pulls_s"]
                                    / local[kind]["median_pulls_s"], 2) for kind in IMAGES}}
    return out


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    lines = [f"Directory (LDAP) user against local user, {r['date']} on {r['machine']} "
             f"({r['registry_image']}; medians of {r['runs']} runs, {r['tokens']} tokens and "
             f"{r['pulls']} pulls per run and user; load average {r['load_average']:.1f}; "
             f"`{r['command']}`)", "",
             "| user | what | per second | binds as the user, each | service account "
             "binds | token requests, each | registry requests, each |", "| --- " * 7 + "|"]
    for user in USERS:
        u = s[user]
        lines.append(f"| {user} ({u['kind']}) | token | {u['median_tokens_s']} | "
                     f"{u['user_binds_per_token']} | {u['service_binds_over_tokens']} | 1 | 0 |")
        for kind, what in (("manifest", "pull, layers on the client"),
                           ("layers", "pull, 1 MB layer downloaded")):
            k = u[kind]
            lines.append(f"| {user} ({u['kind']}) | {what} | {k['median_pulls_s']} | "
                         f"{k['user_binds_per_pull']} | {k['service_binds']} | "
                         f"{k['token_requests_per_pull']} | {k['registry_requests_per_pull']} |")
    ratio, first = s["ratio_directory_to_local"], r["first_directory_token_binds"]
    lines += ["", f"Directory / local: tokens/s {ratio['tokens_s']}, pulls/s "
              f"{ratio['pulls_s_manifest']} (layers on the client) and "
              f"{ratio['pulls_s_layers']} (layer downloaded). Binds from slapd's own log "
              "(one line per BIND); the "
              "first directory token after the token server started, before the rounds: "
              f"{first['user']} bind(s) as the user, {first['service']} as the service "
              "account (its connection, then kept open)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ldap_tokens", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens per round and user")
    parser.add_argument("--pulls", type=int, default=10, help="pulls per round and user")
    parser.add_argument("--keep", action="store_true", help="keep lab-ldap afterwards")
    args = parser.parse_args(argv)
    work = ROOT / ".lab" / "bench-ldap"
    work.mkdir(parents=True, exist_ok=True)
    site = bring_up(work)
    seed()
    first = first_directory_token(site)
    each = measure(site, args.runs, args.tokens, args.pulls)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.ldap_tokens " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg()[0], "registry_image": site.image, "runs": args.runs,
        "tokens": args.tokens, "pulls": args.pulls, "setup_s": dict(scenario.TIMES),
        "first_directory_token_binds": first, "summary": summary(each), "each": each}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{result['date']}-ldap-tokens"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    if not args.keep:
        lab.remove_host(scenario.DIRECTORY_HOST.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
