"""pyinfra operations: each compares the probe snapshot (registry_kit.facts) with the
wanted state and yields commands only for differences."""
