"""Nova's real notification payloads, published on a real RabbitMQ."""

import copy
import json
import logging
import os
import time

import fixtures
from oslo_context import context as oslo_context
import oslo_messaging as messaging
from oslo_messaging import conffixture

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.manager import notifications
from ha_snapshot.openstack import servers
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import agent as agent_fixture
from ha_snapshot.tests.fixtures import rabbitmq
from ha_snapshot.tests.unit import fake_openstack

# NOTE: notifications captured from a real Nova 34 (see DESIGN.md).
CAPTURED = os.path.join(os.path.dirname(__file__), 'nova')


def load(event):
    with open(os.path.join(CAPTURED, event + '.json')) as f:
        return json.load(f)


class _NotificationBase(base.TestCase):

    def setUp(self):
        super().setUp()
        broker = self.useFixture(rabbitmq.SharedRabbitMQ()).server
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override('connection', 'sqlite:///' + self.path(
            'db.sqlite'), group='database')
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.host = 'probe-%s' % base.new_uuid()[:8]
        # NOTE: each test its own exchange-wide host name and topic, so
        # tests sharing the broker never see each other's messages.
        self.topic = 'versioned_notifications_%s' % self.host
        self.conf.set_override('notification_topics', [self.topic],
                               group='manager')
        transport = rpc.get_transport(self.conf, url=broker.transport_url)
        self.addCleanup(transport.cleanup)
        ntransport = rpc.get_notification_transport(
            self.conf, url=broker.transport_url)
        self.addCleanup(ntransport.cleanup)
        self.spy = agent_fixture.RecordingAgent()
        server = rpc.get_server(transport, rpc.AGENT_TOPIC, self.host,
                                [self.spy])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        listener = notifications.get_listener(
            ntransport, self.conf, self.db, agent_rpcapi.AgentAPI(transport),
            locate=self.locate())
        listener.start()
        self.addCleanup(listener.wait)
        self.addCleanup(listener.stop)
        # NOTE: Nova's side: its transport's control_exchange is "nova".
        # The exchange is read when the transport is made.
        nova_conf = base.make_conf(self.store_dir)
        conffixture.ConfFixture(nova_conf)
        nova_conf.set_override('control_exchange', 'nova')
        nova_transport = rpc.get_notification_transport(
            nova_conf, url=broker.transport_url)
        self.addCleanup(nova_transport.cleanup)
        self.notifier = messaging.Notifier(
            nova_transport, publisher_id='nova-compute:' + self.host,
            driver='messagingv2', topics=[self.topic])

    def locate(self):
        """How the listener asks Nova where a server runs (None: it
        trusts the notification, as without [nova] credentials)."""
        return None

    def publish(self, event, payload):
        ctxt = oslo_context.RequestContext(project_id='p')
        self.notifier.info(ctxt, event, payload)

    def server(self, event, uuid=None, **changes):
        payload = copy.deepcopy(load(event)['payload'])
        data = payload['nova_object.data']
        data['uuid'] = uuid or base.new_uuid()
        data['host'] = self.host
        data.update(changes)
        return payload

    def wait_status(self, uuid, status, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.db.get_instance(uuid).status == status:
                    return
            except exception.InstanceNotFound:
                pass  # NOTE: not recorded yet
            time.sleep(0.05)
        raise AssertionError('instance %s did not become %s within %s s'
                             % (uuid, status, timeout))


class NotificationTestCase(_NotificationBase):

    def test_opt_in_protect_pause_delete(self):
        opted = self.server('instance.create.end',
                            metadata={'ha_snapshot:protect': 'true'})
        uuid = opted['nova_object.data']['uuid']
        # Not opted in (the captured payload as Nova sent it): ignored.
        plain = self.server('instance.create.end')
        self.publish('instance.create.end', plain)
        # Broken payloads: logged and dropped, the listener goes on.
        self.publish('instance.create.end', {'nova_object.data': {
            'uuid': 'not-a-uuid'}})
        self.publish('instance.create.end', 'garbage')
        self.publish('instance.create.end', opted)
        self.spy.wait(1)
        self.assertEqual(('protect', uuid), (self.spy.calls[0][0],
                                             self.spy.calls[0][1]['instance']))
        row = self.db.get_instance(uuid)
        self.assertEqual(self.host, row.host)
        self.assertEqual(opted['nova_object.data']['tenant_id'],
                         row.project_id)
        self.assertEqual(1, len(self.db.list_instances()))
        self.db.update_instance_status(uuid, 'protecting', 'protected')
        self.publish('instance.shutdown.end', self.server(
            'instance.shutdown.end', uuid=uuid))
        self.wait_status(uuid, 'paused')
        self.publish('instance.delete.end', self.server(
            'instance.delete.end', uuid=uuid))
        self.wait_status(uuid, 'deleted')
        self.spy.wait(2)
        self.assertEqual(('unprotect', uuid), (self.spy.calls[1][0],
                                               self.spy.calls[1][1]
                                               ['instance']))

    def test_flavor_extra_spec_and_rebuild(self):
        payload = self.server('instance.create.end')
        uuid = payload['nova_object.data']['uuid']
        payload['nova_object.data']['flavor']['nova_object.data'][
            'extra_specs'] = {'ha_snapshot:protect': 'True'}
        self.publish('instance.create.end', payload)
        self.spy.wait(1)
        rebuilt = self.server('instance.rebuild.end', uuid=uuid,
                              metadata={'ha_snapshot:protect': 'true'})
        self.publish('instance.rebuild.end', rebuilt)
        # Re-baseline: the agent is told to start over, no recovery.
        self.spy.wait(3)
        self.assertEqual(['protect', 'unprotect', 'protect'],
                         [c[0] for c in self.spy.calls])
        self.assertEqual([], self.db.list_recoveries(uuid))

    def test_rebuild_by_our_own_recovery_is_left_to_it(self):
        log = self.useFixture(fixtures.FakeLogger(
            name='ha_snapshot.manager.notifications', level=logging.INFO))
        payload = self.server('instance.create.end',
                              metadata={'ha_snapshot:protect': 'true'})
        uuid = payload['nova_object.data']['uuid']
        self.publish('instance.create.end', payload)
        self.spy.wait(1)
        self.db.update_instance_status(uuid, 'protecting', 'recovering')
        self.publish('instance.rebuild.end', self.server(
            'instance.rebuild.end', uuid=uuid,
            metadata={'ha_snapshot:protect': 'true'}))
        deadline = time.monotonic() + 30
        while 'instance.rebuild.end for %s' % uuid not in log.output:
            self.assertLess(time.monotonic(), deadline,
                            'the listener never handled instance.rebuild.end')
            time.sleep(0.05)
        # The recovery re-baselines itself: no unprotect/protect pair that
        # would make the agent resend the whole disk.
        self.assertIn('rebuilt by a recovery', log.output)
        self.assertEqual(['protect'], [c[0] for c in self.spy.calls])
        self.assertEqual('recovering', self.db.get_instance(uuid).status)


class NovaConfirmsTestCase(_NotificationBase):
    """With [nova] credentials the host (and project) of a server come from
    Nova's API, never from a notification alone: a forged one cannot hand
    a protected server to another host's agent."""

    def locate(self):
        self.nova = fake_openstack.FakeNova()
        self.addCleanup(self.nova.stop)
        self.conf.set_override('auth_type', 'none', group='nova')
        self.conf.set_override('endpoint_override', self.nova.url,
                               group='nova')
        return lambda uuid: servers.locate(self.conf, uuid)

    def opted(self, event, uuid=None, **changes):
        return self.server(event, uuid=uuid,
                           metadata={'ha_snapshot:protect': 'true'},
                           **changes)

    def wait_logged(self, log, text, timeout=30):
        deadline = time.monotonic() + timeout
        while text not in log.output:
            self.assertLess(time.monotonic(), deadline,
                            'never logged: %s' % text)
            time.sleep(0.05)

    def test_a_forged_host_is_replaced_by_novas(self):
        payload = self.opted('instance.create.end', host='rogue-host')
        data = payload['nova_object.data']
        self.nova.add_server(data['uuid'], data['tenant_id'], 'img',
                             host=self.host)
        self.publish('instance.create.end', payload)
        self.spy.wait(1)
        self.assertEqual(('protect', data['uuid']), (
            self.spy.calls[0][0], self.spy.calls[0][1]['instance']))
        self.assertEqual(self.host, self.db.get_instance(data['uuid']).host)

    def test_unknown_to_nova_or_another_project_is_dropped(self):
        log = self.useFixture(fixtures.FakeLogger(
            name='ha_snapshot.manager.notifications', level=logging.INFO))
        unknown = self.opted('instance.create.end')
        foreign = self.opted('instance.create.end')
        data = foreign['nova_object.data']
        self.nova.add_server(data['uuid'], 'another-project', 'img',
                             host=self.host)
        self.publish('instance.create.end', unknown)
        self.publish('instance.create.end', foreign)
        self.wait_logged(log, 'belongs to project another-project')
        self.wait_logged(log, 'Nova has no server %s'
                         % unknown['nova_object.data']['uuid'])
        self.assertEqual([], self.db.list_instances())
        self.assertEqual([], self.spy.calls)

    def test_evacuated_server_is_protected_where_nova_runs_it(self):
        # An evacuation's instance.rebuild.end still names the dead source
        # host in its payload; Nova's API names the destination.
        payload = self.opted('instance.create.end')
        data = payload['nova_object.data']
        uuid = data['uuid']
        self.nova.add_server(uuid, data['tenant_id'], 'img', host=self.host)
        self.publish('instance.create.end', payload)
        self.spy.wait(1)
        self.db.update_instance(uuid, host='dead-host')
        self.publish('instance.rebuild.end', self.opted(
            'instance.rebuild.end', uuid=uuid, host='dead-host'))
        self.spy.wait(3)
        self.assertEqual(['protect', 'unprotect', 'protect'],
                         [c[0] for c in self.spy.calls])
        self.assertEqual(self.host, self.db.get_instance(uuid).host)
