"""The lab's site settings for the kit: what a team would put in its group_data.

inventories/lab.py adds these to every lab host, so `pyinfra inventories/lab.py deploy.py`
deploys a working registry with no edits: the domain the lab's DNS serves (registry.lab),
the lab's upstream as Docker Hub mirror, and one user whose password is generated once
into .lab/demo.password (0600) and never written anywhere else.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from lab.config import get_config

DEMO_USER = "demo"
DOMAIN = "registry.lab"


def demo_password_file(name: str | None = None) -> Path:
    path = get_config(name).state_dir / "demo.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(18) + "\n")
    return path


def site_data(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "registry_domain": DOMAIN,
        "docker_registry_mirrors": [state["upstream"]["url"]],
        "registry_users": [{"name": DEMO_USER,
                            "password_file": str(demo_password_file(state.get("name")))}],
        "registry_client_login_user": DEMO_USER,
    }
