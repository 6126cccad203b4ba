"""Nova's events of one server applied in Nova's order (issue 12, item 4):
a power_on handled before the power_off sent ahead of it, by another
thread or replica, no longer leaves a running server paused."""

import datetime
import random
import threading

from ha_snapshot.db import api as db_api
from ha_snapshot.db import events
from ha_snapshot.db import migration
from ha_snapshot.manager import notifications
from ha_snapshot.tests import base

T0 = datetime.datetime(2026, 12, 7, 3, 0, 0)


def stamp(seconds: float) -> dict:
    """Notification metadata as oslo.messaging writes it."""
    return {'message_id': base.new_uuid(),
            'timestamp': str(T0 + datetime.timedelta(seconds=seconds))}


class EventOrderTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, database__connection=(
            'sqlite:///' + self.path('db.sqlite')))
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, database=self.db)
        self.uuid = base.new_uuid()
        self.db.create_instance(self.uuid, 'p1', host='h1',
                                status='protected')
        self.endpoint = notifications.NovaNotificationEndpoint(
            self.conf, self.db, agent_api=None)

    def notify(self, event, seconds):
        payload = {'nova_object.data': {'uuid': self.uuid, 'host': 'h1',
                                        'tenant_id': 'p1'}}
        self.endpoint.info({}, 'nova-compute:h1', 'instance.%s.end' % event,
                           payload, stamp(seconds))

    def status(self):
        return self.db.get_instance(self.uuid).status

    def test_in_order(self):
        self.notify('power_off', 1)
        self.assertEqual('paused', self.status())
        self.notify('power_on', 2)
        self.assertEqual('protected', self.status())

    def test_power_on_handled_before_the_older_power_off(self):
        self.notify('power_on', 2)
        self.notify('power_off', 1)
        self.assertEqual('protected', self.status())
        # The other way round.
        self.notify('power_off', 4)
        self.notify('power_on', 3)
        self.assertEqual('paused', self.status())

    def test_outcomes(self):
        self.assertEqual((events.NOT_APPLICABLE, 'protected'), events.apply(
            self.db, self.uuid, T0, 'paused', 'protected'))
        self.assertEqual((events.STALE, 'protected'), events.apply(
            self.db, self.uuid, T0, 'protected', 'paused'))
        self.assertEqual((events.APPLIED, 'paused'), events.apply(
            self.db, self.uuid, T0 + datetime.timedelta(microseconds=1),
            'protected', 'paused'))

    def test_many_threads_end_in_the_newest_events_status(self):
        for trial in range(5):
            rng = random.Random(trial)
            todo = [('power_off' if n % 2 else 'power_on', 10 * trial + n)
                    for n in range(1, 9)]
            rng.shuffle(todo)
            barrier = threading.Barrier(len(todo))

            def send(event, seconds):
                barrier.wait(10)
                self.notify(event, seconds)
            threads = [threading.Thread(target=send, args=item)
                       for item in todo]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            newest = max(todo, key=lambda item: item[1])[0]
            self.assertEqual('paused' if newest == 'power_off'
                             else 'protected', self.status(),
                             'trial %d: %s' % (trial, todo))

    def test_event_time_from_metadata_or_arrival(self):
        self.assertEqual(T0 + datetime.timedelta(seconds=5),
                         notifications.event_time(stamp(5)))
        before = datetime.datetime.now(datetime.timezone.utc).replace(
            tzinfo=None)
        for metadata in (None, {}, {'timestamp': 'not a time'}):
            self.assertGreaterEqual(notifications.event_time(metadata),
                                    before)
