"""ha-snapshot-api behind the real keystonemiddleware, against a scripted
Keystone v3 (token bodies built by keystoneauth1's own fixtures, the
shapes Keystone sends): tokens, 401s, forged identity headers, and the
alarm route's two ways in."""

import fixtures
from keystoneauth1 import fixture as ks_fixture
from oslo_config import cfg
import webob

from ha_snapshot.api import deploy
from ha_snapshot.api import secret
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import scripted_http

SERVICE_TOKEN = 'service-token'
KEY = 'unit-alarm-key'


class Keystone:
    """GET /v3, POST /v3/auth/tokens (the service user), GET
    /v3/auth/tokens (validation of the tokens in ``self.tokens``)."""

    def __init__(self):
        self.tokens = {}
        self.endpoint = scripted_http.ScriptedEndpoint(self.app)
        self.url = self.endpoint.url

    def token(self, token_id, user, project, roles):
        token = ks_fixture.V3Token(user_id=user, project_id=project,
                                   user_domain_id='default',
                                   project_domain_id='default')
        for role in roles:
            token.add_role(name=role)
        self.tokens[token_id] = token
        return token_id

    def app(self, req):
        if req.method == 'GET' and req.path.rstrip('/') == '/v3':
            return 200, {}, {'version': {
                'id': 'v3.14', 'status': 'stable',
                'updated': '2020-04-07T00:00:00Z',
                'links': [{'rel': 'self', 'href': self.url + '/v3/'}],
                'media-types': [{'base': 'application/json',
                                 'type': 'application/'
                                         'vnd.openstack.identity-v3+json'}]}}
        if req.path == '/v3/auth/tokens' and req.method == 'POST':
            req.read_json()
            token = ks_fixture.V3Token(user_id='ha-snapshot',
                                       project_id='service',
                                       user_domain_id='default',
                                       project_domain_id='default')
            token.add_role(name='service')
            svc = token.add_service('identity')
            svc.add_standard_endpoints(public=self.url + '/v3',
                                       internal=self.url + '/v3',
                                       admin=self.url + '/v3')
            return 201, {'X-Subject-Token': SERVICE_TOKEN}, token
        if req.path == '/v3/auth/tokens' and req.method == 'GET':
            if req.headers.get('X-Auth-Token') != SERVICE_TOKEN:
                return 401, {}, {'error': {'code': 401,
                                           'title': 'Unauthorized',
                                           'message': 'bad service token'}}
            subject = req.headers.get('X-Subject-Token')
            if subject not in self.tokens:
                return 404, {}, {'error': {
                    'code': 404, 'title': 'Not Found',
                    'message': 'Could not find token: %s' % subject}}
            return 200, {'X-Subject-Token': subject}, self.tokens[subject]
        return 404, {}, {'error': {'code': 404, 'title': 'Not Found',
                                   'message': req.path}}


class RecordingManagerAPI:
    """The manager RPC API as the handlers call it, recorded."""

    def __init__(self):
        self.calls = []

    def alarm(self, instance, alarm):
        self.calls.append(('alarm', instance, alarm))
        return 'recovering: r1'


class KeystoneAuthTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.keystone = Keystone()
        self.addCleanup(self.keystone.endpoint.stop)
        path = self.path('ha-snapshot.conf')
        with open(path, 'w') as f:
            f.write('[api]\nauth_strategy = keystone\nalarm_secret_key = %s\n'
                    '[database]\nconnection = sqlite:///%s\n'
                    '[keystone_authtoken]\nauth_type = password\n'
                    'auth_url = %s/v3\nusername = ha-snapshot\n'
                    'password = secret\nproject_name = service\n'
                    'user_domain_id = default\nproject_domain_id = default\n'
                    'www_authenticate_uri = %s/v3\n'
                    'interface = public\n'
                    % (KEY, self.path('db.sqlite'), self.keystone.url,
                       self.keystone.url))
        conf = cfg.ConfigOpts()
        ha_conf.register_opts(conf)
        conf(['--config-file', path], project='ha-snapshot',
             default_config_files=[])
        self.db = db_api.Database(conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(conf, database=self.db)
        self.server = base.new_uuid()
        self.db.create_instance(self.server, 'project-p', host='h1',
                                status='protected')
        self.manager = RecordingManagerAPI()
        self.app = deploy.loadapp(conf, db=self.db,
                                  manager_api=self.manager)
        self.member = self.keystone.token('tok-member', 'mia', 'project-p',
                                          ['member', 'reader'])
        self.other = self.keystone.token('tok-other', 'quentin',
                                         'project-q', ['member', 'reader'])

    def request(self, method, path, headers=None, body=None):
        req = webob.Request.blank(path, method=method,
                                  headers=headers or {})
        if body is not None:
            req.body = body.encode()
            req.content_type = 'application/json'
        return req.get_response(self.app)

    def alarm_body(self):
        return ('{"alarm_name": "down", "alarm_id": "a1", "severity": '
                '"critical", "previous": "ok", "current": "alarm", '
                '"reason": "r", "reason_data": {}}')

    def test_public_paths_need_no_token(self):
        self.assertEqual(200, self.request('GET', '/').status_int)
        self.assertEqual(200, self.request('GET', '/healthcheck').status_int)

    def test_no_token_is_401_with_where_to_get_one(self):
        resp = self.request('GET', '/v1/servers')
        self.assertEqual(401, resp.status_int)
        self.assertIn(self.keystone.url, resp.headers['WWW-Authenticate'])

    def test_valid_token(self):
        resp = self.request('GET', '/v1/servers',
                            {'X-Auth-Token': self.member})
        self.assertEqual(200, resp.status_int, resp.text)
        self.assertEqual([self.server],
                         [s['id'] for s in resp.json['servers']])
        resp = self.request('GET', '/v1/servers/' + self.server,
                            {'X-Auth-Token': self.other})
        self.assertEqual(404, resp.status_int, resp.text)
        # NOTE: validated by Keystone, with the service user's token.
        checks = [r for r in self.keystone.endpoint.requests
                  if (r.method, r.path) == ('GET', '/v3/auth/tokens')]
        self.assertEqual({self.member, self.other},
                         {r.headers['X-Subject-Token'] for r in checks})
        self.assertEqual({SERVICE_TOKEN},
                         {r.headers['X-Auth-Token'] for r in checks})

    def test_invalid_token_is_401(self):
        resp = self.request('GET', '/v1/servers', {'X-Auth-Token': 'nope'})
        self.assertEqual(401, resp.status_int)

    def test_forged_identity_headers_are_not_trusted(self):
        forged = {'X-User-Id': 'eve', 'X-Project-Id': 'project-p',
                  'X-Roles': 'admin,member,reader',
                  'X-Identity-Status': 'Confirmed'}
        self.assertEqual(401, self.request('GET', '/v1/servers',
                                           forged).status_int)
        resp = self.request('POST', '/v1/alarms/%s?secret=0bad' % self.server,
                            forged, self.alarm_body())
        self.assertEqual(401, resp.status_int, resp.text)
        resp = self.request('POST', '/v1/alarms/' + self.server, forged,
                            self.alarm_body())
        self.assertEqual(401, resp.status_int, resp.text)
        self.assertEqual([], self.manager.calls)

    def test_alarm_with_the_secret_and_no_token(self):
        url = secret.alarm_url('', KEY, self.server)
        resp = self.request('POST', url, body=self.alarm_body())
        self.assertEqual(202, resp.status_int, resp.text)
        self.assertEqual({'result': 'recovering: r1'}, resp.json)
        self.assertEqual([('alarm', self.server, {
            'alarm_name': 'down', 'alarm_id': 'a1', 'severity': 'critical',
            'previous': 'ok', 'current': 'alarm', 'reason': 'r',
            'reason_data': {}})], self.manager.calls)

    def test_alarm_with_a_wrong_secret_and_a_bad_token(self):
        resp = self.request('POST', '/v1/alarms/%s?secret=%s' % (
            self.server, secret.secret_for('other-key', self.server)),
            {'X-Auth-Token': 'nope'}, self.alarm_body())
        self.assertEqual(401, resp.status_int, resp.text)
        self.assertEqual([], self.manager.calls)

    def test_alarm_with_a_trust_token(self):
        # NOTE: Aodh's trust+http notifier sends a token of the trust,
        # scoped to the alarm's project with the trustor's roles.
        resp = self.request('POST', '/v1/alarms/' + self.server,
                            {'X-Auth-Token': self.member}, self.alarm_body())
        self.assertEqual(202, resp.status_int, resp.text)
        resp = self.request('POST', '/v1/alarms/' + self.server,
                            {'X-Auth-Token': self.other}, self.alarm_body())
        self.assertEqual(404, resp.status_int, resp.text)
        log = self.useFixture(fixtures.FakeLogger(
            name='ha_snapshot.api.handlers.alarm'))
        resp = self.request('POST', '/v1/alarms/' + self.server,
                            {'X-Auth-Token': 'nope'}, self.alarm_body())
        self.assertEqual(401, resp.status_int, resp.text)
        self.assertEqual(1, len(self.manager.calls))
        self.assertIn('Alarm for server %s from' % self.server, log.output)
        self.assertIn('refused: it carries neither a valid Keystone token '
                      'nor a secret', log.output)

