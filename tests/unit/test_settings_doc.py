"""The README's settings table and the repo's group_data/all.py are generated from the
declarations (registry_kit.model.settings_doc): each fails here when it is stale."""

from __future__ import annotations

from typing import Any

from registry_kit.model import settings, settings_doc


def test_group_data_is_generated_from_the_declarations() -> None:
    assert settings_doc.GROUP_DATA.read_text() == settings_doc.group_data_text(), \
        "group_data/all.py is stale: run make settings-docs"


def test_readme_table_is_generated_from_the_declarations() -> None:
    readme = settings_doc.README.read_text()
    assert readme == settings_doc.readme_text(readme), \
        "README.md's settings table is stale: run make settings-docs"


def test_group_data_holds_every_setting_at_its_default() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(settings_doc.GROUP_DATA.read_text(), "all.py", "exec"), namespace)
    shown = {key: value for key, value in namespace.items()
             if key.startswith(("registry_", "docker_"))}
    assert shown == settings.known_keys()


def test_every_setting_has_a_row_in_the_readme() -> None:
    table = settings_doc.readme_table()
    for key in settings.DECLARATIONS:
        assert f"| `{key}` |" in table
    assert settings_doc.literal({"a": [1, None, "x"]}) == '{"a": [1, None, "x"]}'
