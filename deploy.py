"""registry-kit: `pyinfra INVENTORY deploy.py` sets up registry servers and client hosts.

Hosts in `registry_servers` get the Docker engine and an authenticated TLS registry;
hosts in `registry_clients` get the engine and trust for it (and, optionally, a login).
Settings: group_data/all.py (README: Settings). Idempotent: a second run changes nothing.
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.registry()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
