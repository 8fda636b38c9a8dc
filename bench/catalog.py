"""`python -m bench.catalog`: how fast the token server's /catalog (issue 28.5: the
repositories a user may pull) answers with 1,000 repositories.

Not a test (reported, never asserted). In the lab named by REGISTRY_KIT_LAB_NAME (brought up
if needed; lab-reg is not reset, so a registry bench.webui or tests/e2e/test_webui.py filled
is reused): the kit deploys lab-reg as test_webui.py's access-rules site (the full user may
pull everything, LIMITED team/*), the registry is filled up to --repositories
(bench.webui.seed_bench, one tag in big/fifty), then curl asks, --runs times each and one
at a time: /catalog through the web page's origin as the full user and as LIMITED, and
for comparison the registry's own /v2/_catalog?n=1000 with a catalog token.
Results: bench/results/<date>-catalog.json (medians and each run, in ms: curl's time_total).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "e2e")]

import harness  # noqa: E402
import test_webui as page  # noqa: E402

import lab  # noqa: E402
from bench.webui import seed_bench  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def say(text: str) -> None:
    print(f"bench.catalog: {text}", file=sys.stderr, flush=True)


def timed(site: page.Site, path: str, port: int, *, user: str | None = None,
          bearer: str | None = None) -> tuple[float, int]:
    """(ms, repositories answered) of one request, by curl's own clock; secrets in a
    config file, never argv."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "curlrc"
        lines = [f'user = "{user}:{site.users[user]}"'] if user else []
        if bearer:
            lines.append(f'header = "Authorization: Bearer {bearer}"')
        config.write_text("\n".join(lines) + "\n")
        done = subprocess.run(
            ["curl", "-sf", "--max-time", "30", "-K", str(config), "-o", f"{tmp}/body",
             "-w", "%{time_total}", "--resolve", f"{page.DOMAIN}:{port}:{site.ip}",
             "--cacert", str(harness.CA_CERT), f"https://{page.DOMAIN}:{port}{path}"],
            capture_output=True, text=True, timeout=60, check=True)
        names = json.loads((Path(tmp) / "body").read_text())["repositories"]
        return float(done.stdout) * 1000, len(names)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    say("lab up")
    lab.up(prune=True)
    site = page.Site(Path(tempfile.mkdtemp(prefix="bench-catalog-")))
    site.users[page.LIMITED] = "bob-webui-password"
    site.data["registry_access_rules"] = page.RULES
    site.write()
    say("deploy (access rules)")
    site.run().assert_ok()
    if "team/app" not in page.catalog(site):
        say("seed the test's repositories")
        page.seed(site)
    say(f"fill up to {args.repositories} repositories")
    repos = seed_bench(site, args.repositories, 1)
    runs: dict[str, list[float]] = {"catalog_full_user_ms": [], "catalog_limited_user_ms": [],
                                    "registry_catalog_ms": []}
    counts: dict[str, int] = {}
    status, _, body = page.token_from(site, page.USER, "registry:catalog:*")
    assert status == 200, body
    token = json.loads(body)["token"]
    for _ in range(args.runs):
        for key, path, port, user, bearer in (
                ("catalog_full_user_ms", "/catalog", page.WEBUI_PORT, page.USER, None),
                ("catalog_limited_user_ms", "/catalog", page.WEBUI_PORT, page.LIMITED, None),
                ("registry_catalog_ms", "/v2/_catalog?n=1000", page.PORT, None, token)):
            ms, counts[key] = timed(site, path, port, user=user, bearer=bearer)
            runs[key].append(round(ms, 1))
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.catalog " + " ".join(sys.argv[1:]),
        "repositories": repos, "answered": counts, "runs": args.runs,
        "load_average": os.getloadavg()[0],
        **{f"median_{key}": round(statistics.median(values), 1) for key, values in runs.items()},
        "each": runs,
        "note": "curl from the control machine, one request at a time, TLS handshake "
                "included; /catalog includes the user's login (bcrypt remembered after the "
                "first) and the token server's read of the whole catalog",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{result['date']}-catalog.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    say(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
