"""CLI: ``python -m lab up|down|status|images|ssh|reset|restart|remove|ceph``.

Errors are LabError: printed as one line, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from lab import ceph, core, images
from lab.config import NAME_ENV, LabError, get_config, say
from lab.engine import ensure_engine, ensure_tools
from lab.ssh import ssh_argv
from lab.state import load
from lab.topology import DEFAULT_TOPOLOGY, parse_extra


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lab", description=__doc__)
    parser.add_argument("--name", default=None,
                        help=f"lab namespace (default: ${NAME_ENV} or the main lab)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="build images if needed, start upstream and hosts")
    p_up.add_argument("--extra", action="append", default=[], metavar="NAME:RELEASE[:G,..]",
                      help="extra host, e.g. lab-reg2:trixie:registry_servers (repeatable)")
    p_up.add_argument("--only", action="store_true",
                      help="only the --extra hosts, not the default topology")
    p_up.add_argument("--prune", action="store_true",
                      help="remove lab hosts that are not asked for")
    p_up.add_argument("--no-upstream", action="store_true", help="skip the upstream registry")
    p_down = sub.add_parser("down", help="remove the lab's containers, volumes, network")
    p_down.add_argument("--images", action="store_true", help="also remove the built images")
    sub.add_parser("status", help="table of the lab's hosts")
    sub.add_parser("images", help="build every image the tests use, where missing (CI starts "
                                  "this beside the venv and lint: see .ci/run)")
    p_ssh = sub.add_parser("ssh", help="ssh into a host as root")
    p_ssh.add_argument("host")
    p_ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    p_ceph = sub.add_parser("ceph", help="the lab's object store: single-node Ceph RGW (S3)")
    p_ceph.add_argument("action", choices=("up", "status"),
                        help="up: set up or reuse lab-ceph; status: ceph -s")
    for verb, text in (("reset", "recreate a host as a fresh machine"),
                       ("restart", "reboot a host"), ("remove", "remove a host")):
        sub.add_parser(verb, help=text).add_argument("host")
    return parser


def _print_table(rows: list[dict[str, str]]) -> None:
    if not rows:
        print("no lab hosts")
        return
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = args.name
    try:
        if args.command == "up":
            extras = [parse_extra(e) for e in args.extra]
            specs = extras if args.only else [*DEFAULT_TOPOLOGY, *extras]
            current = core.up(specs, prune=args.prune, with_upstream=not args.no_upstream,
                              name=name)
            say(f"lab up: {len(current['hosts'])} hosts, state in {get_config(name).state_file}")
            _print_table(core.status(name=name))
        elif args.command == "down":
            removed = core.down(remove_images=args.images, name=name)
            say("removed " + "; ".join(f"{k}: {' '.join(v) or '-'}" for k, v in removed.items()))
        elif args.command == "status":
            _print_table(core.status(name=name))
        elif args.command == "images":
            ensure_tools()
            ensure_engine()
            hosts, small = images.build_images(set(images.SUITE_RELEASES))
            say("images: " + " ".join(sorted(img.tag for img in [*hosts.values(),
                                                                 *small.values()] if img)))
        elif args.command == "ssh":
            current = load(name)
            host = current["hosts"].get(args.host)
            if host is None:
                raise LabError(f"no lab host {args.host!r} (have: {', '.join(current['hosts'])})")
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            argv_ = ssh_argv(get_config(name).key_file, int(host["port"]), cmd)
            sys.stdout.flush()
            os.execvp(argv_[0], argv_)
        elif args.command == "ceph":
            if args.action == "up":
                info = ceph.ceph_up(name=name)
                print(json.dumps(info, indent=2))
            else:
                print(ceph.ceph_status(name=name), end="")
        elif args.command == "reset":
            core.reset_host(args.host, name=name)
        elif args.command == "restart":
            core.restart_host(args.host, name=name)
        elif args.command == "remove":
            core.remove_host(args.host, name=name)
    except LabError as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
