"""The disk guard on a real small filesystem: a 256 MiB tmpfs mounted at lab-reg's
registry_data_dir before the deploy (lab hosts may mount). Filled with pushes of generated
images (skopeo from the control machine, tests/e2e/oci_images.py) at about 2.4 MB/s, the
registry turns read-only before the disk is full (pushes get the registry's 405, pulls of
every earlier image go on, no blob on disk differs from its digest); a deploy meanwhile
changes nothing; the registry refuses deletes too while read-only, so the filled
repositories' folders are removed on the server, and garbage_collect.py makes it writable
again. Checked with df, sha256sum, journalctl, curl and skopeo, and status.py's
table. Retention (another issue's work) is not used.

The same fill is what a real Prometheus (Debian's, on the control machine, scraping the
server's metrics with the kit's own prometheus.yml and rules) sees: RegistryDataDiskAbove85
and RegistryDiskGuardReadOnly become active from the served facts while the disk is full,
the guard's alert fires once its `for:` has passed, and both resolve after the GC.

One server, no clients: the module deploys, applies twice, and tears down at the end.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness
import oci_images
import prometheus_lab
import pytest
from registry_site import ADDRESS, DOMAIN, PORT, SERVER, Site

DATA = "/srv/registry-guard"
TMPFS_MB = 256
FILLER_MB = 190  # 74%: a few pushes then reach the 90% mark
IMAGE_BYTES = 6 * 1024 * 1024  # random: the layer does not compress
PACE_SECONDS = 2.5  # one push per 2.5 s at most: the guard checks every 5 s
DISK_ALERT, GUARD_ALERT = "RegistryDataDiskAbove85", "RegistryDiskGuardReadOnly"
# The `for:` of both (registry_kit/render/prometheus.py: DISK_FOR, the guard's rule).
ALERTS_FOR = 60
# From the disk crossing a mark to the alert's change: the guard's next check (every 5 s)
# writes its fact, then a scrape and a rule evaluation (an interval each), with room.
SEEN_WITHIN = 5 + 3 * prometheus_lab.INTERVAL + 10
UNIT = "registry-kit-disk-guard.service"
TIMER = "registry-kit-disk-guard.timer"
FIGURES: dict[str, Any] = {}

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def site(lab: dict[str, Any]) -> Iterator[Site]:
    harness.ssh(SERVER, f"mountpoint -q {DATA} && umount {DATA}; mkdir -p {DATA} && "
                f"mount -t tmpfs -o size={TMPFS_MB}m,mode=0700 registry-guard {DATA}")
    try:
        with tempfile.TemporaryDirectory(prefix="rk-disk-guard-") as tmp:
            # Metrics on the server's lab address, for the control machine's Prometheus.
            site = Site(Path(tmp), [], registry_data_dir=DATA, registry_delete_enabled=True,
                        registry_verify_timeout=30, registry_metrics=True,
                        registry_metrics_bind=harness.host_ip(SERVER),
                        registry_metrics_allow=[
                            f"{prometheus_lab.control_address(SERVER)}/32"],
                        registry_prometheus_interval=prometheus_lab.INTERVAL)
            site.deploy().assert_ok()
            site.deploy().assert_no_changes()
            yield site
            harness.run_kit(site.inventory, "teardown.py").assert_ok()
            left = harness.ssh(SERVER, f"ls /etc/systemd/system/{TIMER} "
                               f"/etc/systemd/system/{UNIT} 2>/dev/null; systemctl "
                               f"is-active {TIMER}; true").stdout.split()
            assert left == ["inactive"]
            harness.run_kit(site.inventory, "teardown.py").assert_no_changes()
    finally:
        harness.ssh(SERVER, f"umount {DATA}; rmdir {DATA}", check=False)
        print(f"\ndisk guard figures: {FIGURES}")


@pytest.fixture(scope="module")
def prometheus(site: Site) -> Iterator[int]:
    """Prometheus on the kit's prometheus/ folder, every target up: its port."""
    with prometheus_lab.running() as port:
        jobs = prometheus_lab.wait_targets_up(port)
        assert jobs == {"registry-kit-registry", "registry-kit-facts"}, jobs
        assert {DISK_ALERT, GUARD_ALERT} <= prometheus_lab.rules(port)
        yield port


def active(port: int) -> dict[str, list[str]]:
    return {name: prometheus_lab.alerts(port, name) for name in (DISK_ALERT, GUARD_ALERT)}


def used_percent() -> int:
    out = harness.ssh(SERVER, f"df -P {DATA} | awk 'NR == 2 {{ print $5 }}'").stdout
    return int(out.strip().rstrip("%"))


def journal(grep: str, since: str) -> list[str]:
    """The guard's journal lines since the epoch second `since` holding `grep`."""
    out = harness.ssh(SERVER, f"journalctl -q -o cat --no-pager --since @{since} "
                      f"-u {UNIT}").stdout
    return [line for line in out.splitlines() if grep in line]


def _as_alice(site: Site, method: str, path: str) -> int:
    """METHOD https://ADDRESS/v2/PATH as alice, authenticated as Docker does (Basic, or a
    token on a Bearer challenge): the status code."""
    out = harness.curl_docker(
        ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-X", method,
         "--resolve", f"{DOMAIN}:{PORT}:{harness.host_ip(SERVER)}",
         "--cacert", str(harness.CA_CERT), f"https://{ADDRESS}/v2/{path}"],
        user="alice", password=site.passwords["alice"], ip=harness.host_ip(SERVER)).stdout
    return int(out or 0)


def upload_code(site: Site) -> int:
    """POST /v2/NAME/blobs/uploads/ as alice: 202 when pushes are taken, 405 read-only."""
    return _as_alice(site, "POST", "guard/probe/blobs/uploads/")


def delete_manifest(site: Site, repo: str, digest: str) -> int:
    """DELETE /v2/REPO/manifests/DIGEST as alice: its status."""
    return _as_alice(site, "DELETE", f"{repo}/manifests/{digest}")


def corrupt_blobs() -> list[str]:
    """Every blob whose content's sha256 is not its name, read on the server."""
    script = (f"find {DATA}/docker/registry/v2/blobs -type f -name data | while read -r f; do "
              "d=$(basename \"$(dirname \"$f\")\"); s=$(sha256sum <\"$f\" | cut -c1-64); "
              "[ \"$d\" = \"$s\" ] || echo \"$f\"; done; "
              f"find {DATA}/docker/registry/v2/blobs -type f -name data | wc -l")
    lines = harness.ssh(SERVER, script).stdout.split()
    FIGURES["blobs checked"] = int(lines[-1])
    return lines[:-1]


def status_row(site: Site) -> tuple[list[str], str]:
    run = harness.run_kit(site.inventory, "status.py").assert_no_changes()
    for line in run.stderr.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == SERVER and len(cells) > 10:
            return cells, run.stderr
    raise AssertionError(run.stderr[-3000:])


class TimedPulls(harness.PullLoop):
    """A pull loop that also keeps when each failed pull ended (monotonic seconds)."""

    def __init__(self, pull: Callable[[], bool]) -> None:
        self.failed_at: list[float] = []

        def timed() -> bool:
            ok = False
            try:
                ok = pull()
            finally:
                if not ok:
                    self.failed_at.append(time.monotonic())
            return ok
        super().__init__(timed)


def _pull_all(site: Site, pushed: list[tuple[str, str]], tmp: Path) -> None:
    for ref, digest in pushed:
        assert site.pull(ref, tmp / f"pull-{time.monotonic_ns()}") == digest, ref


def test_full_disk_turns_read_only_pulls_go_on_no_blob_corrupt(site: Site,
                                                               prometheus: int) -> None:
    assert harness.ssh(SERVER, f"systemctl is-active {TIMER}").stdout.strip() == "active"
    # Prometheus has the server's disk figures and nothing to say about them yet.
    prometheus_lab.wait(lambda: bool(prometheus_lab.api(
        prometheus, "/api/v1/query?query=registry_kit_disk_guard_read_only")["result"]),
        SEEN_WITHIN, "the guard's state in Prometheus")
    assert active(prometheus) == {DISK_ALERT: [], GUARD_ALERT: []}
    since = harness.ssh(SERVER, "date +%s").stdout.strip()
    site.since = since  # type: ignore[attr-defined]
    harness.ssh(SERVER, f"fallocate -l {FILLER_MB}M {DATA}/filler")
    tmp = Path(tempfile.mkdtemp(prefix="rk-disk-guard-images-"))
    pushed: list[tuple[str, str]] = []
    first = tmp / "first"
    pushed.append(("guard/first:1", oci_images.random_image(first, 64 * 1024)))
    proc, _ = site.push(first, pushed[0][0])
    assert proc.returncode == 0, proc.stderr
    refused, highest = "", 0
    started = time.monotonic()
    with TimedPulls(lambda: site.pull(pushed[0][0], tmp / f"loop-{time.monotonic_ns()}")
                    == pushed[0][1]) as loop:
        for n in range(30):
            began = time.monotonic()
            layout = tmp / f"img{n}"
            digest = oci_images.random_image(layout, IMAGE_BYTES)
            proc, got = site.push(layout, f"guard/fill{n % 3}:{n}")
            if proc.returncode != 0:
                # A push open while the guard restarts the registry is cut (EOF); as a
                # client would, push again: taken, or refused by the read-only registry.
                FIGURES["cut by the switch"] = proc.stderr.strip()[-160:]
                FIGURES["seconds until it answered again"] = round(site.wait_serving(30), 1)
                proc, got = site.push(layout, f"guard/fill{n % 3}:{n}")
            highest = max(highest, used_percent())
            if proc.returncode != 0:
                refused = proc.stderr
                break
            assert got == digest
            pushed.append((f"guard/fill{n % 3}:{n}", digest))
            time.sleep(max(0.0, PACE_SECONDS - (time.monotonic() - began)))
    FIGURES.update({"pushes taken": len(pushed) - 1, "fill seconds":
                    round(time.monotonic() - started, 1), "highest use %": highest,
                    "pulls during fill": loop.pulls, "failed pulls": loop.failed})
    assert refused, f"no push refused; the disk is {used_percent()}% full"
    assert re.search(r"405|unsupported|not allowed", refused, re.I), refused
    # Refused before the disk was full, with room left; the switch logged once.
    assert 90 <= highest < 100 and used_percent() < 100
    switched = journal("made read-only", since)
    assert len(switched) == 1 and "(mark 90%)" in switched[0], switched
    # Only the switch reaches the journal, not each check's start and stop (LogLevelMax).
    FIGURES["journal lines"] = journal("", since)
    assert len(journal("", since)) == 1
    assert upload_code(site) == 405
    site.read_only_at = time.monotonic()  # type: ignore[attr-defined]
    # Both alerts active (pending, for their `for:`) from the facts the server serves.
    FIGURES["seconds until Prometheus saw both"] = round(prometheus_lab.wait(
        lambda: all(active(prometheus).values()), SEEN_WITHIN, "both disk alerts active"), 1)
    assert corrupt_blobs() == []
    _pull_all(site, pushed, tmp)
    # Pulls fail only while the switch restarts the registry: one short window.
    window = max(loop.failed_at) - min(loop.failed_at) if loop.failed_at else 0.0
    FIGURES["failed pulls' window seconds"] = round(window, 1)
    assert window < 8, (loop.failed, loop.pulls, window)

    cells, _ = status_row(site)
    assert any(cell.startswith("read-only since ") for cell in cells), cells
    # A deploy while read-only keeps it so: nothing to change.
    site.deploy().assert_no_changes()
    assert upload_code(site) == 405
    site.pushed = pushed  # type: ignore[attr-defined]


def test_gc_frees_space_and_the_registry_is_writable_again(site: Site,
                                                           prometheus: int) -> None:
    pushed: list[tuple[str, str]] = site.pushed  # type: ignore[attr-defined]
    # Still read-only: both alerts fire once their `for:` (a minute each) has passed; the
    # disk's went active no later than the guard's (85% comes before the guard's 90%).
    held = time.monotonic() - site.read_only_at  # type: ignore[attr-defined]
    FIGURES["seconds waited for both to fire"] = round(prometheus_lab.wait(
        lambda: active(prometheus) == {DISK_ALERT: ["firing"], GUARD_ALERT: ["firing"]},
        max(0.0, ALERTS_FOR + SEEN_WITHIN - held), "both disk alerts firing"), 1)
    FIGURES["both firing after (s)"] = round(
        time.monotonic() - site.read_only_at, 1)  # type: ignore[attr-defined]
    # Read-only refuses deletes too (405); what is left is removing the repositories'
    # folders on the server (as retention does on 2.x filesystem storage), then a GC.
    ref, digest = pushed[1]
    assert delete_manifest(site, ref.split(":")[0], digest) == 405
    repos = sorted({ref.split(":")[0] for ref, _ in pushed[1:]})
    harness.ssh(SERVER, "cd " + f"{DATA}/docker/registry/v2/repositories && rm -rf "
                + " ".join(repos))
    before = used_percent()
    run = harness.run_kit(site.inventory, "garbage_collect.py").assert_ok()
    assert "registry-kit: garbage collection freed" in run.stderr
    after = used_percent()
    FIGURES.update({"use % before gc": before, "use % after gc": after})
    assert after < 85
    deadline = time.monotonic() + 30
    since = site.since  # type: ignore[attr-defined]
    while time.monotonic() < deadline and not journal("made writable again", since):
        time.sleep(1)
    assert len(journal("made writable again", since)) == 1
    assert upload_code(site) == 202
    FIGURES["seconds until both alerts resolved"] = round(prometheus_lab.wait(
        lambda: active(prometheus) == {DISK_ALERT: [], GUARD_ALERT: []}, SEEN_WITHIN,
        "both disk alerts resolved"), 1)
    tmp = Path(tempfile.mkdtemp(prefix="rk-disk-guard-after-"))
    proc, _ = site.push(_image(tmp), "guard/again:1")
    assert proc.returncode == 0, proc.stderr
    _pull_all(site, pushed[:1], tmp)
    cells, text = status_row(site)
    assert any(cell.startswith("writable since ") for cell in cells), cells
    # last gc: this collection; last retention: whatever an earlier module on this lab host
    # left (the record lives beside config.yml), read on the host itself.
    retention = harness.ssh(SERVER, "head -n1 /etc/registry-kit/last-retention 2>/dev/null | "
                            "cut -d' ' -f1 | grep . || echo never").stdout.strip()
    assert cells[-3] != "never" and cells[-2] == retention, cells
    # The metrics column: both endpoints, their units active (Prometheus scraped them).
    assert cells[-1] == "registry active, facts active", cells
    assert f"usage ({SERVER}):" in text and "guard/first" in text
    site.deploy().assert_no_changes()


def _image(tmp: Path) -> Path:
    layout = tmp / "again"
    oci_images.random_image(layout, 64 * 1024)
    return layout
