"""The harness's own parts, fast: pid files, stop by pid, the network stub.

These need no OpenStack: CI runs them before tools/e2e-openstack, so that
a broken harness shows as such and not as a failed scenario.
"""

import configparser
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import fixtures
import testtools

from tools.cloud import cloud as cloud_mod
from tools.cloud import configs
from tools.cloud import procs
from tools.cloud import stop as stop_mod
from tools.cloud import venv as venv_mod

REPO = cloud_mod.REPO


class TestProcessTable(testtools.TestCase):

    def setUp(self):
        super().setUp()
        self.run_dir = self.useFixture(fixtures.TempDir()).path
        self.table = procs.ProcessTable(self.run_dir)

    def _sleeper(self, name):
        proc = self.table.spawn(name, ['sleep', '300'])
        self.addCleanup(_reap, proc)
        return proc

    def test_spawn_records_and_stop_kills(self):
        proc = self._sleeper('one')
        self.assertEqual(proc.pid, self.table.process('one').pid)
        self.assertEqual(['one'], self.table.names())
        self.assertIn('$ sleep 300', procs.tail(self.table.log_path('one')))
        self.table.stop('one', timeout=5)
        self.assertIsNotNone(proc.poll())
        self.assertEqual([], self.table.names())

    def test_recycled_pid_is_never_signalled(self):
        # NOTE: a process that is not ours, under a pid file whose start
        # time does not match it: stop must leave it alone.
        other = subprocess.Popen(['sleep', '300'])
        self.addCleanup(_reap, other)
        os.makedirs(self.table.pid_dir)
        with open(os.path.join(self.table.pid_dir, 'old.pid'), 'w') as f:
            json.dump({'pid': other.pid, 'created': 12345.0}, f)
        self.assertIsNone(self.table.process('old'))
        self.table.stop('old', timeout=1)
        self.assertIsNone(other.poll())
        self.assertEqual([], self.table.names())

    def test_stop_run_dir_from_another_table(self):
        procs_ = [self._sleeper(n) for n in ('nova-compute', 'keystone',
                                             'something-else')]
        stopped = stop_mod.stop_run_dir(self.run_dir)
        self.assertEqual(['keystone', 'nova-compute', 'something-else'],
                         sorted(stopped))
        for p in procs_:
            p.wait(10)
        self.assertEqual([], procs.ProcessTable(self.run_dir).names())

    def test_check_running_names_the_dead_with_its_log(self):
        proc = self.table.spawn('quitter', ['sh', '-c', 'echo bye; exit 3'])
        proc.wait(10)
        e = self.assertRaises(procs.CloudError, self.table.check_running,
                              'quitter')
        self.assertIn('quitter is not running', str(e))
        self.assertIn('bye', str(e))

    def test_wait_for_names_what_it_waited_for(self):
        log = os.path.join(self.run_dir, 'x.log')
        with open(log, 'w') as f:
            f.write('the reason\n')
        e = self.assertRaises(procs.CloudError, procs.wait_for,
                              lambda: False, 0.2, 'the moon', logs=[log])
        self.assertIn('waiting for the moon', str(e))
        self.assertIn('the reason', str(e))


class TestNetworkStub(testtools.TestCase):

    def test_lists_are_empty_and_one_resource_is_404(self):
        run_dir = self.useFixture(fixtures.TempDir()).path
        table = procs.ProcessTable(run_dir)
        from ha_snapshot.tests.fixtures import rabbitmq
        port = rabbitmq.free_port()
        proc = table.spawn('netstub', [sys.executable, '-m',
                                       'tools.cloud.netstub', str(port)],
                           cwd=REPO)
        self.addCleanup(_reap, proc)
        url = 'http://127.0.0.1:%d' % port
        procs.wait_for(lambda: procs.http_status(url + '/') == 200, 30,
                       'the stub on port %d' % port,
                       logs=[table.log_path('netstub')])

        def get(path):
            with urllib.request.urlopen(url + path, timeout=5) as resp:
                return json.load(resp)
        self.assertEqual({'ports': []},
                         get('/v2.0/ports?device_id=x&fields=id'))
        self.assertEqual({'security_groups': []},
                         get('/v2.0/security-groups.json'))
        self.assertEqual({'extensions': []}, get('/v2.0/extensions'))
        e = self.assertRaises(urllib.error.HTTPError, get, '/v2.0/ports/p1')
        self.assertEqual(404, e.code)


class TestConfigAndVenv(testtools.TestCase):

    def test_write_ini(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'etc', 'x.conf')
        configs.write_ini(path, {'DEFAULT': {'debug': False},
                                 'a': {'list': ['x', 'y'], 'n': 3}})
        parser = configparser.ConfigParser()
        parser.read(path)
        self.assertEqual('false', parser['DEFAULT']['debug'])
        self.assertEqual('x,y', parser['a']['list'])
        self.assertEqual('3', parser['a']['n'])

    def test_cached_venv_is_reused_only_for_the_same_pins(self):
        state = self.useFixture(fixtures.TempDir()).path
        os.makedirs(os.path.join(state, 'venv'))
        marker = os.path.join(state, 'venv', 'venv.json')
        digest = venv_mod._digest([venv_mod.REQUIREMENTS,
                                   venv_mod.CONSTRAINTS])
        with open(marker, 'w') as f:
            json.dump({'path': 'P', 'digest': digest,
                       'install_seconds': 9}, f)
        info = venv_mod.ensure(state, log=lambda m: None)
        self.assertTrue(info['cached'])
        self.assertEqual(9, info['install_seconds'])
        # NOTE: a pin changed (another digest): the venv is rebuilt; the
        # rebuild is not run here (minutes of pip), only its trigger.
        self.assertNotEqual(digest, venv_mod._digest(
            [venv_mod.REQUIREMENTS]))


def _reap(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


class TestDiskCheck(testtools.TestCase):
    """The scenario's proof reads the disk: that reading must catch a
    missing write, also through a backing chain like Nova's."""

    def test_pattern_found_only_where_written(self):
        from ha_snapshot.tests.integration import cloudlib
        d = self.useFixture(fixtures.TempDir()).path
        base = os.path.join(d, 'base.raw')
        top = os.path.join(d, 'disk')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', base,
                        '8M'], check=True)
        subprocess.run(['qemu-io', '-f', 'raw', base, '-c',
                        'write -P 0x11 0 1M'], check=True,
                       capture_output=True)
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F',
                        'raw', '-b', base, top], check=True)
        subprocess.run(['qemu-io', '-f', 'qcow2', top, '-c',
                        'write -P 0x42 4M 256k'], check=True,
                       capture_output=True)
        copy = cloudlib.copy_disk(top, os.path.join(d, 'work'))
        self.assertTrue(cloudlib.holds_pattern(copy, 0x42, 4 << 20,
                                               256 << 10))
        self.assertTrue(cloudlib.holds_pattern(copy, 0x11, 0, 1 << 20))
        self.assertFalse(cloudlib.holds_pattern(copy, 0x43, 4 << 20,
                                                256 << 10))
        self.assertFalse(cloudlib.holds_pattern(copy, 0x42, 5 << 20,
                                                256 << 10))
