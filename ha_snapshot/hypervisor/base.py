"""The hypervisor driver contract: live snapshots and commits of VM disks.

A driver attaches to (or starts) a VM and keeps its disks recoverable by
external qcow2 overlays:

* :meth:`HypervisorDriver.snapshot` puts one new overlay on top of every
  writable disk, all disks in one atomic step. The image that was active
  freezes: it holds exactly the writes since the previous snapshot.
* once the manager has made that delta durable, :meth:`HypervisorDriver.commit`
  merges the frozen overlay down into the image below it and deletes it.
  Snapshots and commits of one VM are serialised.

The lowest image a driver ever writes into is the disk's *base*: the image
that was active when protection began. The first snapshot freezes the base
itself; it is never committed (and nothing below it is ever touched, e.g. a
shared image the base stands on).

This module holds the data classes, the exceptions of the package and the
abstract driver, and the subscriber list both drivers deliver events
through; of ha_snapshot it imports only ha_snapshot.exception.
"""

import abc
import contextlib
import dataclasses
import threading
import typing

from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

# Synthetic lifecycle events, next to QMP's own (SHUTDOWN, STOP, RESUME,
# BLOCK_IO_ERROR, BLOCK_JOB_COMPLETED, JOB_STATUS_CHANGE, ...).
PROCESS_EXITED = 'PROCESS_EXITED'
MONITOR_CLOSED = 'MONITOR_CLOSED'


# NOTE: the exceptions live in ha_snapshot/exception.py; these names keep
# hv_base.X working for the driver's users.
HypervisorError = exception.HypervisorError
HypervisorDriverNotFound = exception.HypervisorDriverNotFound
QemuNotFound = exception.QemuNotFound
VMStartFailed = exception.VMStartFailed
VMAttachFailed = exception.VMAttachFailed
VMNotRunning = exception.VMNotRunning
QmpError = exception.QmpError
QmpTimeout = exception.QmpTimeout
HmpError = exception.HmpError
DiskNotFound = exception.DiskNotFound
MemoryStateError = exception.MemoryStateError
MemoryStateMismatch = exception.MemoryStateMismatch
SnapshotFailed = exception.SnapshotFailed
CommitInProgress = exception.CommitInProgress
CommitFailed = exception.CommitFailed
CommitOrderError = exception.CommitOrderError


# --- data -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Image:
    """One image of a disk's chain, as the hypervisor has it open."""
    node: str
    path: str
    format: str
    owned: bool = False
    """Created by this driver (an overlay), not the base or below it."""


@dataclasses.dataclass(frozen=True)
class Disk:
    name: str
    """Stable id: the guest device id, else the base image's node name."""
    device: str | None
    """The guest device's path (QEMU qdev), None for a bare block node."""
    virtual_size: int
    chain: tuple
    """Images from the active one down to the bottom of the chain."""

    @property
    def active(self) -> Image:
        return self.chain[0]

    @property
    def base(self) -> Image:
        """The lowest image the driver writes into (see the module doc)."""
        for image in self.chain:
            if not image.owned:
                return image
        return self.chain[-1]


@dataclasses.dataclass(frozen=True)
class FrozenOverlay:
    """One disk's part of a snapshot."""
    disk: str
    frozen: Image
    """Holds exactly the writes since the previous snapshot (the first
    snapshot freezes the base itself, which holds everything)."""
    backing: Image | None
    """What ``frozen`` stood on when the snapshot was taken; None when the
    frozen image is the bottom of the chain."""
    active: Image
    """The new, empty overlay the guest now writes into."""
    full: bool = False
    """The frozen image holds the whole disk, not the writes since the
    previous snapshot (a driver whose change tracking was lost says so:
    the delta is then a re-baseline)."""

    @property
    def committable(self) -> bool:
        """False for the base: it is never committed."""
        return self.frozen.owned


@dataclasses.dataclass(frozen=True)
class Snapshot:
    vm: str
    disks: tuple
    """One FrozenOverlay per writable disk, all taken in one transaction."""
    qmp_seconds: float
    """Monitor time of the snapshot: the overlays added (unless prepared
    ahead), the disks flushed, the transaction."""
    transaction_seconds: float
    """The atomic switch alone (the only step that pauses guest I/O)."""
    taken_at: float
    consistency: str = 'crash'
    """'filesystem' when the snapshot was taken while the guest agent held
    the guest's file systems frozen (application-consistent), else
    'crash' (what a power cut leaves: the journal needs a replay)."""
    frozen_seconds: float | None = None
    """From the freeze sent to the thaw answered (None: not frozen): an
    upper bound of the time the guest's file systems were frozen."""

    def disk(self, name: str) -> FrozenOverlay:
        for d in self.disks:
            if d.disk == name:
                return d
        raise KeyError(name)


@dataclasses.dataclass(frozen=True)
class CommitResult:
    disk: str
    top: Image
    base: Image | None
    committed: bool
    """False when there was nothing to do (the base, or already done)."""
    seconds: float = 0.0
    top_bytes: int = 0
    """Bytes the committed file held on disk (allocated) before the commit."""


@dataclasses.dataclass(frozen=True)
class BlockStats:
    disk: str
    node: str
    rd_bytes: int
    rd_operations: int
    wr_bytes: int
    wr_operations: int
    flush_operations: int
    wr_highest_offset: int
    accounted: bool
    """True when the counters are a guest device's; a bare block node has
    only ``wr_highest_offset`` (QEMU accounts I/O per device)."""

    @classmethod
    def from_counters(cls, disk: str, node: str, counters: dict,
                      wr_highest_offset, accounted: bool) -> 'BlockStats':
        """From a counters dict with QEMU's (and libvirt's) key names."""
        def n(key):
            return int(counters.get(key, 0))
        return cls(disk=disk, node=node, rd_bytes=n('rd_bytes'),
                   rd_operations=n('rd_operations'), wr_bytes=n('wr_bytes'),
                   wr_operations=n('wr_operations'),
                   flush_operations=n('flush_operations'),
                   wr_highest_offset=int(wr_highest_offset),
                   accounted=accounted)


@dataclasses.dataclass(frozen=True)
class Event:
    vm: str
    kind: str
    """A QMP event name, PROCESS_EXITED or MONITOR_CLOSED."""
    data: dict
    timestamp: float


@dataclasses.dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str = 'qcow2'
    node: str | None = None
    """Block node name (default disk0, disk1, ...)."""
    device: str | None = None
    """Guest device id for machines with devices (default vd0, vd1...)."""


@dataclasses.dataclass(frozen=True)
class VMSpec:
    """What :meth:`HypervisorDriver.start` launches."""
    name: str
    disks: tuple
    qmp_path: str
    log_path: str
    machine: str = 'none'
    """'none' (bare block nodes, no guest) or 'q35' (virtio-blk disks)."""
    pidfile: str | None = None
    accel: str = 'tcg'
    memory_mb: int = 64
    paused: bool = False
    """Start with the CPUs stopped (-S): no guest code ever runs."""
    agent_path: str | None = None
    """A unix socket (QEMU serves it) for the guest agent's virtio-serial
    port ``org.qemu.guest_agent.0`` (machines with devices only)."""
    extra_args: tuple = ()


class VM:
    """A handle on one running VM, returned by start() and attach()."""

    def __init__(self, name: str, pid: int, qmp_path: str,
                 log_path: str | None = None):
        self.name = name
        self.pid = pid
        self.qmp_path = qmp_path
        self.log_path = log_path

    def __repr__(self):
        return '<%s %s pid=%s>' % (type(self).__name__, self.name, self.pid)


class Subscription:
    """Returned by subscribe(); ``cancel()`` stops the deliveries."""

    def __init__(self, cancel: typing.Callable[[], None]):
        self._cancel = cancel

    def cancel(self) -> None:
        self._cancel()


class Subscribers:
    """A VM's event subscribers (see HypervisorDriver.subscribe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries = []

    def add(self, callback, events=None) -> Subscription:
        entry = (callback, frozenset(events) if events is not None else None)
        with self._lock:
            self._entries.append(entry)

        def cancel():
            with self._lock:
                if entry in self._entries:
                    self._entries.remove(entry)
        return Subscription(cancel)

    def dispatch(self, events, what: str) -> None:
        """Deliver the events of queue ``events`` in order until a None;
        a failing subscriber is logged (``what`` names the VM) and the
        others still get the event."""
        while True:
            event = events.get()
            if event is None:
                return
            with self._lock:
                entries = list(self._entries)
            for callback, kinds in entries:
                if kinds is None or event.kind in kinds:
                    try:
                        callback(event)
                    except Exception:
                        LOG.exception('%s: subscriber failed on %s', what,
                                      event.kind)


def checked_write(vm: str, offset, length, pattern, disk_of) -> Disk:
    """Check write()'s arguments for both drivers; ``disk_of()`` looks the
    disk up once the numbers are known to be integers. Returns the Disk."""
    for what, value in (('offset', offset), ('length', length),
                        ('pattern', pattern)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise HypervisorError(vm=vm, reason='write: %s %r is not an '
                                  'integer' % (what, value))
    d = disk_of()
    if not 0 <= pattern <= 0xff or offset < 0 or length <= 0 or (
            offset + length > d.virtual_size):
        raise HypervisorError(
            vm=vm, reason='write of %d bytes of 0x%x at %d does not fit '
            'disk %s (%d bytes)' % (length, pattern, offset, d.name,
                                    d.virtual_size))
    return d


def find_disk(vm, name: str, refresh) -> Disk:
    """``vm.disks[name]``, after ``refresh(vm)`` if it is not known yet
    (a disk hot-plugged since); DiskNotFound names the disks there are."""
    if name not in vm.disks:
        refresh(vm)
    try:
        return vm.disks[name]
    except KeyError:
        raise DiskNotFound(vm=vm.name, disk=name,
                           known=', '.join(vm.disks) or 'none')


def frozen_items(frozen) -> tuple:
    """commit()'s argument (a Snapshot, one FrozenOverlay or several) as a
    tuple of FrozenOverlay."""
    if isinstance(frozen, Snapshot):
        return tuple(frozen.disks)
    if isinstance(frozen, FrozenOverlay):
        return (frozen,)
    return tuple(frozen)


@contextlib.contextmanager
def operation(vm, what: str, wait: float, refused=None):
    """Hold ``vm.op_lock`` (one snapshot or commit of a VM at a time) for
    ``what``, named in ``vm.busy`` meanwhile. Waits up to ``wait`` seconds
    (0: not at all); then raises ``refused(busy)``, busy naming what holds
    the VM (by default CommitInProgress: what a snapshot meets)."""
    if not (vm.op_lock.acquire(timeout=wait) if wait > 0
            else vm.op_lock.acquire(blocking=False)):
        busy = vm.busy or 'another operation'
        if refused is None:
            raise CommitInProgress(vm=vm.name, reason='%s is running' % busy)
        raise refused(busy)
    vm.busy = what
    try:
        yield
    finally:
        vm.busy = None
        vm.op_lock.release()


# --- the contract -----------------------------------------------------------

class HypervisorDriver(abc.ABC):
    """Base class; ``__init__(conf)`` receives the service's ConfigOpts.

    Every method raises VMNotRunning once the VM's process or monitor is
    gone. Event callbacks run on one thread per VM, in order, and may call
    the driver.
    """

    frozen_in_chain = True
    """Whether a frozen image stays in its disk's chain, its backing the
    disk as it was: a disk to send whole is read through that chain. A
    driver whose frozen images are copies of the changed blocks alone
    (libvirt's backups) says False, and has the next snapshot a full one
    instead (:meth:`full_next`)."""

    def __init__(self, conf):
        self.conf = conf

    @abc.abstractmethod
    def start(self, spec: VMSpec) -> VM:
        """Launch a VM and return once its monitor answers."""

    @abc.abstractmethod
    def attach(self, name: str, qmp_path: str, pid: int, *,
               log_path: str | None = None,
               agent_path: str | None = None) -> VM:
        """Take over a running VM by its monitor socket and process id
        (``agent_path``: its guest agent's socket, if the driver reaches
        the agent that way)."""

    @abc.abstractmethod
    def detach(self, vm: VM) -> None:
        """Let go of the VM; it keeps running."""

    @abc.abstractmethod
    def is_alive(self, vm: VM) -> bool:
        """The process runs and its monitor is connected."""

    @abc.abstractmethod
    def quit(self, vm: VM, timeout: float | None = None) -> int | None:
        """Stop the VM cleanly (SIGKILL after ``timeout``); exit status if
        known."""

    @abc.abstractmethod
    def kill(self, vm: VM) -> None:
        """SIGKILL the VM's process and detach."""

    @abc.abstractmethod
    def subscribe(self, vm: VM, callback: typing.Callable[[Event], None],
                  events: typing.Iterable[str] | None = None) -> Subscription:
        """Deliver the VM's events (all, or those named) to ``callback``."""

    @abc.abstractmethod
    def disks(self, vm: VM, refresh: bool = True) -> list:
        """The VM's writable disks (list of Disk)."""

    @abc.abstractmethod
    def snapshot(self, vm: VM, *, wait: float | None = None,
                 quiesce: bool = False,
                 require_quiesce: bool = False) -> Snapshot:
        """One atomic live snapshot of all writable disks.

        ``quiesce``: inside a bounded freeze of the guest's file systems
        by its guest agent (ha_snapshot/hypervisor/quiesce.py); a silent
        agent gives a crash-consistent snapshot (``consistency`` says
        which), or, with ``require_quiesce``, QuiesceFailed.

        Raises CommitInProgress when a commit still runs after ``wait``
        seconds, SnapshotFailed when nothing changed.
        """

    @abc.abstractmethod
    def commit(self, vm: VM, frozen: 'Snapshot | FrozenOverlay | list', *,
               timeout: float | None = None) -> list:
        """Merge frozen overlays down and delete them (list of
        CommitResult, one per FrozenOverlay). Overlays are committed oldest
        first (CommitOrderError otherwise); the base is never committed.
        Safe to call again for an overlay already committed."""

    def frozen_images(self, vm: VM, disk: str) -> list:
        """The frozen images of ``disk`` not committed yet, oldest first
        (FrozenOverlay each): what a restarted agent sends again.

        This default reads them off the disk's chain: the owned images
        below the active one.
        """
        for d in self.disks(vm):
            if d.name != disk:
                continue
            out = []
            for i in range(len(d.chain) - 1, 0, -1):
                if d.chain[i].owned:
                    out.append(FrozenOverlay(
                        disk=d.name, frozen=d.chain[i],
                        backing=(d.chain[i + 1] if i + 1 < len(d.chain)
                                 else None), active=d.chain[0]))
            return out
        return []

    def start_tracking(self, vm: VM) -> bool:
        """The disks' contents were replaced (a rebuild from a restore
        point): forget what was tracked of the old ones and track the
        writes from now on. True when the next snapshot then holds only
        those writes; False for a driver with no change tracking of its
        own (the next snapshot freezes the whole base, as on a first
        protection)."""
        return False

    def stop_tracking(self, vm: VM) -> None:
        """Forget every frozen image and all change tracking (protection
        stops, or the manager needs a whole disk again): the next snapshot
        holds the whole disk. Nothing of ours stays in the VM's disks."""

    def full_next(self, vm: VM, snap: Snapshot) -> None:
        """Drop ``snap`` (just taken, not queued: its frozen images go)
        and make the next snapshot a full one of every disk, keeping the
        frozen images of earlier snapshots. Only a driver whose
        :attr:`frozen_in_chain` is False needs it."""
        raise NotImplementedError(
            'the %s driver reads a disk whole from its chain'
            % type(self).__name__)

    @abc.abstractmethod
    def blockstats(self, vm: VM) -> dict:
        """Disk name -> BlockStats."""

    @abc.abstractmethod
    def write(self, vm: VM, disk: str, offset: int, length: int,
              pattern: int = 0x11) -> None:
        """Write ``length`` bytes of ``pattern`` at ``offset`` into the
        disk without a guest (tests and the demo)."""
