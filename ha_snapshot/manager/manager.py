"""The manager's RPC endpoint: deltas in, durable restore points out.

A delta arrives as parts (``put_part``, each checked whole, spooled to
disk, and its whole chunks stored ahead of the merge) and a
``commit_delta`` that validates the whole delta, merges it into the store,
records the restore point in the database and only then answers: the
answer is the durable acknowledgement the agent waits for before it
removes its snapshot. Nothing is acknowledged on any error; the agent keeps
the delta and sends it again.

May import the store, the database, the spool and the recovery engine.
"""

import base64
import collections
import concurrent.futures
import datetime
import errno
import threading
import time

from openstack import exceptions as sdk_exc
from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot.manager import alarms
from ha_snapshot.manager import notifications
from ha_snapshot.openstack import clients

LOG = logging.getLogger(__name__)

# NOTE: a commit_delta of a delta whose merge already runs (the agent's
# call timed out and it asked again) waits this long for it, then says
# "ask again" rather than holding an RPC thread for the whole merge.
COMMIT_WAIT = 5.0
# NOTE: chunks stored ahead of their merge (Manager.put_part) are written
# by these threads after the part's call has answered, so the fsyncs do
# not hold the agent's window; parts beyond the queue are left to the
# merge (the queue holds their decoded bytes).
PRESTORE_THREADS = 2
PRESTORE_QUEUE = 16
# NOTE: chunks stored ahead are only a head start: a merge that waited this
# long for them goes on and stores what is still missing itself (chunk
# writes are atomic and content-addressed, so both may write one chunk).
PRESTORE_WAIT = 60.0
# NOTE: put_part, the hot path, looks an instance up in the database at
# most this often (seconds); commit_delta always does, so a part of an
# instance deleted meanwhile is spooled at worst, never merged.
LOOKUP_TTL = 10.0


class Manager:
    """What the endpoint does, without the bus (tests call it directly)."""

    def __init__(self, conf, store, db, spool, recovery=None,
                 agent_api=None):
        self.conf = conf
        self.store = store
        self.db = db
        self.spool = spool
        self.recovery = recovery
        self._commits = {}
        self._commits_lock = threading.Lock()
        self._prestore_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=PRESTORE_THREADS, thread_name_prefix='prestore')
        self._prestores = collections.defaultdict(list)
        self._projects = {}
        self._prestore_lock = threading.Lock()
        self.agent_api = agent_api

    def _protected(self, instance: str):
        row = self.db.get_instance(instance)
        if row.status == 'deleted':
            self._projects.pop(instance, None)
            raise exception.InstanceNotFound(
                'Instance %s was deleted: deltas for it are refused.'
                % instance, instance=instance)
        self._projects[instance] = (row.project_id,
                                    time.monotonic() + LOOKUP_TTL)
        return row

    def _project_of(self, instance: str) -> str:
        """The project of a protected instance (a recent lookup)."""
        known = self._projects.get(instance)
        if known is None or known[1] < time.monotonic():
            return self._protected(instance).project_id
        return known[0]

    def register_instance(self, instance, project, host, driver,
                          details) -> dict:
        row = self.db.create_instance(instance, project, host=host,
                                      status='protected', driver=driver)
        if row.host != host or row.driver != driver:
            row = self.db.update_instance(instance, host=host, driver=driver)
        if row.status in ('protecting', 'paused'):
            row = self.db.update_instance_status(
                instance, ('protecting', 'paused'), 'protected')
        newest = self.store.newest(instance)
        LOG.info('Instance %s registered by agent on %s (newest restore '
                 'point %s)', instance, host, newest.id if newest else None)
        return {'status': row.status,
                'newest_restore_point': newest.id if newest else None,
                'newest_number': newest.number if newest else 0,
                'last_sequence': newest.delta_sequence if newest else -1}

    def put_part(self, instance, sequence, part) -> dict:
        project = self._project_of(instance)

        def received(checked, data, digests):
            # NOTE: the merge's chunk writes start now, while the next
            # parts travel; the commit then finds them held.
            with self._prestore_lock:
                if sum(not f.done() for fs in self._prestores.values()
                       for f in fs) >= PRESTORE_QUEUE:
                    return
                self._prestores[(instance, sequence)].append(
                    self._prestore_pool.submit(
                        self.store.prestore, instance, project,
                        checked.extents, data, digests))
        index = self._io(self.spool.put, instance, sequence, part, received)
        return {'instance': instance, 'sequence': sequence, 'index': index}

    def _prestored(self, instance: str, sequence: int) -> None:
        """Wait for the chunks of this delta (and older ones) being stored
        ahead of the merge; forget them."""
        with self._prestore_lock:
            keys = [k for k in self._prestores
                    if k[0] == instance and k[1] <= sequence]
            futures = [f for k in keys for f in self._prestores.pop(k)]
        _done, late = concurrent.futures.wait(futures, PRESTORE_WAIT)
        if late:
            LOG.warning('Instance %s, delta %d: %d chunk writes started '
                        'ahead still run after %.0f s; the merge stores '
                        'what they have not', instance, sequence, len(late),
                        PRESTORE_WAIT)

    def commit_delta(self, header) -> dict:
        h = delta_mod.header_from_primitive(header)
        delta_mod.validate_header(h, self.conf.image.max_virtual_size)
        row = self._protected(h.instance)
        if row.project_id != h.project:
            raise exception.InvalidDelta(
                instance=h.instance, sequence=h.sequence,
                reason='project %s does not own this instance' % h.project)
        key = (h.instance, h.sequence)
        with self._commits_lock:
            running = self._commits.get(key)
            if running is None:
                mine = self._commits[key] = threading.Event()
        if running is not None:
            if not running.wait(COMMIT_WAIT):
                raise exception.MergeInProgress(instance=h.instance,
                                                sequence=h.sequence)
            return self.commit_delta(header)
        try:
            return self._commit(h)
        finally:
            with self._commits_lock:
                self._commits.pop(key, None)
            mine.set()

    def _commit(self, h) -> dict:
        self._prestored(h.instance, h.sequence)
        rp = self._merged(h)
        if rp is None:
            delta = self.spool.load(h)
            rp = self._io(self.store.merge, delta)
        self.db.record_restore_point(rp)
        removed = self._io(self.store.apply_retention, h.instance)
        if removed:
            self.db.delete_restore_points(removed)
        # NOTE: parts of this delta and of any older one (refused, or
        # superseded by a resend) are of no use any more.
        self.spool.drop_through(h.instance, h.sequence)
        LOG.info('Instance %s: delta %d durable as restore point %s (#%d)',
                 h.instance, h.sequence, rp.id, rp.number)
        return {'restore_point': rp.id, 'number': rp.number,
                'sequence': h.sequence, 'created_at': rp.created_at}

    def _merged(self, h):
        """The restore point this delta already made (its ack was lost, or
        the agent asked again while it merged), or None."""
        newest = self._io(self.store.newest, h.instance)
        if newest is not None and (newest.parent == h.parent and
                                   newest.delta_sequence == h.sequence):
            LOG.info('Instance %s: delta %d already merged as %s',
                     h.instance, h.sequence, newest.id)
            return newest
        return None

    @staticmethod
    def _io(func, *args):
        # NOTE: a full disk or an I/O error must reach the agent as "not
        # durable, keep it", named, not as an anonymous remote error.
        try:
            return func(*args)
        except OSError as e:
            reason = 'the store is full' if e.errno == errno.ENOSPC else (
                'I/O error')
            raise exception.StorageError(reason='%s: %s' % (reason, e))

    def report_health(self, instance, host, reason, details) -> str:
        if self.recovery is None:
            LOG.warning('Instance %s on %s reported abnormal (%s); no '
                        'recovery engine configured', instance, host, reason)
            return 'ignored'
        return self.recovery.report(instance, reason, details or {})

    def heartbeat(self, host, instances) -> None:
        self.db.record_agent(host)

    def get_manifest(self, instance, restore_point) -> dict:
        rp = self.store.get_restore_point(instance, restore_point)
        return {'id': rp.id, 'number': rp.number,
                'virtual_size': rp.virtual_size,
                'chunk_size': rp.chunk_size,
                'chunks': {str(k): v for k, v in rp.chunks.items()}}

    def get_chunk(self, instance, restore_point, index) -> str:
        rp = self.store.get_restore_point(instance, restore_point)
        if not isinstance(index, int) or not (
                0 <= index * rp.chunk_size < rp.virtual_size):
            raise exception.HaSnapshotException(
                'Chunk index %r is outside restore point %s.'
                % (index, restore_point))
        return base64.b64encode(self.store.read_chunk(rp, index)).decode()


    # --- RPC API 1.1: what ha-snapshot-api asks -----------------------------

    def _nova_server(self, instance: str) -> dict:
        """Where Nova runs ``instance`` and whose it is."""
        try:
            server = clients.connection(self.conf, 'nova').compute.get_server(
                instance)
        except sdk_exc.NotFoundException:
            raise exception.InstanceNotFound(
                'Nova has no server %s.' % instance, instance=instance)
        except clients.API_ERRORS as e:
            # NOTE: keystoneauth's errors too (Nova or Keystone unreachable,
            # credentials refused): they are no SDKException.
            raise exception.OpenStackError(
                service='Nova', reason='looking up server %s: %s'
                % (instance, clients.error_reason(e)))
        if not server.compute_host:
            raise exception.OpenStackError(
                service='Nova', reason='server %s has no host (status %s); '
                'protect it once it is ACTIVE, or check that the [nova] '
                'user of the manager has the admin role (hosts are shown '
                'to admins only)' % (instance, server.status))
        return {'uuid': instance, 'host': server.compute_host,
                'project': server.project_id, 'name': server.name}

    def protect(self, instance, project, host=None, policy=None) -> dict:
        """Protect a server (idempotent): record it, cast to its agent."""
        if self.agent_api is None:
            raise exception.ConfigurationError(
                reason='this manager cannot reach agents')
        try:
            row = self.db.get_instance(instance)
        except exception.InstanceNotFound:
            row = None
        server = {'uuid': instance, 'host': host, 'project': project,
                  'name': None}
        if host is None and row is not None and row.status != 'deleted' \
                and row.host:
            # NOTE: recorded: the agent on its host already knows it (a
            # move is Nova's live_migration notification's business).
            server.update(host=row.host, project=row.project_id)
        elif host is None:
            found = self._nova_server(instance)
            if project is not None and found['project'] != project:
                # NOTE: not "belongs to another project": not our business.
                raise exception.InstanceNotFound(
                    'Nova has no server %s in project %s.'
                    % (instance, project), instance=instance)
            server = found
        elif project is None:
            raise exception.HaSnapshotException(
                'Protecting server %s on a named host needs its project.'
                % instance)
        if row is not None and row.status not in ('deleted', 'protecting') \
                and row.host == server['host']:
            if policy is not None and policy != row.policy:
                # NOTE: the agent protecting it switches to the policy a
                # protect cast names.
                result = notifications.protect_server(
                    self.conf, self.db, self.agent_api,
                    dict(server, host=row.host, project=row.project_id),
                    policy=policy)
                return self._protected_dict(
                    self.db.get_instance(instance), True,
                    'policy %s: %s' % (policy, result))
            return self._protected_dict(row, False, 'already protected on %s'
                                        % row.host)
        if row is not None and row.status == 'deleted':
            self.db.update_instance_status(instance, 'deleted', 'protecting')
        if row is not None and row.host and row.host != server['host'] \
                and row.status != 'deleted':
            self.agent_api.unprotect(row.host, instance)
        result = notifications.protect_server(self.conf, self.db,
                                              self.agent_api, server,
                                              policy=policy)
        row = self.db.get_instance(instance)
        LOG.info('Instance %s: %s (API request)', instance, result)
        return self._protected_dict(row, True, result)

    @staticmethod
    def _protected_dict(row, cast: bool, result: str) -> dict:
        return {'instance': row.uuid, 'project': row.project_id,
                'host': row.host, 'status': row.status,
                'policy': row.policy, 'cast': cast, 'result': result}

    def unprotect(self, instance) -> None:
        """Stop protecting; the restore points stay for retention."""
        row = self.db.get_instance(instance)
        if row.status == 'deleted':
            return None
        if row.status == 'recovering':
            raise exception.RecoveryConflict(
                instance=instance, reason='a recovery is running; '
                'unprotect the server when it has ended')
        self.db.mark_instance_deleted(instance)
        if row.host and self.agent_api is not None:
            self.agent_api.unprotect(row.host, instance)
        LOG.info('Instance %s: protection stopped (API request)', instance)
        return None

    def recover(self, instance, restore_point=None,
                reason='operator request') -> dict:
        if self.recovery is None:
            raise exception.ConfigurationError(
                reason='this manager has no recovery engine')
        rec = self.recovery.request(instance, restore_point, reason)
        return {c: _primitive(getattr(rec, c))
                for c in rec.__table__.columns.keys()}

    def alarm(self, instance, alarm) -> str:
        reason = 'alarm: %s (%s): %s' % (
            alarm.get('alarm_name') or alarm.get('alarm_id'),
            alarm.get('severity') or 'no severity',
            alarm.get('reason') or 'no reason given')
        if self.recovery is None:
            LOG.warning('Instance %s: %s; no recovery engine configured',
                        instance, reason)
            return 'ignored: no recovery engine'
        recoveries = self.db.list_recoveries(instance)
        refused = alarms.verify(
            self.conf, instance, alarm,
            max(r.created_at for r in recoveries) if recoveries else None)
        if refused is not None:
            LOG.warning('Instance %s: %s refused: %s', instance, reason,
                        refused)
            return 'refused: %s' % refused
        return self.recovery.report(instance, reason, alarm)


def _primitive(value):
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


class ManagerEndpoint:
    """RPC API 1.1; see ha_snapshot/manager/rpcapi.py for the history."""

    target = messaging.Target(version='1.1')

    def __init__(self, manager: Manager):
        self.manager = manager

    def _run(self, method, what, *args):
        try:
            return method(*args)
        except exception.HaSnapshotException as e:
            LOG.warning('Refused %s: %s', what, e)
            raise

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def register_instance(self, ctxt, instance, project, host, driver,
                          details):
        return self._run(self.manager.register_instance,
                         'registration of %s' % instance, instance, project,
                         host, driver, details)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def put_part(self, ctxt, instance, sequence, part):
        return self._run(self.manager.put_part,
                         'part of delta %s/%s' % (instance, sequence),
                         instance, sequence, part)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def commit_delta(self, ctxt, header):
        what = 'delta %s/%s' % (
            header.get('instance') if isinstance(header, dict) else '?',
            header.get('sequence') if isinstance(header, dict) else '?')
        return self._run(self.manager.commit_delta, what, header)

    def report_health(self, ctxt, instance, host, reason, details):
        try:
            decision = self.manager.report_health(instance, host, reason,
                                                  details)
            LOG.info('Health report for %s from %s: %s -> %s', instance,
                     host, reason, decision)
        except exception.HaSnapshotException as e:
            LOG.warning('Health report for %s dropped: %s', instance, e)

    def heartbeat(self, ctxt, host, instances):
        try:
            self.manager.heartbeat(host, instances)
        except exception.HaSnapshotException as e:
            LOG.warning('Heartbeat from %s dropped: %s', host, e)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def get_manifest(self, ctxt, instance, restore_point):
        return self._run(self.manager.get_manifest,
                         'manifest of %s' % instance, instance, restore_point)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def get_chunk(self, ctxt, instance, restore_point, index):
        return self._run(self.manager.get_chunk, 'chunk of %s' % instance,
                         instance, restore_point, index)

    # --- 1.1 ----------------------------------------------------------------

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def protect(self, ctxt, instance, project, host=None, policy=None):
        return self._run(self.manager.protect, 'protection of %s'
                         % instance, instance, project, host, policy)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def unprotect(self, ctxt, instance):
        return self._run(self.manager.unprotect, 'unprotection of %s'
                         % instance, instance)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def recover(self, ctxt, instance, restore_point=None,
                reason='operator request'):
        return self._run(self.manager.recover, 'recovery of %s' % instance,
                         instance, restore_point, reason)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def alarm(self, ctxt, instance, alarm):
        return self._run(self.manager.alarm, 'alarm about %s' % instance,
                         instance, alarm)
