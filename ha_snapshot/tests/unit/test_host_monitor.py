"""The host monitor against a real sqlite database and a scripted Nova.

Agents' heartbeats are real ``agents`` rows (Database.record_agent on the
test's clock); Nova's compute services are the scripted Nova's
os-services; fencing is the real ``nova-force-down`` driver against it.
The evacuation is a recorder that ends each evacuation it is handed
(ha_snapshot/tests/unit/test_evacuation.py tests the real one).
"""

import logging
import time

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.db import membership as db_membership
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.fencing import impl_nova
from ha_snapshot.manager import host_monitor
from ha_snapshot.manager import membership
from ha_snapshot.manager import service as service_mod
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack
from ha_snapshot.tests.unit import test_fencing

T0 = 1_800_000_000.0


class Evacuation:
    """Records each record it is handed and ends its evacuation (as the
    real one does once every server is back)."""

    def __init__(self, test):
        self.test = test

    def step(self, record, fence=None):
        self.test.evacuated.append((record.host, record.state))
        self.test.failures.update(record.id, state='evacuated', fence=fence)
        return 'ended'


class _MonitorBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.now = T0
        self.nova = fake_openstack.FakeNova()
        self.addCleanup(self.nova.stop)
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override(
            'connection', 'sqlite:///' + self.path('db.sqlite'),
            group='database')
        self.conf.set_override('auth_type', 'none', group='nova')
        self.conf.set_override('endpoint_override', self.nova.url,
                               group='nova')
        for key, value in (('agent_timeout', 60), ('check_interval', 10),
                           ('hold_down', 300), ('confirm_time', 0)):
            self.conf.set_override(key, value, group='host_monitor')
        self.db = self.database()
        migration.upgrade(self.conf, database=self.db)
        self.failures = db_failures.HostFailures(self.db)
        self.evacuated = []
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))

    def database(self):
        db = db_api.Database(self.conf, clock=lambda: self.now)
        self.addCleanup(db.dispose)
        return db

    def monitor(self, db=None, **kwargs):
        kwargs.setdefault('driver', impl_nova.NovaForceDown(self.conf))
        kwargs.setdefault('evacuation', Evacuation(self))
        return host_monitor.HostMonitor(self.conf, db or self.db, **kwargs)

    def hosts(self, *names, state='up'):
        for name in names:
            self.nova.add_service(name, state=state)
            self.db.record_agent(name)

    def beat(self, *names):
        for name in names:
            self.db.record_agent(name)

    def puts(self):
        return [r for r in self.nova.endpoint.requests if r.method == 'PUT']

    def rows(self):
        return self.failures.list()

    def errors(self, text):
        return [line for line in self.log.output.splitlines()
                if text in line]


class HostMonitorTestCase(_MonitorBase):

    def test_agent_dead_but_nova_up_does_nothing_and_says_so_once(self):
        self.hosts('compute1', 'compute2')
        mon = self.monitor()
        for _ in range(8):
            self.now += 10
            self.beat('compute2')
            mon.run_once()
        self.assertEqual([], self.puts())
        self.assertEqual([], self.rows())
        self.assertEqual([], self.evacuated)
        alerts = self.errors('Host compute1: its agent has been silent')
        self.assertEqual(1, len(alerts), self.log.output)
        self.assertIn('Nova reports its compute service up', alerts[0])

    def test_nova_down_and_agent_silent_fences_then_evacuates(self):
        self.hosts('compute1', 'compute2')
        mon = self.monitor()
        self.now += 50
        self.beat('compute2')
        mon.run_once()
        self.nova.service_of('compute1')['state'] = 'down'
        self.now += 20
        self.beat('compute2')
        mon.run_once()
        put, = self.puts()
        service = self.nova.service_of('compute1')
        self.assertEqual('/v2.1/os-services/%s' % service['id'], put.path)
        self.assertEqual({'forced_down': True}, put.json)
        self.assertTrue(service['forced_down'])
        row, = self.rows()
        self.assertEqual(('compute1', 'evacuated', 'nova-force-down', 1,
                          None),
                         (row.host, row.state, row.fencing_driver,
                          row.fence_attempts, row.error))
        self.assertIn('forced down in Nova', row.result)
        self.assertIsNone(row.closed_at)
        # Detected when the agent's timeout ran out (T0 + 60), confirmed
        # and fenced at this round (T0 + 70).
        self.assertEqual((T0 + 60, T0 + 70, T0 + 70),
                         tuple(db_engine.to_timestamp(t) for t in (
                             row.detected_at, row.confirmed_at,
                             row.fenced_at)))
        self.assertEqual([('compute1', 'fenced')], self.evacuated)
        # Later rounds fence nothing more and hand nothing on again.
        for _ in range(3):
            self.now += 10
            self.beat('compute2')
            mon.run_once()
        self.assertEqual(1, len(self.puts()))
        self.assertEqual(1, len(self.evacuated))

    def test_without_evacuation_a_fenced_host_stays_fenced(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        mon = self.monitor(evacuation=None)
        for _ in range(3):
            self.now += 70
            self.beat('compute2')
            mon.run_once()
        row, = self.rows()
        self.assertEqual('fenced', row.state)
        told = self.errors('its servers are not evacuated ([host_monitor] '
                           'evacuate = False)')
        self.assertEqual(1, len(told), self.log.output)

    def test_a_fenced_record_is_handed_on_by_the_next_leader(self):
        # The leader fenced compute1 and stopped before any evacuation
        # step: the next monitor (a new leader) hands the record on.
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        first, mon = self.monitor(evacuation=None), self.monitor()
        self.now += 70
        self.beat('compute2')
        first.run_once()
        self.assertEqual('fenced', self.rows()[0].state)
        self.now += 10
        self.beat('compute2')
        mon.run_once()
        self.assertEqual([('compute1', 'fenced')], self.evacuated)
        self.assertEqual('evacuated', self.rows()[0].state)
        self.assertEqual(1, len(self.puts()))

    def test_fencing_fails_nothing_is_evacuated_until_it_succeeds(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        self.nova.service_update_fail.append((500, 'Unexpected API Error.'))
        mon = self.monitor()
        self.now += 70
        self.beat('compute2')
        mon.run_once()
        row, = self.rows()
        self.assertEqual(('fence_failed', 1), (row.state, row.fence_attempts))
        self.assertIn('HTTP 500', row.error)
        self.assertIsNone(row.fenced_at)
        self.assertEqual([], self.evacuated)
        self.assertTrue(self.errors('Host compute1 NOT fenced'))
        # Tried again at the next round, on the same record.
        self.now += 10
        self.beat('compute2')
        mon.run_once()
        row, = self.rows()
        self.assertEqual(('evacuated', 2, None),
                         (row.state, row.fence_attempts, row.error))
        self.assertEqual([('compute1', 'fenced')], self.evacuated)

    def test_all_agents_silent_is_a_partition_nothing_is_fenced(self):
        self.hosts('compute1', 'compute2', 'compute3')
        for host in ('compute1', 'compute2'):
            self.nova.service_of(host)['state'] = 'down'
        asked = []
        driver = impl_nova.NovaForceDown(self.conf)
        driver.powered_off = lambda host: asked.append(host) or False
        mon = self.monitor(driver=driver)
        for _ in range(3):
            self.now += 70
            mon.run_once()
        self.assertEqual([], self.puts())
        self.assertEqual([], self.evacuated)
        # No BMC is asked about compute3 (silent, Nova up) in a partition.
        self.assertEqual([], asked)
        row, = self.rows()
        self.assertEqual(('*', 'partition'), (row.host, row.state))
        self.assertIn('agents of 3 of 3 monitored hosts silent', row.reason)
        self.assertEqual(1, len(self.errors('Host monitor alarm')))
        # The agents come back: the partition record is closed.
        self.now += 10
        self.beat('compute1', 'compute2', 'compute3')
        mon.run_once()
        row, = self.rows()
        self.assertEqual('partition_ended', row.state)
        self.assertIsNotNone(row.closed_at)
        self.assertEqual([], self.puts())

    def test_a_host_that_comes_back_undoes_nothing(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        mon = self.monitor()
        self.now += 70
        self.beat('compute2')
        mon.run_once()
        self.assertEqual('evacuated', self.rows()[0].state)
        # compute1 boots again: its agent beats, Nova still reports it
        # forced down. Nothing is undone, nothing new happens.
        for _ in range(3):
            self.now += 10
            self.beat('compute1', 'compute2')
            mon.run_once()
        row, = self.rows()
        self.assertEqual(('evacuated', None), (row.state, row.closed_at))
        self.assertEqual(1, len(self.puts()))
        self.assertTrue(self.nova.service_of('compute1')['forced_down'])
        self.assertEqual(1, len(self.evacuated))
        # An operator unsets forced_down (Nova cleaned up): the record is
        # closed, and nothing is fenced or handed on again.
        self.nova.service_of('compute1').update(forced_down=False,
                                                state='up')
        self.now += 10
        self.beat('compute1', 'compute2')
        mon.run_once()
        row, = self.rows()
        self.assertEqual('returned', row.state)
        self.assertIsNotNone(row.closed_at)
        # It flaps: silent and down again 70 s later: held (hold_down).
        self.nova.service_of('compute1')['state'] = 'down'
        self.now += 70
        self.beat('compute2')
        mon.run_once()
        self.assertEqual(1, len(self.rows()))
        self.assertEqual(1, len(self.puts()))
        self.assertTrue(self.errors('flapping, held'))
        # Past the hold-down it is a failure again: a new record.
        self.now += 240
        self.beat('compute2')
        mon.run_once()
        self.assertEqual(['evacuated', 'returned'],
                         [r.state for r in self.rows()])
        self.assertEqual(2, len(self.evacuated))

    def test_silence_while_no_manager_ran_is_not_counted(self):
        # The managers were all down for 10 minutes: every agent's last
        # heartbeat is old. compute1 really died meanwhile.
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        self.now += 600
        mon = self.monitor()
        self.now += 10
        self.beat('compute2')
        mon.run_once()
        self.assertEqual([], self.rows())
        self.assertEqual([], self.errors('Host monitor alarm'))
        self.assertEqual([], self.puts())
        # compute1 stays silent for agent_timeout after the start: failed.
        for _ in range(6):
            self.now += 10
            self.beat('compute2')
            mon.run_once()
        row, = self.rows()
        self.assertEqual(('compute1', 'evacuated'), (row.host, row.state))
        self.assertEqual(T0 + 600 + 60,
                         db_engine.to_timestamp(row.detected_at))

    def test_nova_unreachable_decides_nothing(self):
        self.hosts('compute1', 'compute2')
        self.conf.set_override('endpoint_override', 'http://127.0.0.1:9/v2.1',
                               group='nova')
        self.conf.set_override('timeout', 2, group='nova')
        mon = self.monitor()
        self.now += 70
        self.beat('compute2')
        e = self.assertRaises(exception.OpenStackError, mon.run_once)
        self.assertIn('listing the nova-compute services', str(e))
        self.assertEqual([], self.rows())

    def test_needs_nova_credentials(self):
        self.conf.clear_override('auth_type', group='nova')
        e = self.assertRaises(exception.ConfigurationError, self.monitor)
        self.assertIn('[host_monitor] enabled needs [nova] credentials',
                      str(e))


class HostMonitorLeaderTestCase(_MonitorBase):
    """Two replicas (Membership + HostMonitor each, their own Database)
    on one sqlite file: one acts."""

    def replica(self, host):
        db = self.database()
        records = db_membership.Records(db, clock=lambda: self.now)
        m = membership.Membership(self.conf, db, host, records=records)
        m.start()
        self.addCleanup(m.stop)
        mon = self.monitor(db, membership=m)
        self.addCleanup(mon.stop)
        return mon

    def test_two_monitors_one_database_one_fences(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        m1, m2 = self.replica('m1'), self.replica('m2')
        results = []
        for n in range(4):
            self.now += 20
            self.beat('compute2')
            first, second = (m1, m2) if n % 2 else (m2, m1)
            results.append((first.run_once() is None,
                            second.run_once() is None))
        # Each round one led (m2, the first to ask) and one skipped.
        self.assertEqual([(False, True), (True, False)] * 2, results)
        self.assertEqual(1, len(self.puts()))
        self.assertEqual(1, len(self.rows()))
        self.assertEqual([('compute1', 'fenced')], self.evacuated)
        self.assertEqual(host_monitor.LEADER_LEASE, m2.leader.lease.key)
        self.assertIsNone(m1.leader.lease)

    def test_a_stopped_leader_hands_over_and_nothing_is_fenced_twice(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        m1, m2 = self.replica('m1'), self.replica('m2')
        self.now += 70
        self.beat('compute2')
        m1.run_once()
        self.assertIsNone(m2.run_once())
        m1.stop()
        self.now += 10
        self.beat('compute2')
        self.assertIsNotNone(m2.run_once())
        self.assertEqual(2, m2.leader.lease.generation)
        self.assertEqual(1, len(self.puts()))
        self.assertEqual(1, len(self.evacuated))

    def test_a_replica_that_lost_the_lease_records_nothing(self):
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        m1, m2 = self.replica('m1'), self.replica('m2')
        self.assertIsNotNone(m1.run_once())
        # m1 stalls past its lease (check_interval + lease_duration); m2
        # takes the lead. m1's lease is stale: its writes are refused.
        self.now += 10 + 60 + 1
        self.beat('compute2')
        self.assertIsNotNone(m2.run_once())
        stale = m1.leader.fence
        self.assertRaises(exception.LeaseLost, self.failures.create,
                          'compute9', 'confirmed', detected_at=None,
                          fence=stale)
        self.assertEqual(1, len(self.rows()))


    def test_a_stale_leader_s_round_fences_nothing(self):
        """A round that goes on after its replica lost the lead (stalled
        past the lease) calls no fencing driver, even for a host whose
        record needs no new write first (fencing failed before)."""
        self.hosts('compute1', 'compute2')
        self.nova.service_of('compute1')['state'] = 'down'
        self.nova.service_update_fail.append((500, 'Unexpected API Error.'))
        m1, m2 = self.replica('m1'), self.replica('m2')
        self.now += 70
        self.beat('compute2')
        self.assertIsNotNone(m1.run_once())
        row, = self.rows()
        self.assertEqual(('fence_failed', 1), (row.state, row.fence_attempts))
        puts = len(self.puts())
        # m1 stalls past its lease; m2 leads, and BMC/Nova answer slowly:
        # m2's round has not fenced yet when m1's goes on.
        self.now += 10 + 60 + 1
        self.beat('compute2')
        self.assertTrue(m2.leader.lead())
        self.assertRaises(exception.LeaseLost, m1.check)
        self.assertEqual(puts, len(self.puts()))
        row, = self.rows()
        self.assertEqual(('fence_failed', 1), (row.state, row.fence_attempts))
        # The leader fences it, once.
        self.assertIsNotNone(m2.run_once())
        row, = self.rows()
        self.assertEqual(('evacuated', 2), (row.state, row.fence_attempts))
        self.assertEqual(puts + 1, len(self.puts()))

    def test_a_replica_that_gave_the_lead_up_writes_nothing(self):
        self.hosts('compute1')
        m1 = self.replica('m1')
        self.assertIsNotNone(m1.run_once())
        m1.leader.release()
        self.assertRaises(exception.LeaseLost, self.failures.create,
                          'compute9', 'confirmed', detected_at=None,
                          fence=m1.leader.fence)
        self.assertEqual([], self.rows())

class HostMonitorServiceTestCase(_MonitorBase):
    """The manager service runs the monitor when enabled: its thread,
    the default driver loaded through stevedore, the real clock."""

    def test_the_service_fences_a_failed_host_and_stops(self):
        self.useFixture(test_fencing.FencingEntryPoints(self.path('dist')))
        self.now = None
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        stale = db_api.Database(self.conf, clock=lambda: time.time() - 120)
        self.addCleanup(stale.dispose)
        self.nova.add_service('compute1', state='down')
        stale.record_agent('compute1')
        conf = self.conf
        conf.set_override('enabled', True, group='host_monitor')
        conf.set_override('check_interval', 0.1, group='host_monitor')
        # NOTE: silence counts from the monitor's start at the earliest.
        conf.set_override('agent_timeout', 1, group='host_monitor')
        conf.set_override('spool_dir', self.path('spool'), group='manager')
        conf.set_override('listen_notifications', False, group='manager')
        conf.set_override('host', 'manager-a', group='manager')
        svc = service_mod.ManagerService(
            conf, transport=rpc.get_transport(conf, url='fake:/'))
        svc.start()
        try:
            base.wait_for(
                lambda: [r.state for r in self.failures.list()] == [
                    'evacuated'], 30, 'compute1 fenced by the service and '
                'its (no) protected servers evacuated')
            self.assertEqual('nova-force-down',
                             svc.host_monitor.driver.name)
            rounds = []
            real = svc.host_monitor.check
            svc.host_monitor.check = lambda: rounds.append(1) or real()
            base.wait_for(lambda: len(rounds) >= 3, 30, 'three more rounds')
        finally:
            svc.stop()
        self.assertTrue(self.nova.service_of('compute1')['forced_down'])
        self.assertEqual(1, len(self.puts()))
        self.assertIn('Host compute1: evacuation ended, 0 servers evacuated',
                      self.log.output)
        lease = db_membership.Records(self.db).get_lease(
            host_monitor.LEADER_LEASE)
        self.assertIsNone(lease.owner)
