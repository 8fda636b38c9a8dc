"""Certificates from your own CA on port 443: clients push to registry.example.com/IMAGE
(no port). The files stay on the control machine; the kit checks them (key matches,
chain verifies, not expired, SANs cover the domain) before anything is uploaded.
"""

registry_domain = "registry.example.com"
registry_port = 443
registry_tls_mode = "provided"
registry_tls_cert_file = "secrets/registry.example.com.crt"  # leaf (+ intermediates)
registry_tls_key_file = "secrets/registry.example.com.key"
registry_tls_ca_file = "secrets/example-root-ca.crt"
registry_users = [{"name": "ci", "password_file": "secrets/ci.password"}]
registry_client_login_user = "ci"
registry_client_system_trust = True  # also trust the CA system-wide (curl, skopeo)
