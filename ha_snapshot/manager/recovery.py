"""The per-instance recovery state machine.

    protected --report--> recovering --success--> protected
                                     --failure--> protected (retry later)
                                                 | failed (attempts used up)
    protected | failed --request--> recovering (an operator asked)

``recovery_attempts`` counts the recoveries that failed in a row: a
failure adds one, a success sets it back to zero (so does a quiet
``[recovery] attempts_reset``). ``max_attempts`` failures in a row mark
the instance failed.

Status changes are compare-and-swap updates in the database, so of many
reports arriving together (the health monitor and an alarm, or two manager
workers) exactly one starts a recovery; the rest are recorded and dropped.
A cooldown after each recovery and a cap on attempts in a row stop a VM
that keeps failing from being restarted forever. An operator's request
skips the cooldown (and may retry a failed instance) but never runs beside
another recovery of the same instance.

The action is chosen per instance from its hypervisor driver (``[recovery]
actions``, e.g. ``qemu:restart,libvirt:rebuild``; ``[recovery] action`` for
the rest) and recorded on the recovery, which a resumed recovery runs
again. Each step an action reaches is recorded on the recovery, so a
failure leaves (state failed, step, error) behind.
"""

import concurrent.futures
import datetime
import inspect
import time

from oslo_log import log as logging
from stevedore import driver as stevedore_driver

from ha_snapshot import exception
from ha_snapshot import recovery as recovery_plugins
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)
Status = statuses.InstanceStatus
State = statuses.RecoveryState


def _epoch(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.timezone.utc).timestamp()
    return float(value)


def load_actions(conf, **resources) -> dict:
    """Every action ``[recovery]`` names, by name, built once.

    An action's constructor takes ``conf`` and asks for what it needs
    among ``resources`` (``agent_api``, ``store``...) by naming them as
    keyword parameters; a name that loads nothing is a ConfigurationError.
    """
    names = {conf.recovery.action} | set(conf.recovery.actions.values())
    actions = {}
    for name in sorted(names):
        try:
            cls = stevedore_driver.DriverManager(
                recovery_plugins.NAMESPACE, name, invoke_on_load=False).driver
        except Exception as e:
            raise exception.ConfigurationError(
                reason='recovery action %r ([recovery] action or actions) '
                'cannot be loaded from %s: %s'
                % (name, recovery_plugins.NAMESPACE, e.__cause__ or e))
        params = inspect.signature(cls).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        actions[name] = cls(conf, **{k: v for k, v in resources.items()
                                     if takes_all or k in params})
    return actions


class Progress:
    """The ``progress(step)`` callable handed to an action.

    ``previous_step`` is the step the recovery had reached before this
    run: None for a new recovery, else where a stopped manager left it.
    """

    def __init__(self, db, recovery_id: str, previous_step: str | None):
        self.db = db
        self.recovery_id = recovery_id
        self.previous_step = previous_step

    def __call__(self, step: str) -> None:
        self.db.update_recovery(self.recovery_id, step=step)


class RecoveryEngine:

    def __init__(self, conf, db, actions, clock=time.time):
        """``actions``: name -> action (see load_actions), or one action
        used for every instance."""
        self.conf = conf
        self.db = db
        self.actions = actions
        self.clock = clock
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.recovery.workers,
            thread_name_prefix='recovery')
        self.futures = {}

    def action_name(self, row) -> str:
        if not isinstance(self.actions, dict):
            return self.actions.name
        return self.conf.recovery.actions.get(row.driver or '',
                                              self.conf.recovery.action)

    def _action(self, name: str):
        if not isinstance(self.actions, dict):
            return self.actions
        action = self.actions.get(name)
        if action is None:
            raise exception.ConfigurationError(
                reason='recovery action %r is not loaded (loaded: %s); '
                'check [recovery] action and actions'
                % (name, ', '.join(sorted(self.actions)) or 'none'))
        return action

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
        if row.status == Status.RECOVERING:
            return 'duplicate: a recovery is running'
        if row.status != Status.PROTECTED:
            return 'ignored: instance is %s' % row.status
        cooldown = _epoch(row.cooldown_until)
        if cooldown is not None and now < cooldown:
            return 'ignored: cooldown for %.0f s more' % (cooldown - now)
        if row.recovery_attempts >= self.conf.recovery.max_attempts:
            self.db.update_instance_status(instance, Status.PROTECTED,
                                           Status.FAILED)
            LOG.error('Instance %s: %d recoveries failed in a row; marked '
                      'failed, the operator must act', instance,
                      row.recovery_attempts)
            return 'failed: too many attempts'
        if row.newest_restore_point_id is None:
            return 'ignored: no restore point yet'
        try:
            row = self.db.update_instance_status(
                instance, Status.PROTECTED, Status.RECOVERING)
        except exception.InstanceStatusConflict:
            return 'duplicate: another report won'
        rec = self._start(row, reason, row.newest_restore_point_id)
        return 'recovering: %s' % rec.id

    def request(self, instance: str, restore_point: str | None,
                reason: str):
        """An operator-started recovery, to ``restore_point`` or the newest.

        No cooldown; an instance marked failed may be retried. Raises
        InstanceNotFound (not protected), RestorePointNotFound (not one of
        its restore points), NoRestorePoint (none yet) or RecoveryConflict
        (a recovery runs, or the instance is neither protected nor failed).
        Returns the recovery row (state requested).
        """
        row = self.db.get_instance(instance)
        if row.status == Status.RECOVERING:
            raise exception.RecoveryConflict(
                instance=instance, reason='a recovery of it is running')
        if row.status not in (Status.PROTECTED, Status.FAILED):
            raise exception.RecoveryConflict(
                instance=instance, reason='it is %s, not protected or '
                'failed' % row.status)
        if restore_point is None:
            restore_point = row.newest_restore_point_id
            if restore_point is None:
                raise exception.NoRestorePoint(instance=instance)
        elif restore_point not in {
                rp.id for rp in self.db.list_restore_points(instance)}:
            raise exception.RestorePointNotFound(
                instance=instance, restore_point=restore_point)
        self._action(self.action_name(row))
        try:
            row = self.db.update_instance_status(
                instance, row.status, Status.RECOVERING)
        except exception.InstanceStatusConflict as e:
            raise exception.RecoveryConflict(
                instance=instance, reason='its status changed meanwhile '
                '(%s)' % e)
        return self._start(row, reason, restore_point)

    def _start(self, row, reason, restore_point):
        name = self.action_name(row)
        rec = self.db.create_recovery(
            row.uuid, name, reason=reason, restore_point_id=restore_point,
            attempt=row.recovery_attempts + 1)
        LOG.warning('Instance %s: %s; recovery %s (%s, attempt %d) to '
                    'restore point %s', row.uuid, reason, rec.id, name,
                    rec.attempt, restore_point)
        self.futures[row.uuid] = self.pool.submit(self._run, row, rec)
        return rec

    def resume(self) -> int:
        """After a restart: finish the recoveries that were under way."""
        resumed = 0
        for row in self.db.list_instances(status=Status.RECOVERING):
            pending = [r for r in self.db.list_recoveries(row.uuid)
                       if r.state in statuses.UNFINISHED_RECOVERY_STATES]
            if not pending:
                self.db.update_instance_status(row.uuid, Status.RECOVERING,
                                               Status.PROTECTED)
                continue
            LOG.info('Instance %s: resuming recovery %s (%s) at step %s',
                     row.uuid, pending[-1].id, pending[-1].action,
                     pending[-1].step)
            self.futures[row.uuid] = self.pool.submit(self._run, row,
                                                      pending[-1])
            resumed += 1
        return resumed

    def _run(self, row, rec) -> None:
        instance = row.uuid
        previous = rec.step if rec.state == State.RUNNING else None
        try:
            if rec.state == State.REQUESTED:
                self.db.update_recovery(rec.id, state=State.RUNNING,
                                        step='starting')
            action = self._action(rec.action)
            action.recover(row, rec.restore_point_id,
                           Progress(self.db, rec.id, previous))
        except Exception as e:
            LOG.exception('Instance %s: recovery %s failed', instance,
                          rec.id)
            self.db.update_recovery(rec.id, state=State.FAILED,
                                    error='%s: %s' % (type(e).__name__, e))
            # NOTE: the row read now, not the one the recovery started
            # with: a resumed recovery's row may be older than its count.
            failures = self.db.get_instance(instance).recovery_attempts + 1
            exhausted = failures >= self.conf.recovery.max_attempts
            self.db.update_instance_status(
                instance, Status.RECOVERING,
                Status.FAILED if exhausted else Status.PROTECTED,
                count_attempt=True,
                cooldown_until=self.clock() + self.conf.recovery.cooldown)
            if exhausted:
                LOG.error('Instance %s: %d recoveries failed in a row; '
                          'marked failed, the operator must act', instance,
                          failures)
            return
        self.db.update_recovery(rec.id, state=State.SUCCEEDED, step='done')
        self.db.update_instance_status(
            instance, Status.RECOVERING, Status.PROTECTED, reset_attempts=True,
            cooldown_until=self.clock() + self.conf.recovery.cooldown)
        LOG.info('Instance %s: recovery %s succeeded', instance, rec.id)

    def wait(self, instance: str, timeout: float | None = None) -> None:
        future = self.futures.get(instance)
        if future is not None:
            future.result(timeout)

    def stop(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
