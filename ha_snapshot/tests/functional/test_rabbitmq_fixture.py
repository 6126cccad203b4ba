"""The RabbitMQ fixture, and oslo.messaging over it, in one process.

RPC calls and casts and versioned-style notifications go through a real
broker on loopback; the broker is restarted under a connected client; and
nothing of it is left running afterwards.

oslo.messaging runs on a private ``ConfigOpts`` here: see
:func:`messaging_conf` for the one step that takes. No eventlet: servers
and listeners use the threading executor (the default when nothing is
monkey-patched).
"""

import logging
import os
import queue
import time
import uuid

import fixtures
from oslo_config import cfg
from oslo_context import context as oslo_context
import oslo_messaging
from oslo_messaging import conffixture
from oslo_utils import eventletutils
import psutil
from testtools import content

from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import rabbitmq

REPLY_TIMEOUT = 10


def messaging_conf() -> cfg.ConfigOpts:
    """A private ConfigOpts that oslo.messaging can run on.

    NOTE: oslo.messaging registers the [oslo_messaging_metrics] and
    [oslo_messaging_tracing] groups on the global cfg.CONF only, at import
    time, yet reads them from the ConfigOpts of the transport at every call
    and cast: on a private ConfigOpts the first call fails with
    NoSuchOptError. The constructor of oslo_messaging.conffixture.ConfFixture
    (public API) registers every group oslo.messaging reads on the
    ConfigOpts it is given; only its setUp, not called here, would touch
    option values.
    """
    conf = cfg.ConfigOpts()
    conffixture.ConfFixture(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    # Reconnect quickly after the broker restarts (1 s, then 2 s, 4 s...).
    conf.set_override('rabbit_retry_interval', 1,
                      group='oslo_messaging_rabbit')
    return conf


class Agent:
    """An RPC endpoint."""

    def __init__(self):
        self.casts = queue.Queue()

    def echo(self, ctxt, value):
        return {'value': value, 'request_id': ctxt.get('request_id')}

    def remember(self, ctxt, value):
        self.casts.put(value)


class NotificationSink:
    """A notification endpoint (INFO priority)."""

    def __init__(self):
        self.seen = queue.Queue()

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.seen.put((ctxt, publisher_id, event_type, payload))


class MessagingTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.logger = self.useFixture(fixtures.FakeLogger(
            level=logging.INFO, format='%(asctime)s %(levelname)s '
            '%(name)s %(message)s'))
        self.conf = messaging_conf()
        self.topic = 'test-%s' % uuid.uuid4().hex

    def rpc_pair(self, url):
        """An RPC server with an :class:`Agent` and a client, over url."""
        transport = oslo_messaging.get_rpc_transport(self.conf, url=url)
        self.addCleanup(transport.cleanup)
        agent = Agent()
        server = oslo_messaging.get_rpc_server(
            transport, oslo_messaging.Target(topic=self.topic,
                                             server='agent-1'), [agent])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)
        self.assertEqual('threading', server.executor_type)
        self.assertFalse(eventletutils.is_monkey_patched('thread'))
        client = oslo_messaging.get_rpc_client(
            transport, oslo_messaging.Target(topic=self.topic),
            timeout=REPLY_TIMEOUT)
        return agent, client


class SharedBrokerTestCase(MessagingTestCase):
    """Messaging over the per-process shared broker."""

    def setUp(self):
        super().setUp()
        self.rabbit = self.useFixture(rabbitmq.SharedRabbitMQ())

    def test_shared_server_is_one_per_process(self):
        self.assertIs(self.rabbit.server, rabbitmq.shared_server())
        self.assertTrue(self.rabbit.server.running)
        self.assertTrue(self.rabbit.transport_url.startswith(
            'rabbit://ha-snapshot:'))

    def test_rpc_call_and_cast(self):
        agent, client = self.rpc_pair(self.rabbit.transport_url)
        reply = client.call({'request_id': 'req-call'}, 'echo',
                            value='hello')
        self.assertEqual({'value': 'hello', 'request_id': 'req-call'}, reply)

        client.cast({}, 'remember', value=42)
        self.assertEqual(42, agent.casts.get(timeout=REPLY_TIMEOUT))

        started = time.monotonic()
        for i in range(20):
            self.assertEqual(i, client.call({}, 'echo', value=i)['value'])
        per_call = (time.monotonic() - started) / 20
        self.addDetail('call-seconds', content.text_content(
            '%.4f' % per_call))
        self.assertLess(per_call, 1.0)

    def test_notification_messagingv2(self):
        transport = oslo_messaging.get_notification_transport(
            self.conf, url=self.rabbit.transport_url)
        self.addCleanup(transport.cleanup)
        sink = NotificationSink()
        listener = oslo_messaging.get_notification_listener(
            transport, [oslo_messaging.Target(topic=self.topic)], [sink])
        listener.start()
        self.addCleanup(listener.wait)
        self.addCleanup(listener.stop)
        notifier = oslo_messaging.Notifier(
            transport, publisher_id='ha-snapshot.test', driver='messagingv2',
            topics=[self.topic])

        ctxt = oslo_context.RequestContext(request_id='req-notify',
                                      project_id='p1')
        notifier.info(ctxt, 'ha_snapshot.test.ping', {'n': 1})
        got_ctxt, publisher, event_type, payload = sink.seen.get(
            timeout=REPLY_TIMEOUT)
        self.assertEqual(('ha-snapshot.test', 'ha_snapshot.test.ping',
                          {'n': 1}), (publisher, event_type, payload))
        self.assertEqual('req-notify', got_ctxt['request_id'])
        self.assertEqual('p1', got_ctxt['project_id'])

        # NOTE: a plain dict context is replaced by {} before sending (the
        # notifier only keeps what a RequestContext redacts): the
        # notification arrives, its context does not.
        notifier.info({'request_id': 'req-dict'}, 'ha_snapshot.test.ping',
                      {'n': 2})
        got_ctxt, _, _, payload = sink.seen.get(timeout=REPLY_TIMEOUT)
        self.assertEqual({'n': 2}, payload)
        self.assertIsNone(got_ctxt.get('request_id'))


class PrivateBrokerTestCase(MessagingTestCase):
    """A broker of the test's own: restarted, then checked gone."""

    def test_restart_under_a_connected_client(self):
        rabbit = self.useFixture(rabbitmq.RabbitMQServer())
        self.addDetail('start-seconds', content.text_content(
            '%.2f' % rabbit.start_seconds))
        self.assertLess(rabbit.start_seconds, 60)
        agent, client = self.rpc_pair(rabbit.transport_url)
        self.assertEqual('before', client.call({}, 'echo',
                                               value='before')['value'])
        port, old_pids = rabbit.port, rabbit.pids()

        rabbit.stop()
        self.assertFalse(rabbit.running)
        # NOTE: the default retry=None makes a call wait for the broker
        # forever, whatever its timeout: the timeout covers the reply only.
        # A bounded retry bounds the send as well.
        started = time.monotonic()
        self.assertRaises(oslo_messaging.MessagingException,
                          client.prepare(timeout=5, retry=1).call,
                          {}, 'echo', value='down')
        self.assertLess(time.monotonic() - started, 15)

        rabbit.start()
        self.assertEqual(port, rabbit.port)
        self.assertTrue(rabbit.running)
        self.assertNotEqual(old_pids, rabbit.pids())
        # The server's consumer and the client's reply queue come back on
        # their own; until the server has re-declared its queue a call is
        # unroutable and times out.
        reply = self.call_until_answered(client, deadline=60)
        self.assertEqual('after', reply['value'])
        client.cast({}, 'remember', value='after')
        self.assertEqual('after', agent.casts.get(timeout=REPLY_TIMEOUT))
        self.assertEqual(2, len(rabbit.start_times))

    def call_until_answered(self, client, deadline):
        stop_at = time.monotonic() + deadline
        while True:
            try:
                return client.prepare(timeout=3, retry=1).call(
                    {}, 'echo', value='after')
            except oslo_messaging.MessagingException:
                if time.monotonic() > stop_at:
                    self.fail('no RPC reply within %d s of the broker '
                              'restart' % deadline)

    def test_cleanup_leaves_no_process(self):
        rabbit = rabbitmq.RabbitMQServer()
        rabbit.setUp()
        try:
            # Process objects, not bare pids: a recycled pid is not ours.
            procs = [psutil.Process(p) for p in rabbit.pids()]
            base_dir = rabbit.base_dir
            names = {p.name() for p in procs}
            self.assertIn('beam.smp', names)
            self.assertIn('epmd', names)
            rabbit.stop()
            # epmd outlives a stop: it serves the next start.
            self.assertEqual(['epmd'], [psutil.Process(p).name()
                                        for p in rabbit.pids()])
        finally:
            rabbit.cleanUp()
        self.assertEqual([], [p.pid for p in procs
                              if rabbitmq.process_alive(p)])
        self.assertEqual([], rabbit.pids())
        self.assertFalse(os.path.exists(base_dir))
        self.assertFalse(rabbitmq.port_accepts(rabbit.port))
        self.assertFalse(rabbitmq.port_accepts(rabbit.epmd_port))

    def test_missing_binaries_fail_naming_the_package(self):
        rabbit = rabbitmq.RabbitMQServer(bin_dir=self.path('nowhere'))
        e = self.assertRaises(Exception, rabbit.setUp)
        # fixtures wraps what _setUp raised with the fixture's details.
        first = e.args[0][1] if isinstance(
            e, fixtures.MultipleExceptions) else e
        self.assertIsInstance(first, rabbitmq.RabbitMQFixtureError)
        self.assertIn("Debian package rabbitmq-server", str(first))
