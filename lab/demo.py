"""`make demo`: bring up the lab, deploy the registry with the kit, run the tutorial's flow.

1. `lab up`: one registry server (lab-reg, bookworm) and two clients (lab-client1 bookworm,
   lab-client2 trixie), with no Docker on them until the kit installs it.
2. `pyinfra -y inventories/lab.py deploy.py`: the same command a team runs against its own
   inventory.
3. On lab-client2: tag an image as REGISTRY/itmuch/microservice-discovery-eureka:0.0.1,
   push it, remove it locally, pull it back and run it.
4. A summary: registry URL, users, the image pushed, the digest pulled, the time taken.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import lab
from lab.config import LabError
from lab.site import DEMO_USER, DOMAIN, demo_password_file
from lab.ssh import ssh_argv

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "lab-client2"
PORT = 5000
IMAGE = f"{DOMAIN}:{PORT}/itmuch/microservice-discovery-eureka:0.0.1"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def on_host(state: dict, host: str, command: str) -> str:
    port = int(state["hosts"][host]["port"])
    proc = subprocess.run(ssh_argv(Path(state["key"]), port, [command]), capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise LabError(f"{host}: `{command}` failed: {proc.stderr.strip() or proc.stdout}")
    return proc.stdout


def main() -> int:
    started = time.monotonic()
    try:
        step("Bringing up the lab (1 registry server, 2 clients)")
        state = lab.up()
        lab_time = time.monotonic() - started

        step("Deploying: pyinfra -y inventories/lab.py deploy.py")
        demo_password_file()
        deploy_started = time.monotonic()
        pyinfra = str(Path(sys.executable).parent / "pyinfra")
        deploy = subprocess.run([pyinfra, "-y", "inventories/lab.py", "deploy.py"], cwd=ROOT,
                                stdin=subprocess.DEVNULL)
        if deploy.returncode != 0:
            raise LabError("the deploy failed (see pyinfra's output above)")
        deploy_time = time.monotonic() - deploy_started

        step(f"On {CLIENT}: docker tag, push, rmi, pull, run {IMAGE}")
        # `docker push busybox` would mean Docker Hub: the tag names the registry to push to.
        on_host(state, CLIENT, f"docker pull -q busybox >/dev/null && docker tag busybox {IMAGE}")
        pushed = on_host(state, CLIENT, f"docker push {IMAGE}")
        print(pushed.rstrip())
        on_host(state, CLIENT, f"docker rmi {IMAGE} >/dev/null")
        pulled = on_host(state, CLIENT, f"docker pull {IMAGE}")
        print(pulled.rstrip())
        ran = on_host(state, CLIENT, f"docker run --rm {IMAGE} echo hello from the registry")
        print(ran.rstrip())
    except LabError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1

    digest = re.search(r"sha256:[0-9a-f]{64}", pulled)
    total = time.monotonic() - started
    print(f"""
registry-kit demo: done in {total:.0f} s (lab {lab_time:.0f} s, deploy {deploy_time:.0f} s)
  registry     https://{DOMAIN}:{PORT}  (server lab-reg, CA in .registry-kit/ca/ca.crt)
  users        {DEMO_USER} (password in {demo_password_file().relative_to(ROOT)})
  pushed       {IMAGE}
  pulled       {digest.group(0) if digest else "?"} on {CLIENT}
  try it       python -m lab ssh {CLIENT} docker pull {IMAGE}
  run again    make demo   (a second deploy changes nothing)
  tear down    python -m lab down   (removes every lab container, volume and network)""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
