"""What one manager replica has done since it registered: WorkCounters.

Each replica (an incarnation: a new id at every start) counts in memory
the deltas it merged, the bytes they shipped and added to the store, and
the recoveries it ran to their end, succeeded or failed. The counts go to
the database with the replica's heartbeat (the ``counters`` column of its
``managers`` row, :mod:`ha_snapshot.db.membership`), never with a write of
their own: a delta costs nothing more than an addition here. What a
replica counted since its last beat is lost when it is killed; a clean
stop writes it.

They are counters in Prometheus' sense: totals since the incarnation
registered, labelled by its id, so a restarted replica is a new series
starting from zero, never one that goes down. ``GET /metrics`` and ``GET
/v1/managers`` read them from the rows.

Imports nothing from the package: the manager, the recovery engine and
the API all read :data:`NAMES` from here.
"""

import threading

DELTAS_MERGED = 'deltas_merged'
SHIPPED_BYTES = 'shipped_bytes'
STORED_BYTES = 'stored_bytes'
RECOVERIES_SUCCEEDED = 'recoveries_succeeded'
RECOVERIES_FAILED = 'recoveries_failed'

NAMES = (DELTAS_MERGED, SHIPPED_BYTES, STORED_BYTES, RECOVERIES_SUCCEEDED,
         RECOVERIES_FAILED)
"""Every counter, in the order the API lists them."""


def zeros() -> dict:
    return dict.fromkeys(NAMES, 0)


def known(values: dict | None) -> dict:
    """Every counter of :data:`NAMES` from ``values`` (as read from a row,
    maybe written by another release), 0 for those it lacks; names this
    release does not know are left out."""
    out = zeros()
    for name, value in (values or {}).items():
        if name in out:
            out[name] = value
    return out


class WorkCounters:
    """One replica's counters; any thread may add."""

    def __init__(self):
        self._lock = threading.Lock()
        self._values = zeros()

    def add(self, name: str, amount: int = 1) -> None:
        if name not in self._values:
            raise KeyError('no replica counter %r (known: %s)'
                           % (name, ', '.join(NAMES)))
        if amount < 0:
            raise ValueError('replica counter %s cannot go down (%d)'
                             % (name, amount))
        with self._lock:
            self._values[name] += amount

    def merged(self, shipped_bytes: int, stored_bytes: int) -> None:
        """This replica merged one delta into a new restore point."""
        with self._lock:
            self._values[DELTAS_MERGED] += 1
            self._values[SHIPPED_BYTES] += max(0, int(shipped_bytes))
            self._values[STORED_BYTES] += max(0, int(stored_bytes))

    def recovery_ended(self, succeeded: bool) -> None:
        """This replica ran a recovery to its end."""
        self.add(RECOVERIES_SUCCEEDED if succeeded else RECOVERIES_FAILED)

    def snapshot(self) -> dict:
        """The counts now (a copy)."""
        with self._lock:
            return dict(self._values)
