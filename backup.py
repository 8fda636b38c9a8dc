"""registry-kit: `pyinfra INVENTORY backup.py` backs up each registry server's data.

Filesystem storage only: blobs copied incrementally, the repositories tree whole, an
index.json per backup; no read-only window (pushes and pulls go on throughout).
`--data registry_backup_verify=True` re-hashes every blob of the backup instead.
Settings: group_data/all.py (README: Backup and restore).
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.backup()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
