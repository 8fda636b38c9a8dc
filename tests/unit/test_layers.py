"""registry_kit's layers, read from every module's imports (ast): imports go only downward.

    4 jobs    registry_kit.jobs (deploy, teardown, status, gc, backup, restore) and api.py:
              they arrange the roles of a host, in order
    3 roles   registry_kit.roles, registry_kit.operations, facts.py, sharedgc.py,
              sharedretention.py: pyinfra operations and facts, they yield commands
    2 model   registry_kit.model (settings and checks, settings_doc, topology, layout,
              access, versions, registry_version, pull_through, inventory, keystore),
              s3check.py, s3objects.py, pyinfra_patches.py (how pyinfra plans this run,
              switched once per run by the inventory's settings): what the run is
              (settings, hosts and their roles) and the control machine's key store
    1 pure    registry_kit.render, commands.py (quoting), package_data.py, errors.py:
              values in, text or data out; no files written, no host access (no pyinfra)

A module imports its own layer and those below. The one exception, checked here: the
model's value objects (VALUES: settings and the modules it is made of, layout,
pull_through) are what pure renderers take, read-only, so a pure module may import them.
That keeps "pure" honest only because the value modules themselves import nothing but
each other and pure modules, and no pyinfra: also checked here. registry_kit/scripts/
holds files run on the hosts: they import nothing of the kit, except the modules the kit
ships beside them (SHIPPED: the retention planner, uploaded as it is for the scheduled
run), which themselves import nothing but each other and the standard library.

A module the table does not place fails the test: a new module says where it belongs.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "registry_kit"
JOBS, ROLES, MODEL, PURE = 4, 3, 2, 1
HOST = 0  # files uploaded to hosts and run there
LAYERS = {
    "registry_kit.api": JOBS,
    "registry_kit.jobs": JOBS,
    "registry_kit.roles": ROLES,
    "registry_kit.operations": ROLES,
    "registry_kit.facts": ROLES,
    "registry_kit.sharedgc": ROLES,
    "registry_kit.sharedretention": ROLES,
    "registry_kit.model": MODEL,
    "registry_kit.s3check": MODEL,
    "registry_kit.s3objects": MODEL,
    "registry_kit.pyinfra_patches": MODEL,
    "registry_kit.render": PURE,
    "registry_kit.commands": PURE,
    "registry_kit.package_data": PURE,
    "registry_kit.errors": PURE,
    "registry_kit": PURE,  # the package's __init__
    "registry_kit.scripts": HOST,
}
VALUES = {"registry_kit.model.settings", "registry_kit.model.checks", "registry_kit.model.access",
          "registry_kit.model.versions", "registry_kit.model.registry_version",
          "registry_kit.model.layout", "registry_kit.model.pull_through",
          "registry_kit.model.retention", "registry_kit.model.ldap"}
# Modules uploaded to servers as they are (roles/retention_timer.py), which a host script
# (scripts/registry-retention.py) may import.
SHIPPED = {"registry_kit.model.retention", "registry_kit.model.access"}
NAMES = {PURE: "pure", MODEL: "model", ROLES: "roles", JOBS: "jobs", HOST: "host"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int | None:
    """The layer of the longest table entry that is `module` or a package above it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def imports(module: str) -> list[tuple[int, str]]:
    """(line, module) of every import in `module`, functions and TYPE_CHECKING included."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".")
                if MODULES[module].name != "__init__.py":
                    package = package[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base
                                                                            else []))
            for alias in node.names:
                # `from package import module` imports the module itself.
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in MODULES else base))
    return found


def _kit(name: str) -> bool:
    return name == "registry_kit" or name.startswith("registry_kit.")


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 40
    assert [name for name in MODULES if layer(name) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward(module: str) -> None:
    mine = layer(module)
    assert mine is not None
    wrong = []
    for line, target in imports(module):
        if not _kit(target):
            continue
        theirs = layer(target)
        assert theirs is not None, f"{module} imports {target}, which has no layer"
        if mine == HOST:
            if target not in SHIPPED:
                wrong.append(f"{module}:{line}: runs on hosts, imports {target}")
        elif theirs > mine and not (mine == PURE and target in VALUES):
            wrong.append(f"{module}:{line}: {NAMES[mine]} imports {NAMES[theirs]} ({target})")
    assert wrong == []


@pytest.mark.parametrize("module", sorted(SHIPPED))
def test_shipped_modules_stand_alone(module: str) -> None:
    """What a server imports without the kit installed: each other and the standard library."""
    assert [target for _, target in imports(module) if target not in SHIPPED
            and target.split(".")[0] not in sys.stdlib_module_names] == []


@pytest.mark.parametrize("module", sorted(VALUES))
def test_value_modules_stand_on_pure_ground(module: str) -> None:
    """What pure renderers may take: made of values and pure code only, no pyinfra."""
    wrong = [f"{module}:{line}: imports {target}" for line, target in imports(module)
             if target.split(".")[0] == "pyinfra"
             or (_kit(target) and target not in VALUES and layer(target) != PURE)]
    assert wrong == []


@pytest.mark.parametrize("module", sorted(name for name in MODULES if layer(name) == PURE))
def test_pure_modules_touch_no_host_and_write_no_file(module: str) -> None:
    assert [target for _, target in imports(module) if target.split(".")[0] == "pyinfra"] == []
    tree = ast.parse(MODULES[module].read_text())
    wrong = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            wrong.append(f"{module}:{node.lineno}: open()")
        elif isinstance(func, ast.Attribute) and (
                func.attr in {"write_bytes", "write_text", "mkdir", "chmod", "unlink", "rename"}
                or (isinstance(func.value, ast.Name) and func.value.id == "os")):
            wrong.append(f"{module}:{node.lineno}: {ast.unparse(func)}()")
    assert wrong == []


# Old module names that must not come back, in code or docstrings.
OLD_NAMES = re.compile(r"\b(plan\.plan_host|main\.plan_host|operations\.(server|client|"
                       r"teardown|status|gc|backup|restore|token_auth|webui|engine|cache|"
                       r"loadbalancer|keepalived|trust)|roles_teardown|roles_status|"
                       r"(scaleout|control|remote)\.[A-Za-z_]|paths\.py)")


def _resolves(dotted: str) -> bool:
    """registry_kit.a.b.c names a module, or an attribute of one."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in MODULES:
            value: object = importlib.import_module(name)
            for attribute in parts[end:]:
                if not hasattr(value, attribute):
                    return False
                value = getattr(value, attribute)
            return True
    return False


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_stale_module_names(module: str) -> None:
    text = MODULES[module].read_text()
    stale = [match.group(0) for match in OLD_NAMES.finditer(text)]
    stale += [name for name in re.findall(r"\bregistry_kit(?:\.\w+)+", text)
              if not _resolves(name)]
    assert stale == []


MAX_FUNCTION_LINES = 60


def test_no_function_over_60_lines() -> None:
    """Issue 24: a function a reader can hold at once; a longer one is split by what it does."""
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert long == []
