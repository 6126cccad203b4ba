"""What a snapshot agent must not forget across restarts, on disk.

One JSON file per instance (``<state_dir>/<uuid>/state.json``), replaced
atomically after every step that matters: a snapshot taken (its frozen
overlay is pending until acknowledged), an acknowledgement received (the
overlay moves to committing), a commit done. An agent restarted at any
point finds every frozen overlay it has not been told is durable, and
sends it again.

:class:`PendingQueue` is the one way the snapshot loop
(ha_snapshot/agent/instance.py) and the shipper (ha_snapshot/agent/
shipper.py) share the pending deltas: every change is saved before the
other side sees it.

The spec is a :class:`~ha_snapshot.protection_spec.ProtectionSpec`, kept in
the file as the plain JSON object the manager sent (a file written by an
older agent loads; keys this version does not know are kept).
"""

import dataclasses
import json
import os
import threading

from ha_snapshot import exception
from ha_snapshot import protection_spec
from ha_snapshot import statuses


@dataclasses.dataclass
class Pending:
    sequence: int
    disk: str
    frozen: str
    backing: str | None
    committable: bool
    parent: str | None = None
    """The restore point it applies to, fixed when shipping starts so that
    a resend after a crash is recognised by the manager."""
    restore_point: str | None = None
    """Set once acknowledged (the overlay is then only to be committed)."""
    taken_at: float | None = None
    """Wall-clock time the snapshot was taken."""
    full: bool = False
    """The frozen image is the whole disk (the base): a (re-)baseline."""
    consistency: str = 'crash'
    """'filesystem' when taken inside a guest file system freeze."""
    memory: str | None = None
    """The spool file of the VM's memory state of the same instant
    (ha_snapshot/memory_state.py), shipped after the delta's ack."""
    disks: list | None = None
    """A multi-disk entry (ha_snapshot/disk_layout.py): one object per
    protected disk of the snapshot, the root first, each with ``disk``,
    ``role``, ``frozen``, ``backing``, ``committable`` and ``whole``
    (the delta must carry the whole disk, not the writes of its frozen
    overlay alone). The entry's own ``disk``/``frozen``/``backing``/
    ``committable`` are the root's. None: the root disk alone, as in
    files written before it existed."""

    def images(self) -> list:
        """Every disk's part: the ``disks`` objects, or the root's."""
        if self.disks is not None:
            return self.disks
        return [{'disk': self.disk, 'role': 'root', 'frozen': self.frozen,
                 'backing': self.backing, 'committable': self.committable,
                 'whole': False}]


@dataclasses.dataclass
class InstanceState:
    instance: str
    project: str
    spec: protection_spec.ProtectionSpec
    next_sequence: int = 0
    parent: str | None = None
    baseline_restore_point: str | None = None
    """The VM's base image is exactly this restore point (after a restart
    from it): the first snapshot's frozen base is not sent again."""
    pending: list = dataclasses.field(default_factory=list)
    status: str = statuses.InstanceStatus.PROTECTING
    restarted_by: str | None = None
    """The recovery whose restart made the running VM: the same recovery
    asking again (another manager took it over) gets the VM as it is."""
    layout: list | None = None
    """The disks (ha_snapshot/disk_layout.py ``shape``: [target, role,
    size] each) of the newest multi-disk entry queued, or of the restore
    point the VM was restarted from; None: the root disk alone. A
    snapshot whose disks differ is a re-baseline."""

    def __post_init__(self):
        # NOTE: a JSON object (a test's, the file's) becomes the spec.
        if not isinstance(self.spec, protection_spec.ProtectionSpec):
            self.spec = protection_spec.ProtectionSpec.from_dict(
                self.spec, keep_unknown=True)

    def to_dict(self) -> dict:
        """The file's JSON object."""
        d = {f.name: getattr(self, f.name)
             for f in dataclasses.fields(self)}
        d['spec'] = self.spec.to_dict()
        d['pending'] = [dataclasses.asdict(p) for p in self.pending]
        for p in d['pending']:
            if p['consistency'] == 'crash':
                # NOTE: as files written before it existed.
                del p['consistency']
            if p['memory'] is None:
                del p['memory']
            if p['disks'] is None:
                del p['disks']
        for key in ('restarted_by', 'layout'):
            if d[key] is None:
                # NOTE: as files written before it existed.
                del d[key]
        return d

    @classmethod
    def path_for(cls, state_dir: str, instance: str) -> str:
        return os.path.join(state_dir, instance, 'state.json')

    def save(self, state_dir: str) -> None:
        path = self.path_for(state_dir, self.instance)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.to_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> 'InstanceState':
        try:
            with open(path) as f:
                d = json.load(f)
            d['pending'] = [Pending(**p) for p in d.get('pending', [])]
            return cls(**d)
        except (OSError, ValueError, TypeError,
                exception.InvalidProtectionSpec) as e:
            raise exception.HaSnapshotException(
                'Agent state %s is unreadable (%s); move it away to start '
                'protection of that instance again.' % (path, e))

    @classmethod
    def load_all(cls, state_dir: str) -> list:
        out = []
        if not os.path.isdir(state_dir):
            return out
        for name in sorted(os.listdir(state_dir)):
            path = cls.path_for(state_dir, name)
            if os.path.exists(path):
                out.append(cls.load(path))
        return out

    def remove(self, state_dir: str) -> None:
        path = self.path_for(state_dir, self.instance)
        if os.path.exists(path):
            os.unlink(path)


class PendingQueue:
    """An instance's pending deltas, oldest first, persisted with its state.

    The snapshot loop adds the frozen overlay of every snapshot
    (:meth:`add`); the shipper ships the oldest (:meth:`oldest`), records
    its acknowledgement (:meth:`acknowledged`) and, once the overlay is
    committed down, removes it (:meth:`remove`). ``lock`` guards the whole
    state (pending list, parent, sequence) and its file; ``progress`` is
    notified when an entry leaves; ``shippable`` is set when one arrives.
    """

    def __init__(self, state: InstanceState, state_dir: str):
        self.state = state
        self.state_dir = state_dir
        self.lock = threading.RLock()
        self.progress = threading.Condition(self.lock)
        self.shippable = threading.Event()

    def save(self) -> None:
        with self.lock:
            self.state.save(self.state_dir)

    def wake(self) -> None:
        """Wake whoever waits on the queue (a stop, a failure)."""
        self.shippable.set()
        with self.progress:
            self.progress.notify_all()

    def unacknowledged(self) -> int:
        return sum(1 for p in self.state.pending if p.restore_point is None)

    def add(self, **fields) -> Pending:
        """A new entry with the next sequence (not saved: the caller saves
        once it has added all of a snapshot's)."""
        with self.lock:
            entry = Pending(sequence=self.state.next_sequence, **fields)
            self.state.pending.append(entry)
            self.state.next_sequence += 1
            return entry

    def oldest(self) -> Pending | None:
        with self.lock:
            return self.state.pending[0] if self.state.pending else None

    def fix_parent(self, entry: Pending) -> None:
        """Fix the restore point ``entry`` applies to when its shipping
        starts, so that a resend after a crash is recognised."""
        with self.lock:
            if entry.parent is None:
                entry.parent = self.state.parent
                self.save()

    def acknowledged(self, entry: Pending, restore_point: str) -> None:
        with self.lock:
            entry.restore_point = restore_point
            self.state.parent = restore_point
            self.save()

    def remove(self, entry: Pending) -> None:
        """``entry`` is durable and its overlay committed down."""
        with self.progress:
            self.state.pending.remove(entry)
            # NOTE: the overlay above the one committed now stands on
            # what that one stood on (the commit rewrote its header).
            for done in entry.images():
                if not done['committable']:
                    continue
                for later in self.state.pending:
                    if later.backing == done['frozen']:
                        later.backing = done['backing']
                    for image in later.disks or ():
                        if image['backing'] == done['frozen']:
                            image['backing'] = done['backing']
            self.save()
            self.progress.notify_all()
