"""``openstack ha ...`` end to end: the real openstack shell against the
real ha-snapshot-api in this process.

The stack: python-openstackclient's shell with the plugin -> HTTP on
127.0.0.1 -> the API's WSGI application (ha_snapshot.api.deploy.loadapp,
noauth) -> a real sqlite database (ha_snapshot.db.api.Database, migrated)
and the real manager RPC client -> the fake:// transport -> the real
ManagerEndpoint and Manager, whose RecoveryEngine runs a recovery action
that the test steps through. Two things are stand-ins: the agents (a
recording AgentAPI: the agent is not what these tests are about) and
Nova (a scripted compute endpoint that answers name lookups for the CLI
and the host lookup of the manager's protect).
"""

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
import uuid
import wsgiref.simple_server

import fixtures
from oslo_config import cfg

from ha_snapshot.api import deploy
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot.manager import manager as manager_mod
from ha_snapshot.manager import recovery as recovery_mod
from ha_snapshot.manager import spool as spool_mod
from ha_snapshot import rpc
from ha_snapshot.storage import objects
from ha_snapshot.storage import store as store_mod
from ha_snapshot.tests import base
from ha_snapshot.tests.unit.osc import scripted

MiB = 1024 * 1024
WEB = str(uuid.UUID(int=1, version=4))
DB1 = str(uuid.UUID(int=2, version=4))
DB2 = str(uuid.UUID(int=3, version=4))
OTHER = str(uuid.UUID(int=4, version=4))
NEW = str(uuid.UUID(int=5, version=4))
ADMIN = 'admin'
T0 = 1_700_000_000.0


class RecordingAgentAPI:
    """The agents' RPC client, recording the casts the manager makes."""

    def __init__(self):
        self.calls = []

    def protect(self, host, instance, project, spec):
        self.calls.append(('protect', host, instance))

    def unprotect(self, host, instance):
        self.calls.append(('unprotect', host, instance))


class SteppedAction:
    """A recovery action whose steps the test releases one by one."""

    name = 'stepped'

    def __init__(self, steps=('rebuild', 'rebaseline')):
        self.steps = steps
        self.go = threading.Semaphore(0)
        self.fail_at = None
        self.calls = []

    def recover(self, instance, restore_point, progress):
        self.calls.append((instance.uuid, restore_point))
        for step in self.steps:
            if not self.go.acquire(timeout=60):
                raise RuntimeError('test never released step %s' % step)
            progress(step)
            if step == self.fail_at:
                raise RuntimeError('Nova refused the rebuild')
        if not self.go.acquire(timeout=60):
            raise RuntimeError('test never released the end')
        return {}


class _ThreadingWSGIServer(socketserver.ThreadingMixIn,
                           wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args):
        pass


class ApiStack(fixtures.Fixture):
    """The API, the manager behind it and their database, in-process."""

    def __init__(self, tmp: str, nova_url: str):
        super().__init__()
        self.tmp = tmp
        self.nova_url = nova_url

    def _setUp(self):
        conf = cfg.ConfigOpts()
        ha_conf.register_opts(conf)
        conf([], project='ha-snapshot', default_config_files=[])
        conf.set_override('connection', 'sqlite:///%s/ha.db' % self.tmp,
                          group='database')
        conf.set_override('backend_url', 'file://%s/store' % self.tmp,
                          group='storage')
        conf.set_override('auth_strategy', 'noauth', group='api')
        conf.set_override('cooldown', 0, group='recovery')
        conf.set_override('auth_type', 'none', group='nova')
        conf.set_override('endpoint_override', self.nova_url, group='nova')
        self.conf = conf
        self.db = db_api.Database(conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(conf, database=self.db)

        self.agents = RecordingAgentAPI()
        self.action = SteppedAction()
        self.engine = recovery_mod.RecoveryEngine(conf, self.db, self.action)
        self.addCleanup(self.engine.stop)
        # NOTE: release whatever a failed test left waiting.
        self.addCleanup(lambda: [self.action.go.release() for _ in
                                 range(10)])
        store = store_mod.RecoveryStore.from_conf(conf)
        conf.set_override('spool_dir', '%s/spool' % self.tmp,
                          group='manager')
        manager = manager_mod.Manager(conf, store, self.db,
                                      spool=spool_mod.Spool.from_conf(conf),
                                      recovery=self.engine,
                                      agent_api=self.agents)

        transport = rpc.get_transport(conf, url='fake://')
        self.addCleanup(transport.cleanup)
        server = rpc.get_server(transport, rpc.MANAGER_TOPIC, 'manager-1',
                                [manager_mod.ManagerEndpoint(manager)])
        server.start()
        self.addCleanup(server.wait)
        self.addCleanup(server.stop)

        app = deploy.loadapp(conf, db=self.db, transport=transport)
        # NOTE: every request as it arrives, and the index of each one
        # whose answer is made (the handler has read the database).
        self.requests = []
        self.answered = []
        lock = threading.Lock()

        def counting(environ, start_response):
            with lock:
                index = len(self.requests)
                self.requests.append((environ['REQUEST_METHOD'],
                                      environ['PATH_INFO']))
            body = app(environ, start_response)
            self.answered.append(index)
            return body

        httpd = wsgiref.simple_server.make_server(
            '127.0.0.1', 0, counting, server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler)
        thread = threading.Thread(target=httpd.serve_forever,
                                  kwargs={'poll_interval': 0.05},
                                  name='ha-snapshot-api', daemon=True)
        thread.start()
        self.addCleanup(thread.join, 10)
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)
        self.url = 'http://127.0.0.1:%d' % httpd.server_address[1]

    def protected(self, server_id, project=ADMIN, host='cn1', points=0,
                  consistent=()):
        """``consistent``: numbers of the points taken quiesced."""
        self.db.create_instance(server_id, project, host=host,
                                status='protected', policy='adaptive',
                                driver='qemu')
        rps = []
        parent = None
        for number in range(1, points + 1):
            rp = objects.RestorePoint(
                id=str(uuid.uuid4()), instance=server_id, project=project,
                scope='p-' + project, number=number, parent=parent,
                created_at=T0 + number, virtual_size=64 * MiB,
                chunk_size=MiB, chunks={0: 'a' * 64},
                delta_sequence=number - 1, changed_bytes=number * 1000,
                new_chunks=number, new_bytes=number * MiB,
                consistency='filesystem' if number in consistent
                else 'crash')
            self.db.record_restore_point(rp)
            parent = rp.id
            rps.append(rp)
        return rps


class OpenStackHaTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.nova = self.useFixture(scripted.NovaEndpoint(
            {WEB: 'web', DB1: 'db', DB2: 'db', OTHER: 'other', NEW: 'new'},
            hosts={NEW: 'cn7'}, projects={NEW: ADMIN}))
        self.api = self.useFixture(ApiStack(self.tmp, self.nova.compute_url))

    def openstack(self, *args, token=ADMIN, ok=True):
        """Run ``openstack`` in this process; JSON output decoded."""
        code, out, err = scripted.run_openstack(
            '--os-auth-type', 'admin_token', '--os-token', token,
            '--os-endpoint', self.api.url, *args,
            env={'OS_COMPUTE_ENDPOINT_OVERRIDE': self.nova.compute_url})
        if ok:
            self.assertEqual(0, code, 'openstack %s: %s' % (
                ' '.join(args), err))
            if '-f' in args and 'json' in args:
                return json.loads(out)
            return out
        self.assertNotEqual(0, code, 'openstack %s succeeded: %s' % (
            ' '.join(args), out))
        return code, out, err

    # --- list and show ------------------------------------------------------

    def test_list_and_show(self):
        rps = self.api.protected(WEB, points=2)
        self.api.protected(OTHER, project='p2', host='cn2')
        servers = self.openstack('ha', 'list', '-f', 'json')
        self.assertEqual([WEB], [s['ID'] for s in servers])
        self.assertEqual('protected', servers[0]['Status'])
        self.assertEqual('cn1', servers[0]['Host'])
        # NOTE: the age of restore point 2 (made at T0 + 2), to 0.1 s.
        rpo = servers[0]['RPO (s)']
        self.assertAlmostEqual(time.time() - (T0 + 2), rpo, delta=30)
        self.assertEqual(round(rpo, 1), rpo)

        every = self.openstack('ha', 'list', '--all-projects', '-f', 'json')
        self.assertEqual({WEB: ADMIN, OTHER: 'p2'},
                         {s['ID']: s['Project'] for s in every})
        p2 = self.openstack('ha', 'list', '--all-projects', '--project',
                            'p2', '-f', 'json')
        self.assertEqual([OTHER], [s['ID'] for s in p2])

        shown = self.openstack('ha', 'show', 'web', '-f', 'json')
        self.assertEqual(WEB, shown['id'])
        self.assertEqual(rps[-1].id, shown['newest_restore_point_id'])
        self.assertEqual('adaptive', shown['policy'])
        self.assertEqual(0, shown['recovery_attempts'])
        # NOTE: by ID, Nova is not asked.
        before = len(self.nova.requests)
        self.assertEqual(WEB, self.openstack(
            'ha', 'show', WEB, '-f', 'value', '-c', 'id').strip())
        self.assertEqual(before, len(self.nova.requests))

    def test_list_filter_by_status(self):
        self.api.protected(WEB)
        self.api.protected(DB1)
        self.api.db.update_instance_status(DB1, 'protected', 'failed')
        failed = self.openstack('ha', 'list', '--status', 'failed', '-f',
                                'json')
        self.assertEqual([DB1], [s['ID'] for s in failed])
        code, out, err = self.openstack('ha', 'list', '--status', 'happy',
                                        ok=False)
        self.assertIn('happy', err)
        self.assertIn('HTTP 400', err)

    def test_restore_point_list(self):
        rps = self.api.protected(WEB, points=3)
        listed = self.openstack('ha', 'restore', 'point', 'list', 'web',
                                '--long', '-f', 'json')
        self.assertEqual([rp.id for rp in rps], [p['ID'] for p in listed])
        self.assertEqual([1, 2, 3], [p['Number'] for p in listed])
        self.assertEqual([None, rps[0].id, rps[1].id],
                         [p['Parent ID'] for p in listed])
        self.assertEqual(3000, listed[-1]['Changed Bytes'])

    def test_restore_point_consistency_and_app_consistent_recovery(self):
        rps = self.api.protected(WEB, points=3, consistent=(2,))
        listed = self.openstack('ha', 'restore', 'point', 'list', 'web',
                                '-f', 'json')
        self.assertEqual(['crash', 'filesystem', 'crash'],
                         [p['Consistency'] for p in listed])
        rec = self.openstack('ha', 'recover', 'web', '--app-consistent',
                             '-f', 'json')
        # The newest application-consistent point, not the newest one.
        self.assertEqual(rps[1].id, rec['restore_point_id'])
        code, out, err = self.openstack('ha', 'recover', 'web',
                                        '--app-consistent',
                                        '--restore-point', rps[0].id,
                                        ok=False)
        self.assertIn('--app-consistent', err)

    def test_app_consistent_recovery_without_such_a_point(self):
        self.api.protected(WEB, points=2)
        code, out, err = self.openstack('ha', 'recover', 'web',
                                        '--app-consistent', ok=False)
        self.assertIn('HTTP 409', err)
        self.assertIn('no application-consistent', err)
        self.assertEqual([], self.api.db.list_recoveries(WEB))

    # --- protect and unprotect ----------------------------------------------

    def test_protect_asks_nova_for_the_host(self):
        shown = self.openstack('ha', 'protect', 'new', '--policy', 'fixed',
                               '-f', 'json')
        self.assertEqual(NEW, shown['id'])
        self.assertEqual('cn7', shown['host'])
        self.assertEqual('fixed', shown['policy'])
        self.assertIn(('protect', 'cn7', NEW), self.api.agents.calls)
        self.assertEqual('cn7', self.api.db.get_instance(NEW).host)

    def test_protect_on_a_named_host_and_again(self):
        self.openstack('ha', 'protect', WEB, '--host', 'cn3')
        self.assertEqual([('protect', 'cn3', WEB)], self.api.agents.calls)
        # NOTE: as the agent does once it has started protecting it.
        self.api.db.update_instance_status(WEB, 'protecting', 'protected')
        # NOTE: a new policy is cast to the agent protecting it; the same
        # protect again casts nothing (idempotent).
        shown = self.openstack('ha', 'protect', WEB, '--host', 'cn3',
                               '--policy', 'fixed', '-f', 'json')
        self.assertEqual('fixed', shown['policy'])
        self.assertEqual([('protect', 'cn3', WEB)] * 2,
                         self.api.agents.calls)
        self.openstack('ha', 'protect', WEB, '--host', 'cn3', '--policy',
                       'fixed')
        self.assertEqual(2, len(self.api.agents.calls))

    def test_protect_unknown_policy_changes_nothing(self):
        self.api.protected(WEB)
        code, out, err = self.openstack('ha', 'protect', WEB, '--policy',
                                        'psychic', ok=False)
        self.assertIn("Unknown snapshot policy 'psychic'", err)
        self.assertIn('adaptive', err)
        self.assertEqual('adaptive', self.api.db.get_instance(WEB).policy)
        self.assertEqual([], self.api.agents.calls)

    def test_unprotect(self):
        self.api.protected(WEB)
        self.assertEqual('', self.openstack('ha', 'unprotect', 'web'))
        self.assertEqual('deleted', self.api.db.get_instance(WEB).status)
        self.assertEqual([('unprotect', 'cn1', WEB)], self.api.agents.calls)
        self.assertEqual([], self.openstack('ha', 'list', '-f', 'json'))

    def test_console_script(self):
        """The openstack program pip installed, in its own process."""
        self.api.protected(WEB)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith('OS_')}
        env['OS_CLIENT_CONFIG_FILE'] = os.devnull
        r = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), 'openstack'),
             '--os-auth-type', 'admin_token', '--os-token', ADMIN,
             '--os-endpoint', self.api.url, 'ha', 'list', '-f', 'json'],
            capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(0, r.returncode, r.stderr)
        self.assertEqual([WEB], [s['ID'] for s in json.loads(r.stdout)])

    # --- errors -------------------------------------------------------------

    def test_unknown_server_by_id(self):
        code, out, err = self.openstack('ha', 'show', NEW, ok=False)
        self.assertEqual(1, code)
        self.assertIn(NEW, err)
        self.assertIn('HTTP 404', err)
        self.assertNotIn('Traceback', err)

    def test_ambiguous_name_recovers_nothing(self):
        self.api.protected(DB1, points=1)
        self.api.protected(DB2, points=1)
        code, out, err = self.openstack('ha', 'recover', 'db', ok=False)
        self.assertIn("2 servers are named 'db'", err)
        self.assertEqual([], self.api.db.list_recoveries(DB1))
        self.assertEqual([], self.api.db.list_recoveries(DB2))
        self.assertFalse([r for r in self.api.requests
                          if r[0] != 'GET'], self.api.requests)

    def test_another_project_cannot_see_my_server(self):
        self.api.protected(WEB, points=1)
        code, out, err = self.openstack('ha', 'show', WEB,
                                        token='mallory:p9', ok=False)
        self.assertIn('HTTP 40', err)
        self.assertNotIn('cn1', err)
        code, out, err = self.openstack('ha', 'recover', WEB,
                                        token='mallory:p9', ok=False)
        self.assertIn('HTTP 40', err)
        self.assertEqual([], self.api.db.list_recoveries(WEB))

    def test_endpoint_option_and_a_caller_without_roles(self):
        """--os-ha-snapshot-url with no auth: the API refuses the anonymous
        caller, and the CLI says it is the policy."""
        code, out, err = scripted.run_openstack(
            '--os-auth-type', 'none', '--os-ha-snapshot-url', self.api.url,
            'ha', 'list')
        self.assertEqual(1, code, out)
        self.assertIn('HTTP 403', err)
        self.assertIn('does not allow this to your project or role', err)
        self.assertIn(('GET', '/v1/servers'), self.api.requests)

    def test_unsupported_microversion(self):
        code, out, err = self.openstack(
            '--os-ha-snapshot-api-version', '1.99', 'ha', 'list', ok=False)
        self.assertIn('HTTP 406', err)
        self.assertIn('--os-ha-snapshot-api-version', err)

    # --- recover ------------------------------------------------------------

    def test_recover_without_wait(self):
        rps = self.api.protected(WEB, points=2)
        rec = self.openstack('ha', 'recover', 'web', '--restore-point',
                             rps[0].id, '-f', 'json')
        self.assertEqual(rps[0].id, rec['restore_point_id'])
        self.assertIn(rec['state'], ('requested', 'running'))
        self.assertEqual('stepped', rec['action'])
        # NOTE: a second recovery while this one runs is refused.
        code, out, err = self.openstack('ha', 'recover', WEB, ok=False)
        self.assertIn('HTTP 409', err)
        self.assertIn('running', err)
        for _ in range(3):
            self.api.action.go.release()
        self.api.engine.wait(WEB, timeout=30)
        listed = self.openstack('ha', 'recovery', 'list', WEB, '-f', 'json')
        self.assertEqual([(rec['id'], 'succeeded', 'done')],
                         [(r['ID'], r['State'], r['Step']) for r in listed])

    def test_recover_unknown_restore_point(self):
        self.api.protected(WEB, points=1)
        bogus = str(uuid.uuid4())
        code, out, err = self.openstack('ha', 'recover', WEB,
                                        '--restore-point', bogus, ok=False)
        self.assertIn(bogus, err)
        self.assertIn('HTTP 404', err)
        self.assertEqual([], self.api.db.list_recoveries(WEB))

    def _release_steps_as_polled(self, server_id: str, steps):
        """Release each step of the action once the CLI has polled the
        recovery after the previous step was recorded, so that it sees
        every step (the CLI reports changes it sees, not each write)."""
        def answered_poll_since(first: int) -> bool:
            return any(index >= first and self.api.requests[index][0] ==
                       'GET' and '/recoveries/' in self.api.requests[index][1]
                       for index in list(self.api.answered))

        def step_is(step):
            recs = self.api.db.list_recoveries(server_id)
            return bool(recs) and recs[-1].step == step

        def seen_by_a_poll(step):
            base.wait_for(lambda: step_is(step), 30,
                          'step %s recorded' % step, poll=0.01)
            # NOTE: a poll that arrived after the step was recorded, and
            # was answered before the next step is released, read it.
            first = len(self.api.requests)
            base.wait_for(lambda: answered_poll_since(first), 30,
                          'a poll answered after step %s' % step, poll=0.01)

        def run():
            try:
                seen_by_a_poll('starting')
                for step in steps:
                    self.api.action.go.release()
                    seen_by_a_poll(step)
                self.api.action.go.release()
            except AssertionError as e:
                self.released_error = e

        self.released_error = None
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 30)

    def test_recover_wait_shows_progress(self):
        rps = self.api.protected(WEB, points=2)
        self._release_steps_as_polled(WEB, ('rebuild', 'rebaseline'))
        code, out, err = scripted.run_openstack(
            '--os-auth-type', 'admin_token', '--os-token', ADMIN,
            '--os-endpoint', self.api.url, 'ha',
            'recover', WEB, '--wait', '--poll-interval', '0.05',
            '--timeout', '60', '-f', 'json')
        self.assertEqual(0, code, err)
        self.assertIsNone(self.released_error)
        rec = json.loads(out)
        self.assertEqual('succeeded', rec['state'])
        self.assertEqual(rps[-1].id, rec['restore_point_id'])
        # NOTE: the manager's own log lines land on the same stderr here.
        states = [line.split(': ', 1)[1].rsplit(' [', 1)[0]
                  for line in err.splitlines()
                  if line.startswith('Recovery ')]
        self.assertEqual(['running (step: starting)',
                          'running (step: rebuild)',
                          'running (step: rebaseline)',
                          'succeeded (step: done)'],
                         [s for s in states if s != 'requested'], err)
        self.assertEqual('protected', self.api.db.get_instance(WEB).status)

    def test_recover_wait_failure(self):
        self.api.protected(WEB, points=1)
        self.api.action.fail_at = 'rebuild'
        self._release_steps_as_polled(WEB, ())
        code, out, err = scripted.run_openstack(
            '--os-auth-type', 'admin_token', '--os-token', ADMIN,
            '--os-endpoint', self.api.url, 'ha',
            'recover', 'web', '--wait', '--poll-interval', '0.05',
            '--timeout', '60',
            env={'OS_COMPUTE_ENDPOINT_OVERRIDE': self.nova.compute_url})
        self.assertEqual(1, code, out + err)
        self.assertIn('failed at step rebuild', err)
        self.assertIn('Nova refused the rebuild', err)
        self.assertEqual('', out)

    def test_recover_wait_timeout(self):
        self.api.protected(WEB, points=1)
        start = time.monotonic()
        code, out, err = scripted.run_openstack(
            '--os-auth-type', 'admin_token', '--os-token', ADMIN,
            '--os-endpoint', self.api.url, 'ha',
            'recover', WEB, '--wait', '--poll-interval', '0.05',
            '--timeout', '0.5')
        self.assertEqual(1, code, out + err)
        self.assertLess(time.monotonic() - start, 20)
        self.assertIn('after 0.5 s; it goes on', err)
        # NOTE: the recovery goes on; let it end.
        for _ in range(3):
            self.api.action.go.release()
        self.api.engine.wait(WEB, timeout=30)
        self.assertEqual('succeeded',
                         self.api.db.list_recoveries(WEB)[-1].state)
