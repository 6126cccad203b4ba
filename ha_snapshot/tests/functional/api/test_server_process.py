"""ha-snapshot-api as real processes (issue 15, items 1, 2, 5): the
embedded server (``python -m ha_snapshot.cmd.api``) and the WSGI module
under uWSGI with the shipped etc/ha-snapshot/ha-snapshot-api-uwsgi.ini,
against idle clients, a broker that is down or stops mid-call, and
SIGTERM in each of those states."""

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil

from ha_snapshot.api import secret as alarm_secret
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import logs
from ha_snapshot.tests.fixtures import rabbitmq

HEADERS = {'X-User-Id': 'mia', 'X-Project-Id': 'project-p',
           'X-Roles': 'member'}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))))
UWSGI_INI = os.path.join(REPO, 'etc', 'ha-snapshot',
                         'ha-snapshot-api-uwsgi.ini')
KEY = 'alarm-key'
RPC_TIMEOUT = 3
# NOTE: what "answers within about rpc_timeout" allows: the deadline
# (rpc_timeout + 1 s) and a loaded 2-core machine.
ANSWER_WITHIN = RPC_TIMEOUT + 4
STOP_WITHIN = 8
# NOTE: logged (debug) by api/manager_calls as a call starts.
MARKER = 'Calling protect on the manager'


def uwsgi_binary() -> str:
    path = shutil.which('uwsgi') or os.path.join(
        os.path.dirname(sys.executable), 'uwsgi')
    if not os.path.exists(path):
        raise AssertionError('uwsgi is not installed (test-requirements.txt '
                             'has it): %s' % path)
    return path


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` has entered the stopped state."""
    task = '/proc/%d/task' % pid
    for tid in os.listdir(task):
        try:
            with open(os.path.join(task, tid, 'stat')) as f:
                # "tid (comm) S ...": the state follows the last ')'.
                state = f.read().rsplit(')', 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state not in ('T', 't'):
            return False
    return True


def sigstop(pid: int) -> None:
    """Stop ``pid`` and wait until it really is stopped.

    kill() only queues the signal: a process running on the other core
    goes on until each of its threads next enters the kernel, and may
    accept a connection and answer half of it in that window.
    """
    os.kill(pid, signal.SIGSTOP)
    base.wait_for(lambda: all_threads_stopped(pid), 10,
                  'every thread of process %d to stop on SIGSTOP' % pid)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class ApiProcess:
    """One API process on a free loopback port, its log in ``log_path``;
    ``extra``: more lines for its config file."""

    def __init__(self, test, kind: str, transport_url: str,
                 processes: int = 2, extra: str = ''):
        self.test = test
        self.kind = kind
        self.port = rabbitmq.free_port()
        self.dir = test.path('%s-%d' % (kind, self.port))
        os.makedirs(self.dir)
        self.conf_file = os.path.join(self.dir, 'ha-snapshot.conf')
        self.log_path = os.path.join(self.dir, 'api.log')
        with open(self.conf_file, 'w') as f:
            f.write('[DEFAULT]\ntransport_url = %s\ndebug = true\n'
                    'log_file = %s\n'
                    '[api]\nauth_strategy = noauth\nport = %d\nworkers = 2\n'
                    'processes = %d\n'
                    'rpc_timeout = %d\nalarm_secret_key = %s\n'
                    'shutdown_timeout = 2\nclient_timeout = 30\n'
                    '[oslo_messaging_rabbit]\nrabbit_retry_interval = 1\n'
                    '[database]\nconnection = %s\n'
                    % (transport_url, self.log_path, self.port, processes,
                       RPC_TIMEOUT, KEY, test.db_url) + extra)
        env = dict(os.environ, PYTHONUNBUFFERED='1',
                   OS_HA_SNAPSHOT_CONFIG_DIR=self.dir)
        if kind == 'embedded':
            cmd = [sys.executable, '-m', 'ha_snapshot.cmd.api',
                   '--config-file', self.conf_file]
        else:
            ini = os.path.join(self.dir, 'uwsgi.ini')
            with open(UWSGI_INI) as f, open(ini, 'w') as out:
                out.write(f.read().replace(
                    'http = 127.0.0.1:8799', 'http = 127.0.0.1:%d'
                    % self.port))
            cmd = [uwsgi_binary(), '--ini', ini,
                   '--virtualenv', sys.prefix,
                   '--processes', '1', '--threads', '2']
        self.out = open(os.path.join(self.dir, 'stdout.log'), 'w+')
        self.proc = subprocess.Popen(cmd, stdout=self.out,
                                     stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO, start_new_session=True)
        test.addCleanup(self.kill)
        test.addOnException(self.print_logs)
        base.wait_for(self.healthy, 60, '%s ha-snapshot-api to answer '
                      '/healthcheck on port %d' % (kind, self.port))

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError('%s API exited with %s:\n%s' % (
                self.kind, self.proc.returncode, self.logs()))
        try:
            return self.request('GET', '/healthcheck', timeout=2)[0] == 200
        except OSError:
            return False

    def request(self, method, path, body=None, headers=None, timeout=30):
        conn = http.client.HTTPConnection('127.0.0.1', self.port,
                                          timeout=timeout)
        try:
            hdrs = dict(HEADERS if headers is None else headers)
            if body is not None:
                body = json.dumps(body).encode()
                hdrs['Content-Type'] = 'application/json'
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read(), dict(resp.getheaders())
        finally:
            conn.close()

    def timed(self, method, path, body=None):
        start = time.monotonic()
        status, data, _headers = self.request(method, path, body)
        return status, data, time.monotonic() - start

    def logs(self) -> str:
        out = []
        for path in (self.log_path, self.out.name):
            if os.path.exists(path):
                out.append('--- %s\n%s' % (path, logs.tail(path, 80)))
        return '\n'.join(out)

    def print_logs(self, *_exc_info):
        print(self.logs())

    def sigterm(self) -> float:
        """SIGTERM; seconds until the process (group) exited."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            raise AssertionError('%s API still runs %d s after SIGTERM:\n%s'
                                 % (self.kind, STOP_WITHIN, self.logs()))
        took = time.monotonic() - start
        # NOTE: uwsgi's workers too, not only its master.
        base.wait_for(lambda: not self.group_alive(), STOP_WITHIN,
                      'the processes of the %s API to exit' % self.kind)
        return took

    def children(self) -> list:
        """pids of the embedded server's processes (its parent's
        children)."""
        return [p.pid for p in psutil.Process(self.proc.pid).children()]

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def kill(self):
        if self.group_alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.out.close()


class ServerProcessTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.db_url = 'sqlite:///' + self.path('db.sqlite')
        conf = base.make_conf(self.store_dir, database__connection=self.db_url)
        db = db_api.Database(conf)
        migration.upgrade(conf, database=db)
        self.server = base.new_uuid()
        db.create_instance(self.server, 'project-p', host='h1',
                           status='protected')
        db.dispose()
        self.alarm_path = '/v1/alarms/%s?secret=%s' % (
            self.server, alarm_secret.secret_for(KEY, self.server))

    def idle_clients(self, port, n):
        socks = []
        for _ in range(n):
            s = socket.create_connection(('127.0.0.1', port), timeout=5)
            s.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n')
            socks.append(s)
            self.addCleanup(s.close)
        return socks

    # --- item 1 ------------------------------------------------------------

    def check_idle_clients(self, kind, processes=2):
        api = ApiProcess(self, kind, 'fake:///', processes=processes)
        if kind == 'embedded':
            self.assertEqual(processes if processes > 1 else 0,
                             len(api.children()))
        self.idle_clients(api.port, 50)
        for path in ('/healthcheck', '/v1/servers'):
            status, data, took = api.timed('GET', path)
            self.assertEqual(200, status, data)
            self.assertLess(took, 2, '%s waited on idle clients' % path)
        took = api.sigterm()
        self.assertLess(took, STOP_WITHIN)

    def test_idle_clients_do_not_block_embedded(self):
        self.check_idle_clients('embedded')

    def test_idle_clients_do_not_block_one_embedded_process(self):
        self.check_idle_clients('embedded', processes=1)

    def test_idle_clients_do_not_block_uwsgi(self):
        self.check_idle_clients('uwsgi')

    def test_embedded_server_names_no_version_and_answers_json(self):
        api = ApiProcess(self, 'embedded', 'fake:///')
        status, data, headers = api.request('GET', '/')
        self.assertEqual('ha-snapshot', headers.get('Server'))
        # Beyond the server's own header limit: still the JSON errors.
        status, data, headers = api.request(
            'GET', '/v1/servers', headers=dict(HEADERS, X=('x' * 50000)))
        self.assertEqual(431, status)
        self.assertEqual('application/json', headers['Content-Type'])
        self.assertEqual(431, json.loads(data)['errors'][0]['status'])
        # A chunked body is read (waitress de-chunks it).
        conn = http.client.HTTPConnection('127.0.0.1', api.port, timeout=10)
        conn.putrequest('PUT', '/v1/servers/' + self.server)
        for k, v in dict(HEADERS, **{'Content-Type': 'application/json',
                                     'Transfer-Encoding': 'chunked'}).items():
            conn.putheader(k, v)
        conn.endheaders()
        body = b'{"policy": "nope"}'
        conn.send(b'%x\r\n%s\r\n0\r\n\r\n' % (len(body), body))
        resp = conn.getresponse()
        self.assertEqual(400, resp.status)
        self.assertEqual('ha_snapshot.policy_name.invalid',
                         json.loads(resp.read())['errors'][0]['code'])
        conn.close()

    def test_embedded_processes_serve_apart_and_are_watched(self):
        api = ApiProcess(self, 'embedded', 'fake:///', processes=2)
        first, second = api.children()
        # Each process serves the shared socket on its own: stop one, the
        # other answers; then the other way round.
        for stopped in (first, second):
            sigstop(stopped)
            try:
                for _ in range(5):
                    self.assertEqual(200, api.timed('GET',
                                                    '/v1/servers')[0])
            finally:
                os.kill(stopped, signal.SIGCONT)
        # A process that dies is started again; the API keeps answering.
        os.kill(first, signal.SIGKILL)
        base.wait_for(lambda: len(api.children()) == 2
                      and first not in api.children(), 30,
                      'the API parent to start a process in place of %d'
                      % first)
        self.assertEqual(200, api.timed('GET', '/healthcheck')[0])
        with open(api.log_path) as f:
            self.assertIn('API process %d exited (signal 9)' % first,
                          f.read())
        # Its parent killed, a process stops by itself.
        children = api.children()
        os.kill(api.proc.pid, signal.SIGKILL)
        api.proc.wait(10)

        def gone():
            for pid in children:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.NoSuchProcess:
                    pass
            return True
        base.wait_for(gone, 10, 'the API processes %s to stop after their '
                      'parent was killed' % children)

    # --- item 2 ------------------------------------------------------------

    def check_broker_down(self, kind):
        api = ApiProcess(self, kind,
                         'rabbit://guest:guest@127.0.0.1:%d/' % closed_port())
        status, data, took = api.timed('PUT', '/v1/servers/' + self.server)
        self.assertEqual(503, status, data)
        self.assertEqual('ha_snapshot.manager.unavailable',
                         json.loads(data)['errors'][0]['code'])
        self.assertLess(took, ANSWER_WITHIN)
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            calls = [pool.submit(api.timed, 'PUT',
                                 '/v1/servers/' + self.server)
                     for _ in range(8)]
            calls += [pool.submit(api.timed, 'POST', self.alarm_path,
                                  {'alarm_id': 'a', 'current': 'alarm',
                                   'previous': 'ok'}) for _ in range(2)]
            for call in calls:
                status, data, took = call.result(ANSWER_WITHIN * 3)
                self.assertIn(status, (503, 504), data)
                self.assertLess(took, ANSWER_WITHIN)
        self.assertEqual(200, api.timed('GET', '/healthcheck')[0])
        # SIGTERM with calls waiting on the dead broker.
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(api.request, 'PUT', '/v1/servers/' + self.server)
            self.assertLess(api.sigterm(), STOP_WITHIN)

    def test_broker_down_embedded(self):
        self.check_broker_down('embedded')

    def test_broker_down_uwsgi(self):
        self.check_broker_down('uwsgi')

    def check_broker_stops_mid_call(self, kind):
        rabbit = self.useFixture(rabbitmq.RabbitMQServer())
        api = ApiProcess(self, kind, rabbit.transport_url)
        # No manager listens: with the broker up the call is sent and
        # nobody answers (504).
        status, data, took = api.timed('PUT', '/v1/servers/' + self.server)
        self.assertEqual(504, status, data)
        self.assertLess(took, ANSWER_WITHIN)
        sent = logs.tail(api.log_path, 100000).count(MARKER)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            call = pool.submit(api.timed, 'PUT', '/v1/servers/' + self.server)
            base.wait_for(
                lambda: logs.tail(api.log_path, 100000).count(
                    MARKER) > sent, 30,
                'the second protect call to be sent to the broker')
            rabbit.stop()
            status, data, took = call.result(ANSWER_WITHIN * 3)
        self.assertIn(status, (503, 504), data)
        self.assertLess(took, ANSWER_WITHIN)
        # And with the broker gone.
        status, data, took = api.timed('POST', self.alarm_path,
                                       {'alarm_id': 'a', 'current': 'alarm'})
        self.assertEqual(503, status, data)
        self.assertLess(took, ANSWER_WITHIN)
        self.assertLess(api.sigterm(), STOP_WITHIN)

    def test_broker_stops_mid_call_embedded(self):
        self.check_broker_stops_mid_call('embedded')

    def test_broker_stops_mid_call_uwsgi(self):
        self.check_broker_stops_mid_call('uwsgi')

    # --- item 5 ------------------------------------------------------------

    def test_log_has_no_secret_no_forged_line_no_huge_id(self):
        api = ApiProcess(self, 'embedded', 'fake:///')
        secret = alarm_secret.secret_for(KEY, self.server)
        api.request('POST', self.alarm_path, {'alarm_id': 'a',
                                              'current': 'ok'})
        api.request('GET', '/v1/servers/x%0aFORGED%20LINE')
        api.request('GET', '/v1/alarms/x%0d%0aFORGED2?secret=' + secret)
        api.request('GET', '/v1/servers/' + 'y' * 7000)
        self.assertLess(api.sigterm(), STOP_WITHIN)
        with open(api.log_path) as f:
            text = f.read()
        self.assertIn('?secret=***', text)
        self.assertNotIn(secret, text)
        for line in text.splitlines():
            self.assertFalse(line.startswith('FORGED'), line)
            self.assertLess(len(line), 2000, line[:200])
        self.assertIn('%0AFORGED', text)
