"""Example production inventory: copy it, put your hosts in, run
`pyinfra inventories/prod.py deploy.py`.

Hosts are reached over SSH as root (or a sudo user with `--sudo`). Settings come from
group_data/all.py (defaults) and group_data/<group>.py; see examples/ for the common
cases and the README's settings table for every key.
"""

# The registry itself: one host, or several replicas on shared S3 storage (scale-out).
registry_servers = [
    ("registry1.example.internal", {"ssh_user": "root"}),
]

# Every host that pushes or pulls: CI runners, build hosts, application servers. A host
# may be in both groups (a server that also pulls from itself).
registry_clients = [
    "build1.example.internal",
    "build2.example.internal",
    ("app1.example.internal", {"ssh_port": 2222}),
]
