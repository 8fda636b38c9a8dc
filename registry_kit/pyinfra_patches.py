"""Two per-operation costs of pyinfra 3.10 that the kit's runs do without.

In CLI mode pyinfra orders every operation call by the line numbers of the deploy code on
the call stack (pyinfra.api.util.get_operation_order_from_stack). It reads them with
inspect.stack(), which looks up the source file and the module of every frame, three times
per call. Measured on the 2-core bench machine, a no-op over 1 server + 20 clients spent
0.47 s of the control machine's 1.4 s of CPU there (225 operations). `frame_order` reads
the same line numbers from the frames themselves (`f_code.co_filename`, `f_lineno`, which
is what inspect reports for files that exist); tests/unit/test_pyinfra_patches.py checks
that both give the same order.

pyinfra also rebuilds the type hints of its global arguments (typing.get_type_hints) for
every operation call; they are those of one class and never change, so they are kept.

`install()` patches only the exact pyinfra versions in TESTED_VERSIONS (those the
differential test ran on) whose functions are still the ones described here; on any other
version the kit runs on pyinfra as it is (slower, same result) and says so once.

The patches are process-wide (they replace two pyinfra module functions): the kit switches
them with `use()` once per run, when the settings are validated
(registry_kit.model.inventory), on unless a host of the run sets
`registry_pyinfra_patches = False`; they are installed once per process, and taken out
again by a run that turns them off.
"""

from __future__ import annotations

import functools
import sys
from types import FrameType
from typing import Any

import pyinfra
import pyinfra.api.arguments
import pyinfra.api.operation
import pyinfra.api.util

# `pyinfra.api.operation` is also the name of the decorator that pyinfra.api exports.
_operation_module = sys.modules["pyinfra.api.operation"]
_arguments_module = sys.modules["pyinfra.api.arguments"]
_util_module = sys.modules["pyinfra.api.util"]

# Add a version only after tests/unit/test_pyinfra_patches.py passed on it.
TESTED_VERSIONS = frozenset({"3.10.0"})

ORIGINAL_ORDER = _util_module.get_operation_order_from_stack
ORIGINAL_ARGUMENTS = _arguments_module.all_global_arguments


def frame_order(state: Any) -> list[int]:
    """pyinfra's get_operation_order_from_stack without inspect: the line numbers of the
    frames outside pyinfra, from the outermost frame of the deploy file inwards."""
    frames = []
    # From the caller: pyinfra skips its own frame, this skips this one.
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    frames.reverse()

    start = 0
    if state.current_deploy_filename:
        names = [filename for filename, _ in frames]
        # pyinfra's loop stops at the first frame of the deploy file, or else at its own
        # frame, which it then skips: no line numbers at all.
        start = names.index(state.current_deploy_filename) \
            if state.current_deploy_filename in names else len(names)

    line_numbers = [state.current_op_file_number] if pyinfra.is_cli else []
    line_numbers += [lineno for filename, lineno in frames[start:]
                     if not filename.startswith(_util_module.PYINFRA_INSTALL_DIR)]
    return line_numbers


@functools.cache
def _global_argument_types() -> tuple[tuple[str, type], ...]:
    return tuple(ORIGINAL_ARGUMENTS())


def cached_global_arguments() -> list[tuple[str, type]]:
    return list(_global_argument_types())


@functools.cache
def _say_unpatched(version: str) -> None:
    pyinfra.logger.warning(f"registry-kit: pyinfra {version} is not a version its speed-ups "
                           f"were tested on ({', '.join(sorted(TESTED_VERSIONS))}); running "
                           "without them")


def install(version: str | None = None) -> bool:
    """Use frame_order and cached_global_arguments in this process; False (and nothing
    patched) when pyinfra is not a version these replacements were tested on."""
    version = pyinfra.__version__ if version is None else version
    if version not in TESTED_VERSIONS:
        _say_unpatched(version)
        return False
    if _operation_module.get_operation_order_from_stack in (ORIGINAL_ORDER, frame_order) and \
            _arguments_module.all_global_arguments in (ORIGINAL_ARGUMENTS,
                                                       cached_global_arguments):
        setattr(_operation_module, "get_operation_order_from_stack", frame_order)  # noqa: B010
        setattr(_arguments_module, "all_global_arguments", cached_global_arguments)  # noqa: B010
        return True
    return False


def uninstall() -> None:
    """Give pyinfra back its own functions (where these replacements are in place)."""
    if _operation_module.get_operation_order_from_stack is frame_order:
        setattr(_operation_module, "get_operation_order_from_stack", ORIGINAL_ORDER)  # noqa: B010
    if _arguments_module.all_global_arguments is cached_global_arguments:
        setattr(_arguments_module, "all_global_arguments", ORIGINAL_ARGUMENTS)  # noqa: B010


def use(enabled: bool) -> bool:
    """The speed-ups on (where pyinfra's version allows) or off for this process; True when
    they are on afterwards. Cheap when nothing changes: called once per run."""
    if enabled:
        return install()
    uninstall()
    return False
