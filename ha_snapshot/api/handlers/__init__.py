"""Handlers of ha-snapshot-api: plain functions ``verb_noun(req)``, one
noun per module. They read the manager's database directly (read-only)
and send every change to the manager over RPC (ha_snapshot.manager.rpcapi).
"""
