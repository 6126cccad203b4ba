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
import datetime
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot import codec
from ha_snapshot import exception
from ha_snapshot.manager import alarms
from ha_snapshot.manager import authz
from ha_snapshot.manager import intake
from ha_snapshot.manager import notifications
from ha_snapshot.openstack import servers
from ha_snapshot.storage import memory
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)
Status = statuses.InstanceStatus

# NOTE: put_part, the hot path, looks an instance up in the database at
# most this often (seconds); commit_delta always does (or checks the row
# its guard read for that very call), so a part of an instance deleted
# meanwhile is spooled at worst, never merged.
LOOKUP_TTL = 10.0
# NOTE: restore points whose memory state is being fetched (restores in
# progress at once), and how long one is kept without a new read.
_MEMORY_STATES_CACHED = 16
_MEMORY_STATE_TTL = 300.0


class Manager(intake.DeltaIntake):
    """What the endpoint does, without the bus (tests call it directly)."""

    def __init__(self, conf, store, db, spool, recovery=None,
                 agent_api=None, membership=None):
        """``membership``: this replica among several
        (manager.membership); None: the only manager."""
        self.conf = conf
        self.membership = membership
        self.store = store
        self.db = db
        self.spool = spool
        self.recovery = recovery
        self._commits = {}
        self._commits_lock = threading.Lock()
        self._memory_lock = threading.Lock()
        self._memory_states = {}
        self.prestores = intake.Prestores(intake.PRESTORE_THREADS,
                                          intake.PRESTORE_QUEUE)
        self._projects = {}
        self.agent_api = agent_api

    def _protected(self, instance: str, row=None):
        """The instance's row, refused if deleted; ``row``: one read from
        the database for this very call (authz.INSTANCE_ROW), or None to
        read it now."""
        if row is None or row.uuid != instance:
            row = self.db.get_instance(instance)
        if row.status == Status.DELETED:
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
                                      status=Status.PROTECTED, driver=driver)
        if row.host != host or row.driver != driver:
            row = self.db.update_instance(instance, host=host, driver=driver)
        waiting = (Status.PROTECTING, Status.PAUSED)
        if row.status in waiting:
            row = self.db.update_instance_status(instance, waiting,
                                                 Status.PROTECTED)
        newest = self.store.newest(instance)
        LOG.info('Instance %s registered by agent on %s (newest restore '
                 'point %s)', instance, host, newest.id if newest else None)
        return {'status': row.status,
                'newest_restore_point': newest.id if newest else None,
                'newest_number': newest.number if newest else 0,
                'last_sequence': newest.delta_sequence if newest else -1,
                'owner': self.owner_of(instance)}

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
        answer = {'id': rp.id, 'number': rp.number,
                  'virtual_size': rp.virtual_size,
                  'chunk_size': rp.chunk_size,
                  'chunks': {str(k): v for k, v in rp.chunks.items()}}
        if rp.disks:
            # NOTE: 1.5; an agent before it never asks about such a point
            # (it made none).
            answer['disks'] = rp.disks
        return answer

    def get_chunk(self, instance, restore_point, index) -> str:
        rp = self.store.get_restore_point(instance, restore_point)
        if not isinstance(index, int) or not (
                0 <= index * rp.chunk_size < rp.virtual_size):
            raise exception.HaSnapshotException(
                'Chunk index %r is outside restore point %s.'
                % (index, restore_point))
        return base64.b64encode(self.store.read_chunk(rp, index)).decode()


    # --- RPC API 1.4: memory states (ha_snapshot/storage/memory.py) ------

    def memory_chunks_missing(self, instance, restore_point, shas) -> list:
        if not (isinstance(shas, list) and all(isinstance(s, str)
                                               for s in shas)):
            raise exception.InvalidMemoryState(
                restore_point=restore_point, reason='shas is not a list of '
                'strings')
        rp = self.store.get_restore_point(instance, restore_point)
        return memory.missing(self.store, rp, shas)

    def put_memory_chunks(self, instance, restore_point, chunks) -> int:
        rp = self.store.get_restore_point(instance, restore_point)
        try:
            items = [(sha, length, codec.b64decode(text, memory.MAX_OBJECT))
                     for sha, length, text in chunks]
        except (TypeError, ValueError) as e:
            raise exception.InvalidMemoryState(
                restore_point=restore_point, reason='chunks: %s' % e)
        return memory.put_chunks(self.store, rp, items)

    def commit_memory_state(self, instance, restore_point, manifest) -> dict:
        rp = self.store.get_restore_point(instance, restore_point)
        if not isinstance(manifest, dict):
            raise exception.InvalidMemoryState(
                restore_point=restore_point, reason='not a JSON object')
        stored = memory.commit(self.store, rp, manifest)
        self.db.set_memory_state(rp.id)
        LOG.info('Instance %s: restore point %s carries a memory state '
                 '(%d bytes, %d chunks)', instance, rp.id, stored['size'],
                 len(stored['chunks']))
        return {'restore_point': rp.id, 'size': stored['size']}

    def get_memory_state(self, instance, restore_point) -> dict | None:
        return self._memory_state(instance, restore_point)[1]

    def get_memory_chunk(self, instance, restore_point, index) -> str:
        rp, state = self._memory_state(instance, restore_point)
        if state is None:
            raise exception.InvalidMemoryState(
                restore_point=restore_point, reason='it has none')
        return base64.b64encode(memory.read_chunk(self.store, rp, state,
                                                  index)).decode()

    def _memory_state(self, instance, restore_point) -> tuple:
        """(restore point, its memory state or None), read once for the
        hundreds of chunk calls of one restore: both are written once
        and never changed. A state removed since (retention) fails at
        its chunks' read."""
        key = (instance, restore_point)
        now = time.monotonic()
        with self._memory_lock:
            hit = self._memory_states.get(key)
            if hit is not None and now - hit[0] < _MEMORY_STATE_TTL:
                return hit[1]
        rp = self.store.get_restore_point(instance, restore_point)
        value = (rp, memory.get(self.store, rp))
        with self._memory_lock:
            self._memory_states.pop(key, None)
            while len(self._memory_states) >= _MEMORY_STATES_CACHED:
                del self._memory_states[next(iter(self._memory_states))]
            self._memory_states[key] = (now, value)
        return value

    # --- RPC API 1.1: what ha-snapshot-api asks -----------------------------

    def _nova_server(self, instance: str) -> dict:
        """Where Nova runs ``instance`` and whose it is."""
        return servers.locate(self.conf, instance)

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
        if host is None and row is not None and row.status != Status.DELETED \
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
        if row is not None and row.host == server['host'] \
                and row.status not in (Status.DELETED, Status.PROTECTING):
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
        if row is not None and row.status == Status.DELETED:
            self.db.update_instance_status(instance, Status.DELETED,
                                           Status.PROTECTING)
        if row is not None and row.host and row.host != server['host'] \
                and row.status != Status.DELETED:
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
        if row.status == Status.DELETED:
            return None
        if row.status == Status.RECOVERING:
            raise exception.RecoveryConflict(
                instance=instance, reason='a recovery is running; '
                'unprotect the server when it has ended')
        self.db.mark_instance_deleted(instance)
        self._projects.pop(instance, None)
        # NOTE: deltas of it now are refused at commit: what it sent goes.
        self.abandon(instance)
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
    """RPC API 1.5; see ha_snapshot/manager/rpcapi.py for the history."""

    target = messaging.Target(version='1.5')

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
    def commit_delta(self, ctxt, header, raise_parts_missing=False):
        what = 'delta %s/%s' % (
            header.get('instance') if isinstance(header, dict) else '?',
            header.get('sequence') if isinstance(header, dict) else '?')
        return self._run(self.manager.commit_delta, what, header,
                         raise_parts_missing is True,
                         getattr(ctxt, authz.INSTANCE_ROW, None))

    def report_health(self, ctxt, instance, host, reason, details):
        """What the report started, or why it was dropped (an answer: the
        agent calls until one comes, so a report is never lost with a
        manager that died holding it)."""
        try:
            decision = self.manager.report_health(instance, host, reason,
                                                  details)
            LOG.info('Health report for %s from %s: %s -> %s', instance,
                     host, reason, decision)
        except exception.HaSnapshotException as e:
            LOG.warning('Health report for %s dropped: %s', instance, e)
            decision = 'dropped: %s' % e
        return decision

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

    # --- 1.4 ----------------------------------------------------------------

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def memory_chunks_missing(self, ctxt, instance, restore_point, shas):
        return self._run(self.manager.memory_chunks_missing,
                         'memory chunks of %s' % instance, instance,
                         restore_point, shas)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def put_memory_chunks(self, ctxt, instance, restore_point, chunks):
        return self._run(self.manager.put_memory_chunks,
                         'memory chunks of %s' % instance, instance,
                         restore_point, chunks)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def commit_memory_state(self, ctxt, instance, restore_point, manifest):
        return self._run(self.manager.commit_memory_state,
                         'memory state of %s' % instance, instance,
                         restore_point, manifest)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def get_memory_state(self, ctxt, instance, restore_point):
        return self._run(self.manager.get_memory_state,
                         'memory state of %s' % instance, instance,
                         restore_point)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def get_memory_chunk(self, ctxt, instance, restore_point, index):
        return self._run(self.manager.get_memory_chunk,
                         'memory chunk of %s' % instance, instance,
                         restore_point, index)

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
