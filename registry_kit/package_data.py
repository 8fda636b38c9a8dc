"""The package's own files, read with importlib.resources so an installed wheel works the
same as a checkout: the shell scripts the kit uploads to hosts (scripts/) and the templates
of the line-based files it writes (templates/), rendered through one Jinja environment.
"""

from __future__ import annotations

from importlib import resources

import jinja2

SCRIPTS = resources.files("registry_kit") / "scripts"

# Values reach these templates only after registry_kit.render.textfile checked them; the
# environment adds nothing (no autoescape: the files are not HTML).
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("registry_kit", "templates"), undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)


def script(name: str) -> bytes:
    """The bytes of scripts/NAME, as uploaded to hosts."""
    return (SCRIPTS / name).read_bytes()


def module(name: str) -> bytes:
    """The bytes of the package's own module NAME (like "model/retention.py"), uploaded as
    they are where a host runs it (the scheduled retention's planner)."""
    return (resources.files("registry_kit") / name).read_bytes()


def webui_static(name: str) -> bytes:
    """The bytes of webui_static/NAME, the web page's files (registry_kit.render.webui)."""
    return (resources.files("registry_kit") / "webui_static" / name).read_bytes()
