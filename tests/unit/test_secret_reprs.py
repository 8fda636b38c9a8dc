"""No dataclass of the kit shows a secret in its repr (pyinfra prints operation arguments,
tracebacks print locals): every field whose name says it holds a secret, or something
derived from one, prints *** or nothing. The walk imports every module of the package, so a
new dataclass with such a field is checked without being listed here."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from typing import Any

import registry_kit
from registry_kit.model.settings import Secret

PLANTED = "planted-S3CR3T-value"
# password, passphrase, passwd, *_secret, token (not a port or a folder), key (material, not a
# file name), private, credential, htpasswd contents, the login marker (a password hash).
SECRET_NAME = re.compile(r"pass(word|phrase|wd)|secret(?!_keys$)|token(?!_(port|dir|paths?)$)"
                         r"|(^|_)key(_pem|_material)?$|private|credential|htpasswd|"
                         r"login_marker|auth_?(header|string)", re.IGNORECASE)


def _dataclasses() -> list[type]:
    found: dict[str, type] = {}
    for module in pkgutil.walk_packages(registry_kit.__path__, "registry_kit."):
        for value in vars(importlib.import_module(module.name)).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value) and \
                    value.__module__.startswith("registry_kit."):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def _plant(kind: str) -> Any:
    """The planted value for a field of this annotation; None when it cannot hold text."""
    if "Secret" in kind:
        return Secret(PLANTED)
    if "bytes" in kind:
        return PLANTED.encode()
    if "str" in kind:
        return PLANTED
    return None


def _secret_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if SECRET_NAME.search(f.name) and _plant(str(f.type)) is not None]


def test_every_dataclass_with_a_secret_field_hides_it() -> None:
    checked, leaks = [], []
    for cls in _dataclasses():
        secret = _secret_fields(cls)
        if not secret:
            continue
        instance = object.__new__(cls)  # no __init__: any field may be planted, frozen or not
        for item in dataclasses.fields(cls):
            value = _plant(str(item.type)) if item.name in secret else None
            object.__setattr__(instance, item.name, value)
        shown = repr(instance)
        checked.append(cls.__qualname__)
        shows_something_else = [name for name in secret if f"{name}=" in shown and not
                                re.search(rf"\b{name}=(Secret\()?\*\*\*", shown)]
        if PLANTED in shown or shows_something_else:
            leaks.append(f"{cls.__module__}.{cls.__qualname__}: {shown[:300]}")
    assert not leaks, "\n".join(leaks)
    # The walk finds the classes known to hold secrets (it would pass vacuously otherwise).
    assert {"CacheTarget", "User", "ServerCertificate", "HostState", "Settings"} <= \
        set(checked), checked


def test_masked_fields_still_show_when_unset() -> None:
    from registry_kit.render.config import CacheTarget

    shown = repr(CacheTarget(addr="10.0.0.5:6379", password="redis-pass-123456", db=2))
    assert shown == "CacheTarget(addr='10.0.0.5:6379', password=***, db=2)"
    assert "password_hash=None" in repr(registry_kit.model.settings.User("u", None, None))
