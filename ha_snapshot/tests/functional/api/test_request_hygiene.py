"""Requests no handler may see as they came (issue 15, items 3, 4, 6), and
errors that must be the API's JSON: in process, over the real manager."""

import io
import json
import logging

import webob
import webob.exc

from ha_snapshot.api import access_log
from ha_snapshot.api import errors
from ha_snapshot.api import log_safety
from ha_snapshot.tests import base
from ha_snapshot.tests.functional.api import fixtures as api_fixtures

JSON = 'application/json'


class HygieneTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.env = api_fixtures.APIFixture()
        self.env.start_fixture()
        self.addCleanup(self.env.stop_fixture)
        self.ids = dict(self.env.seeded)
        self.server = self.ids['SERVER_A']

    def request(self, method, path, body=None, content_type=JSON,
                chunked=False, terminated=True, roles='member', **headers):
        headers.update({'X-User-Id': 'mia', 'X-Roles': roles,
                        'X-Project-Id': self.ids['PROJECT_P']})
        req = webob.Request.blank(path, method=method, headers=headers)
        if body is not None:
            data = body if isinstance(body, bytes) else body.encode()
            if chunked:
                # NOTE: as gunicorn hands a de-chunked body: no length,
                # the input ends where the body does.
                req.environ.pop('CONTENT_LENGTH', None)
                req.environ['HTTP_TRANSFER_ENCODING'] = 'chunked'
                req.environ['wsgi.input'] = io.BytesIO(data)
                req.environ['wsgi.input_terminated'] = terminated
            else:
                req.body = data
            if content_type:
                req.environ['CONTENT_TYPE'] = content_type
        return req.get_response(self.env.app)

    def assertError(self, status, code, resp):
        self.assertEqual(status, resp.status_int, resp.text)
        self.assertEqual(JSON, resp.content_type, resp.text)
        error = resp.json['errors'][0]
        self.assertEqual(code, error['code'], resp.text)
        return error

    # --- item 3: bodies that are not valid for the route are 400 ----------

    def test_deeply_nested_json_is_a_400(self):
        body = '[' * 1000 + ']' * 1000
        resp = self.request('PUT', '/v1/servers/' + self.server, body)
        error = self.assertError(400, 'ha_snapshot.body.json', resp)
        self.assertIn('1000 levels', error['detail'])
        # Deep where the schema takes any object (Aodh's reason_data).
        alarm = ('{"alarm_id": "a", "current": "alarm", "reason_data": '
                 + '{"a": ' * 500 + '1' + '}' * 500 + '}')
        resp = self.request('POST', '/v1/alarms/%s?secret=%s' % (
            self.server, self.ids['SECRET_SERVER_A']), alarm)
        self.assertError(400, 'ha_snapshot.body.json', resp)

    def test_json_that_python_reads_but_is_not_json_is_a_400(self):
        for body in ('{"reason": NaN}', '{"reason": Infinity}',
                     '{"reason": "\\ud800"}', '[]', '"x"', '{"a": 1e99999',
                     b'\xff\xfe{}'):
            resp = self.request(
                'POST', '/v1/servers/%s/recoveries' % self.server, body)
            self.assertEqual(400, resp.status_int, (body, resp.text))
            self.assertEqual(JSON, resp.content_type)

    def test_strings_inside_brackets_do_not_count_as_depth(self):
        body = json.dumps({'reason': '[' * 2000})
        resp = self.request(
            'POST', '/v1/servers/%s/recoveries' % self.server, body)
        self.assertError(400, 'ha_snapshot.body.invalid', resp)

    # --- item 4: bodies without Content-Length -------------------------------

    def test_chunked_protect_body_is_read(self):
        resp = self.request('PUT', '/v1/servers/' + self.server,
                            '{"policy": "nope"}', chunked=True)
        error = self.assertError(400, 'ha_snapshot.policy_name.invalid',
                                 resp)
        self.assertIn("'nope'", error['detail'])

    def test_chunked_recovery_body_is_read(self):
        resp = self.request(
            'POST', '/v1/servers/%s/recoveries' % self.server,
            '{"restore_point_id": "not-a-uuid"}', chunked=True)
        error = self.assertError(400, 'ha_snapshot.body.invalid', resp)
        self.assertIn('restore_point_id', error['detail'])
        self.assertEqual([], self.env.db.list_recoveries(self.server))

    def test_chunked_body_the_server_did_not_end_is_a_411(self):
        resp = self.request(
            'POST', '/v1/servers/%s/recoveries' % self.server,
            '{"restore_point_id": "not-a-uuid"}', chunked=True,
            terminated=False)
        self.assertError(411, 'ha_snapshot.body.length_required', resp)
        self.assertEqual([], self.env.db.list_recoveries(self.server))

    def test_chunked_body_over_the_limit_is_a_413(self):
        big = json.dumps({'reason': 'x' * (70 * 1024)})
        resp = self.request(
            'POST', '/v1/servers/%s/recoveries' % self.server, big,
            chunked=True)
        self.assertError(413, 'ha_snapshot.body.too_large', resp)

    def test_a_body_where_the_route_takes_none_is_a_400(self):
        for method, path in (('GET', '/v1/servers'),
                             ('DELETE', '/v1/servers/' + self.server)):
            resp = self.request(method, path, '{"force": true}')
            self.assertError(400, 'ha_snapshot.body.unexpected', resp)
        self.assertEqual('protected',
                         self.env.db.get_instance(self.server).status)

    # --- item 6 ----------------------------------------------------------

    def test_a_control_character_in_the_path_is_refused(self):
        for suffix in ('%0a', '%0d', '%00', '%0a%0a'):
            resp = self.request('GET', '/v1/servers/' + self.server + suffix)
            self.assertError(400, 'ha_snapshot.url.invalid', resp)
            resp = self.request('DELETE',
                                '/v1/servers/' + self.server + suffix)
            self.assertEqual(400, resp.status_int)
        self.assertEqual('protected',
                         self.env.db.get_instance(self.server).status)

    def test_a_query_string_that_is_not_utf8_is_a_400(self):
        # NOTE: the class of the path's control characters: what a client
        # sends in the URL that no handler can read.
        for path in ('/v1/servers?status=%ff', '/v1/servers?all_projects=%ff',
                     '/v1/servers?project_id=%ff%fe'):
            resp = self.request('GET', path)
            self.assertError(400, 'ha_snapshot.query.invalid', resp)
        resp = self.request('POST', '/v1/alarms/%s?secret=%%ff' % self.server,
                            '{"alarm_id": "a", "current": "alarm"}')
        self.assertError(400, 'ha_snapshot.query.invalid', resp)

    def test_only_the_canonical_uuid_names_a_server(self):
        for alias in (self.server.upper(), '{%s}' % self.server,
                      'urn:uuid:' + self.server,
                      self.server.replace('-', '')):
            resp = self.request('GET', '/v1/servers/' + alias)
            self.assertError(404, 'ha_snapshot.server.not_found', resp)
        body = json.dumps({'restore_point_id': self.ids['RP_A1'].upper()})
        resp = self.request(
            'POST', '/v1/servers/%s/recoveries' % self.server, body)
        self.assertError(400, 'ha_snapshot.body.invalid', resp)

    def test_head_is_get_without_a_body(self):
        path = '/v1/servers/%s/restore-points' % self.server
        get = self.request('GET', path)
        head = self.request('HEAD', path)
        self.assertEqual(200, head.status_int, head.text)
        self.assertEqual(b'', head.body)
        self.assertEqual(get.headers['Content-Length'],
                         head.headers['Content-Length'])
        self.assertEqual(200, self.request('HEAD', '/').status_int)

    def test_415_says_its_text_once(self):
        resp = self.request('PUT', '/v1/servers/' + self.server, '{}',
                            content_type='text/plain')
        error = self.assertError(415, 'ha_snapshot.body.media_type', resp)
        self.assertEqual('The media type text/plain is not supported, use '
                         'application/json.', error['detail'])

    def test_no_webob_error_repeats_its_text(self):
        # NOTE: the class of the 415 above: any webob error class whose
        # template adds its own sentence to our detail.
        for cls in webob.exc.status_map.values():
            if not issubclass(cls, webob.exc.HTTPError):
                continue
            exc = errors.http_error(cls, 'The detail.', 'c')
            req = webob.Request.blank('/')
            errors.prepare(req.environ, exc)
            resp = req.get_response(exc)
            self.assertEqual('The detail.', resp.json['errors'][0]['detail'],
                             cls.__name__)

    def test_long_url_and_headers_are_json_414_and_431(self):
        resp = self.request('GET', '/v1/servers/' + 'a' * 9000)
        self.assertError(414, 'ha_snapshot.url.too_long', resp)
        resp = self.request('GET', '/v1/servers', **{'X-Big': 'b' * 40000})
        self.assertError(431, 'ha_snapshot.request.headers_too_large', resp)

    def test_alarm_url_without_public_endpoint_is_left_out(self):
        self.env.conf.set_override('public_endpoint', None, group='api')
        resp = self.request('GET', '/v1/servers/' + self.server,
                            Host='attacker.example')
        self.assertEqual(200, resp.status_int)
        self.assertNotIn('alarm_url', resp.json['server'])
        self.assertNotIn('attacker', resp.text)

    # --- item 5 (in process; the real server: test_server_process) --------

    def test_access_log_redacts_escapes_and_bounds(self):
        logger = logging.getLogger(access_log.__name__)
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        self.addCleanup(logger.setLevel, logger.level)
        logger.setLevel(logging.INFO)
        secret = self.ids['SECRET_SERVER_A']
        self.request('POST', '/v1/alarms/%s?secret=%s' % (self.server, secret),
                     '{"alarm_id": "a", "current": "ok"}')
        self.request('GET', '/v1/servers/x%0aFORGED line')
        self.request('GET', '/v1/servers/' + 'y' * 6000)
        lines = []
        for record in records:
            log_safety.sanitize(record)
            lines.append(record.getMessage())
        self.assertEqual(3, len(lines), lines)
        self.assertNotIn(secret, lines[0])
        self.assertIn('?secret=***', lines[0])
        self.assertNotIn('\n', lines[1])
        self.assertIn('%0A', lines[1])
        self.assertLess(len(lines[2]), 1000)
