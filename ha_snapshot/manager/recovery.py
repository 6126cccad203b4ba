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
import threading
import time

from oslo_log import log as logging
from ha_snapshot import exception
from ha_snapshot.manager import membership as membership_mod
from ha_snapshot import plugins
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
    # NOTE: evacuate is what the host monitor and the Nova hook run for
    # the servers of a failed host, whatever the drivers' actions are.
    names = ({conf.recovery.action, EVACUATE}
             | set(conf.recovery.actions.values()))
    actions = {}
    for name in sorted(names):
        cls = plugins.load(
            recovery_plugins.NAMESPACE, name, invoke=False,
            not_found=lambda reason, name=name: exception.ConfigurationError(
                reason='recovery action %r ([recovery] action or actions) '
                'cannot be loaded from %s: %s'
                % (name, recovery_plugins.NAMESPACE, reason)))
        params = inspect.signature(cls).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        actions[name] = cls(conf, **{k: v for k, v in resources.items()
                                     if takes_all or k in params})
    return actions


class Progress:
    """The ``progress(step)`` callable handed to an action.

    ``previous_step`` is the step the recovery had reached before this
    run: None for a new recovery, else where a stopped manager left it.
    ``fence``: the recovery's lease check; a step recorded after the lease
    was taken over raises LeaseLost, which stops the action there.
    ``generation``: that lease's generation (None without one), which an
    action may record on what it makes (the rebuild's Glance image).
    """

    def __init__(self, db, recovery_id: str, previous_step: str | None,
                 fence=None, *, instance: str | None = None,
                 generation: int | None = None):
        self.db = db
        self.recovery_id = recovery_id
        self.previous_step = previous_step
        self.fence = fence
        self.instance = instance
        self.generation = generation

    def __call__(self, step: str) -> None:
        self.db.update_recovery(self.recovery_id, step=step,
                                fence=self.fence)

    def check_lease(self) -> None:
        """Raise LeaseLost unless this run still holds the recovery's
        lease (nothing to check without one): asked before an action
        undoes something of its recovery's, e.g. deletes an image."""
        if self.fence is not None:
            self.db.update_recovery(self.recovery_id, fence=self.fence)

    def recoveries(self) -> list:
        """The instance's recoveries, oldest first."""
        return self.db.list_recoveries(self.instance)


EVACUATE = 'evacuate'
"""The action that brings a server of a failed host back elsewhere."""


def lease_key(instance: str) -> str:
    return 'recovery:%s' % instance


class RecoveryEngine:

    def __init__(self, conf, db, actions, clock=time.time,
                 membership=None):
        """``actions``: name -> action (see load_actions), or one action
        used for every instance. ``membership``: this replica among
        several (manager.membership): each recovery then runs under a
        lease, and :meth:`takeover` resumes those whose runner died."""
        self.conf = conf
        self.db = db
        self.actions = actions
        self.clock = clock
        self.membership = membership
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.recovery.workers,
            thread_name_prefix='recovery')
        self.futures = {}
        self._stop = threading.Event()
        self._takeover_thread = None

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
                reason: str, *, action: str | None = None,
                host_failure_id: str | None = None):
        """An operator-started recovery, to ``restore_point`` or the newest.

        No cooldown; an instance marked failed may be retried. ``action``:
        the action to run instead of the instance's driver's (the host
        monitor's evacuations: ``evacuate``, with the ``host_failure_id``
        of the host's failure record). Raises
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
        name = action or self.action_name(row)
        self._action(name)
        try:
            row = self.db.update_instance_status(
                instance, row.status, Status.RECOVERING)
        except exception.InstanceStatusConflict as e:
            raise exception.RecoveryConflict(
                instance=instance, reason='its status changed meanwhile '
                '(%s)' % e)
        return self._start(row, reason, restore_point, name,
                           host_failure_id=host_failure_id)

    def _start(self, row, reason, restore_point, name=None, *,
               host_failure_id=None):
        name = name or self.action_name(row)
        rec = self.db.create_recovery(
            row.uuid, name, reason=reason, restore_point_id=restore_point,
            attempt=row.recovery_attempts + 1,
            host_failure_id=host_failure_id)
        LOG.warning('Instance %s: %s; recovery %s (%s, attempt %d) to '
                    'restore point %s', row.uuid, reason, rec.id, name,
                    rec.attempt, restore_point)
        keeper = self._lease(row.uuid)
        if keeper is False:
            # NOTE: an earlier runner's lease has not expired: takeover()
            # (of the owner) runs this one once it has.
            LOG.warning('Instance %s: recovery %s waits for the lease of '
                        'an earlier run', row.uuid, rec.id)
            return rec
        self.futures[row.uuid] = self.pool.submit(self._run, row, rec,
                                                  keeper)
        return rec

    def _lease(self, instance: str):
        """A started LeaseKeeper on the instance's recovery lease; None
        without membership (the only manager); False if another holds
        it."""
        if self.membership is None:
            return None
        duration = self.membership.lease_duration
        lease = self.membership.acquire_lease(lease_key(instance), duration)
        if lease is None:
            return False
        return membership_mod.LeaseKeeper(self.membership.records, lease,
                                          duration).start()

    def _running(self, instance: str) -> bool:
        future = self.futures.get(instance)
        return future is not None and not future.done()

    def resume(self) -> int:
        """After a start: finish the recoveries that were under way (with
        membership: those this replica owns and nobody runs)."""
        return self.takeover()

    def takeover(self) -> int:
        """Run the recoveries left ``recovering`` that nobody runs, each
        from its recorded step, once: without membership, all of them
        (the only manager, started again); with it, those of instances
        this replica owns whose lease it can take (free, expired: their
        runner died, or released when this host's manager restarted)."""
        taken = 0
        for row in self.db.list_instances(status=Status.RECOVERING):
            if self._running(row.uuid):
                continue
            if self.membership is not None:
                try:
                    if self.membership.owner(row.uuid) != \
                            self.membership.host:
                        continue
                except exception.NoLiveManagers:
                    return taken
            keeper = self._lease(row.uuid)
            if keeper is False:
                continue
            fence = keeper.fence if keeper is not None else None
            try:
                pending = [r for r in self.db.list_recoveries(row.uuid)
                           if r.state in statuses.UNFINISHED_RECOVERY_STATES]
                if not pending:
                    self.db.update_instance_status(
                        row.uuid, Status.RECOVERING, Status.PROTECTED,
                        fence=fence)
                    if keeper is not None:
                        keeper.stop()
                    continue
            except exception.HaSnapshotException as e:
                LOG.warning('Instance %s: not taken over: %s', row.uuid, e)
                if keeper is not None:
                    keeper.stop()
                continue
            LOG.info('Instance %s: resuming recovery %s (%s) at step %s',
                     row.uuid, pending[-1].id, pending[-1].action,
                     pending[-1].step)
            self.futures[row.uuid] = self.pool.submit(
                self._run, row, pending[-1], keeper)
            taken += 1
        return taken

    def start_takeover(self, interval: float) -> None:
        """Look for recoveries to take over every ``interval`` seconds."""
        def loop():
            while not self._stop.wait(interval):
                try:
                    self.takeover()
                except exception.HaSnapshotException as e:
                    LOG.warning('Recovery takeover round failed: %s', e)
                except Exception:
                    LOG.exception('Recovery takeover round failed')
        self._takeover_thread = threading.Thread(
            target=loop, daemon=True, name='recovery-takeover')
        self._takeover_thread.start()

    def _run(self, row, rec, keeper=None) -> None:
        try:
            self._run_held(row, rec, keeper)
        except exception.LeaseLost as e:
            # NOTE: another replica took this recovery over (this one
            # could not renew its lease in time): it records the rest.
            cause = e.__context__
            LOG.warning('Instance %s: recovery %s left to the replica that '
                        'took it over: %s%s', row.uuid, rec.id, e,
                        '' if cause is None else ' (here, meanwhile: %s: %s)'
                        % (type(cause).__name__, cause))
        finally:
            if keeper is not None:
                keeper.stop()

    def _run_held(self, row, rec, keeper) -> None:
        instance = row.uuid
        fence = keeper.fence if keeper is not None else None
        previous = rec.step if rec.state == State.RUNNING else None
        try:
            if rec.state == State.REQUESTED:
                self.db.update_recovery(rec.id, state=State.RUNNING,
                                        step='starting', fence=fence)
            action = self._action(rec.action)
            action.recover(row, rec.restore_point_id, Progress(
                self.db, rec.id, previous, fence, instance=instance,
                generation=(keeper.lease.generation if keeper is not None
                            else None)))
        except exception.LeaseLost:
            raise
        except Exception as e:
            # NOTE: recorded first, under the lease: a replica that lost
            # it (its steps fenced off, the recovery taken over) is
            # refused here (LeaseLost) and reports nothing as failed.
            self.db.update_recovery(rec.id, state=State.FAILED,
                                    error='%s: %s' % (type(e).__name__, e),
                                    fence=fence)
            LOG.exception('Instance %s: recovery %s failed', instance,
                          rec.id)
            # NOTE: the row read now, not the one the recovery started
            # with: a resumed recovery's row may be older than its count.
            failures = self.db.get_instance(instance).recovery_attempts + 1
            exhausted = failures >= self.conf.recovery.max_attempts
            self.db.update_instance_status(
                instance, Status.RECOVERING,
                Status.FAILED if exhausted else Status.PROTECTED,
                count_attempt=True,
                cooldown_until=self.clock() + self.conf.recovery.cooldown,
                fence=fence)
            if exhausted:
                LOG.error('Instance %s: %d recoveries failed in a row; '
                          'marked failed, the operator must act', instance,
                          failures)
            self._count(False)
            return
        self.db.update_recovery(rec.id, state=State.SUCCEEDED, step='done',
                                fence=fence)
        self.db.update_instance_status(
            instance, Status.RECOVERING, Status.PROTECTED, reset_attempts=True,
            cooldown_until=self.clock() + self.conf.recovery.cooldown,
            fence=fence)
        self._count(True)
        LOG.info('Instance %s: recovery %s succeeded', instance, rec.id)

    def _count(self, succeeded: bool) -> None:
        # NOTE: this replica ran it to its end (the fenced writes above
        # went through); its next heartbeat writes the count.
        if self.membership is not None:
            self.membership.counters.recovery_ended(succeeded)

    def wait(self, instance: str, timeout: float | None = None) -> None:
        future = self.futures.get(instance)
        if future is not None:
            future.result(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._takeover_thread is not None:
            self._takeover_thread.join(10)
        self.pool.shutdown(wait=True, cancel_futures=False)
