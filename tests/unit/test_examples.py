"""The shipped examples stay true to the settings (the README's table and group_data/all.py
are generated: tests/unit/test_settings_doc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry_kit.model import settings
from registry_kit.model.layout import Endpoints

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*/all.py"))


def _namespace(path: Path) -> dict:
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return {k: v for k, v in namespace.items() if k.startswith(("registry_", "docker_"))}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.parent.name)
def test_example_group_data_validates(example: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = _namespace(example)
    monkeypatch.setenv("REGISTRY_CI_PASSWORD", "ci-password")
    # Files named by the example exist on a real control machine; make them here.
    for user in data.get("registry_users", []):
        if "password_file" in user:
            path = tmp_path / user["password_file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("pw\n")
    for key in ("registry_tls_cert_file", "registry_tls_key_file", "registry_tls_ca_file"):
        if data.get(key):
            path = tmp_path / data[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("placeholder")
    loaded = settings.load("example-host", data, base_dir=tmp_path)
    assert loaded.registry_domain == data["registry_domain"]


def test_example_addresses_without_port_on_443(tmp_path: Path) -> None:
    data = _namespace(ROOT / "examples" / "provided-443" / "all.py")
    for key in ("registry_tls_cert_file", "registry_tls_key_file", "registry_tls_ca_file"):
        (tmp_path / data[key]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / data[key]).write_text("x")
    (tmp_path / "secrets" / "ci.password").write_text("pw")
    assert Endpoints.of(settings.load("h", data, base_dir=tmp_path)).address == \
        "registry.example.com"
