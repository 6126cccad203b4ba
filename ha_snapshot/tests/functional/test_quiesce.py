"""Quiesced snapshots of the real test guest (QEMU under TCG) through the
qemu driver and the guest's own qemu-ga.

What an application-consistent point means to its user: the file system
of the copy is clean as it is (the ext4 superblock does not ask for a
journal replay, checked before anything replays it) and holds every
record the guest reported durable before the point; a crash-consistent
point of the same guest may need the replay. A guest whose agent is
silent is snapshotted unquiesced within the ping bound, or, when the
server requires quiesce, not at all, with an error that says why. (The
lost answers are in tests/unit/test_quiesce.py, against a scripted agent.)
"""

import time

from ha_snapshot import exception
from ha_snapshot.guest import records
from ha_snapshot import statuses
from ha_snapshot.tests.functional import test_guest

RECORD_TIMEOUT = test_guest.RECORD_TIMEOUT
BOOT_TIMEOUT = test_guest.BOOT_TIMEOUT


class QuiesceTest(test_guest.GuestTestCase):

    def setUp(self):
        super().setUp()
        self.conf.set_override('quiesce_max_freeze', 0.5, group='agent')
        self.conf.set_override('quiesce_ping_timeout', 1.0, group='agent')

    def test_quiesced_point_needs_no_replay(self):
        g = self.guest('quiesced')
        g.console.wait_durable(30, BOOT_TIMEOUT)
        # A crash-consistent point, then an application-consistent one,
        # of the same running guest.
        before_crash = time.time()
        crash = self.driver.snapshot(g.vm)
        g.console.wait_durable(g.console.durable_before(time.time()) + 10,
                               RECORD_TIMEOUT)
        before = time.time()
        snap = self.driver.snapshot(g.vm, quiesce=True)
        after = time.time()
        g.console.wait_durable(g.console.durable_before(time.time()) + 5,
                               RECORD_TIMEOUT)
        self.driver.kill(g.vm)
        self.assertEqual(statuses.Consistency.CRASH, crash.consistency)
        self.assertEqual(statuses.Consistency.FILESYSTEM, snap.consistency)
        self.assertLessEqual(snap.frozen_seconds,
                             self.conf.agent.quiesce_max_freeze)
        # The quiesced point (its overlay on the first point's frozen
        # base): clean as it is, every durable record there.
        check = records.check_recovered(snap.disks[0].frozen.path)
        durable = g.console.durable_before(before)
        self.note('quiesced', {
            'frozen_ms': snap.frozen_seconds * 1000,
            'snapshot_ms': (after - before) * 1000,
            'durable_before': durable, 'found': check.records.records,
            'crash_point_durable_before': g.console.durable_before(
                before_crash)})
        self.assertFalse(check.needs_recovery, check.fsck_output)
        self.assertFalse(check.journal_replayed, check.fsck_output)
        self.assertEqual(0, check.replay_status, check.fsck_output)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        self.assertTrue(check.records.ok, check.records.summary())
        self.assertTrue(check.records.durable_intact(durable),
                        check.records.summary())
        # NOTE: nothing is written while frozen; a record fsync'ed just
        # before the freeze may be reported during it.
        self.assertLessEqual(check.records.records,
                             g.console.durable_before(after) + 1)
        self.assertTrue(check.database.ok, check.database.summary())
        # The crash-consistent point of the same guest: allowed to need
        # the replay, and then clean with every durable record.
        check = records.check_recovered(crash.disks[0].frozen.path)
        self.assertEqual(check.needs_recovery, check.journal_replayed)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        self.assertTrue(check.records.durable_intact(
            g.console.durable_before(before_crash)), check.records.summary())

    def test_silent_agent(self):
        # The agent's port is there, nothing in the guest answers on it.
        g = self.guest('silent', qemu_ga=False)
        g.console.wait_durable(10, BOOT_TIMEOUT)
        bound = self.conf.agent.quiesce_ping_timeout
        t0 = time.monotonic()
        snap = self.driver.snapshot(g.vm, quiesce=True)
        took = time.monotonic() - t0
        self.note('silent', {'snapshot_seconds': took})
        self.assertEqual(statuses.Consistency.CRASH, snap.consistency)
        self.assertIsNone(snap.frozen_seconds)
        self.assertLess(took, bound + 1.0)
        # Required: the snapshot fails, clearly, and changes no disk.
        chain = [d.chain for d in self.driver.disks(g.vm)]
        t0 = time.monotonic()
        e = self.assertRaises(exception.QuiesceFailed, self.driver.snapshot,
                              g.vm, quiesce=True, require_quiesce=True)
        self.assertLess(time.monotonic() - t0, bound + 1.0)
        self.assertIn('silent', str(e))
        self.assertIn('os_require_quiesce', str(e))
        self.assertEqual(chain, [d.chain for d in self.driver.disks(g.vm)])
        # The guest went on writing all along.
        n = g.console.durable[-1][0]
        g.console.wait_durable(n + 5, RECORD_TIMEOUT)
