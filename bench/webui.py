"""`python -m bench.webui`: how fast the web page is with 1,000 repositories and 50 tags.

Not a test (reported, never asserted; seeding alone takes about 7 minutes, so the e2e suite
does not run it). In the lab named by REGISTRY_KIT_LAB_NAME (brought up if needed): the kit
deploys lab-reg with the page (tests/e2e/test_webui.py's site and users), seeds that
test's repositories, fills the registry up to --repositories, one of them (big/fifty) with
--tags tags, each with its own image config (blobs mounted from team/app, one small manifest
per tag, four connections), then in Debian's chromium (tests/e2e/webui_browser.py), --runs
times: login to the full list, the catalog request by the page's own timer, the filter down
to one name, opening big/fifty to its tag names and to all rows with their details. With
--auth-modes auto,htpasswd (the default) the same seeded registry is measured under token
auth (the kit's default for users) and then, redeployed, under htpasswd auth (a bcrypt
check per request), in one run.
Results: bench/results/<date>-webui.json (medians and each run, per auth mode);
screenshots in .test-output/webui/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
import test_webui as page  # noqa: E402
import webui_browser as wb  # noqa: E402

import lab  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def say(text: str) -> None:
    print(f"bench.webui: {text}", file=sys.stderr, flush=True)


def seed_bench(site: page.Site, repositories: int, tags: int) -> int:
    """Fill the registry up to `repositories`, one of them (big/fifty) with `tags` tags."""
    have = page.catalog(site)
    api = site.api()
    try:
        oci = api.manifest("team/app", "1.1", page.OCI_MANIFEST)
        base_config = json.loads(api.request(
            "GET", f"/v2/team/app/blobs/{oci['config']['digest']}")[2])
    finally:
        api.close()
    blobs = [oci["config"]["digest"], *(layer["digest"] for layer in oci["layers"])]
    missing = repositories - len(have) - (0 if "big/fifty" in have else 1)
    start = len([name for name in have if name.startswith("bulk/")])
    names = ["big/fifty", *(f"bulk/repo-{i:03d}" for i in range(start, start + missing))]

    def push(part: list[str]) -> None:
        api = site.api()
        try:
            for name in part:
                for blob in blobs:
                    api.mount(name, blob, "team/app")
                if name != "big/fifty":  # its tags: push_tags, after the mounts
                    body, media = wb.variant(oci, f"{name}:1")
                    api.put_manifest(name, "1", body, media)
        finally:
            api.close()

    def push_tags(numbers: list[int]) -> None:
        # Each tag its own image config, as separate builds have: the page fetches each.
        api = site.api()
        try:
            for number in numbers:
                config = json.dumps({**base_config,
                                     "created": f"2026-01-01T00:{number // 60:02d}:"
                                                f"{number % 60:02d}Z"},
                                    sort_keys=True).encode()
                digest = wb.push_blob(api, "big/fifty", config)
                manifest = {**oci, "config": {**oci["config"], "digest": digest,
                                              "size": len(config)}}
                api.put_manifest("big/fifty", f"v{number}",
                                 json.dumps(manifest, sort_keys=True).encode(),
                                 page.OCI_MANIFEST)
        finally:
            api.close()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(push, [names[i::4] for i in range(4)]))
        list(pool.map(push_tags, [list(range(tags))[i::4] for i in range(4)]))
    return len(page.catalog(site))


def measure(site: page.Site, driver: Any, repos: int, tags: int, rounds: int) \
        -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {"login_to_list_s": [], "list_page_ms": [],
                                    "open_50_tags_s": [], "open_page_ms": [],
                                    "open_tag_names_ms": [], "filter_s": []}
    for _ in range(rounds):
        if wb.by_css(driver, "#logout") and wb.by_id(driver, "logout").is_displayed():
            wb.by_id(driver, "logout").click()
        started = time.monotonic()
        page.log_in(driver, page.USER, site.password)
        wb.wait_for(driver, lambda d: d.find_element("id", "repo-list").get_attribute(
            "data-loaded-ms"))
        runs["login_to_list_s"].append(time.monotonic() - started)
        runs["list_page_ms"].append(float(
            wb.by_id(driver, "repo-list").get_attribute("data-loaded-ms")))
        shown = len(wb.by_css(driver, "button.repo"))
        if shown != repos:
            raise SystemExit(f"bench.webui: the page lists {shown} of {repos} repositories")
        started = time.monotonic()
        wb.by_id(driver, "repo-filter").send_keys("big/fifty")
        wb.wait_for(driver, lambda d: len(wb.by_css(d, "button.repo")) == 1)
        runs["filter_s"].append(time.monotonic() - started)
        started = time.monotonic()
        wb.by_css(driver, "button.repo")[0].click()
        wb.wait_for(driver, lambda d: d.find_element("id", "tag-rows").get_attribute(
            "data-loaded-ms"), timeout=300)
        runs["open_50_tags_s"].append(time.monotonic() - started)
        runs["open_page_ms"].append(float(
            wb.by_id(driver, "tag-rows").get_attribute("data-loaded-ms")))
        runs["open_tag_names_ms"].append(float(
            wb.by_id(driver, "tag-rows").get_attribute("data-listed-ms")))
        if len(page.rows(driver)) != tags:
            raise SystemExit(f"bench.webui: big/fifty shows {len(page.rows(driver))} rows")
    page.shot(driver, "tags-50")
    wb.by_id(driver, "back").click()
    wb.by_id(driver, "repo-filter").clear()
    wb.by_id(driver, "repo-filter").send_keys(" ")  # the input event: show all again
    page.shot(driver, "repositories-1000")
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repositories", type=int, default=1000)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--auth-modes", default="auto,htpasswd",
                        help="registry_auth_mode values to measure, in order")
    args = parser.parse_args()
    missing = wb.missing_browser()
    if missing is not None:
        raise SystemExit(f"bench.webui: {missing}")
    say("lab up")
    lab.up(prune=True)
    lab.reset_host(page.SERVER)
    page.OUTPUT.mkdir(parents=True, exist_ok=True)
    site = page.Site(Path(tempfile.mkdtemp(prefix="bench-webui-")))
    say("deploy")
    site.run().assert_ok()
    started = time.monotonic()
    say("seed the test's repositories")
    page.seed(site)
    say(f"seed up to {args.repositories} repositories, {args.tags} tags in big/fifty")
    repos = seed_bench(site, args.repositories, args.tags)
    seed_s = time.monotonic() - started
    modes: dict[str, Any] = {}
    for mode in args.auth_modes.split(","):
        if site.data.get("registry_auth_mode", "auto") != mode:
            say(f"redeploy with registry_auth_mode={mode}")
            site.data["registry_auth_mode"] = mode
            site.write()
            site.run().assert_ok()
        with wb.page_browser(page.DOMAIN, site.ip, page.WEBUI_PORT, harness.CA_CERT) as driver:
            runs = measure(site, driver, repos, args.tags, args.runs)
        modes[mode] = {
            **{key: [round(v, 3) for v in values] for key, values in runs.items()},
            **{f"median_{key}": round(statistics.median(values), 3)
               for key, values in runs.items()}}
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python -m bench.webui " + " ".join(sys.argv[1:]),
        "repositories": repos, "tags_in_one": args.tags, "seed_s": round(seed_s, 1),
        "runs": args.runs, "load_average": os.getloadavg()[0], "auth_modes": modes,
        "browser": "Debian chromium (headless), selenium; lab registry on this machine",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{result['date']}-webui.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    say(f"written {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
