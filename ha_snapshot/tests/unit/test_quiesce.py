"""Quiesced snapshots against a scripted guest agent on a real unix socket.

The script plays qemu-ga's side of the protocol (0xFF resets, answers to
guest-sync-delimited after a 0xFF, one JSON line per answer) and can lose
answers, stay silent, or leave stale answers in the channel; it records
when it was frozen and thawed, so the tests can check what the guest
would have lived through: never frozen past the bound, always thawed.
(The real guest agent is in tests/functional/test_quiesce.py.)
"""

import json
import os
import socket
import threading
import time

from ha_snapshot.agent import instance as instance_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import codec
from ha_snapshot import delta as delta_mod
from ha_snapshot import demo
from ha_snapshot import exception
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import guest_agent
from ha_snapshot.hypervisor import quiesce
from ha_snapshot.manager import notifications
from ha_snapshot.manager import rpcapi
from ha_snapshot import protection_spec
from ha_snapshot import rpc
from ha_snapshot import statuses
from ha_snapshot.storage import objects
from ha_snapshot.tests import base

BOUND = 0.3


class ScriptedAgent:
    """A guest agent on a unix socket; ``lose`` names commands whose
    answer is swallowed (the command still takes effect)."""

    def __init__(self, path, lose=(), silent=False, stale=b'',
                 frozen_status_once=False):
        self.path = path
        self.lose = set(lose)
        self.silent = silent
        self.stale = stale
        self.frozen_status_once = frozen_status_once
        self.frozen = False
        self.log = []
        """(monotonic time, command) of every command received."""
        self.frozen_at = self.thawed_at = None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.server.close()

    def commands(self):
        return [c for _, c in self.log]

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                if self.stale:
                    conn.sendall(self.stale)
                self._talk(conn)

    def _talk(self, conn):
        buf = b''
        while True:
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                line = line.replace(guest_agent.DELIMITER, b'')
                if line.strip():
                    self._answer(conn, json.loads(line))

    def _answer(self, conn, msg):
        command = msg['execute']
        self.log.append((time.monotonic(), command))
        prefix = b''
        if command == 'guest-sync-delimited':
            ret, prefix = msg['arguments']['id'], guest_agent.DELIMITER
        elif command == 'guest-ping':
            ret = {}
        elif command == 'guest-fsfreeze-freeze':
            self.frozen, self.frozen_at = True, time.monotonic()
            ret = 1
        elif command == 'guest-fsfreeze-thaw':
            if self.frozen:
                self.thawed_at = time.monotonic()
            ret, self.frozen = int(self.frozen), False
        elif command == 'guest-fsfreeze-status':
            ret = 'frozen' if self.frozen else 'thawed'
            if self.frozen_status_once:
                self.frozen_status_once = False
                ret = 'frozen'
        else:
            ret = None
        if self.silent or command in self.lose:
            return
        conn.sendall(prefix + json.dumps({'return': ret}).encode() + b'\n')


class QuiesceTest(base.TestCase):

    def setUp(self):
        super().setUp()
        # NOTE: unix socket paths are short; the test's tmp may not be.
        self.sock = '/tmp/hs-qga-%d-%s.sock' % (os.getpid(),
                                               base.new_uuid()[:8])
        self.addCleanup(lambda: os.path.exists(self.sock)
                        and os.unlink(self.sock))
        self.opts = quiesce.Options(max_freeze=BOUND, ping_timeout=0.5,
                                    command_timeout=2.0)
        self.taken = []

    def agent(self, **kwargs):
        a = ScriptedAgent(self.sock, **kwargs)
        self.addCleanup(a.close)
        return a

    def take(self, seconds=0.0):
        def take():
            self.taken.append(time.monotonic())
            if seconds:
                time.sleep(seconds)
            return 'snap'
        return take

    def run_quiesced(self, take=None, require=False):
        channel = quiesce.SocketChannel(self.sock, 'vm1')
        return quiesce.quiesced('vm1', channel, take or self.take(),
                                self.opts, require)

    def test_consistency_names_are_the_databases(self):
        self.assertEqual(tuple(statuses.Consistency),
                         quiesce.CONSISTENCIES)

    def test_freeze_snapshot_thaw(self):
        a = self.agent()
        result, outcome = self.run_quiesced()
        self.assertEqual('snap', result)
        self.assertEqual(quiesce.FILESYSTEM, outcome.consistency)
        self.assertEqual(['guest-sync-delimited', 'guest-ping',
                          'guest-fsfreeze-freeze', 'guest-fsfreeze-thaw',
                          'guest-fsfreeze-status'], a.commands())
        self.assertFalse(a.frozen)
        # The snapshot was taken while the guest was frozen.
        self.assertTrue(a.frozen_at <= self.taken[0] <= a.thawed_at)
        self.assertLess(outcome.frozen_seconds, BOUND)

    def test_stale_answers_are_dropped(self):
        # A previous client's unread answers, and half a line.
        a = self.agent(stale=b'{"return": 1}\n{"return": 77}\n{"ret')
        _, outcome = self.run_quiesced()
        self.assertEqual(quiesce.FILESYSTEM, outcome.consistency)
        self.assertFalse(a.frozen)

    def test_lost_freeze_answer_is_thawed_within_the_bound(self):
        a = self.agent(lose=('guest-fsfreeze-freeze',))
        t0 = time.monotonic()
        result, outcome = self.run_quiesced()
        # The freeze took effect, its answer never came: thawed at the
        # bound, then the status checked, and the snapshot taken after
        # (crash-consistent).
        self.assertFalse(a.frozen)
        self.assertLess(a.thawed_at - a.frozen_at, BOUND + 0.15)
        cmds = a.commands()
        self.assertIn('guest-fsfreeze-thaw', cmds)
        self.assertEqual('guest-fsfreeze-status', cmds[-1])
        self.assertLess(cmds.index('guest-fsfreeze-freeze'),
                        cmds.index('guest-fsfreeze-thaw'))
        self.assertEqual('snap', result)
        self.assertEqual(quiesce.CRASH, outcome.consistency)
        self.assertIn('freeze', outcome.reason)
        self.assertGreater(self.taken[0], a.thawed_at)
        self.assertLess(time.monotonic() - t0, 3.0)

    def test_lost_freeze_answer_fails_a_required_quiesce(self):
        a = self.agent(lose=('guest-fsfreeze-freeze',))
        e = self.assertRaises(exception.QuiesceFailed, self.run_quiesced,
                              require=True)
        self.assertIn('vm1', str(e))
        self.assertIn('guest-fsfreeze-freeze', str(e))
        self.assertEqual([], self.taken)
        self.assertFalse(a.frozen)

    def test_lost_thaw_answer_is_checked_by_status(self):
        a = self.agent(lose=('guest-fsfreeze-thaw',))
        _, outcome = self.run_quiesced()
        # NOTE: the thaw took effect but its answer was lost: the point
        # was frozen (filesystem); the guest ends thawed.
        self.assertEqual(quiesce.FILESYSTEM, outcome.consistency)
        self.assertFalse(a.frozen)

    def test_frozen_status_gets_another_thaw(self):
        a = self.agent(frozen_status_once=True)
        _, outcome = self.run_quiesced()
        self.assertEqual(quiesce.FILESYSTEM, outcome.consistency)
        self.assertEqual(2, a.commands().count('guest-fsfreeze-thaw'))
        self.assertEqual(2, a.commands().count('guest-fsfreeze-status'))

    def test_slow_snapshot_is_thawed_at_the_bound(self):
        a = self.agent()
        result, outcome = self.run_quiesced(take=self.take(BOUND * 2))
        self.assertEqual('snap', result)
        # The thaw came at the bound, while the snapshot still ran.
        self.assertLess(a.thawed_at - a.frozen_at, BOUND + 0.15)
        self.assertLess(a.thawed_at, self.taken[0] + BOUND * 2)
        self.assertEqual(quiesce.CRASH, outcome.consistency)
        self.assertIn('after the freeze bound', outcome.reason)
        self.assertFalse(a.frozen)

    def test_silent_agent_gives_a_crash_consistent_snapshot(self):
        a = self.agent(silent=True)
        t0 = time.monotonic()
        result, outcome = self.run_quiesced()
        self.assertEqual('snap', result)
        self.assertEqual(quiesce.CRASH, outcome.consistency)
        self.assertIn('silent', outcome.reason)
        self.assertLess(time.monotonic() - t0, self.opts.ping_timeout + 0.5)
        self.assertNotIn('guest-fsfreeze-freeze', a.commands())

    def test_silent_agent_fails_a_required_quiesce(self):
        self.agent(silent=True)
        e = self.assertRaises(exception.QuiesceFailed, self.run_quiesced,
                              require=True)
        self.assertIn('os_require_quiesce', str(e))
        self.assertIn('guest-sync-delimited', str(e))
        self.assertEqual([], self.taken)

    def test_no_socket(self):
        _, outcome = self.run_quiesced()
        self.assertEqual(quiesce.CRASH, outcome.consistency)
        self.assertIn('unreachable', outcome.reason)
        self.assertEqual(1, len(self.taken))

    def test_failed_snapshot_still_thaws(self):
        a = self.agent()

        def take():
            raise exception.SnapshotFailed(vm='vm1', reason='boom')
        self.assertRaises(exception.SnapshotFailed, self.run_quiesced,
                          take=take)
        self.assertFalse(a.frozen)
        self.assertEqual('guest-fsfreeze-status', a.commands()[-1])

    def test_no_channel(self):
        def take():
            self.taken.append(time.monotonic())
            return hv_base.Snapshot(vm='vm1', disks=(), qmp_seconds=0,
                                    transaction_seconds=0, taken_at=0)
        snap = quiesce.snapshot('vm1', None, take, self.opts,
                                quiesce=True, require=False)
        self.assertEqual(('crash', None), (snap.consistency,
                                           snap.frozen_seconds))
        self.assertRaises(exception.QuiesceFailed, quiesce.snapshot, 'vm1',
                          None, take, self.opts, quiesce=True,
                          require=True)
        self.assertEqual(1, len(self.taken))


class ServerSettingsTest(base.TestCase):
    """A Nova server's quiesce settings come from its metadata."""

    def test_metadata(self):
        uuid = base.new_uuid()

        def settings(metadata):
            return notifications.quiesce_settings({'uuid': uuid,
                                                   'metadata': metadata})
        self.assertEqual({}, settings({}))
        self.assertEqual({'quiesce': 'always', 'require_quiesce': True,
                          'guest_agent': True},
                         settings({'ha_snapshot:quiesce': 'Always',
                                   'os_require_quiesce': 'yes',
                                   'hw_qemu_guest_agent': 'yes'}))
        self.assertEqual({'quiesce': '60', 'guest_agent': False},
                         settings({'ha_snapshot:quiesce': '60',
                                   'hw_qemu_guest_agent': 'no'}))
        # A bad value is left out (and logged), the rest kept.
        self.assertEqual({'require_quiesce': False},
                         settings({'ha_snapshot:quiesce': 'hourly',
                                   'os_require_quiesce': 'no'}))
        spec = protection_spec.ProtectionSpec(
            nova=True, **settings({'ha_snapshot:quiesce': 'never'}))
        self.assertEqual(0, spec.quiesce_every(300))


class RecordingDriver:
    """snapshot() as the agent calls it: which were asked quiesced."""

    def __init__(self, consistency='filesystem', fail=False):
        self.calls = []
        self.consistency = consistency
        self.fail = fail

    def snapshot(self, vm, wait=None, quiesce=False, require_quiesce=False):
        self.calls.append((quiesce, require_quiesce))
        if quiesce and self.fail:
            raise exception.QuiesceFailed(vm='vm1', reason='silent')
        return hv_base.Snapshot(
            vm='vm1', disks=(), qmp_seconds=0, transaction_seconds=0,
            taken_at=0,
            consistency=self.consistency if quiesce else 'crash')


class AgentPolicyTest(base.TestCase):
    """When the snapshot loop asks for a quiesced snapshot."""

    def agent(self, driver, spec=None, **overrides):
        conf = demo.make_conf(self.path('work'), interval=1.0,
                              rpo_target=5.0)
        for name, value in overrides.items():
            conf.set_override(name, value, group='agent')
        state = state_mod.InstanceState(instance=base.new_uuid(),
                                        project='p', spec=spec or {})
        self.now = 1000.0
        return instance_mod.SnapshotAgent(conf, driver, None, state, None,
                                          'host', clock=lambda: self.now)

    def takes(self, agent, times):
        asked = []
        for t in times:
            self.now = 1000.0 + t
            n = len(agent.driver.calls)
            agent._take()
            asked.append(agent.driver.calls[n][0])
        return asked

    def test_every_interval(self):
        agent = self.agent(RecordingDriver(), quiesce_interval=300)
        self.assertEqual([True, False, False, True, False],
                         self.takes(agent, (0, 10, 299, 300, 310)))
        self.assertEqual(2, agent.app_consistent)

    def test_per_server_settings(self):
        always = self.agent(RecordingDriver(), {'quiesce': 'always'})
        self.assertEqual([True] * 3, self.takes(always, (0, 1, 2)))
        never = self.agent(RecordingDriver(), {'quiesce': 'never'})
        self.assertEqual([False] * 3, self.takes(never, (0, 1, 2)))
        off = self.agent(RecordingDriver(), quiesce_interval=0)
        self.assertEqual([False] * 2, self.takes(off, (0, 1000)))
        seconds = self.agent(RecordingDriver(), {'quiesce': '20'})
        self.assertEqual([True, False, True],
                         self.takes(seconds, (0, 10, 20)))

    def test_required_quiesce_that_fails_skips_that_point_only(self):
        driver = RecordingDriver(fail=True)
        agent = self.agent(driver, {'quiesce': '60',
                                    'require_quiesce': True})
        self.now = 1000.0
        self.assertIsNone(agent._take())
        self.assertEqual([(True, True)], driver.calls)
        self.assertEqual(1, agent.quiesce_failures)
        self.assertIsInstance(agent.error, exception.QuiesceFailed)
        # The crash-consistent points in between go on.
        self.now = 1010.0
        self.assertEqual('crash', agent._take().consistency)

    def test_consistency_rides_the_delta_header(self):
        headers = []

        class Manager:
            def put_part(self, instance, sequence, part, timeout=None):
                return {'index': part['index']}

            def commit_delta(self, header, timeout=None):
                headers.append(header)
                return {'restore_point': base.new_uuid()}
        agent = self.agent(None)
        agent.manager_api = Manager()
        backing = self.make_qcow2('base.qcow2', 4 * base.MiB)
        overlay = base.new_overlay(self.path('top.qcow2'), backing)
        base.qemu_io(overlay, 'write -P 0x5a 0 64k')
        for sequence, kind in enumerate(('filesystem', 'crash')):
            agent.shipper.ship(state_mod.Pending(
                sequence=sequence, disk='d', frozen=overlay,
                backing=backing, committable=True, taken_at=1.0,
                consistency=kind))
        self.assertEqual(['filesystem', 'crash'],
                         [h['consistency'] for h in headers])


class WireAndStoreTest(base.TestCase):
    """Consistency on the wire and in the store, and with older peers."""

    def header(self, **extra):
        h = {'instance': base.new_uuid(), 'project': 'p', 'sequence': 1,
             'parent': None, 'virtual_size': 1 << 20, 'cluster_size': 65536,
             'part_count': 0, 'changed_bytes': 0, 'data_bytes': 0}
        h.update(extra)
        return h

    def test_header(self):
        # An older agent's header has no consistency: crash.
        h = delta_mod.header_from_primitive(self.header())
        self.assertEqual('crash', h.consistency)
        h = delta_mod.header_from_primitive(
            self.header(consistency='filesystem'))
        delta_mod.validate_header(h, 1 << 30)
        self.assertEqual('filesystem', h.consistency)
        h = delta_mod.header_from_primitive(self.header(consistency='app'))
        e = self.assertRaises(exception.InvalidDelta,
                              delta_mod.validate_header, h, 1 << 30)
        self.assertIn('consistency', str(e))

    def test_manifest(self):
        def rp(kind):
            return objects.RestorePoint(
                id=base.new_uuid(), instance=base.new_uuid(), project='p',
                scope='p', number=1, parent=None, created_at=1.0,
                virtual_size=1 << 20, chunk_size=1 << 16, chunks={},
                delta_sequence=1, consistency=kind)
        for kind in ('crash', 'filesystem'):
            point = rp(kind)
            blob = point.encode()
            self.assertEqual(kind, objects.decode_manifest(
                point.key, blob).consistency)
        # A crash point's manifest is as before the field existed.
        raw = json.loads(codec.decompress(rp('crash').encode(), 1 << 20))
        self.assertNotIn('consistency', raw)

    def test_older_manager_gets_no_consistency(self):
        conf = base.make_conf(self.store_dir)
        transport = rpc.get_transport(conf, url='fake:///')
        sent = []
        for cap in (None, '1.2', '1.1'):
            api = rpcapi.ManagerAPI(transport, version_cap=cap)
            api._routed = lambda owned, method, **kw: sent.append(
                (kw.get('version', '1.0'), kw['header']))
            api.commit_delta(self.header(consistency='filesystem'))
        self.assertEqual(['1.3', '1.2', '1.0'], [v for v, _ in sent])
        self.assertEqual(['filesystem', None, None],
                         [h.get('consistency') for _, h in sent])
