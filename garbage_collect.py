"""registry-kit: `pyinfra INVENTORY garbage_collect.py` garbage-collects each registry
server's storage (named so it does not shadow the standard library's `gc`).

One server at a time: the registry is restarted read-only (pulls work, pushes are refused),
`registry garbage-collect` runs, the registry is restarted with its normal config, and the
bytes freed are reported. `--data registry_gc_dry_run=True` only reports what would go;
`--data registry_gc_delete_untagged=True` also deletes manifests no tag points to.
Settings: group_data/all.py (README: Garbage collection).
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.garbage_collect()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
