"""ha-snapshot-manager: merges deltas, keeps restore points, recovers.

Runs in the mirror environment; the only writer of recovery images.
"""
