"""registry-kit: `pyinfra INVENTORY status.py` prints the state of every registry server and
client as two tables (servers: image, state, uptime, /v2/ code, certificate days left,
storage, repositories, tags, GC timer; load balancers: each replica as haproxy sees it, who
holds the floating address; cache: redis memory and keys; clients: engine, trust, login,
/etc/hosts lines).
Read-only: one remote command per host, no operations.
`--data registry_status_json=True`: the same facts as one JSON document on stdout.
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.status()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
