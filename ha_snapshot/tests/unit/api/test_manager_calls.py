"""The API's calls to the manager end in time, whatever the call does."""

import socket
import threading
import time

from ha_snapshot.api import manager_calls
from ha_snapshot import exception
from ha_snapshot.tests import base


class StuckAPI:
    """A manager API whose calls block until released (a dead bus)."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = []

    def protect(self, instance, project, **kw):
        self.calls.append(instance)
        self.release.wait(30)
        return {'result': 'protected'}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ManagerCallsTestCase(base.TestCase):

    def make(self, brokers=(), max_pending=4, timeout=0.2):
        self.api = StuckAPI()
        self.addCleanup(self.api.release.set)
        calls = manager_calls.ManagerCalls(self.api, timeout, max_pending,
                                           brokers=brokers)
        calls.start()
        return calls

    def test_a_call_that_never_returns_is_a_timeout(self):
        calls = self.make()
        start = time.monotonic()
        self.assertRaises(exception.ManagerTimeout, calls.protect, 'a', 'p')
        self.assertLess(time.monotonic() - start,
                        0.2 + manager_calls.GRACE + 1)

    def test_a_refused_broker_is_unreachable_then_at_once(self):
        calls = self.make(brokers=[('127.0.0.1', closed_port())])
        self.assertRaises(exception.ManagerUnreachable, calls.protect,
                          'a', 'p')
        start = time.monotonic()
        self.assertRaises(exception.ManagerUnreachable, calls.protect,
                          'b', 'p')
        self.assertLess(time.monotonic() - start, 0.5)
        # The second was never started: nothing to send when the bus is
        # back.
        self.assertEqual(['a'], self.api.calls)

    def test_outstanding_calls_are_bounded(self):
        calls = self.make(max_pending=2)
        for name in ('a', 'b'):
            self.assertRaises(exception.ManagerTimeout, calls.protect,
                              name, 'p')
        self.assertRaises(exception.ManagerBusy, calls.protect, 'c', 'p')
        self.assertEqual(['a', 'b'], self.api.calls)
        self.api.release.set()
        base.wait_for(lambda: calls._slots.acquire(blocking=False), 10,
                      'a slot to come back')
        calls._slots.release()

    def test_stop_answers_waiting_requests(self):
        calls = self.make(timeout=30)
        errors = []

        def request():
            try:
                calls.protect('a', 'p')
            except Exception as e:
                errors.append(e)
        t = threading.Thread(target=request)
        t.start()
        base.wait_for(lambda: self.api.calls, 10, 'the call to start')
        start = time.monotonic()
        calls.stop()
        t.join(5)
        self.assertLess(time.monotonic() - start, 2)
        self.assertIsInstance(errors[0], exception.ApiStopping)
        self.assertRaises(exception.ApiStopping, calls.protect, 'b', 'p')

    def test_results_and_errors_pass_through(self):
        calls = self.make()
        self.api.release.set()
        self.assertEqual({'result': 'protected'}, calls.protect('a', 'p'))
        self.api.protect = lambda *a, **k: (_ for _ in ()).throw(
            exception.InstanceNotFound(instance='a'))
        self.assertRaises(exception.InstanceNotFound, calls.protect, 'a', 'p')
