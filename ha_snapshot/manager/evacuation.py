"""The evacuation of a fenced host's protected servers.

The host monitor (ha_snapshot.manager.host_monitor) hands every open
failure record that is ``fenced`` or ``evacuating`` to
:meth:`HostEvacuation.step` at each of its rounds. A step reads what the
database knows (the host's instances, the recoveries this failure
started: ``recoveries.host_failure_id``) and does the next thing:

* starts an ``evacuate`` recovery (ha_snapshot.recovery.evacuate) for
  each protected server of the host not yet evacuated, at most
  ``[host_monitor] max_parallel`` running at once, highest priority
  first (Nova server metadata ``[host_monitor] priority_key``); a server
  whose evacuation failed is tried again at later rounds until
  ``[recovery] max_attempts`` tries failed;
* records the failure ``evacuating`` once started and, when nothing is
  left to do, ``evacuated`` (every server back) or ``evacuation_failed``
  (``error`` names the servers left behind), with ``evacuated_at``.

A step is idempotent and keeps nothing in memory: a new leader (another
replica) goes on where the last one stopped, and each recovery runs under
its own lease in the recovery engine (a replica that dies mid-way has its
recoveries taken over). Servers that are stopped (``paused``), not yet
registered (``protecting``) or have no restore point are left to Nova,
Masakari or the operator, and named in the record.

May import the database, ha_snapshot.manager.recovery, ha_snapshot.openstack
and ha_snapshot.exception.
"""

from oslo_log import log as logging

from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot import exception
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.openstack import clients
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

Status = statuses.InstanceStatus
State = statuses.RecoveryState
Failure = statuses.HostFailureState

# NOTE: an instance in one of these is evacuated; RECOVERING ones wait
# for the recovery that runs (e.g. a restart started before the host
# was found failed, which fails and leaves them protected).
EVACUABLE = (Status.PROTECTED, Status.FAILED)
LEFT_ALONE = (Status.PAUSED, Status.PROTECTING)


class HostEvacuation:

    def __init__(self, conf, db, engine, *, connect=clients.connection):
        self.conf = conf
        self.db = db
        self.engine = engine
        self.failures = db_failures.HostFailures(db)
        self._connect = connect

    def step(self, record, fence=None) -> str:
        """Advance the evacuation of ``record``'s host; what was done."""
        host = record.host
        recoveries = self.db.list_recoveries(host_failure=record.id)
        tries, running, succeeded = {}, set(), set()
        for rec in recoveries:
            tries[rec.instance_uuid] = tries.get(rec.instance_uuid, 0) + 1
            if rec.state in statuses.UNFINISHED_RECOVERY_STATES:
                running.add(rec.instance_uuid)
            elif rec.state == State.SUCCEEDED:
                succeeded.add(rec.instance_uuid)
        instances = self.db.list_instances(host=host)
        limit = self.conf.recovery.max_attempts
        ready, busy, given_up, left = [], [], [], []
        for row in instances:
            if row.uuid in running or row.uuid in succeeded:
                continue
            if row.status == Status.RECOVERING:
                busy.append(row.uuid)
            elif row.status in LEFT_ALONE or (
                    row.newest_restore_point_id is None):
                left.append(row)
            elif row.status in EVACUABLE and tries.get(row.uuid, 0) < limit:
                ready.append(row)
            else:
                given_up.append(row.uuid)
        started = self._start(record, ready,
                              self.conf.host_monitor.max_parallel
                              - len(running))
        if record.state == Failure.FENCED:
            record = self.failures.update(
                record.id, state=Failure.EVACUATING, fence=fence,
                evacuation=self._summary(record, instances, left))
        if running or busy or ready:
            return ('%d started, %d running, %d waiting'
                    % (len(started), len(running),
                       len(busy) + len(ready) - len(started)))
        return self._finish(record, succeeded, given_up, left, fence)

    def _start(self, record, ready, slots: int) -> list:
        if slots <= 0 or not ready:
            return []
        if len(ready) > slots:
            ready = self._by_priority(ready)
        started = []
        for row in ready[:slots]:
            reason = ('host %s failed (failure %s): evacuated and restored'
                      % (record.host, record.id))
            try:
                rec = self.engine.request(
                    row.uuid, None, reason, action=recovery_mod.EVACUATE,
                    host_failure_id=record.id)
            except exception.HaSnapshotException as e:
                # NOTE: e.g. an alarm's recovery won the race: this one
                # is tried again at the next round.
                LOG.warning('Host %s: evacuation of instance %s not started '
                            'now: %s', record.host, row.uuid, e)
                continue
            LOG.warning('Host %s: evacuating instance %s (recovery %s)',
                        record.host, row.uuid, rec.id)
            started.append(row.uuid)
        return started

    def _by_priority(self, rows) -> list:
        """``rows`` highest priority first (Nova metadata), then oldest."""
        key = self.conf.host_monitor.priority_key
        try:
            nova = self._connect(self.conf, 'nova').compute
        except clients.API_ERRORS as e:
            LOG.warning('Evacuation order without priorities (Nova cannot '
                        'be reached: %s)', clients.error_reason(e))
            return list(rows)

        def priority(row) -> int:
            try:
                metadata = nova.get_server(row.uuid).metadata or {}
                return int(metadata.get(key, 0))
            except (ValueError, TypeError):
                LOG.warning('Instance %s: metadata %s is not an integer; '
                            'priority 0', row.uuid, key)
            except clients.API_ERRORS as e:
                LOG.warning('Instance %s: priority unknown (%s); 0',
                            row.uuid, clients.error_reason(e))
            return 0
        ranked = [(-priority(row), i, row) for i, row in enumerate(rows)]
        return [row for _, _, row in sorted(ranked, key=lambda r: r[:2])]

    @staticmethod
    def _summary(record, instances, left) -> str:
        text = '%d protected servers on %s' % (len(instances), record.host)
        if left:
            text += '; not evacuated (stopped, unregistered or without a ' \
                'restore point): %s' % ', '.join(
                    '%s (%s)' % (r.uuid, r.status) for r in left)
        return text

    def _finish(self, record, succeeded, given_up, left, fence) -> str:
        now = db_engine.to_datetime(self.db.clock())
        failed = sorted(given_up) + sorted(r.uuid for r in left)
        result = '%d servers evacuated and restored' % len(succeeded)
        if failed:
            error = ('not recovered, act on them (openstack ha recovery list '
                     '<server>): %s' % ', '.join(failed))
            LOG.error('Host %s: evacuation ended; %s', record.host, error)
            self.failures.update(record.id, state=Failure.EVACUATION_FAILED,
                                 evacuated_at=now, evacuation=result,
                                 error=error, fence=fence)
            return 'ended: %s; %s' % (result, error)
        LOG.warning('Host %s: evacuation ended, %s', record.host, result)
        self.failures.update(record.id, state=Failure.EVACUATED,
                             evacuated_at=now, evacuation=result,
                             fence=fence)
        return 'ended: %s' % result
