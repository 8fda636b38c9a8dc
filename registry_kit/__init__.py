"""registry-kit: a pyinfra kit that turns Linux servers into a private Docker registry service."""
