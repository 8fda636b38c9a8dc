"""The README's settings table and the repo's group_data/all.py, generated from the
declarations in registry_kit.model.settings (`make settings-docs`):

    python -m registry_kit.model.settings_doc --write   # rewrite both files
    python -m registry_kit.model.settings_doc --check   # exit 1 when either is stale

tests/unit/test_settings_doc.py fails when either file differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from registry_kit.model.settings import DECLARATIONS, SECTIONS, Declaration

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GROUP_DATA = ROOT / "group_data" / "all.py"
BEGIN = ("<!-- settings table: generated from registry_kit/model/settings.py by "
         "`make settings-docs`; edit the declarations, not this table -->")
END = "<!-- end of the settings table -->"
WIDTH = 100  # the repo's line length (ruff)

GROUP_DATA_HEADER = '''\
"""registry-kit settings for this project: the documented example of overrides.

Every setting is shown here at its default. The declarations in
registry_kit/model/settings.py hold the defaults, so the kit works without this file; this
file is generated from them (`make settings-docs`) and a test fails when it is stale.
Change what this project needs, or override per group in group_data/<group>.py
(registry_servers, registry_clients), per host in the inventory, or per run with
`--data key=value`. Plain literals only: registry_kit.model.settings reads and validates
them once, before any host is touched.
"""
'''


def literal(value: Any) -> str:
    """A default as group data writes it: a plain Python literal, strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    return repr(value)


def _shown(item: Declaration) -> str:
    return item.shown if item.shown is not None else literal(item.default)


def group_data_text() -> str:
    """group_data/all.py: every setting at its default, with its doc as the comment."""
    lines = [GROUP_DATA_HEADER.rstrip("\n")]
    for block in SECTIONS:
        lines.append(f"\n# --- {block.title} ---")
        for key in block.keys:
            item = DECLARATIONS[key]
            assignment = f"{key} = {_shown(item)}"
            inline = f"{assignment}  # {item.doc}"
            if len(inline) <= WIDTH:
                lines.append(inline)
            else:  # too long for one line: the doc above its setting
                lines += ["# " + part for part in textwrap.wrap(item.doc, WIDTH - 2)]
                lines.append(assignment)
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_table() -> str:
    """The README's settings table (markers included): one table per section."""
    lines = [BEGIN]
    for block in SECTIONS:
        lines += ["", f"**{block.title}** (read by {block.reads})", "",
                  "| key | default | meaning |", "| --- | --- | --- |"]
        for key in block.keys:
            item = DECLARATIONS[key]
            lines.append(f"| `{key}` | `{_cell(_shown(item))}` | {_cell(item.doc)} |")
    lines += ["", END]
    return "\n".join(lines)


def readme_text(current: str) -> str:
    """The README with its settings table (between the markers) regenerated."""
    start, end = current.find(BEGIN), current.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: the settings table markers are missing")
    return current[:start] + readme_table() + current[end + len(END):]


def stale() -> list[Path]:
    """The generated files that differ from what the declarations say."""
    found = []
    if GROUP_DATA.read_text() != group_data_text():
        found.append(GROUP_DATA)
    readme = README.read_text()
    if readme != readme_text(readme):
        found.append(README)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stale files")
    parser.add_argument("--check", action="store_true", help="exit 1 when a file is stale")
    args = parser.parse_args(argv)
    if args.write:
        GROUP_DATA.write_text(group_data_text())
        README.write_text(readme_text(README.read_text()))
        return 0
    if args.check:
        paths = stale()
        for path in paths:
            print(f"{path.relative_to(ROOT)} is stale: run make settings-docs", file=sys.stderr)
        return 1 if paths else 0
    print(group_data_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
