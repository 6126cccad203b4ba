"""The recovery-image store over the swift driver, against a real Swift.

One Swift per test process (``fixtures.swift.shared_server``); every test
gets a container of its own. :class:`SwiftStoreTestCase` runs the
backend-independent store tests of ``tests/unit/test_store.py``; the other
classes test what only Swift shows: conditional requests, paging,
outages, and ha-snapshot-manage configured for Swift without Keystone.
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import fixtures
from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading

from ha_snapshot.conf import swift as swift_conf
from ha_snapshot import exception
from ha_snapshot import importer
from ha_snapshot import storage
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import swift as swift_fixture
from ha_snapshot.tests.unit import test_store

MiB = base.MiB


class SwiftTestCase(base.TestCase):
    """A shared Swift, a fresh container, helpers to build confs."""

    def setUp(self):
        super().setUp()
        self.swift = swift_fixture.shared_server()
        self.addDetail('swift-logs', self.swift.getDetails()['swift-logs'])
        self.container = 'ha-test-' + base.new_uuid()

    def make_swift_conf(self, url=None, **overrides):
        conf = base.make_conf(self.store_dir)
        swift_conf.register_opts(conf)
        conf.set_override('backend_url', url or 'swift://' + self.container,
                          group='storage')
        settings = {'swift__auth_type': 'none',
                    'swift__endpoint_override': self.swift.endpoint,
                    'swift__retry_backoff': 0.05,
                    'swift__retry_backoff_max': 0.2,
                    'swift__max_retries': 2}
        settings.update(overrides)
        for key, value in settings.items():
            group, _, name = key.partition('__')
            conf.set_override(name, value, group=group)
        return conf

    def driver(self, url=None, **overrides):
        conf = self.make_swift_conf(url, **overrides)
        return storage.get_driver(conf)


class SwiftStoreTestCase(test_store.StoreTests, SwiftTestCase):
    """The shared store tests, over Swift."""

    def backend_conf(self, **overrides):
        return self.make_swift_conf(**overrides)

    def store_snapshot(self):
        driver = self.store.driver
        return {o.key: (o.size, o.mtime, hashlib.sha256(
            driver.get(o.key)).hexdigest()) for o in driver.list('')}


class SwiftDriverTestCase(SwiftTestCase):
    """The driver contract as Swift keeps it."""

    def test_create_only_conflict_is_412(self):
        d = self.driver()
        d.put('m/1', b'first', create_only=True)
        e = self.assertRaises(exception.ObjectExists, d.put, 'm/1',
                              b'second', create_only=True)
        self.assertIn('m/1', str(e))
        self.assertEqual(b'first', d.get('m/1'))
        d.put('m/1', b'replaced')  # NOTE: without create_only it replaces
        self.assertEqual(b'replaced', d.get('m/1'))

    def test_create_only_retried_after_a_lost_answer(self):
        """The first PUT lands but its answer is lost: not a conflict."""
        d = self.driver()
        real = d._adapter.request
        lost = []

        def lose_first_put_answer(path, method, **kwargs):
            resp = real(path, method, **kwargs)
            if method == 'PUT' and not lost:
                lost.append(resp.status_code)
                raise ks_exc.ConnectFailure('connection reset (test)')
            return resp
        d.put('m/2', b'theirs')
        self.useFixture(fixtures.MockPatchObject(
            d._adapter, 'request', side_effect=lose_first_put_answer))
        d.put('m/1', b'manifest', create_only=True)
        self.assertEqual([201], lost)
        self.assertEqual(b'manifest', d.get('m/1'))
        # Different bytes there are another writer's: a real conflict.
        lost.clear()
        self.assertRaises(exception.ObjectExists, d.put, 'm/2', b'mine',
                          create_only=True)
        self.assertEqual([412], lost)
        self.assertEqual(b'theirs', d.get('m/2'))

    def test_touch_is_visible_in_list(self):
        d = self.driver()
        d.put('chunks/a', b'x' * 100)
        [before] = list(d.list('chunks/'))
        time.sleep(0.05)
        self.assertTrue(d.touch('chunks/a'))
        [after] = list(d.list('chunks/'))
        self.assertGreater(after.mtime, before.mtime)
        self.assertEqual(100, after.size)
        self.assertFalse(d.touch('chunks/missing'))
        self.assertFalse(d.exists('chunks/missing'))

    def test_delete_if_older_loses_to_a_touch_between_head_and_delete(self):
        d, other = self.driver(), self.driver()
        d.put('chunks/a', b'chunk')
        real = d._adapter.request
        raced = []

        def touch_after_head(path, method, **kwargs):
            resp = real(path, method, **kwargs)
            if method == 'HEAD' and not raced:
                # A merge on another manager reuses the chunk right now.
                raced.append(other.touch('chunks/a'))
            return resp
        patch = self.useFixture(fixtures.MockPatchObject(
            d._adapter, 'request', side_effect=touch_after_head))
        future = time.time() + 3600
        self.assertFalse(d.delete_if_older('chunks/a', future))
        self.assertEqual([True], raced)
        self.assertTrue(d.exists('chunks/a'))
        methods = [c.args[1] for c in patch.mock.call_args_list]
        self.assertEqual(['HEAD', 'DELETE', 'HEAD'], methods)
        # Without a race the same call deletes it, and a late touch
        # finds nothing (the merge then writes the chunk again).
        self.assertTrue(d.delete_if_older('chunks/a', future))
        self.assertFalse(d.exists('chunks/a'))
        self.assertFalse(other.touch('chunks/a'))

    def test_delete_if_older_object_without_marker(self):
        """Objects written by other tools (no X-Delete-At) are guarded too."""
        d = self.driver()
        d.put('chunks/a', b'chunk')  # NOTE: creates the container
        path = d._path('chunks/b')
        for key in ('a', 'b'):
            resp = d._adapter.request(d._path('chunks/' + key), 'PUT',
                                      data=b'plain', raise_exc=False)
            self.assertEqual(201, resp.status_code)
        future = time.time() + 3600
        self.assertTrue(d.delete_if_older('chunks/a', future))
        real = d._adapter.request

        def touch_after_head(p, method, **kwargs):
            resp = real(p, method, **kwargs)
            if method == 'HEAD':
                self.assertTrue(d.touch('chunks/b'))
            return resp
        self.useFixture(fixtures.MockPatchObject(
            d._adapter, 'request', side_effect=touch_after_head))
        self.assertFalse(d.delete_if_older('chunks/b', future))
        self.assertEqual(200, real(path, 'HEAD').status_code)

    def test_delete_if_older_keeps_fresh_objects(self):
        d = self.driver()
        d.put('chunks/a', b'chunk')
        [info] = list(d.list('chunks/a'))
        self.assertFalse(d.delete_if_older('chunks/a', info.mtime - 60))
        self.assertTrue(d.exists('chunks/a'))
        self.assertFalse(d.delete_if_older('chunks/missing', time.time()))

    def test_listing_pages(self):
        d = self.driver(swift__listing_limit=3)
        keys = ['chunks/p-1/%03d/x' % i for i in range(10)] + ['instances/a']
        for key in reversed(keys):
            d.put(key, key.encode())
        patch = self.useFixture(fixtures.MockPatchObject(
            d._adapter, 'request', side_effect=d._adapter.request))
        listed = list(d.list('chunks/'))
        self.assertEqual(keys[:10], [o.key for o in listed])
        self.assertEqual([len(k) for k in keys[:10]], [o.size for o in listed])
        self.assertEqual(4, patch.mock.call_count)  # 3 + 3 + 3 + 1
        self.assertEqual(keys, [o.key for o in d.list('')])
        self.assertEqual([], list(d.list('nothing/')))
        # Swift refuses a limit above its container_listing_limit (10000).
        d.listing_limit = 10001
        e = self.assertRaises(exception.ConfigurationError, list, d.list(''))
        self.assertIn('listing_limit = 10001', str(e))

    def test_prefix_keeps_stores_apart(self):
        a = self.driver('swift://%s/site-a' % self.container)
        b = self.driver('swift://%s/site-b/' % self.container)
        a.put('chunks/x', b'a')
        b.put('chunks/x', b'b')
        self.assertEqual(['chunks/x'], [o.key for o in a.list('')])
        self.assertEqual(b'a', a.get('chunks/x'))
        self.assertEqual(b'b', b.get('chunks/x'))
        whole = self.driver()
        self.assertEqual(['site-a/chunks/x', 'site-b/chunks/x'],
                         [o.key for o in whole.list('')])
        self.assertIn('swift://%s/site-a (' % self.container, a.describe())

    def test_missing_container_reads_empty_and_is_created(self):
        d = self.driver()
        self.assertEqual([], list(d.list('')))
        self.assertRaises(exception.ObjectNotFound, d.get, 'x')
        self.assertFalse(d.exists('x'))
        d.put('x', b'1')
        self.assertEqual(b'1', d.get('x'))
        self.assertEqual(0, d.cleanup(time.time()))
        with d.lock('instance-x'):
            pass

    def test_bad_urls_and_configs(self):
        for url, reason in [
                ('swift://', 'name the container'),
                ('swift://user:pw@host/c', 'not a host'),
                ('swift://c?x=1', 'query'),
                ('swift://' + 'c' * 257, '256')]:
            e = self.assertRaises(exception.BackendNotFound, self.driver, url)
            self.assertIn(reason, str(e))
        e = self.assertRaises(exception.ConfigurationError, self.driver,
                              swift__auth_type=None)
        self.assertIn('auth_type', str(e))
        e = self.assertRaises(exception.ConfigurationError, self.driver,
                              swift__endpoint_override=None)
        self.assertIn('endpoint_override', str(e))

    def test_no_credentials_in_messages(self):
        """Password auth against an unreachable Keystone: no secret shown."""
        port = swift_fixture.free_ports(1)[0]
        conf = self.make_swift_conf(
            swift__auth_type='password', swift__max_retries=1,
            swift__endpoint_override='http://admin:s3cr3t-url@127.0.0.1:'
                                     '%d/v1/AUTH_x' % port)
        conf.register_opts(ks_loading.get_auth_plugin_conf_options(
            'password'), group='swift')
        for name, value in [('auth_url', 'http://127.0.0.1:%d/v3' % port),
                            ('username', 'ha'), ('password', 's3cr3t-pw'),
                            ('project_name', 'service')]:
            conf.set_override(name, value, group='swift')
        d = storage.get_driver(conf)
        e = self.assertRaises(exception.StorageError, d.get, 'x')
        for text in (str(e), d.describe()):
            self.assertNotIn('s3cr3t', text)
        self.assertIn('swift://%s' % self.container, str(e))
        self.assertIn('2 attempts', str(e))
        self.assertEqual('swift://%s (http://127.0.0.1:%d/v1/AUTH_x)'
                         % (self.container, port), d.describe())
        self.assertIn('(http://127.0.0.1:%d/v3/auth/tokens)' % port, str(e))
        # No Keystone, and user info in the endpoint that fails.
        d = self.driver(swift__max_retries=0, swift__endpoint_override=(
            'http://admin:s3cr3t-url@127.0.0.1:%d/v1/AUTH_x' % port))
        e = self.assertRaises(exception.StorageError, d.put, 'x', b'1')
        self.assertNotIn('s3cr3t', str(e))
        self.assertIn('Connection refused (http://127.0.0.1:%d/v1/AUTH_x/'
                      % port, str(e))

    def test_options_for_the_sample_config(self):
        [(group, opts)] = swift_conf.list_opts().items()
        names = {o.dest for o in opts}
        for name in ('auth_type', 'auth_section', 'auth_url', 'password',
                     'timeout', 'cafile', 'insecure', 'endpoint_override',
                     'region_name', 'interface', 'max_retries',
                     'retry_backoff', 'listing_limit'):
            self.assertIn(name, names)
        self.assertEqual(60, [o for o in opts if o.dest == 'timeout'][0]
                         .default)
        self.assertEqual(60, self.make_swift_conf().swift.timeout)


class SwiftOutageTestCase(SwiftTestCase):
    """The proxy stops: nothing is acknowledged, nothing committed is lost."""

    def setUp(self):
        super().setUp()
        self.addCleanup(self._proxy_up)

    def _proxy_up(self):
        if 'proxy' not in self.swift.procs:
            self.swift.start_proxy()

    def import_(self, store, conf, path, inst):
        return importer.import_file(conf, store, inst, path)

    def test_merge_fails_while_down_and_store_is_intact(self):
        conf = self.make_swift_conf(storage__chunk_size=MiB)
        store = self.make_store(conf)
        inst = base.new_uuid()
        b = self.make_qcow2('b.qcow2', 8 * MiB, 'write -P 1 0 3M')
        o = base.new_overlay(self.path('o.qcow2'), b)
        base.qemu_io(o, 'write -P 2 1M 2M')
        rp1 = self.import_(store, conf, b, inst)
        self.swift.stop_proxy()
        t0 = time.monotonic()
        e = self.assertRaises(exception.StorageError, self.import_, store,
                              conf, o, inst)
        elapsed = time.monotonic() - t0
        self.assertIn('swift://%s (%s)' % (
            self.container, self.swift.endpoint), str(e))
        self.assertIn('failed: ConnectFailure: [Errno 111] Connection refused '
                      '(%s/%s) (3 attempts in' % (
                          self.swift.endpoint, self.container), str(e))
        self.assertLess(elapsed, 10)
        self.swift.start_proxy()
        self.assertEqual([rp1.id], [p.id for p in store.restore_points(inst)])
        self.assertEqual([], store.verify())
        out = self.path('rp1.raw')
        store.export(inst, out)
        self.assertTrue(base.same_image(out, b, 'raw', 'qcow2'))
        # The delta, sent again, merges once Swift is back.
        rp2 = self.import_(store, conf, o, inst)
        self.assertEqual(rp1.id, rp2.parent)

    def test_retries_ride_out_a_proxy_restart(self):
        conf = self.make_swift_conf(storage__chunk_size=MiB,
                               swift__max_retries=60,
                               swift__retry_backoff=0.1,
                               swift__retry_backoff_max=0.5)
        store = self.make_store(conf)
        inst = base.new_uuid()
        b = self.make_qcow2('b.qcow2', 4 * MiB, 'write -P 1 0 3M')
        self.swift.stop_proxy()
        done = {}

        def merge():
            try:
                done['rp'] = self.import_(store, conf, b, inst)
            except Exception as e:
                done['error'] = e
        # NOTE: the merge waits in a thread; the proxy is restarted from
        # this one, which started Swift (see SwiftServer.start_proxy).
        merging = threading.Thread(target=merge)
        merging.start()
        self.addCleanup(merging.join)
        time.sleep(1.0)
        self.assertTrue(merging.is_alive())
        self.swift.start_proxy()
        merging.join(120)
        self.assertNotIn('error', done)
        rp = done['rp']
        self.assertEqual([rp.id], [p.id for p in store.restore_points(inst)])
        self.assertEqual([], store.verify())


class SwiftManageTestCase(SwiftTestCase):
    """ha-snapshot-manage with auth_type = none and endpoint_override."""

    def setUp(self):
        super().setUp()
        self.conf_file = self.path('ha-snapshot.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[storage]\nbackend_url = swift://%s/ha\nchunk_size = %d\n'
                    '[swift]\nauth_type = none\nendpoint_override = %s\n'
                    'max_retries = 1\nretry_backoff = 0.1\n'
                    % (self.container, MiB, self.swift.endpoint))
        self.inst = base.new_uuid()

    def test_operator_round_trip(self):
        b = self.make_qcow2('base.qcow2', 16 * MiB, 'write -P 0x41 0 5M')
        o = base.new_overlay(self.path('o.qcow2'), b)
        base.qemu_io(o, 'write -P 0x42 3M 2M', 'write -z 0 64k')
        rp1 = self.manage('image', 'import', '--instance', self.inst,
                          b).stdout.strip()
        rp2 = self.manage('image', 'import', '--instance', self.inst,
                          o).stdout.strip()
        listing = json.loads(self.manage('restore-point', 'list',
                                         '--instance', self.inst,
                                         '--json').stdout)
        self.assertEqual([rp1, rp2], [p['id'] for p in listing])
        out1 = self.path('rp1.raw')
        self.manage('image', 'export', '--instance', self.inst,
                    '--restore-point', rp1, out1)
        self.assertTrue(base.same_image(out1, b, 'raw', 'qcow2'))
        out2 = self.path('rp2.qcow2')
        self.manage('image', 'export', '--instance', self.inst, '--format',
                    'qcow2', out2)
        self.assertTrue(base.same_image(out2, o, 'qcow2', 'qcow2'))
        verify = self.manage('store', 'verify').stdout
        self.assertEqual('store swift://%s/ha (%s): OK\n' % (
            self.container, self.swift.endpoint), verify)
        gc = json.loads(self.manage('store', 'gc').stdout)
        self.assertEqual(0, gc['chunks_removed'])
        # Everything is in the container, under the prefix.
        whole = self.driver()
        keys = [i.key for i in whole.list('')]
        self.assertTrue(keys)
        self.assertTrue(all(k.startswith('ha/') for k in keys), keys)

    def test_swift_down_is_one_line_error(self):
        b = self.make_qcow2('base.qcow2', 4 * MiB, 'write -P 0x41 0 1M')
        port = swift_fixture.free_ports(1)[0]
        with open(self.conf_file, 'a') as f:
            f.write('endpoint_override = http://127.0.0.1:%d/v1/AUTH_x\n'
                    % port)
        r = self.manage('image', 'import', '--instance', self.inst, b,
                        ok=False)
        self.assertEqual(1, r.returncode)
        lines = r.stderr.strip().splitlines()
        self.assertTrue(lines[-1].startswith('ERROR: Storage error: swift://'),
                        r.stderr)
        self.assertIn('127.0.0.1:%d' % port, lines[-1])
        self.assertEqual('', r.stdout)

    def import_proc(self, layer, inst, *extra):
        return subprocess.Popen(
            [sys.executable, '-m', 'ha_snapshot.cmd.manage', '--config-file',
             self.conf_file, 'image', 'import', '--instance', inst, layer]
            + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def test_sigkill_during_imports_loses_nothing(self):
        """SIGKILL the CLI mid-import: verify stays clean, a rerun commits."""
        src = self.path('src')
        with open(src, 'wb') as f:
            f.write(os.urandom(16 * MiB))
        chain = [self.make_qcow2('base.qcow2', 32 * MiB,
                                 'write -s %s 0 16M' % src)]
        for i, start in enumerate((5, 20)):
            ov = base.new_overlay(self.path('o%d.qcow2' % i), chain[-1])
            base.qemu_io(ov, 'write -s %s %dM 8M' % (src, start))
            chain.append(ov)
        conf = self.make_swift_conf('swift://%s/ha' % self.container,
                               storage__chunk_size=MiB)
        store = self.make_store(conf)
        # How long one whole import takes here (another project: nothing
        # deduplicated), to aim the kills.
        t0 = time.monotonic()
        proc = self.import_proc(chain[0], base.new_uuid(), '--project', 'x')
        self.assertEqual(0, proc.wait(300), proc.communicate())
        span = time.monotonic() - t0
        rnd = random.Random(4321)
        kills = 0
        for layer in chain:
            proc = self.import_proc(layer, self.inst)
            try:
                proc.wait(rnd.uniform(0.3, 0.95) * span)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            out, err = proc.communicate(timeout=300)
            self.assertIn(proc.returncode, (0, -signal.SIGKILL), err)
            self.assertEqual([], store.verify())
            newest = store.newest(self.inst)
            if newest is None or newest.source != layer:
                # NOTE: killed before its commit: the rerun commits it.
                proc = self.import_proc(layer, self.inst)
                out, err = proc.communicate(timeout=300)
                self.assertEqual(0, proc.returncode, err)
        self.assertGreater(kills, 0)
        points = store.restore_points(self.inst)
        self.assertEqual(chain, [p.source for p in points])
        for rp, layer in zip(points, chain):
            out = self.path('check.raw')
            store.export(self.inst, out, rp_id=rp.id)
            self.assertTrue(base.same_image(out, layer, 'raw', 'qcow2'))
        # What killed imports wrote is unreferenced and collected later.
        late = self.make_store(conf, clock=lambda: time.time() + 1e6)
        late.gc()
        self.assertEqual([], late.verify())


class SwiftFixtureTestCase(base.TestCase):

    def test_missing_binaries_fail_with_the_packages_to_install(self):
        self.useFixture(fixtures.EnvironmentVariable('PATH', '/nowhere'))
        e = self.assertRaises(swift_fixture.SwiftFixtureError,
                              swift_fixture.check_installed)
        self.assertIn('apt-get install -y swift swift-proxy swift-account '
                      'swift-container swift-object', str(e))
        self.assertIn('swift-proxy-server', str(e))
