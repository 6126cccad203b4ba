"""The statuses of the protection lifecycle, as enums.

An instance's ``status`` and a recovery's ``state`` are stored, sent over
RPC and shown by the API as plain strings; these ``StrEnum`` members are
those very strings (``InstanceStatus.PROTECTED == 'protected'``), so rows
read from the database, JSON from the API and an agent's state file
compare equal to them with no conversion, and nothing on disk or on the
wire changes.

Restore points have no status: a restore point exists once it is durable
(in the store and the database), and an agent's delta is either pending
or acknowledged (``ha_snapshot.agent.state.Pending.restore_point``).

Imports nothing from ha_snapshot: the agent, the manager, the API and the
database layer all use it.
"""

import enum


class InstanceStatus(enum.StrEnum):
    """Where a protected server is in its lifecycle (``instances.status``).

    The manager's recovery state machine moves instances between these;
    ``DELETED`` is final (a protect of the server again starts over).
    """

    PROTECTING = 'protecting'
    """Recorded; its agent has not registered it yet."""
    PROTECTED = 'protected'
    """Its agent ships deltas; reports of it may start a recovery."""
    PAUSED = 'paused'
    """Nova stopped it: reports of it start nothing."""
    RECOVERING = 'recovering'
    """A recovery of it runs."""
    FAILED = 'failed'
    """Recoveries failed ``[recovery] max_attempts`` times: an operator
    must act."""
    DELETED = 'deleted'
    """No longer protected; its restore points wait for retention."""


class RecoveryState(enum.StrEnum):
    """How far a recovery got (``recoveries.state``)."""

    REQUESTED = 'requested'
    RUNNING = 'running'
    SUCCEEDED = 'succeeded'
    FAILED = 'failed'


class HostFailureState(enum.StrEnum):
    """What was done about a failed compute host (``host_failures.state``,
    written by the manager's host monitor)."""

    CONFIRMED = 'confirmed'
    """Found failed; fencing under way (or the monitor stopped mid-way:
    the next round fences it)."""
    FENCED = 'fenced'
    """The fencing driver made sure the host runs nothing; handed on to
    evacuation."""
    FENCE_FAILED = 'fence_failed'
    """Fencing failed (``error``): nothing of the host is evacuated; tried
    again at the next round."""
    EVACUATING = 'evacuating'
    """Its protected servers are being evacuated and restored (one
    recovery each, ``recoveries.host_failure_id``)."""
    EVACUATED = 'evacuated'
    """Every protected server of it was evacuated and restored."""
    EVACUATION_FAILED = 'evacuation_failed'
    """The evacuation ended with servers not recovered (``error`` names
    them): an operator must act on those."""
    RETURNED = 'returned'
    """The host came back (agent beats, Nova reports it up): closed."""
    PARTITION = 'partition'
    """Host ``*``: most agents silent at once; nothing was fenced."""
    PARTITION_ENDED = 'partition_ended'
    """Host ``*``: the agents are heard again: closed."""


INSTANCE_STATUSES = tuple(s.value for s in InstanceStatus)
"""Every instance status, as plain strings, in lifecycle order."""
RECOVERY_STATES = tuple(s.value for s in RecoveryState)
"""Every recovery state, as plain strings."""
LIVE_INSTANCE_STATUSES = tuple(s for s in INSTANCE_STATUSES
                               if s != InstanceStatus.DELETED)
"""The statuses of an instance that is still protected (not deleted)."""
FINAL_RECOVERY_STATES = (RecoveryState.SUCCEEDED, RecoveryState.FAILED)
"""A recovery in one of these has ended."""
UNFINISHED_RECOVERY_STATES = (RecoveryState.REQUESTED, RecoveryState.RUNNING)
"""A recovery in one of these is yet to run or runs."""


class Consistency(enum.StrEnum):
    """What a restore point's file systems look like
    (``restore_points.consistency``)."""

    CRASH = 'crash'
    """As after a power cut: a journal replay makes them clean; what the
    guest's applications had not made durable may be missing."""
    FILESYSTEM = 'filesystem'
    """Taken while the guest agent held the file systems frozen (the
    guest's fsfreeze-hook scripts ran first): clean, no replay needed."""
