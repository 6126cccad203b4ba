"""The manager's database: instances, restore points, recoveries, agents.

``models`` declares the tables, ``migrations/`` (alembic) creates and
changes them, ``migration`` runs those migrations from code, ``api`` is the
only way the rest of ha-snapshot reads and writes rows, and ``cli`` holds
the ``ha-snapshot-manage db ...`` commands.

The database is a cache of what matters for scheduling and recovery: the
recovery store alone is enough to rebuild it (``Database.rebuild_from_store``).
"""
