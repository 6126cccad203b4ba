"""An agent's health report reaches a manager: called until one answers
(issue 12: a cast taken by a manager that died was lost, and with it the
incident)."""

import threading

import oslo_messaging as messaging

from ha_snapshot.agent import service as agent_service
from ha_snapshot import exception
from ha_snapshot.tests import base


class ManagerApi:
    """Answers report_health after ``failures`` timeouts, or refuses."""

    def __init__(self, failures=0, refuse=False):
        self.failures = failures
        self.refuse = refuse
        self.calls = []
        self.answered = threading.Event()

    def report_health(self, instance, host, reason, details):
        self.calls.append((instance, host, reason))
        if self.refuse:
            raise exception.NotAuthorized(sender='host:c1',
                                          method='report_health',
                                          reason='not on this host')
        if len(self.calls) <= self.failures:
            raise messaging.MessagingTimeout('no manager answered')
        self.answered.set()
        return 'recovering: r1'


class ReportTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = base.make_conf(self.store_dir, agent__retry_initial=0.1,
                              agent__retry_max=0.2, agent__host='c1')
        self.svc = agent_service.AgentService(conf)
        self.addCleanup(self.svc._beat.set)

    def test_called_until_a_manager_answers(self):
        self.svc.manager_api = api = ManagerApi(failures=3)
        self.assertTrue(self.svc._deliver_report('i-1', 'VM died', {}))
        self.assertEqual([('i-1', 'c1', 'VM died')] * 4, api.calls)

    def test_report_runs_on_its_own_thread(self):
        self.svc.manager_api = api = ManagerApi(failures=2)
        self.svc.report('i-1', 'VM died', {})
        self.assertTrue(api.answered.wait(30))
        self.assertEqual(3, len(api.calls))

    def test_a_refusal_is_not_retried(self):
        self.svc.manager_api = api = ManagerApi(refuse=True)
        self.assertFalse(self.svc._deliver_report('i-1', 'VM died', {}))
        self.assertEqual(1, len(api.calls))

    def test_stopping_ends_the_retries(self):
        self.svc.manager_api = api = ManagerApi(failures=10 ** 6)
        self.svc._beat.set()
        self.assertFalse(self.svc._deliver_report('i-1', 'VM died', {}))
        self.assertEqual(1, len(api.calls))
