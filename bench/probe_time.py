"""`python -m bench.probe_time HOST [--runs N]`: the remote time of each part of the kit's
probe (registry_kit.facts) on a lab host, as its role asks for it with the lab's settings.

Each part runs as `sh -c PART` N times in one shell over the lab's SSH; the mean per run
is printed (microseconds), then the whole probe's and an empty command's. Read-only, like
the probe. Uses the lab of REGISTRY_KIT_LAB_NAME, whose hosts must be up.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
from pathlib import Path

from lab.site import site_data
from lab.ssh import ssh_argv
from lab.state import load
from registry_kit import facts
from registry_kit.model import settings
from registry_kit.model.inventory import merge_probe
from registry_kit.roles import client, gc_timer, server, token_server, webui

TIMER = ('t() { s=$(date +%s%N); i=0; while [ $i -lt "$3" ]; do sh -c "$2" >/dev/null 2>&1; '
         'i=$((i+1)); done; e=$(date +%s%N); echo "$1 $(( (e - s) / 1000 / $3 ))us"; }')


def parts(role_groups: list[str], lab: dict) -> dict[str, str]:
    is_server = "registry_servers" in role_groups
    data = {**settings.known_keys(), **site_data(lab)}
    loaded = settings.load("bench", data, server=is_server)
    roles = (server, gc_timer, token_server, webui) if is_server else (client,)
    probe = merge_probe(role.probe_args(loaded) for role in roles)
    return {
        "engine": "; ".join(facts._ENGINE_COMMANDS),
        "paths": "; ".join(facts.path_commands(probe.get("files", []), probe.get("dirs", []))),
        # $unit comes from the engine part in the probe: the lab's engines run.
        "docker": "unit=ActiveState=active; " + "; ".join(
            facts.docker_commands(probe.get("container"), probe.get("image"))),
        "services": "; ".join(facts.service_commands(probe.get("commands", []),
                                                     probe.get("services", []))),
        "whole probe": facts.probe_command(**probe),
        "empty": "true",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    lab = load()
    host = lab["hosts"][args.host]
    lines = [TIMER] + [f"t {shlex.quote(name)} {shlex.quote(command)} {args.runs}"
                       for name, command in parts(host["groups"], lab).items()]
    proc = subprocess.run(ssh_argv(Path(lab["key"]), host["port"], ["sh", "-s"]),
                          input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=600, check=True)
    print(proc.stdout, end="")


if __name__ == "__main__":
    main()
