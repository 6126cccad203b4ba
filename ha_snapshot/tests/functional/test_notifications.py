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
from ha_snapshot import rpc
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import agent as agent_fixture
from ha_snapshot.tests.fixtures import rabbitmq

# NOTE: notifications captured from a real Nova 34 (see DESIGN.md).
CAPTURED = os.path.join(os.path.dirname(__file__), 'nova')


def load(event):
    with open(os.path.join(CAPTURED, event + '.json')) as f:
        return json.load(f)


class NotificationTestCase(base.TestCase):

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
            ntransport, self.conf, self.db, agent_rpcapi.AgentAPI(transport))
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
