"""The evacuate recovery action and the evacuation of a failed host.

As test_rebuild: a real store holds a real restore point, the recovery
engine runs on a real sqlite database, openstacksdk talks HTTP to the
scripted Nova and Glance (ha_snapshot/tests/unit/fake_openstack.py). The
agent of the new host is the one stand-in: it records the rebaseline it
is asked (with the project and spec an evacuated server's needs).
"""

import logging

import fixtures

from ha_snapshot.db import host_failures as db_failures
from ha_snapshot import exception
from ha_snapshot.manager import evacuation
from ha_snapshot.manager import notifications
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.openstack import servers
from ha_snapshot.recovery import evacuate
from ha_snapshot import statuses
from ha_snapshot.tests import base
from ha_snapshot.tests.unit.recovery import test_rebuild

SOURCE_IMAGE = test_rebuild.SOURCE_IMAGE
EVACUATION_STEPS = ['starting', 'inspect-server', 'evacuate-server',
                    'wait-evacuated', 'find-image', 'export', 'upload-image',
                    'rebuild-server', 'wait-rebuilt', 'move-protection',
                    'rebaseline', 'start-rebuilt', 'wait-running',
                    'cleanup-images', 'done']


class AgentAPI(test_rebuild.FakeAgentAPI):
    """rebaseline with the 1.3 arguments; protect and unprotect casts
    recorded in ``casts``."""

    def __init__(self):
        super().__init__()
        self.casts = []

    def protect(self, host, instance, project, spec):
        self.casts.append(('protect', host))

    def unprotect(self, host, instance):
        self.casts.append(('unprotect', host))

    def rebaseline(self, host, instance, restore_point, timeout=None, *,
                   project=None, spec=None):
        self.calls.append((host, instance, restore_point, project,
                           spec.to_dict() if spec is not None else None))
        if self.nova is not None:
            self.statuses.append(self.nova.servers[instance]['status'])
        if self.fail:
            raise self.fail.pop(0)
        return {'instance': instance, 'restore_point': restore_point,
                'driver': 'libvirt', 'full': False}


class EvacuateTestBase(test_rebuild.RebuildTestBase):

    def setUp(self):
        super().setUp()
        # host1 died: Nova reports its compute service down.
        self.nova.add_service('host1', state='down')
        self.nova.add_service('compute2', state='up')
        self.agent = AgentAPI()
        self.agent.nova = self.nova
        self.action = evacuate.EvacuateAction(
            self.conf, agent_api=self.agent, store=self.store, db=self.db)

    def engine(self):
        eng = recovery_mod.RecoveryEngine(self.conf, self.db,
                                          {'evacuate': self.action})
        self.addCleanup(eng.stop)
        return eng

    def evacuate(self, eng=None, host_failure_id=None):
        eng = eng or self.engine()
        rec = eng.request(self.inst, None, 'host1 failed',
                          action=recovery_mod.EVACUATE,
                          host_failure_id=host_failure_id)
        try:
            eng.wait(self.inst, 60)
        except test_rebuild.Died:
            pass
        return self.db.get_recovery(rec.id)

    def nova_actions(self):
        return [(r.headers.get('OpenStack-API-Version'), r.json)
                for r in self.nova.endpoint.requests if r.method == 'POST']

    def server(self):
        return self.nova.servers[self.inst]


class EvacuateActionTestCase(EvacuateTestBase):

    def test_evacuates_stopped_rebuilds_starts_and_moves_protection(self):
        rec = self.evacuate()
        self.assertEqual(('succeeded', 'done', None),
                         (rec.state, rec.step, rec.error))
        self.assertEqual(EVACUATION_STEPS, self.steps)
        [image] = self.recovery_images()
        self.assertEqual([
            ('compute 2.95', {'evacuate': {}}),
            (None, {'rebuild': {'imageRef': image['id']}}),
            (None, {'os-start': None}),
        ], [(v if v == 'compute 2.95' else None, j)
            for v, j in self.nova_actions()])
        server = self.server()
        self.assertEqual(('compute2', 'ACTIVE', image['id']),
                         (server['OS-EXT-SRV-ATTR:host'], server['status'],
                          server['image']['id']))
        # The recovery image holds the restore point.
        self.assertEqual(self.export_sha512('qcow2'),
                         image['os_hash_value'])
        # The database places it on its new host; the agent there was
        # told to protect it from the restore point used.
        row = self.db.get_instance(self.inst)
        self.assertEqual(('compute2', 'protected', 0),
                         (row.host, row.status, row.recovery_attempts))
        [(host, inst, rp, project, spec)] = self.agent.calls
        self.assertEqual(('compute2', self.inst, self.rp, 'p1'),
                         (host, inst, rp, project))
        self.assertEqual({'nova': True, 'uuid': self.inst, 'name': 'vm1'},
                         {k: spec[k] for k in ('nova', 'uuid', 'name')})
        # ... before its guest ran: re-baselined while stopped.
        self.assertEqual(['SHUTOFF'], self.agent.statuses)

    def test_without_2_95_it_evacuates_at_2_14_then_stops(self):
        self.nova.max_version = '2.90'
        rec = self.evacuate()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertIn('stop-server', self.steps)
        actions = self.nova_actions()
        self.assertEqual(('compute 2.14', {'evacuate': {}}), actions[0])
        self.assertEqual({'os-stop': None}, actions[1][1])
        self.assertIn('rebuild', actions[2][1])
        self.assertEqual({'os-start': None}, actions[3][1])
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertEqual('ACTIVE', self.server()['status'])

    def test_already_evacuated_by_someone_else_only_restores_data(self):
        # Masakari moved it: Nova runs it (its stale base) on compute2.
        self.server().update({'OS-EXT-SRV-ATTR:host': 'compute2'})
        rec = self.evacuate()
        self.assertEqual('succeeded', rec.state, rec.error)
        self.assertNotIn('evacuate-server', self.steps)
        self.assertNotIn({'evacuate': {}}, [j for _, j in
                                            self.nova_actions()])
        self.assertEqual('compute2', self.db.get_instance(self.inst).host)
        self.assertEqual('compute2', self.agent.calls[0][0])
        # Nova ran it: stopped for its rebuild, re-baselined, started.
        self.assertEqual([{'os-stop': None}, 'rebuild', {'os-start': None}],
                         [j if 'rebuild' not in j else 'rebuild'
                          for _, j in self.nova_actions()])
        self.assertEqual(['SHUTOFF'], self.agent.statuses)

    def test_nova_error_fails_the_recovery_and_keeps_the_host(self):
        self.nova.evacuate_outcome = 'error'
        self.nova.fault_message = 'No valid host was found.'
        rec = self.evacuate()
        self.assertEqual(('failed', 'wait-evacuated'), (rec.state, rec.step))
        self.assertIn('EvacuationFailed', rec.error)
        self.assertIn('No valid host was found', rec.error)
        row = self.db.get_instance(self.inst)
        self.assertEqual(('host1', 'protected', 1),
                         (row.host, row.status, row.recovery_attempts))
        self.assertEqual([], self.agent.calls)

    def test_nova_refuses_while_the_host_is_up(self):
        self.nova.service_of('host1')['state'] = 'up'
        rec = self.evacuate()
        self.assertEqual(('failed', 'evacuate-server'), (rec.state, rec.step))
        self.assertIn('Compute service of host1 is still in use', rec.error)
        self.assertEqual('host1', self.server()['OS-EXT-SRV-ATTR:host'])

    def resumed(self, rec):
        """The recovery ``rec``, left running by a manager that died,
        resumed by a new engine; it must succeed."""
        self.die_at = None
        eng = self.engine()
        self.assertEqual(1, eng.resume())
        eng.wait(self.inst, 60)
        rec = self.db.get_recovery(rec.id)
        self.assertEqual('succeeded', rec.state, rec.error)
        return rec

    def test_resumed_after_the_evacuation_was_sent_does_not_send_it_again(
            self):
        self.die_at = 'wait-evacuated'
        rec = self.evacuate()
        self.assertEqual(('running', 'wait-evacuated'), (rec.state, rec.step))
        self.steps.clear()
        self.resumed(rec)
        evacuations = [j for _, j in self.nova_actions()
                       if 'evacuate' in j]
        self.assertEqual(1, len(evacuations))
        self.assertEqual('compute2', self.db.get_instance(self.inst).host)

    def test_resumed_after_the_move_neither_evacuates_nor_rebuilds(self):
        self.die_at = 'rebaseline'
        rec = self.evacuate()
        self.assertEqual(('running', 'rebaseline'), (rec.state, rec.step))
        posts = self.nova_actions()
        # The database places it on compute2 now, as does Nova.
        self.assertEqual('compute2', self.db.get_instance(self.inst).host)
        self.resumed(rec)
        # Only the start: after the re-baseline of the stopped server.
        self.assertEqual(posts + [(None, {'os-start': None})],
                         [(None if j == {'os-start': None} else v, j)
                          for v, j in self.nova_actions()])
        self.assertEqual(['compute2'], [c[0] for c in self.agent.calls])
        self.assertEqual(['SHUTOFF'], self.agent.statuses)

    def test_resumed_at_the_move_moves_and_rebaselines_stopped(self):
        self.die_at = 'move-protection'
        rec = self.evacuate()
        self.assertEqual('host1', self.db.get_instance(self.inst).host)
        self.steps.clear()
        self.resumed(rec)
        self.assertEqual(['inspect-server', 'move-protection', 'rebaseline',
                          'start-rebuilt', 'wait-running', 'cleanup-images',
                          'done'], self.steps)
        self.assertEqual('compute2', self.db.get_instance(self.inst).host)
        self.assertEqual(['SHUTOFF'], self.agent.statuses)
        self.assertEqual(1, sum('rebuild' in j for _, j in
                                self.nova_actions()))

    def test_resumed_after_the_rebaseline_only_starts(self):
        for step in ('start-rebuilt', 'wait-running'):
            self.die_at = step
            rec = self.evacuate()
            self.assertEqual(('running', step), (rec.state, rec.step))
            self.steps.clear()
            self.resumed(rec)
            self.assertEqual(['inspect-server', 'start-rebuilt'
                              if step == 'start-rebuilt' else 'wait-running',
                              ] + (['wait-running']
                                   if step == 'start-rebuilt' else [])
                             + ['cleanup-images', 'done'], self.steps)
            # One re-baseline, one start, the server running.
            self.assertEqual(1, len(self.agent.calls))
            self.assertEqual(1, sum(j == {'os-start': None}
                                    for _, j in self.nova_actions()))
            self.assertEqual('ACTIVE', self.server()['status'])
            # The next round: a fresh server on host1 again.
            self.agent.calls.clear()
            self.agent.statuses.clear()
            self.nova.endpoint.requests.clear()
            self.server().update({'OS-EXT-SRV-ATTR:host': 'host1'})
            self.db.update_instance(self.inst, host='host1')

    def test_volume_backed_server_is_refused(self):
        self.server()['image'] = ''
        rec = self.evacuate()
        self.assertEqual(('failed', 'inspect-server'), (rec.state, rec.step))
        self.assertIn('boots from a volume', rec.error)

    def test_needs_the_database(self):
        action = evacuate.EvacuateAction(self.conf, agent_api=self.agent,
                                         store=self.store)
        e = self.assertRaises(exception.ConfigurationError, action.recover,
                              self.db.get_instance(self.inst), self.rp,
                              lambda step: None)
        self.assertIn('needs the store, the agent API and the database',
                      str(e))


FENCED_BY = 'compute service host1 forced down in Nova'


class HostEvacuationTestCase(EvacuateTestBase):
    """HostEvacuation.step over three protected servers of host1."""

    def setUp(self):
        super().setUp()
        self.conf.set_override('max_parallel', 2, group='host_monitor')
        self.failures = db_failures.HostFailures(self.db)
        self.record = self.failures.create(
            'host1', statuses.HostFailureState.FENCED,
            detected_at=self.db._now(), result=FENCED_BY)
        self.eng = self.engine()
        self.evac = evacuation.HostEvacuation(self.conf, self.db, self.eng)
        self.others = []
        first = self.inst
        for name, priority in (('vm2', '5'), ('vm3', '9')):
            # NOTE: protect() makes a restore point of self.inst.
            self.inst = base.new_uuid()
            self.others.append(self.inst)
            self.protect()
            server = self.nova.add_server(self.inst, 'p1', SOURCE_IMAGE,
                                          host='host1', name=name)
            server['metadata']['ha_snapshot:priority'] = priority
        self.inst = first

    def step(self):
        out = self.evac.step(self.failures.list()[0])
        for uuid in [self.inst] + self.others:
            self.eng.wait(uuid, 60)
        return out

    def test_every_server_evacuated_by_priority_at_most_two_at_once(self):
        out = self.step()
        self.assertIn('2 started', out)
        recs = self.db.list_recoveries(host_failure=self.record.id)
        # vm3 (9) and vm2 (5) first; vm1 (no priority) waits.
        self.assertEqual(sorted(self.others),
                         sorted(r.instance_uuid for r in recs))
        self.assertEqual('evacuating', self.failures.list()[0].state)
        self.step()
        self.assertEqual('evacuating', self.failures.list()[0].state)
        out = self.step()
        self.assertIn('3 servers evacuated and restored', out)
        row = self.failures.list()[0]
        self.assertEqual(('evacuated', None), (row.state, row.error))
        self.assertIsNotNone(row.evacuated_at)
        # The fencing outcome stays beside the evacuation's.
        self.assertEqual((FENCED_BY, '3 servers evacuated and restored'),
                         (row.result, row.evacuation))
        recs = self.db.list_recoveries(host_failure=self.record.id)
        self.assertEqual(['succeeded'] * 3, [r.state for r in recs])
        self.assertEqual({'compute2'}, {self.db.get_instance(u).host
                                        for u in [self.inst] + self.others})
        # Nothing more once ended.
        requests = len(self.nova.endpoint.requests)
        self.assertEqual([], self.db.list_instances(host='host1'))
        self.assertEqual(requests, len(self.nova.endpoint.requests))

    def test_a_server_that_keeps_failing_is_named_in_the_record(self):
        self.conf.set_override('max_attempts', 2, group='recovery')
        self.conf.set_override('max_parallel', 3, group='host_monitor')
        # vm1 is locked in Nova: every evacuation of it is refused.
        real = self.nova.evacuate

        def evacuate(req, server, body, headers):
            if server['id'] == self.inst:
                return 409, headers, {'conflictingRequest': {
                    'code': 409, 'message': 'Instance %s is locked'
                    % server['id']}}
            return real(req, server, body, headers)
        self.nova.evacuate = evacuate
        self.step()
        self.step()
        out = self.step()
        self.assertIn('ended', out)
        row = self.failures.list()[0]
        self.assertEqual('evacuation_failed', row.state)
        self.assertIn(self.inst, row.error)
        self.assertIn('2 servers evacuated and restored', row.evacuation)
        self.assertEqual(FENCED_BY, row.result)
        tries = [r for r in self.db.list_recoveries(
            host_failure=self.record.id) if r.instance_uuid == self.inst]
        self.assertEqual(['failed', 'failed'], [r.state for r in tries])
        self.assertEqual('host1', self.db.get_instance(self.inst).host)

    def test_stopped_and_unregistered_servers_are_left_and_named(self):
        self.db.update_instance_status(self.others[0], 'protected', 'paused')
        self.conf.set_override('max_parallel', 3, group='host_monitor')
        self.step()
        row = self.failures.list()[0]
        self.assertIn('not evacuated', row.evacuation)
        self.assertIn(self.others[0], row.evacuation)
        self.assertEqual(FENCED_BY, row.result)
        out = self.step()
        self.assertIn('ended', out)
        row = self.failures.list()[0]
        self.assertEqual('evacuation_failed', row.state)
        self.assertIn(self.others[0], row.error)
        self.assertEqual('host1', self.db.get_instance(self.others[0]).host)


class ForeignEvacuationTestCase(EvacuateTestBase):
    """instance.rebuild.end of a server someone else evacuated: the Nova
    hook restores its data (notifications.NovaNotificationEndpoint with
    the real recovery engine, Nova's API answering where it runs)."""

    def setUp(self):
        super().setUp()
        self.conf.set_override('auth_type', 'none', group='nova')
        self.eng = self.engine()
        self.endpoint = notifications.NovaNotificationEndpoint(
            self.conf, self.db, self.agent,
            locate=lambda uuid: servers.locate(self.conf, uuid),
            recovery=self.eng)
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))

    def rebuilt(self):
        payload = {'nova_object.data': {
            'uuid': self.inst, 'host': 'host1', 'tenant_id': 'p1',
            'display_name': 'vm1', 'metadata': {}}}
        self.endpoint.info({}, 'nova-compute:compute2',
                           'instance.rebuild.end', payload,
                           {'message_id': base.new_uuid(),
                            'timestamp': '2026-12-07 09:00:00.000000'})

    def test_someone_elses_evacuation_restores_the_data(self):
        self.server().update({'OS-EXT-SRV-ATTR:host': 'compute2'})
        self.rebuilt()
        self.eng.wait(self.inst, 60)
        [rec] = self.db.list_recoveries(self.inst)
        self.assertEqual(('evacuate', 'succeeded'), (rec.action, rec.state))
        self.assertIn('by someone else', rec.reason)
        self.assertNotIn('evacuate-server', self.steps)
        self.assertEqual('compute2', self.db.get_instance(self.inst).host)
        self.assertEqual(['compute2'], [c[0] for c in self.agent.calls])
        # Our own rebuild's notification changes nothing more.
        self.rebuilt()
        self.assertEqual(1, len(self.db.list_recoveries(self.inst)))

    def test_turned_off_it_only_protects_where_nova_runs_it(self):
        self.conf.set_override('restore_foreign_evacuations', False,
                               group='host_monitor')
        self.server().update({'OS-EXT-SRV-ATTR:host': 'compute2'})
        self.rebuilt()
        self.assertEqual([], self.db.list_recoveries(self.inst))
        self.assertEqual([('unprotect', 'compute2'), ('protect', 'compute2')],
                         self.agent.casts)

    def test_a_rebuild_on_the_same_host_is_no_evacuation(self):
        self.rebuilt()
        self.assertEqual([], self.db.list_recoveries(self.inst))
        self.assertEqual([('unprotect', 'host1'), ('protect', 'host1')],
                         self.agent.casts)
