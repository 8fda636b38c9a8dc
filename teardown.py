"""registry-kit: `pyinfra INVENTORY teardown.py` removes what deploy.py set up.

Servers lose the registry container, its config, certificates, htpasswd, the kit's scripts
and GC timer; clients lose the trust entries, the kit's docker login and /etc/hosts lines;
every host loses the kit's daemon.json keys (others stay; Docker is reloaded). The registry
data stays unless registry_purge_data=True; Docker stays unless docker_remove_on_teardown=True.
Load balancers lose keepalived's and haproxy's config (both stopped), the cache redis.conf
(stopped); their packages stay unless registry_packages_remove_on_teardown=True.
A second teardown changes nothing. Settings: group_data/all.py (README: Teardown).
"""

from registry_kit import api
from registry_kit.errors import RegistryKitError

try:
    api.teardown()
except RegistryKitError as error:  # a refused setting: exit code 1 and its one line
    raise SystemExit(str(error)) from None
