"""The one exception hierarchy of ha-snapshot.

Every error a user or a peer can cause is an :class:`HaSnapshotException`
whose message names the object at fault and, where it helps, what to do.
This module imports nothing from the rest of the package.
"""


class HaSnapshotException(Exception):
    """Base class; subclasses set ``msg_fmt`` and are raised with kwargs."""

    msg_fmt = 'An unknown error occurred.'

    def __init__(self, message: str | None = None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                # NOTE: a wrong kwarg must not hide the original error.
                message = '%s (%s)' % (self.msg_fmt, kwargs)
        self.message = message
        super().__init__(message)


class ConfigurationError(HaSnapshotException):
    msg_fmt = 'Invalid configuration: %(reason)s'


# --- images -----------------------------------------------------------------

class ImageError(HaSnapshotException):
    msg_fmt = 'Image %(path)s: %(reason)s'


class ImageNotFound(ImageError):
    msg_fmt = 'Image file %(path)s does not exist or is not a regular file.'


class UnsafeImage(ImageError):
    msg_fmt = 'Image %(path)s refused: %(reason)s'


class QemuImgError(ImageError):
    msg_fmt = 'qemu-img failed on %(path)s: %(reason)s'


class Qcow2Unsupported(ImageError):
    """The pure-Python qcow2 reader does not handle this file; callers
    fall back to the qemu-img path (which inspects and may refuse it)."""
    msg_fmt = 'Image %(path)s: not read in Python: %(reason)s'


# --- deltas -----------------------------------------------------------------

class InvalidDelta(HaSnapshotException):
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s rejected: '
               '%(reason)s')


class DeltaParentMismatch(InvalidDelta):
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s rejected: its '
               'parent restore point is %(parent)s but the newest restore '
               'point is %(newest)s.')


class PartsMissing(InvalidDelta):
    """The manager does not hold every part of a delta it is asked to
    commit (never received, or lost with a restart of the manager): the
    agent sends the delta again. Raised with ``missing`` (the part
    numbers, ascending) and ``count`` (the delta's parts); it crosses the
    bus as itself (ha_snapshot/rpc.py, ``allowed_remote_exmods``)."""

    @property
    def missing(self) -> list:
        """The numbers of the parts the manager does not hold."""
        return list(self.kwargs.get('missing') or ())


class DeltaTooManyParts(InvalidDelta):
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s refused: part '
               '%(index)s is beyond the limit of %(limit)s parts per delta '
               '([manager] max_delta_parts). The agent keeps the delta and '
               'sends it again; raise max_delta_parts on the manager to let '
               'it through.')


# --- store ------------------------------------------------------------------

class StorageError(HaSnapshotException):
    msg_fmt = 'Storage error: %(reason)s'


class BackendNotFound(StorageError):
    msg_fmt = ('No storage backend for %(url)s: %(reason)s. Set [storage] '
               'backend_url to e.g. file:///var/lib/ha-snapshot/store.')


class ObjectNotFound(StorageError):
    msg_fmt = 'Object %(key)s not found in the store.'


class ObjectExists(StorageError):
    msg_fmt = 'Object %(key)s already exists in the store.'


class CorruptObject(StorageError):
    msg_fmt = 'Object %(key)s is corrupt: %(reason)s'


class AgentStopped(HaSnapshotException):
    msg_fmt = 'The snapshot agent was asked to stop while it waited.'


class BadNotification(HaSnapshotException):
    msg_fmt = 'Notification %(event_type)s dropped: %(reason)s'


class InvalidProtectionSpec(HaSnapshotException):
    msg_fmt = 'Protection spec refused: %(reason)s'


class InvalidInstance(HaSnapshotException):
    msg_fmt = 'Invalid instance id %(instance)r: expected a UUID.'


class InstanceNotFound(HaSnapshotException):
    msg_fmt = 'Instance %(instance)s has no restore points in the store.'


class RestorePointNotFound(HaSnapshotException):
    msg_fmt = ('Restore point %(restore_point)s of instance %(instance)s '
               'not found.')


class ConcurrentMerge(StorageError):
    msg_fmt = ('Restore point %(sequence)s of instance %(instance)s was '
               'committed by another merge; retry against the new newest '
               'restore point.')


class MergeTooSlow(StorageError):
    msg_fmt = ('Merge of delta %(sequence)s of instance %(instance)s took '
               '%(elapsed).0f s, more than half of [storage] gc_grace_period; '
               'nothing was committed: retry, or raise gc_grace_period.')


class MergeInProgress(StorageError):
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s is still being '
               'merged (an earlier commit_delta call); ask again later.')


class DeltaDeferred(StorageError):
    """The manager cannot take a delta now, for no fault of the delta: the
    agent sends it again later (it is a StorageError: retried)."""
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s deferred: '
               '%(reason)s')


class TooManyDeltas(DeltaDeferred):
    msg_fmt = ('Delta %(sequence)s of instance %(instance)s deferred: the '
               'manager already holds parts of %(count)s uncommitted deltas '
               'of this instance ([manager] max_deltas_per_instance = '
               '%(limit)s). Send it again later: held deltas go with their '
               'commit, or after [manager] spool_max_age = %(max_age)s s '
               'without a new part.')


class PolicyNotFound(HaSnapshotException):
    msg_fmt = ('No snapshot policy named %(name)r: %(reason)s. Set [policy] '
               'name to one of: %(available)s.')


# --- database ---------------------------------------------------------------

class DatabaseError(HaSnapshotException):
    msg_fmt = 'Database error: %(reason)s'


class DatabaseBusy(DatabaseError):
    """Transient: the database stayed locked or unreachable through every
    retry; the same request later may well succeed."""
    msg_fmt = ('The database is busy or unreachable (%(reason)s) after '
               '%(seconds).0f s of retries; try again.')


class DatabaseNotUpToDate(DatabaseError):
    msg_fmt = ('Database %(url)s is at schema revision %(current)s but this '
               'code needs %(head)s: run "ha-snapshot-manage db sync" (or, '
               'if the database is newer, upgrade ha-snapshot).')


class InvalidStatus(DatabaseError):
    msg_fmt = 'Unknown %(kind)s %(value)r: expected one of %(allowed)s.'


class InstanceConflict(DatabaseError):
    msg_fmt = ('Instance %(instance)s is already recorded for project '
               '%(existing)s; it cannot be recorded for project %(project)s.')


class InstanceStatusConflict(DatabaseError):
    msg_fmt = ('Instance %(instance)s is %(actual)s, not %(expected)s, so it '
               'was not moved to %(status)s: another worker changed it '
               'first. Read the instance again and decide again.')


class RestorePointConflict(DatabaseError):
    msg_fmt = ('Restore point %(restore_point)s of instance %(instance)s '
               'conflicts with the recorded restore point %(existing)s (same '
               '%(field)s). The store is the truth: rebuild the database from '
               'it ("ha-snapshot-manage db rebuild").')


class RecoveryNotFound(DatabaseError):
    msg_fmt = 'Recovery %(recovery)s not found.'


class RecoveryStateConflict(DatabaseError):
    msg_fmt = ('Recovery %(recovery)s is %(actual)s; it cannot become '
               '%(state)s.')


class LeaseLost(DatabaseError):
    """Fencing: the lease a write was made under is no longer held by its
    writer; the write was not made (nothing of its transaction is kept)."""
    msg_fmt = ('Lease %(key)s at generation %(generation)s is lost '
               '(%(reason)s): the write made under it was refused and '
               'nothing was changed. Another manager replica owns this '
               'work now.')


class WrongOwner(HaSnapshotException):
    """A delta (its parts, its commit) reached a manager replica that does
    not own its instance; ``owner``: the host of the one that does (as
    this replica sees it), or ``unknown``."""
    msg_fmt = ('Instance %(instance)s is owned by manager replica '
               '%(owner)s, not %(host)s: its deltas go there.')


class NoLiveManagers(HaSnapshotException):
    msg_fmt = ('No live manager replica is known (%(reason)s): nobody owns '
               'instance %(instance)s now.')


# --- recovery requests and actions ------------------------------------------

class RecoveryConflict(HaSnapshotException):
    msg_fmt = 'Instance %(instance)s cannot be recovered now: %(reason)s.'


class NoRestorePoint(RecoveryConflict):
    msg_fmt = ('Instance %(instance)s has no restore point yet: there is '
               'nothing to recover to.')


class OpenStackError(HaSnapshotException):
    """A call to another OpenStack service (Nova, Glance) failed."""

    msg_fmt = '%(service)s: %(reason)s'


class ImageUploadFailed(OpenStackError):
    msg_fmt = ('Recovery image %(image)s of instance %(instance)s could not '
               'be stored in Glance: %(reason)s')


class RebuildFailed(OpenStackError):
    msg_fmt = 'Rebuild of server %(server)s failed: %(reason)s'


class EvacuationFailed(OpenStackError):
    msg_fmt = 'Evacuation of server %(server)s failed: %(reason)s'


class RebuildTimeout(RebuildFailed):
    msg_fmt = ('Server %(server)s is not %(wanted)s %(timeout)s s after its '
               'rebuild (status %(status)s, task_state %(task_state)s); '
               'raise [recovery] rebuild_timeout if Nova is slow.')


class EvacuationTimeout(EvacuationFailed):
    msg_fmt = ('Server %(server)s is not %(wanted)s %(timeout)s s after its '
               'evacuation (status %(status)s, task_state %(task_state)s); '
               'raise [recovery] rebuild_timeout if Nova is slow.')


# --- hypervisor -------------------------------------------------------------

class HypervisorError(HaSnapshotException):
    msg_fmt = 'VM %(vm)s: %(reason)s'


class HypervisorDriverNotFound(HypervisorError):
    msg_fmt = ('No hypervisor driver %(name)r: %(reason)s. Set [agent] '
               'hypervisor to a name from the ha_snapshot.hypervisor '
               'namespace, e.g. qemu.')


class QemuNotFound(HypervisorError):
    msg_fmt = ('QEMU binary %(binary)r not found: install the Debian package '
               'qemu-system-x86 (apt-get install -y qemu-system-x86; '
               'bindep.txt lists it) or set [qemu] binary.')


class VMStartFailed(HypervisorError):
    msg_fmt = 'VM %(vm)s did not start: %(reason)s. QEMU log %(log)s:%(tail)s'


class VMAttachFailed(HypervisorError):
    msg_fmt = ('Cannot attach to VM %(vm)s (QMP socket %(path)s, pid '
               '%(pid)s): %(reason)s')


class VMNotRunning(HypervisorError):
    msg_fmt = 'VM %(vm)s is not running or its monitor is gone: %(reason)s'


class QmpError(HypervisorError):
    msg_fmt = 'QMP command %(command)s on VM %(vm)s failed: %(reason)s'


class QmpTimeout(QmpError):
    msg_fmt = ('QMP command %(command)s on VM %(vm)s got no reply within '
               '%(timeout)s s (is QEMU stopped or hung?)')


class HmpError(QmpError):
    msg_fmt = 'Monitor command %(command)s on VM %(vm)s failed: %(reason)s'


class DiskNotFound(HypervisorError):
    msg_fmt = 'VM %(vm)s has no writable disk %(disk)r (disks: %(known)s)'


class DiskRestoreRefused(HypervisorError):
    msg_fmt = ('VM %(vm)s: disk %(disk)s not restored from restore point '
               '%(restore_point)s: %(reason)s')


class SnapshotFailed(HypervisorError):
    msg_fmt = ('Snapshot of VM %(vm)s failed, no disk changed: %(reason)s')


class CommitInProgress(SnapshotFailed):
    msg_fmt = ('VM %(vm)s: %(reason)s; snapshots and commits of one VM run '
               'one at a time: retry when it ends.')


class CommitFailed(HypervisorError):
    msg_fmt = ('Commit of %(top)s into %(base)s on VM %(vm)s failed: '
               '%(reason)s. The overlay stays in the chain: retry the commit.')


class CommitOrderError(CommitFailed):
    msg_fmt = ('Commit of %(top)s on VM %(vm)s refused: the older overlay '
               '%(base)s below it is not committed yet; commit frozen '
               'overlays oldest first.')


class StreamFailed(HypervisorError):
    msg_fmt = ('VM %(vm)s: block-stream into %(node)s failed: %(reason)s. '
               'The disk still needs its backing.')


class LiveRestoreFailed(HypervisorError):
    msg_fmt = ('VM %(vm)s: live restore of restore point %(restore_point)s '
               'failed, nothing was restored: %(reason)s')


class GuestAgentError(HypervisorError):
    msg_fmt = ('Guest agent of VM %(vm)s: %(command)s failed: %(reason)s')


class GuestAgentTimeout(GuestAgentError):
    msg_fmt = ('Guest agent of VM %(vm)s: no answer to %(command)s within '
               '%(timeout)s s (is qemu-ga running in the guest, on the '
               'org.qemu.guest_agent.0 port?)')


class QuiesceFailed(SnapshotFailed):
    msg_fmt = ('Snapshot of VM %(vm)s failed, no disk changed: the server '
               'requires quiesced snapshots (os_require_quiesce) and its '
               'file systems could not be frozen: %(reason)s. Check that '
               'qemu-guest-agent runs in the guest and answers on its '
               'virtio-serial port.')


class LibvirtError(HypervisorError):
    msg_fmt = 'libvirt call %(call)s for domain %(vm)s failed: %(reason)s'


class LibvirtUnavailable(HypervisorError):
    msg_fmt = ('Cannot connect to libvirt at %(uri)s: %(reason)s. Is '
               'libvirtd running there, and [libvirt] connection_uri set '
               'to it? (Debian packages libvirt-daemon and '
               'libvirt-daemon-driver-qemu; Python package libvirt-python.)')


class DomainNotFound(VMAttachFailed):
    msg_fmt = ('No libvirt domain %(vm)s at %(uri)s (looked up by %(by)s); '
               'a Nova server\'s domain is named by its instance uuid.')


class OperationNotSupported(HypervisorError):
    msg_fmt = 'VM %(vm)s: the %(driver)s driver cannot %(what)s: %(reason)s'


# --- the openstack ha client (ha_snapshot/osc) -----------------------------

class ClientError(HaSnapshotException):
    msg_fmt = '%(reason)s'


class EndpointNotFound(ClientError):
    msg_fmt = ('No ha-snapshot API endpoint: %(reason)s. Pass '
               '--os-ha-snapshot-url (or OS_HA_SNAPSHOT_URL), or register '
               'the API in Keystone under service type "ha-snapshot".')


class ApiUnreachable(ClientError):
    msg_fmt = 'The ha-snapshot API at %(url)s cannot be reached: %(reason)s'


class ApiError(ClientError):
    """The API refused a request; ``status`` and ``code`` say why."""

    msg_fmt = '%(detail)s (HTTP %(status)s%(extra)s)'


class ServerNotFound(ClientError):
    msg_fmt = ('No server with the name or ID %(server)r: %(reason)s')


class AmbiguousServerName(ClientError):
    msg_fmt = ('%(count)d servers are named %(server)r: use the ID of the '
               'one you mean (%(ids)s).')


class RecoveryTimeout(ClientError):
    msg_fmt = ('Recovery %(recovery)s of server %(server)s is still '
               '%(state)s after %(timeout)s s; it goes on: follow it with '
               '"openstack ha recovery list %(server)s".')


# --- ha-snapshot-api and the manager (ha_snapshot/api/manager_calls.py) -----

class ManagerCallFailed(HaSnapshotException):
    """A call from the API to the manager that did not complete."""

    msg_fmt = 'The call %(method)s to the manager failed.'


class ManagerUnreachable(ManagerCallFailed):
    msg_fmt = ('The manager cannot be reached (%(method)s): %(reason)s. '
               'Nothing was done; try again when the message bus is back.')


class ManagerTimeout(ManagerCallFailed):
    msg_fmt = ('The manager did not answer %(method)s within %(seconds).0f s '
               '([api] rpc_timeout; is ha-snapshot-manager running?). The '
               'request may still be carried out: check before retrying.')


class ManagerBusy(ManagerCallFailed):
    msg_fmt = ('%(n)d calls to the manager are already outstanding ([api] '
               'rpc_max_pending); %(method)s was not sent. Try again later.')


class ApiStopping(HaSnapshotException):
    msg_fmt = 'ha-snapshot-api is stopping; send the request again.'


# --- message identity on the bus ---------------------------------------------

class MessageAuthFailed(HaSnapshotException):
    """A message on the bus without a valid signed identity: refused,
    never dispatched (ha_snapshot/rpc_auth.py)."""
    msg_fmt = ('Message %(method)s claiming to come from %(sender)s '
               'refused: %(reason)s')


class NotAuthorized(HaSnapshotException):
    """A signed sender asked for something its identity may not do
    (ha_snapshot/manager/authz.py)."""
    msg_fmt = '%(sender)s may not call %(method)s: %(reason)s'


class InstanceMoved(NotAuthorized):
    """An agent asked about an instance that moved to another host
    while its own was away (evacuated): the agent stops protecting it."""
    msg_fmt = ('%(sender)s may not call %(method)s: instance %(instance)s '
               'moved to %(host)s')


# --- compute hosts ----------------------------------------------------------

class HostFailureNotFound(HaSnapshotException):
    msg_fmt = 'No host failure %(id)s is recorded.'


class HostFailureOpen(HaSnapshotException):
    msg_fmt = ('Host %(host)s has an open failure record already; close it '
               'before recording another.')


class FencingError(HaSnapshotException):
    """A host could not be fenced: nothing of it may run elsewhere."""
    msg_fmt = 'Host %(host)s not fenced (%(driver)s): %(reason)s'


class FencingDriverNotFound(ConfigurationError):
    msg_fmt = ('Fencing driver %(name)r ([host_monitor] fencing_driver) '
               'cannot be loaded from ha_snapshot.fencing: %(reason)s')


# --- the test guest (ha_snapshot/guest) -------------------------------------

class GuestImageError(HaSnapshotException):
    msg_fmt = 'Test guest image: %(reason)s'


class GuestPackageNotFound(GuestImageError):
    msg_fmt = ('Test guest image: Debian package(s) %(packages)s unknown to '
               'apt (%(detail)s): check the name, run "apt-get update", and '
               'check that /etc/apt/sources.list has Debian main')


class GuestPackageFetchFailed(GuestImageError):
    msg_fmt = ('Test guest image: "apt-get download %(packages)s" failed: '
               '%(detail)s')


class GuestToolMissing(GuestImageError):
    msg_fmt = ('Test guest image: %(tool)s not found: install the Debian '
               'package "%(package)s" (bindep.txt lists it)')


class GuestConsoleTimeout(HaSnapshotException):
    msg_fmt = ('Guest %(guest)s: no console line matching %(pattern)r '
               '%(reason)s; last lines: %(tail)s')


class MemoryStateError(HypervisorError):
    msg_fmt = 'VM %(vm)s: memory state: %(reason)s'


class MemoryStateMismatch(MemoryStateError):
    msg_fmt = ('VM %(vm)s: the memory state was saved with another QEMU '
               'configuration (%(reason)s); not resuming from it: the VM '
               'boots from its disk instead.')


class InvalidMemoryState(HaSnapshotException):
    msg_fmt = ('Memory state of restore point %(restore_point)s refused: '
               '%(reason)s')


class MemorySpoolError(HaSnapshotException):
    msg_fmt = 'Memory state spool %(path)s: %(reason)s'
