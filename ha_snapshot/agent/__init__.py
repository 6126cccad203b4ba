"""ha-snapshot-agent: per-instance snapshot agents on a compute host."""
