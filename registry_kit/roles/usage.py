"""Storage usage on registry servers with filesystem storage, for status.py only (read-only,
no operations): the 20 largest repositories by unique bytes (blobs no other repository
links), the bytes shared between repositories, the bytes no repository links (what a
garbage collection would free), and when the last garbage collection and retention run
finished (their records beside config.yml).

One walk of the storage, in the one status command: `find` lists every blob with its size
and every layer and manifest link by its path (the digest is the link's folder name, so no
link is opened), and one awk program adds them up; the server sends back 20 lines and a
total. bench/usage.py measures it for 1,000 repositories.
"""

from __future__ import annotations

import posixpath

from registry_kit.commands import q
from registry_kit.facts import first_line, section_command
from registry_kit.model.layout import ServerLayout
from registry_kit.model.settings import Settings
from registry_kit.roles import server

TOP = 20
BLOBS = "docker/registry/v2/blobs"

# Input: "b SIZE sha256/xx/DIGEST/data" per blob, "l REPO/_layers/sha256/DIGEST/link" (or
# _manifests/revisions) per link. A repository name never holds a component starting with
# "_" (distribution's grammar), so the first "/_layers/" or "/_manifests/" ends the name.
# Output: "R UNIQUE REPO" per repository, then "T REPOS SHARED UNLINKED TOTAL". %.0f: awk's
# %d is 32-bit in some awks.
_AWK = r"""
$1 == "b" { n = split($3, p, "/"); size[p[n - 1]] = $2; next }
$1 == "l" {
    i = index($2, "/_layers/"); if (!i) i = index($2, "/_manifests/")
    if (!i) next
    repo = substr($2, 1, i - 1); n = split($2, p, "/"); d = p[n - 1]
    if ((repo, d) in seen) next
    seen[repo, d] = 1; users[d]++; owner[d] = repo; repos[repo] = 1
}
END {
    for (d in size) {
        total += size[d]
        if (!(d in users)) unlinked += size[d]
        else if (users[d] == 1) unique[owner[d]] += size[d]
        else shared += size[d]
    }
    for (r in repos) { count++; printf "R %.0f %s\n", unique[r], r }
    printf "T %.0f %.0f %.0f %.0f\n", count, shared, unlinked, total
}
"""

_FIRST_TOP = '$1 == "R" && ++n > TOP { next } { print }'.replace("TOP", str(TOP))


def walk_command(data_dir: str) -> str:
    """The walk: its output, sorted, the largest TOP repositories first, then the total."""
    blobs = posixpath.join(data_dir, BLOBS)
    repos = posixpath.join(data_dir, server.REPOSITORIES)
    return (f"{{ find {q(blobs)} -type f -name data -printf 'b %s %P\\n'; "
            f"find {q(repos)} -type f -name link \\( -path '*/_layers/sha256/*' -o "
            f"-path '*/_manifests/revisions/sha256/*' \\) -printf 'l %P\\n'; }} 2>/dev/null"
            f" | awk {q(_AWK)} | LC_ALL=C sort -k1,1 -k2,2nr -k3,3"
            f" | awk {q(_FIRST_TOP)}")


def status_command(settings: Settings) -> str:
    paths = ServerLayout.of(settings)
    parts = [section_command("last-gc"), f"cat {q(paths.gc_record)} 2>/dev/null || true",
             section_command("last-retention"),
             f"cat {q(paths.retention_record)} 2>/dev/null || true"]
    if settings.registry_storage.driver == "filesystem":
        parts += [section_command("usage"), walk_command(settings.registry_data_dir)]
    return "; ".join(parts)


def _when(sections: dict[str, list[str]], name: str) -> str:
    """The record's first word (the UTC time it finished), or "never"."""
    words = first_line(sections, name).split()
    return words[0] if words else "never"


def status_row(settings: Settings, sections: dict[str, list[str]]) -> dict[str, str]:
    return {"last gc": _when(sections, "last-gc"),
            "last retention": _when(sections, "last-retention")}


def status_lines(settings: Settings, sections: dict[str, list[str]]) -> list[str]:
    """Lines printed under the tables: the largest repositories of this server."""
    if settings.registry_storage.driver != "filesystem":
        return []
    largest, total = [], None
    for line in sections.get("usage", []):
        fields = line.split()
        if len(fields) == 3 and fields[0] == "R" and fields[1].isdigit():
            largest.append((fields[2], fields[1]))
        elif len(fields) == 5 and fields[0] == "T" and all(f.isdigit() for f in fields[1:]):
            total = fields[1:]
    if total is None:
        return [f"usage ({settings.host}): no storage walk answered"]
    count, shared, unlinked, blobs = total
    lines = [f"usage ({settings.host}): {count} repositories, blobs "
             f"{server.human_bytes(blobs)}, shared between repositories "
             f"{server.human_bytes(shared)}, linked by none (a GC frees) "
             f"{server.human_bytes(unlinked)}"]
    if largest:
        width = max(len(name) for name, _ in largest)
        lines.append(f"  largest {len(largest)} by unique bytes:")
        lines += [f"  {name.ljust(width)}  {server.human_bytes(size)}"
                  for name, size in largest]
    return lines
