"""What became durable lately, for one protected VM's policy and people.

:class:`Durable` is written by the shipper (ha_snapshot/agent/shipper.py)
at every durable ack and read by the snapshot loop's policy, the demo,
the benchmarks and operators (through ha_snapshot/agent/instance.py).

Imports nothing of the project.
"""

import collections
import threading
import time

# NOTE: the latest restore points an agent remembers (ids and snapshot
# times, for the demo, benchmarks and operators): a window, not a history,
# so that days of deltas cost no memory.
RECENT_RESTORE_POINTS = 64


class Durable:
    """What became durable lately, for the policy and for people: read
    every attribute under ``cond`` (notified at each durable delta)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.cond = threading.Condition()
        self.last_durable_at = None
        self.last_delta_bytes = 0
        self.last_ship_seconds = 0.0
        self.shipped_bytes = 0
        """Compressed bytes of the deltas sent (memory states apart)."""
        self.shipped_changed_bytes = 0
        self.shipped_memory_bytes = 0
        """Compressed bytes of memory-state chunks the store lacked."""
        self.restore_points = collections.deque(
            maxlen=RECENT_RESTORE_POINTS)
        """The latest restore points made durable, oldest first."""
        self.taken_at = {}
        """Restore point id -> wall-clock time of its snapshot, for the
        latest RECENT_RESTORE_POINTS."""
        self.count = 0
        """Deltas made durable since the agent started."""
        self.memory_states = 0
        """Memory states made durable since the agent started."""

    def remember(self, restore_point: str, taken_at: float | None,
                 shipped: bool = True) -> None:
        with self.cond:
            self.taken_at[restore_point] = taken_at
            while len(self.taken_at) > RECENT_RESTORE_POINTS:
                del self.taken_at[next(iter(self.taken_at))]
            if shipped:
                self.restore_points.append(restore_point)
                self.count += 1

    def now(self, sent: int, seconds: float) -> None:
        with self.cond:
            self.last_durable_at = self.clock()
            self.last_delta_bytes = sent
            self.last_ship_seconds = seconds
            self.cond.notify_all()
