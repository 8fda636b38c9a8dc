"""pyinfra inventory of the lab (`python -m lab up` writes the state this reads).

Usage: pyinfra inventories/lab.py deploy.py
Groups come from the hosts' groups in .lab/state.json: `registry_servers`, `registry_clients`
(always defined, maybe empty), any other group a host names, and `lab_hosts` (all hosts).
Environment overrides:
  REGISTRY_KIT_LAB_HOSTS=lab-reg,lab-client1   only these hosts
  REGISTRY_KIT_LAB_GROUPS="registry_servers=lab-client2;registry_clients=lab-client1"
  REGISTRY_KIT_LAB_NAME=...                    another lab namespace
"""

import sys
from pathlib import Path

# pyinfra sets __file__ when it runs an inventory: find the project's `lab` package from it.
_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from lab.config import LabError  # noqa: E402
from lab.site import site_data  # noqa: E402
from lab.state import inventory_groups, load  # noqa: E402

try:
    _state = load()
    _site = site_data(_state)  # the lab's settings for the kit (domain, mirror, demo user)
    _groups = {
        group: [(name, {**_site, **data}) for name, data in hosts]
        for group, hosts in inventory_groups(_state).items()
    }
except LabError as _exc:
    raise SystemExit(f"inventories/lab.py: {_exc}") from None

registry_servers = _groups.pop("registry_servers")
registry_clients = _groups.pop("registry_clients")
globals().update(_groups)  # lab_hosts and any extra group (e.g. registry_lb)
