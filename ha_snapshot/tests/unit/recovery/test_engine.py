"""RecoveryEngine: operator requests and the per-driver action choice.

A real sqlite database through the real Database layer; restore points are
recorded rows (what the manager records after a merge). The actions are
recording stand-ins: what is tested here is the engine's bookkeeping.
"""

import dataclasses
import threading

from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.manager import service as service_mod
from ha_snapshot.recovery import rebuild
from ha_snapshot.recovery import restart
from ha_snapshot import rpc
from ha_snapshot.tests import base


class Action:

    def __init__(self, name):
        self.name = name
        self.calls = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = 0

    def recover(self, row, restore_point, progress):
        self.gate.wait(30)
        self.calls.append((row.uuid, restore_point))
        progress('doing')
        if self.fail:
            self.fail -= 1
            raise RuntimeError('%s failed' % self.name)


@dataclasses.dataclass
class Point:
    """What Database.record_restore_point reads of a restore point."""
    id: str
    instance: str
    number: int
    delta_sequence: int
    parent: str | None
    created_at: float
    virtual_size: int = 1 << 20
    chunk_size: int = 1 << 20
    changed_bytes: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    key: str = 'k'


class EngineTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.now = 1000.0
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override(
            'connection', 'sqlite:///' + self.path('db.sqlite'),
            group='database')
        self.conf.set_override('cooldown', 60, group='recovery')
        self.conf.set_override('max_attempts', 2, group='recovery')
        self.db = db_api.Database(self.conf, clock=lambda: self.now)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.restart = Action('restart')
        self.rebuild = Action('rebuild')
        self.engine = recovery_mod.RecoveryEngine(
            self.conf, self.db,
            {'restart': self.restart, 'rebuild': self.rebuild},
            clock=lambda: self.now)
        self.addCleanup(self.engine.stop)

    def instance(self, driver='libvirt', points=2, status='protected'):
        uuid = base.new_uuid()
        self.db.create_instance(uuid, 'p1', host='h1', status=status,
                                driver=driver)
        ids, parent = [], None
        for n in range(points):
            rp = Point(base.new_uuid(), uuid, n + 1, n, parent,
                       self.now + n)
            self.db.record_restore_point(rp)
            ids.append(rp.id)
            parent = rp.id
        return uuid, ids

    def run_request(self, uuid, rp=None):
        rec = self.engine.request(uuid, rp, 'operator request')
        self.engine.wait(uuid, 30)
        return self.db.get_recovery(rec.id)

    # --- request() ----------------------------------------------------------

    def test_request_newest_bypasses_cooldown(self):
        uuid, ids = self.instance()
        self.assertTrue(self.engine.report(uuid, 'dead', {})
                        .startswith('recovering'))
        self.engine.wait(uuid, 30)
        self.assertTrue(self.engine.report(uuid, 'dead', {})
                        .startswith('ignored: cooldown'))
        rec = self.run_request(uuid)
        self.assertEqual(('succeeded', 'rebuild', ids[-1], 'operator '
                          'request'), (rec.state, rec.action,
                                       rec.restore_point_id, rec.reason))
        self.assertEqual([(uuid, ids[-1])] * 2, self.rebuild.calls)

    def test_request_chosen_restore_point(self):
        uuid, ids = self.instance()
        rec = self.run_request(uuid, ids[0])
        self.assertEqual(ids[0], rec.restore_point_id)
        self.assertEqual([(uuid, ids[0])], self.rebuild.calls)

    def test_request_returns_requested_row_at_once(self):
        uuid, _ = self.instance()
        self.rebuild.gate.clear()
        rec = self.engine.request(uuid, None, 'why')
        self.assertEqual(('requested', uuid), (rec.state, rec.instance_uuid))
        self.assertEqual('recovering', self.db.get_instance(uuid).status)
        self.rebuild.gate.set()
        self.engine.wait(uuid, 30)

    def test_request_conflicts_while_running(self):
        uuid, _ = self.instance()
        self.rebuild.gate.clear()
        self.engine.request(uuid, None, 'first')
        e = self.assertRaises(exception.RecoveryConflict,
                              self.engine.request, uuid, None, 'second')
        self.assertIn('a recovery of it is running', str(e))
        self.rebuild.gate.set()
        self.engine.wait(uuid, 30)
        self.assertEqual(1, len(self.db.list_recoveries(uuid)))

    def test_racing_requests_start_one(self):
        uuid, _ = self.instance()
        self.rebuild.gate.clear()
        results = []

        def go():
            try:
                results.append(self.engine.request(uuid, None, 'x').id)
            except exception.RecoveryConflict as e:
                results.append(e)
        threads = [threading.Thread(target=go) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.rebuild.gate.set()
        self.engine.wait(uuid, 30)
        self.assertEqual(1, sum(isinstance(r, str) for r in results),
                         results)
        self.assertEqual(1, len(self.rebuild.calls))

    def test_request_refuses_paused_and_deleted(self):
        for status in ('paused', 'protecting'):
            uuid, _ = self.instance(status=status)
            e = self.assertRaises(exception.RecoveryConflict,
                                  self.engine.request, uuid, None, 'x')
            self.assertIn('it is %s, not protected or failed' % status,
                          str(e))
        uuid, _ = self.instance()
        self.db.mark_instance_deleted(uuid)
        self.assertRaises(exception.RecoveryConflict, self.engine.request,
                          uuid, None, 'x')
        self.assertEqual([], self.rebuild.calls)

    def test_request_unknown_instance(self):
        unknown = base.new_uuid()
        e = self.assertRaises(exception.InstanceNotFound,
                              self.engine.request, unknown, None, 'x')
        self.assertIn(unknown, str(e))

    def test_request_unknown_restore_point(self):
        uuid, _ = self.instance()
        other, other_ids = self.instance()
        for bad in (base.new_uuid(), other_ids[0]):
            e = self.assertRaises(exception.RestorePointNotFound,
                                  self.engine.request, uuid, bad, 'x')
            self.assertIn(bad, str(e))
        # Nothing changed: still protected, no recovery recorded.
        self.assertEqual('protected', self.db.get_instance(uuid).status)
        self.assertEqual([], self.db.list_recoveries(uuid))

    def test_request_without_restore_point(self):
        uuid, _ = self.instance(points=0)
        e = self.assertRaises(exception.NoRestorePoint,
                              self.engine.request, uuid, None, 'x')
        self.assertIsInstance(e, exception.RecoveryConflict)
        self.assertEqual('protected', self.db.get_instance(uuid).status)

    def test_request_retries_failed_instance(self):
        uuid, _ = self.instance()
        self.rebuild.fail = 2
        for _ in range(2):
            self.engine.report(uuid, 'dead', {})
            self.engine.wait(uuid, 30)
            self.now += 61
        self.assertEqual('failed', self.db.get_instance(uuid).status)
        self.assertTrue(self.engine.report(uuid, 'dead', {})
                        .startswith('ignored: instance is failed'))
        rec = self.run_request(uuid)
        self.assertEqual('succeeded', rec.state)
        self.assertEqual('protected', self.db.get_instance(uuid).status)

    def test_failed_request_records_step_and_error(self):
        uuid, _ = self.instance()
        self.rebuild.fail = 1
        rec = self.run_request(uuid)
        self.assertEqual(('failed', 'doing', 'RuntimeError: rebuild failed'),
                         (rec.state, rec.step, rec.error))
        self.assertEqual('protected', self.db.get_instance(uuid).status)

    # --- attempts count failures in a row -----------------------------------

    def test_successes_never_count_as_failures(self):
        # max_attempts is 2: five operator recoveries that succeeded, then
        # an alarm, must start a recovery, not mark the server failed.
        uuid, _ = self.instance()
        for _ in range(5):
            self.assertEqual('succeeded', self.run_request(uuid).state)
        self.assertEqual(0, self.db.get_instance(uuid).recovery_attempts)
        self.now += 61
        with self.assertLogs('ha_snapshot.manager.recovery',
                             'INFO') as logs:
            decision = self.engine.report(uuid, 'alarm', {})
            self.engine.wait(uuid, 30)
        self.assertTrue(decision.startswith('recovering'), decision)
        self.assertFalse([m for m in logs.output if 'in a row' in m])
        self.assertEqual('protected', self.db.get_instance(uuid).status)
        self.assertEqual(6, len(self.rebuild.calls))

    def test_a_success_resets_the_failures(self):
        uuid, _ = self.instance()
        self.rebuild.fail = 1
        self.assertEqual('failed', self.run_request(uuid).state)
        self.assertEqual(1, self.db.get_instance(uuid).recovery_attempts)
        rec = self.run_request(uuid)
        self.assertEqual(('succeeded', 2), (rec.state, rec.attempt))
        self.assertEqual(0, self.db.get_instance(uuid).recovery_attempts)
        # One failure after the success is one in a row, not two: the
        # instance stays protected (max_attempts is 2).
        self.rebuild.fail = 1
        self.now += 61
        self.engine.report(uuid, 'dead', {})
        self.engine.wait(uuid, 30)
        row = self.db.get_instance(uuid)
        self.assertEqual(('protected', 1), (row.status,
                                            row.recovery_attempts))

    def test_failures_in_a_row_mark_failed_with_their_count(self):
        uuid, _ = self.instance()
        self.rebuild.fail = 2
        with self.assertLogs('ha_snapshot.manager.recovery',
                             'ERROR') as logs:
            for _ in range(2):
                self.engine.report(uuid, 'dead', {})
                self.engine.wait(uuid, 30)
                self.now += 61
        row = self.db.get_instance(uuid)
        self.assertEqual(('failed', 2), (row.status, row.recovery_attempts))
        self.assertIn('2 recoveries failed in a row', logs.output[-1])
        self.assertEqual([1, 2], [r.attempt for r in
                                  self.db.list_recoveries(uuid)])

    # --- the action per driver ----------------------------------------------

    def test_action_per_driver(self):
        self.conf.set_override('actions', {'qemu': 'restart',
                                           'libvirt': 'rebuild'},
                               group='recovery')
        self.conf.set_override('action', 'restart', group='recovery')
        for driver, expected in (('qemu', 'restart'),
                                 ('libvirt', 'rebuild'),
                                 ('other', 'restart'), (None, 'restart')):
            uuid, _ = self.instance(driver=driver)
            self.engine.report(uuid, 'dead', {})
            self.engine.wait(uuid, 30)
            [rec] = self.db.list_recoveries(uuid)
            self.assertEqual((expected, 'succeeded'), (rec.action, rec.state),
                             driver)

    def test_unloaded_action_fails_clearly(self):
        self.conf.set_override('actions', {'libvirt': 'evacuate'},
                               group='recovery')
        uuid, _ = self.instance()
        e = self.assertRaises(exception.ConfigurationError,
                              self.engine.request, uuid, None, 'x')
        self.assertIn("recovery action 'evacuate' is not loaded", str(e))
        self.assertEqual('protected', self.db.get_instance(uuid).status)

    def test_resume_runs_the_recorded_action_with_its_step(self):
        uuid, ids = self.instance(driver='libvirt')
        rec = self.db.create_recovery(uuid, 'rebuild', reason='r',
                                      restore_point_id=ids[0], attempt=1)
        self.db.update_instance_status(uuid, 'protected', 'recovering')
        self.db.update_recovery(rec.id, state='running', step='wait-active')
        seen = []
        self.rebuild.recover = lambda row, rp, progress: seen.append(
            (rp, progress.previous_step))
        self.assertEqual(1, self.engine.resume())
        self.engine.wait(uuid, 30)
        self.assertEqual([(ids[0], 'wait-active')], seen)
        self.assertEqual('succeeded', self.db.get_recovery(rec.id).state)


class LoadActionsTestCase(base.TestCase):

    def test_each_action_gets_what_it_names(self):
        conf = base.make_conf(self.store_dir)
        agent, store, db = object(), object(), object()
        actions = recovery_mod.load_actions(conf, agent_api=agent,
                                            store=store, db=db)
        self.assertEqual(['evacuate', 'rebuild', 'restart'], sorted(actions))
        self.assertIs(db, actions['evacuate'].db)
        self.assertIs(store, actions['evacuate'].store)
        self.assertIsInstance(actions['restart'], restart.RestartAction)
        self.assertIs(agent, actions['restart'].agent_api)
        self.assertIsInstance(actions['rebuild'], rebuild.RebuildAction)
        self.assertIs(store, actions['rebuild'].store)
        self.assertIs(agent, actions['rebuild'].agent_api)

    def test_unknown_action_name(self):
        conf = base.make_conf(self.store_dir)
        conf.set_override('actions', {'libvirt': 'teleport'},
                          group='recovery')
        e = self.assertRaises(exception.ConfigurationError,
                              recovery_mod.load_actions, conf)
        self.assertIn("recovery action 'teleport'", str(e))
        self.assertIn('ha_snapshot.recovery', str(e))


class ManagerServiceTestCase(base.TestCase):

    def test_service_loads_every_configured_action(self):
        conf = base.make_conf(self.store_dir)
        conf.set_override('connection',
                          'sqlite:///' + self.path('db.sqlite'),
                          group='database')
        conf.set_override('spool_dir', self.path('spool'), group='manager')
        conf.set_override('listen_notifications', False, group='manager')
        db = db_api.Database(conf)
        migration.upgrade(conf, database=db)
        db.dispose()
        svc = service_mod.ManagerService(
            conf, transport=rpc.get_transport(conf, url='fake:/'))
        svc.start()
        self.addCleanup(svc.stop)
        actions = svc.engine.actions
        self.assertEqual(['evacuate', 'rebuild', 'restart'], sorted(actions))
        self.assertIs(svc.db, actions['evacuate'].db)
        self.assertIs(svc.manager.store, actions['rebuild'].store)
        self.assertIsNotNone(actions['rebuild'].agent_api)
        self.assertIs(actions['rebuild'].agent_api,
                      actions['restart'].agent_api)
