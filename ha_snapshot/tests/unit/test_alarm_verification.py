"""An alarm starts a recovery only if Aodh says it really fired.

The real Manager, database and recovery engine; Aodh is a scripted
endpoint answering ``GET /v2/alarms/{id}`` the way Aodh's API does.
"""

import datetime

from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.tests.unit import scripted_http
from ha_snapshot.tests.unit import test_manager


def _iso(when: datetime.datetime) -> str:
    # NOTE: Aodh's format: naive UTC with microseconds.
    return when.strftime('%Y-%m-%dT%H:%M:%S.%f')


class FakeAodh:

    def __init__(self):
        self.alarms = {}
        self.down = False
        self.requests = []
        self.endpoint = scripted_http.ScriptedEndpoint(self.app)
        self.url = self.endpoint.url

    def app(self, req):
        self.requests.append((req.method, req.path))
        if req.path.rstrip('/') == '':
            # NOTE: Aodh's version document: a client that discovers
            # versions from it ends up on .../v2.
            return 200, {}, {'versions': {'values': [{
                'id': 'v2', 'status': 'stable',
                'links': [{'rel': 'self', 'href': self.url + '/v2'}]}]}}
        if self.down:
            return 503, {}, {'error_message': 'Service Unavailable'}
        parts = req.path.strip('/').split('/')
        if req.method == 'GET' and parts[:2] == ['v2', 'alarms'] and \
                len(parts) == 3 and parts[2] in self.alarms:
            return 200, {}, dict(self.alarms[parts[2]])
        return 404, {}, {'error_message': {
            'faultstring': 'Alarm %s not found' % parts[-1]}}

    def fire(self, alarm_id, server, when=None, state='alarm', **extra):
        self.alarms[alarm_id] = dict({
            'alarm_id': alarm_id, 'name': 'a-' + alarm_id, 'type': 'event',
            'enabled': True, 'state': state,
            'state_timestamp': _iso(when or datetime.datetime.utcnow()),
            'alarm_actions': [
                'trust+http://127.0.0.1:8799/v1/alarms/%s' % server]},
            **extra)


class AlarmVerificationTestCase(test_manager._Base):

    def setUp(self):
        super().setUp()
        self.aodh = FakeAodh()
        self.addCleanup(self.aodh.endpoint.stop)
        self.conf.set_override('auth_type', 'none', group='aodh')
        # NOTE: a catalog-style root URL, as the harness and devstack
        # register Aodh (the /v2 is the client's business).
        self.conf.set_override('endpoint_override', self.aodh.url + '/',
                               group='aodh')
        self.conf.set_override('cooldown', 60, group='recovery')
        self.now = 1000.0
        self.action = test_manager.Action()
        self.mgr.recovery = recovery_mod.RecoveryEngine(
            self.conf, self.db, self.action, clock=lambda: self.now)
        self.addCleanup(self.mgr.recovery.stop)
        self.register()
        self.ship(self.delta(self.base, 0, None, backing=False))

    def alarm(self, alarm_id='a1'):
        result = self.mgr.alarm(self.inst, {
            'alarm_id': alarm_id, 'alarm_name': 'a-' + alarm_id,
            'severity': 'critical', 'previous': 'ok', 'current': 'alarm',
            'reason': 'test'})
        self.mgr.recovery.wait(self.inst, 30)
        return result

    def test_a_fired_alarm_starts_a_recovery(self):
        self.aodh.fire('a1', self.inst)
        self.assertTrue(self.alarm().startswith('recovering'))
        self.assertEqual(1, len(self.action.calls))
        self.assertEqual(['/v2/alarms/a1'], [
            path for _m, path in self.aodh.requests if path != '/'])

    def test_a_replay_after_the_cooldown_starts_nothing(self):
        self.aodh.fire('a1', self.inst,
                       datetime.datetime.utcnow() - datetime.timedelta(
                           seconds=5))
        self.assertTrue(self.alarm().startswith('recovering'))
        self.now += 3600
        for _ in range(3):
            result = self.alarm()
            self.assertIn('refused', result)
            self.assertIn('before the last recovery', result)
        self.assertEqual(1, len(self.action.calls))
        self.assertEqual(1, len(self.db.list_recoveries(self.inst)))
        # The alarm fires again for real: that one counts.
        self.aodh.fire('a1', self.inst,
                       datetime.datetime.utcnow() + datetime.timedelta(
                           seconds=1))
        self.assertTrue(self.alarm().startswith('recovering'))
        self.assertEqual(2, len(self.action.calls))

    def test_what_aodh_does_not_confirm_is_refused(self):
        other = test_manager.base.new_uuid()
        self.aodh.fire('other-server', other)
        self.aodh.fire('ok-now', self.inst, state='ok')
        self.aodh.fire('disabled', self.inst, enabled=False)
        self.aodh.fire('no-time', self.inst, state_timestamp=None)
        cases = {
            'unknown': 'Aodh has no alarm unknown',
            'other-server': 'no action posting to server',
            'ok-now': "in state 'ok'",
            'disabled': 'is disabled',
            'no-time': 'gives no time',
        }
        for alarm_id, why in cases.items():
            result = self.alarm(alarm_id)
            self.assertTrue(result.startswith('refused'), result)
            self.assertIn(why, result)
        self.assertEqual([], self.action.calls)
        self.assertEqual([], self.db.list_recoveries(self.inst))

    def test_aodh_down_fails_closed(self):
        self.aodh.fire('a1', self.inst)
        self.aodh.down = True
        result = self.alarm()
        self.assertIn('refused: Aodh answered 503', result)
        self.aodh.endpoint.stop()
        result = self.alarm()
        self.assertIn('refused: Aodh could not be asked', result)
        self.assertEqual([], self.action.calls)

    def test_verification_required_without_credentials(self):
        self.conf.clear_override('auth_type', group='aodh')
        self.conf.set_override('alarm_verification', 'aodh',
                               group='recovery')
        result = self.alarm()
        self.assertIn('refused: alarms cannot be verified', result)
        self.assertIn('[aodh] auth_type is not set', result)
        self.assertEqual([], self.action.calls)

    def test_auto_without_aodh_accepts_with_a_warning(self):
        self.conf.clear_override('auth_type', group='aodh')
        with self.assertLogs('ha_snapshot.manager.alarms', 'WARNING') as log:
            self.assertTrue(self.alarm().startswith('recovering'))
        self.assertIn('accepted unverified', log.output[0])
        self.assertEqual([], self.aodh.requests)
