"""One quoting path: every value reaches a host's shell through registry_kit.commands.q()
(shlex.quote) or join(), nowhere else.

An AST scan of every module in registry_kit/ finds the places where shell text is made
(what an operation yields, what a *_command/*_commands function returns or assembles, what
StringCommand gets) and checks that each piece is a literal, a module constant, a quoted
value (q/join) or another such command. An f-string there may only interpolate quoted
values or constants: `f"rm -rf {path}"` fails, `f"rm -rf {q(path)}"` passes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "registry_kit"
QUOTING = {"q", "join", "quote"}
# Commands or Python callbacks pyinfra runs: their arguments are checked where they are
# strings (StringCommand) or are not shell text at all (FunctionCommand, uploads).
COMMAND_CLASSES = {"FileUploadCommand", "FunctionCommand", "StringCommand", "OutOfRotation",
                   "_ReplaceCommand", "ReportedCommand", "SharedCollection", "SharedRetention",
                   "upload"}


def _is_constant_name(name: str) -> bool:
    return name.isupper() or (name.startswith("_") and name[1:].isupper())


def _is_command_function(name: str) -> bool:
    return name.endswith(("_command", "_commands")) or name == "command"


def _is_quoting(node: ast.Call) -> bool:
    """q(x), join(args), commands.q(x), shlex.quote(x); not "sep".join(parts)."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in QUOTING
    return isinstance(func, ast.Attribute) and func.attr in QUOTING and \
        isinstance(func.value, ast.Name) and func.value.id in ("commands", "shlex")


def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text())
        self.problems: list[str] = []

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', '?')}"

    # --- what is safe shell text ---

    def quoted(self, node: ast.expr, scope: ast.AST | None) -> bool:
        """A value interpolated into shell text: quoted, or a constant of the kit."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, int | float)  # numbers need no quoting
        if isinstance(node, ast.Call):
            return _is_quoting(node) or _is_command_function(_call_name(node))
        if isinstance(node, ast.Name):
            return _is_constant_name(node.id) or self.local_is_safe(node.id, scope)
        if isinstance(node, ast.Attribute):
            return _is_constant_name(node.attr)
        return False

    def safe(self, node: ast.expr | None, scope: ast.AST | None) -> bool:
        """Shell text: a literal, a constant, a quoted value, or a command built so."""
        if node is None:
            return True
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | int | type(None))
        if isinstance(node, ast.JoinedStr):
            return all(self.quoted(part.value, scope) for part in node.values
                       if isinstance(part, ast.FormattedValue))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.safe(node.left, scope) and self.safe(node.right, scope)
        if isinstance(node, ast.IfExp):
            return self.safe(node.body, scope) and self.safe(node.orelse, scope)
        if isinstance(node, ast.List | ast.Tuple):
            return all(self.safe(item, scope) for item in node.elts)
        if isinstance(node, ast.Name):
            return _is_constant_name(node.id) or self.local_is_safe(node.id, scope)
        if isinstance(node, ast.Attribute):
            return _is_constant_name(node.attr)
        if isinstance(node, ast.Subscript):
            return self.safe(node.value, scope)
        if isinstance(node, ast.Call):
            name = _call_name(node)
            if _is_quoting(node) or name in COMMAND_CLASSES or _is_command_function(name):
                return True
            func = node.func
            if isinstance(func, ast.Attribute) and name == "get":
                return self.safe(func.value, scope)  # CONSTANT_TABLE.get(key, default)
            if isinstance(func, ast.Attribute) and name == "join" and \
                    isinstance(func.value, ast.Constant):
                # "SEP".join(parts): every part is itself safe shell text or quoted.
                return all(self.joined_parts_safe(arg, scope) for arg in node.args)
        return False

    def joined_parts_safe(self, node: ast.expr, scope: ast.AST | None) -> bool:
        if isinstance(node, ast.GeneratorExp | ast.ListComp):
            return self.safe(node.elt, scope) or self.quoted(node.elt, scope)
        return self.safe(node, scope)

    def local_is_safe(self, name: str, scope: ast.AST | None) -> bool:
        """A local variable is safe when every assignment to it in the function is."""
        if scope is None:
            return False
        values: list[ast.expr] = []
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets):
                values.append(node.value)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign) and \
                    isinstance(node.target, ast.Name) and node.target.id == name:
                if node.value is not None:
                    values.append(node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("append", "extend") and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id == name:
                values.extend(node.args)  # parts.append(...): each part counts
            elif isinstance(node, ast.For | ast.comprehension) and \
                    isinstance(node.target, ast.Name) and node.target.id == name:
                return False  # loop variables take values from anywhere
        if not values:
            return False  # a parameter: any value
        return all(self.safe(value, scope) or self.quoted(value, scope) for value in values)

    # --- where shell text is made ---

    def functions(self) -> Iterator[ast.FunctionDef]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef):
                yield node

    def check(self) -> list[str]:
        for function in self.functions():
            for node in ast.walk(function):
                if isinstance(node, ast.Yield) and not self.safe(node.value, function):
                    self.problems.append(f"{self.where(node)}: {function.name} yields shell "
                                         f"text built from an unquoted value")
            if _is_command_function(function.name):
                self.check_command_function(function)
        # StringCommand(...) anywhere: judged in each function around it (a local built
        # with q() in the outer function counts).
        scopes: dict[int, list[ast.AST | None]] = {}
        calls: dict[int, ast.Call] = {}
        for scope in [None, *self.functions()]:
            for node in ast.walk(scope or self.tree):
                if isinstance(node, ast.Call) and _call_name(node) == "StringCommand":
                    scopes.setdefault(id(node), []).append(scope)
                    calls[id(node)] = node
        for key, node in calls.items():
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    continue
                if not any(self.safe(arg, scope) or self.quoted(arg, scope)
                           for scope in scopes[key]):
                    self.problems.append(f"{self.where(node)}: StringCommand gets an "
                                         "unquoted value")
        return self.problems

    def check_command_function(self, function: ast.FunctionDef) -> None:
        """Every f-string and string concatenation in a command builder is shell text."""
        docstring = ast.get_docstring(function, clean=False)
        # Error messages are Python text, not shell text.
        messages = {id(inner) for node in ast.walk(function) if isinstance(node, ast.Raise)
                    for inner in ast.walk(node)}
        for node in ast.walk(function):
            if id(node) in messages:
                continue
            if isinstance(node, ast.Return) and not self.safe(node.value, function):
                self.problems.append(f"{self.where(node)}: {function.name} returns shell "
                                     "text built from an unquoted value")
            elif isinstance(node, ast.JoinedStr) and not self.safe(node, function):
                self.problems.append(f"{self.where(node)}: {function.name} interpolates an "
                                     "unquoted value")
            elif isinstance(node, ast.Constant) and node.value == docstring:
                continue


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_scan_sees_every_module() -> None:
    assert len(_modules()) >= 20


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_shell_text_is_built_only_from_quoted_values(path: Path) -> None:
    problems = Checker(path).check()
    assert problems == [], "\n".join(problems)


def _problems_in(source: str, tmp_path: Path) -> list[str]:
    path = PACKAGE / "_scan_example.py"  # inside the package, so relative names work
    checker = Checker.__new__(Checker)
    checker.path = path
    checker.tree = ast.parse(source)
    checker.problems = []
    return checker.check()


@pytest.mark.parametrize("source", [
    'def op(path):\n    yield f"rm -rf {path}"\n',
    'def op(settings):\n    yield f"echo \'kept {settings.registry_config_dir}\'"\n',
    'def op(path):\n    cmd = "rm -rf " + path\n    yield cmd\n',
    'def op(paths):\n    yield "rm -f " + " ".join(paths)\n',
    'def install_commands(url):\n    return [f"echo {url} > /etc/apt/sources.list.d/x"]\n',
    'def probe_command(path):\n    parts = [f"cat {path}"]\n    return "; ".join(parts)\n',
    'def op(name):\n    yield StringCommand("docker", "rm", f"{name}-old")\n',
])
def test_the_scan_catches_unquoted_values(source: str, tmp_path: Path) -> None:
    assert _problems_in(source, tmp_path), source


@pytest.mark.parametrize("source", [
    'def op(path):\n    yield f"rm -rf {q(path)}"\n',
    'def op(paths):\n    yield "rm -f " + " ".join(q(p) for p in paths)\n',
    'def op(args):\n    yield join(["docker", "run", *args])\n',
    'def op(name):\n    staging = f"{name}.new"\n    yield f"mv {q(staging)} {q(name)}"\n',
    'def op():\n    yield f"systemctl restart {SERVICE}"\n',
])
def test_the_scan_accepts_quoted_values(source: str, tmp_path: Path) -> None:
    assert _problems_in(source, tmp_path) == [], source
