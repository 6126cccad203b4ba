"""Clients of other OpenStack services (Nova, Glance), built from conf.

May import ha_snapshot.conf and ha_snapshot.exception; nothing of the
manager, the agent or the store.
"""
