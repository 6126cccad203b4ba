"""noauth and the request context: what identity a request gets."""

import json

import webob

from ha_snapshot.api import auth
from ha_snapshot.api import deploy
from ha_snapshot.tests import base


def _whoami(environ, start_response):
    """Stands for the API: echoes the identity headers auth left."""
    body = json.dumps({k: environ.get('HTTP_' + k) for k in (
        'X_USER_ID', 'X_PROJECT_ID', 'X_ROLES', 'X_IDENTITY_STATUS')})
    start_response('200 OK', [('Content-Type', 'application/json')])
    return [body.encode()]


class NoAuthTestCase(base.TestCase):

    def call(self, path, **headers):
        resp = webob.Request.blank(path, headers=headers).get_response(
            auth.NoAuthMiddleware(_whoami))
        return resp.status_int, resp.json

    def test_headers(self):
        status, who = self.call('/v1/servers', **{
            'X-User-Id': 'u', 'X-Project-Id': 'p', 'X-Roles': 'member'})
        self.assertEqual(200, status)
        self.assertEqual({'X_USER_ID': 'u', 'X_PROJECT_ID': 'p',
                          'X_ROLES': 'member,reader',
                          'X_IDENTITY_STATUS': 'Confirmed'}, who)

    def test_placement_style_token(self):
        status, who = self.call('/v1/servers', **{'X-Auth-Token': 'admin:p'})
        self.assertEqual(200, status)
        self.assertEqual(('admin', 'p', 'admin,member,reader'),
                         (who['X_USER_ID'], who['X_PROJECT_ID'],
                          who['X_ROLES']))
        status, who = self.call('/v1/servers', **{'X-Auth-Token': 'bob'})
        self.assertEqual(('bob', 'bob', ''), (who['X_USER_ID'],
                                              who['X_PROJECT_ID'],
                                              who['X_ROLES']))

    def test_no_identity(self):
        status, body = self.call('/v1/servers')
        self.assertEqual(401, status)
        self.assertEqual('ha_snapshot.auth.unauthorized',
                         body['errors'][0]['code'])
        # The alarm route decides itself (a secret may stand in).
        self.assertEqual(200, self.call('/v1/alarms/x')[0])
        self.assertEqual(200, self.call('/')[0])


class PipelineTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        conf = base.make_conf(self.store_dir, database__connection=(
            'sqlite:///' + self.path('db.sqlite')))
        self.app = deploy.loadapp(conf, manager_api=object())
        self.headers = {'X-User-Id': 'u', 'X-Project-Id': 'p',
                        'X-Roles': 'member'}

    def test_every_response_has_a_request_id_and_version(self):
        for path in ('/', '/v1/servers/x', '/nowhere'):
            resp = webob.Request.blank(path, headers=self.headers
                                       ).get_response(self.app)
            self.assertTrue(resp.headers['x-openstack-request-id']
                            .startswith('req-'), path)
            self.assertEqual('ha-snapshot 1.0',
                             resp.headers['OpenStack-API-Version'], path)

    def test_body_limits(self):
        req = webob.Request.blank('/v1/servers/x', method='PUT',
                                  headers=self.headers)
        req.body = b'{"policy": "%s"}' % (b'x' * 70000)
        req.content_type = 'application/json'
        resp = req.get_response(self.app)
        self.assertEqual(413, resp.status_int)
        self.assertEqual('ha_snapshot.body.too_large',
                         resp.json['errors'][0]['code'])
        req = webob.Request.blank('/v1/servers/x', method='PUT',
                                  headers=self.headers)
        req.body = b'{}'
        req.environ.pop('CONTENT_TYPE', None)
        resp = req.get_response(self.app)
        self.assertEqual(400, resp.status_int)
        self.assertIn('Content-Type', resp.json['errors'][0]['detail'])
