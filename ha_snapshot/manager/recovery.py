"""The per-instance recovery state machine.

    protected --report--> recovering --success--> protected
                                     --failure--> protected (retry later)
                                                 | failed (attempts used up)

Status changes are compare-and-swap updates in the database, so of many
reports arriving together (the health monitor and an alarm, or two manager
workers) exactly one starts a recovery; the rest are recorded and dropped.
A cooldown after each recovery and a cap on attempts in a row stop a VM
that keeps failing from being restarted forever.
"""

import concurrent.futures
import datetime
import time

from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)


def _epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.timezone.utc).timestamp()
    return float(value)


class RecoveryEngine:

    def __init__(self, conf, db, action, clock=time.time):
        self.conf = conf
        self.db = db
        self.action = action
        self.clock = clock
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.recovery.workers,
            thread_name_prefix='recovery')
        self.futures = {}

    def report(self, instance: str, reason: str, details: dict) -> str:
        """Decide what a report of abnormal behaviour starts; say what."""
        row = self.db.get_instance(instance)
        now = self.clock()
        last = _epoch(row.last_report_at)
        if row.recovery_attempts and last is not None and (
                now - last > self.conf.recovery.attempts_reset):
            row = self.db.update_instance_status(
                instance, row.status, row.status, reset_attempts=True)
        self.db.record_report(instance, reason)
        if row.status == 'recovering':
            return 'duplicate: a recovery is running'
        if row.status != 'protected':
            return 'ignored: instance is %s' % row.status
        cooldown = _epoch(row.cooldown_until)
        if cooldown is not None and now < cooldown:
            return 'ignored: cooldown for %.0f s more' % (cooldown - now)
        if row.recovery_attempts >= self.conf.recovery.max_attempts:
            self.db.update_instance_status(instance, 'protected', 'failed')
            LOG.error('Instance %s: %d recoveries failed in a row; marked '
                      'failed, the operator must act', instance,
                      row.recovery_attempts)
            return 'failed: too many attempts'
        if row.newest_restore_point_id is None:
            return 'ignored: no restore point yet'
        try:
            row = self.db.update_instance_status(
                instance, 'protected', 'recovering', count_attempt=True)
        except exception.InstanceStatusConflict:
            return 'duplicate: another report won'
        rec = self.db.create_recovery(
            instance, self.action.name, reason=reason,
            restore_point_id=row.newest_restore_point_id,
            attempt=row.recovery_attempts)
        LOG.warning('Instance %s: %s; recovery %s (%s, attempt %d) to '
                    'restore point %s', instance, reason, rec.id,
                    self.action.name, rec.attempt, rec.restore_point_id)
        self.futures[instance] = self.pool.submit(self._run, row, rec)
        return 'recovering: %s' % rec.id

    def resume(self) -> int:
        """After a restart: finish the recoveries that were under way."""
        resumed = 0
        for row in self.db.list_instances(status='recovering'):
            pending = [r for r in self.db.list_recoveries(row.uuid)
                       if r.state in ('requested', 'running')]
            if not pending:
                self.db.update_instance_status(row.uuid, 'recovering',
                                               'protected')
                continue
            LOG.info('Instance %s: resuming recovery %s', row.uuid,
                     pending[-1].id)
            self.futures[row.uuid] = self.pool.submit(self._run, row,
                                                      pending[-1])
            resumed += 1
        return resumed

    def _run(self, row, rec) -> None:
        instance = row.uuid
        try:
            if rec.state == 'requested':
                self.db.update_recovery(rec.id, state='running',
                                        step='starting')
            self.action.recover(
                row, rec.restore_point_id,
                lambda step: self.db.update_recovery(rec.id, step=step))
        except Exception as e:
            LOG.exception('Instance %s: recovery %s failed', instance,
                          rec.id)
            self.db.update_recovery(rec.id, state='failed',
                                    error='%s: %s' % (type(e).__name__, e))
            exhausted = row.recovery_attempts >= (
                self.conf.recovery.max_attempts)
            self.db.update_instance_status(
                instance, 'recovering', 'failed' if exhausted else 'protected',
                cooldown_until=self.clock() + self.conf.recovery.cooldown)
            return
        self.db.update_recovery(rec.id, state='succeeded', step='done')
        self.db.update_instance_status(
            instance, 'recovering', 'protected',
            cooldown_until=self.clock() + self.conf.recovery.cooldown)
        LOG.info('Instance %s: recovery %s succeeded', instance, rec.id)

    def wait(self, instance: str, timeout: float | None = None) -> None:
        future = self.futures.get(instance)
        if future is not None:
            future.result(timeout)

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
