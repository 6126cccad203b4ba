"""A test case base for tests that run the ha-snapshot daemons for real.

:class:`DaemonsTestCase` starts ``ha-snapshot-manager`` (one or several
replicas) and, unless told not to, ``ha-snapshot-agent`` as processes
(fixtures/services.py) on a private or the shared RabbitMQ, and gives the
test what it needs to wait and to explain a failure:

* :meth:`wait_for` polls a condition, bounded, and fails naming what it
  waited for; each wait that ends well is noted in the test's
  ``timeline`` detail (with :meth:`mark` for the test's own events);
* the tails of every daemon's log (and of whatever :meth:`failure_logs`
  adds) are attached to a test that fails or errors;
* :meth:`start_replicas` runs several manager replicas on one database
  server (issue 12), and :meth:`standing` reads one replica's entry as
  ``GET /v1/managers`` shows it;
* :class:`StepWatch` samples a recovery's state and step from the
  database as they move.

May import the test fixtures and ha_snapshot.manager.membership; holds no
test of its own.
"""

import threading
import time
import uuid

from testtools import content

from ha_snapshot.db import engine as db_engine
from ha_snapshot.manager import membership
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import rabbitmq
from ha_snapshot.tests.fixtures import services


class DaemonsTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.svc = None
        self._logs_attached = False
        self.started = time.time()
        self.events = []
        self.addDetail('timeline', content.Content(
            content.UTF8_TEXT, lambda: [self._timeline().encode()]))
        self.addOnException(self._attach_logs)

    # --- daemons ----------------------------------------------------------

    def start_services(self, transport_url: str | None = None,
                       options: dict | None = None, managers: int = 1,
                       agent: bool = True) -> services.Services:
        """The daemons on ``transport_url`` (default: the shared broker)
        with ``options`` over the fixture's; ``agent``: start the real
        agent too (False: the test serves the agent's topic itself)."""
        if transport_url is None:
            transport_url = self.useFixture(
                rabbitmq.SharedRabbitMQ()).transport_url
        host = 'agent-%s' % uuid.uuid4().hex[:8]
        self.svc = self.useFixture(services.Services(
            self.path('services'), transport_url, host, options=options,
            managers=managers))
        self.addCleanup(self.mark, 'clean-up starts')
        self.svc.start(agent=agent)
        self.mark('%d manager(s)%s started'
                  % (managers, ' and the agent' if agent else ''))
        self.transport = self.svc.transport()
        return self.svc

    def start_replicas(self, url: str, managers: int,
                       transport_url: str | None = None,
                       options: dict | None = None, agent: bool = True,
                       **cluster) -> services.Services:
        """``managers`` manager replicas on the database at ``url``
        (issue 12): beating every second, dead after 3 missed beats;
        ``cluster``: more [manager_cluster] options."""
        options = dict(options or {}, database={'connection': url})
        options['manager_cluster'] = dict(
            {'heartbeat_interval': 1, 'dead_after_missed': 3}, **cluster)
        svc = self.start_services(transport_url=transport_url,
                                  options=options, managers=managers,
                                  agent=agent)
        self.wait_converged(managers)
        return svc

    def wait_converged(self, managers: int) -> None:
        """Until every replica has beaten since all ``managers`` were
        alive: a beat refreshes the replica's ring after writing its own
        row, so each replica then places the servers on the same ring (a
        replica started a moment later would otherwise take over servers
        whose first deltas its elder merged)."""
        def live():
            found = [s for s in membership.survey(self.svc.conf,
                                                  self.svc.db)
                     if s.replica.alive]
            return found if len(found) >= managers else None
        self.wait_for(live, 60, '%d manager replicas alive' % managers)
        since = db_engine.to_datetime(time.time())
        self.wait_for(
            lambda: all(db_engine.to_datetime(s.replica.heartbeat_at) > since
                        for s in live() or
                        ()) and live(),
            30, 'every replica to beat since all %d were alive' % managers)

    def standing(self, daemon):
        """The membership.survey entry of ``daemon``'s incarnation (by
        pid): what GET /metrics and /v1/managers show of it."""
        pid = daemon.pid
        found = [s for s in membership.survey(self.svc.conf, self.svc.db)
                 if s.replica.pid == pid]
        self.assertEqual(1, len(found), found)
        return found[0]

    # --- the timeline and the logs ------------------------------------------

    def mark(self, what: str) -> float:
        """Note an event in the test's timeline (a detail of the test)."""
        now = time.time()
        self.events.append((now, what))
        return now

    def _timeline(self) -> str:
        return ''.join('%7.2f s  %s\n' % (t - self.started, what)
                       for t, what in self.events)

    def failure_logs(self) -> dict:
        """Detail name -> text attached when the test fails: the daemons'
        logs; a test adds what it started itself."""
        return self.svc.logs() if self.svc is not None else {}

    def _attach_logs(self, exc_info=None):
        if self._logs_attached:
            return
        self._logs_attached = True
        for name, text in self.failure_logs().items():
            self.addDetail(name, content.text_content(text))

    # --- waiting ----------------------------------------------------------

    def wait_for(self, predicate, timeout: float, what: str,
                 interval: float = 0.05):
        """Poll ``predicate`` until it returns something true; return it.

        On timeout the test fails naming ``what``, with the logs attached.
        """
        value = self.poll(predicate, timeout, interval)
        if not value:
            self._attach_logs()
            self.fail('timed out after %.0f s waiting for %s'
                      % (timeout, what))
        self.mark(what)
        return value

    @staticmethod
    def poll(predicate, timeout: float, interval: float = 0.05):
        """``predicate()`` once it is true, or its false value after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(interval)

    def wait_log(self, daemon, text: str, offset: int, timeout: float,
                 count: int = 1) -> str:
        return self.wait_for(
            lambda: daemon.log(offset).count(text) >= count
            and daemon.log(offset), timeout,
            '%d x "%s" in the log of %s' % (count, text, daemon.name))


class StepWatch(threading.Thread):
    """Samples one recovery's (state, step, updated_at) from the database
    until stopped: what an operator polling the API would have seen."""

    def __init__(self, db, recovery_id: str, interval: float = 0.01):
        super().__init__(daemon=True, name='step-watch')
        self.db = db
        self.recovery_id = recovery_id
        self.interval = interval
        self.samples = []
        self.stopped = threading.Event()

    def run(self):
        last = None
        while not self.stopped.is_set():
            row = self.db.get_recovery(self.recovery_id)
            seen = (row.state, row.step, row.updated_at)
            if seen != last:
                self.samples.append((time.time(),) + seen)
                last = seen
            self.stopped.wait(self.interval)

    def stop(self) -> list:
        self.stopped.set()
        self.join(10)
        return self.samples
