"""ha-snapshot-api as operators run it: the console script serving real
HTTP, and ha_snapshot.wsgi.api reading $OS_HA_SNAPSHOT_CONFIG_DIR."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.tests import base

HEADERS = {'X-User-Id': 'mia', 'X-Project-Id': 'project-p',
           'X-Roles': 'member'}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ServiceTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.port = _free_port()
        self.conf_dir = self.path('etc')
        os.makedirs(self.conf_dir)
        self.conf_file = os.path.join(self.conf_dir, 'ha-snapshot.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = fake:///\n'
                    '[api]\nauth_strategy = noauth\nport = %d\n'
                    'workers = 2\n'
                    '[database]\nconnection = sqlite:///%s\n'
                    % (self.port, self.path('db.sqlite')))
        conf = base.make_conf(self.store_dir, database__connection=(
            'sqlite:///' + self.path('db.sqlite')))
        db = db_api.Database(conf)
        migration.upgrade(conf, database=db)
        self.server = base.new_uuid()
        db.create_instance(self.server, 'project-p', host='h1',
                           status='protected')
        db.dispose()

    def get(self, path, headers=HEADERS):
        req = urllib.request.Request(
            'http://127.0.0.1:%d%s' % (self.port, path), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def test_console_script_serves_and_stops_on_sigterm(self):
        log = open(self.path('api.log'), 'w+')
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [sys.executable, '-m', 'ha_snapshot.cmd.api', '--config-file',
             self.conf_file], stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.addCleanup(stop)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.get('/healthcheck', {})[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                self.fail('ha-snapshot-api did not answer /healthcheck on '
                          'port %d within 60 s (exit %s); log:\n%s'
                          % (self.port, proc.poll(), log.read()))
            time.sleep(0.1)
        status, body = self.get('/v1/servers')
        self.assertEqual(200, status, body)
        self.assertEqual([self.server],
                         [s['id'] for s in json.loads(body)['servers']])
        self.assertEqual(401, self.get('/v1/servers', {})[0])
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(0, proc.wait(30))

    def test_wsgi_module_reads_the_config_dir(self):
        script = (
            'import json, webob\n'
            'from ha_snapshot.wsgi import api\n'
            'req = webob.Request.blank("/v1/servers", headers=%r)\n'
            'resp = req.get_response(api.application)\n'
            'print(json.dumps([resp.status_int, resp.json]))\n' % HEADERS)
        out = subprocess.run(
            [sys.executable, '-c', script], capture_output=True, text=True,
            timeout=120, env=dict(os.environ,
                                  OS_HA_SNAPSHOT_CONFIG_DIR=self.conf_dir))
        self.assertEqual(0, out.returncode, out.stderr)
        status, body = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(200, status, body)
        self.assertEqual([self.server], [s['id'] for s in body['servers']])
