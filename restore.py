"""registry-kit: `pyinfra INVENTORY restore.py` restores a backup made by backup.py onto
each registry server (fresh, or after a purge) and brings the registry up on it.

`--data registry_restore_from=/path/to/backups/SERVER` picks the backup (default: this
server's own, under registry_backup_dir). Settings: group_data/all.py (README: Backup and
restore).
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.restore()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
