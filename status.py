"""registry-kit: `pyinfra INVENTORY status.py` prints the state of every registry server and
client as two tables (servers: image, state, uptime, /v2/ code, certificate days left,
storage, repositories, tags, GC timer; clients: engine, trust, login, /etc/hosts lines).
Read-only: one remote command per host, no operations.
"""

from registry_kit import api

api.status()
