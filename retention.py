"""registry-kit: `pyinfra INVENTORY retention.py` applies registry_retention_rules to each
registry server's storage (filesystem storage; S3, once for the replicas sharing a bucket).

By default it only reports, per repository, the tags kept and deleted with the reason, the
manifests deleted and the bytes a garbage collection would then free, and changes nothing.
`--data registry_retention_apply=True` deletes them, then collects garbage, one server at a
time, the registry read-only meanwhile (pulls work, pushes are refused); on S3 every replica
sharing the bucket is read-only meanwhile.
Settings: group_data/all.py (README: Keeping it healthy, Retention).
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.retention()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
