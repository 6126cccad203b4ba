"""ha-snapshot: high availability for cloud servers by snapshots."""
