"""The kit's @operation: pyinfra's own, typed the way pyinfra calls it.

pyinfra 3.10 types an operation call as PyinfraOperation.__call__(_sudo, _sudo_user, ...,
name, _if, ..., *args: P.args, **kwargs: P.kwargs): the global arguments come first, so
mypy reads the operation's own positional arguments as _sudo, _sudo_user... and every
call looks wrong. Here the global arguments the kit passes are keyword-only and typed.
The operation's own arguments go unchecked at the call (a ParamSpec admits no keyword
parameter beside it); `_inner`, the body other operations compose, keeps its signature.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ParamSpec, Protocol, cast

from pyinfra.api import operation as pyinfra_operation
from pyinfra.api.operation import OperationMeta

P = ParamSpec("P")


class Operation(Protocol[P]):
    _inner: Callable[P, Generator]

    def __call__(self, *args: Any, name: str | None = None,
                 _if: list[Callable[[], bool]] | Callable[[], bool] | None = None,
                 _serial: bool = False, **kwargs: Any) -> OperationMeta: ...


def operation() -> Callable[[Callable[P, Generator]], Operation[P]]:
    """pyinfra.api.operation(), unchanged at run time."""

    def decorator(function: Callable[P, Generator]) -> Operation[P]:
        return cast("Operation[P]", pyinfra_operation()(function))

    return decorator
