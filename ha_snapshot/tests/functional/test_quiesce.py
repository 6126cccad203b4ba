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
The libvirt driver freezes around backupBegin only, on the same guest in
a domain of a private libvirtd.
"""

import json
import os
import time

from testtools import content

from ha_snapshot import exception
from ha_snapshot.guest import console as console_mod
from ha_snapshot.guest import records
from ha_snapshot import statuses
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import guest as guest_fixture
from ha_snapshot.tests.functional import test_guest
from ha_snapshot.tests.functional import test_hypervisor_libvirt

RECORD_TIMEOUT = test_guest.RECORD_TIMEOUT
BOOT_TIMEOUT = test_guest.BOOT_TIMEOUT


class QuiesceTest(test_guest.GuestTestCase):

    def setUp(self):
        super().setUp()
        self.conf.set_override('quiesce_max_freeze', 0.5, group='agent')
        self.conf.set_override('quiesce_ping_timeout', 1.0, group='agent')

    def test_quiesced_point_needs_no_replay(self):
        g = self.guest('quiesced')
        g.console.wait_durable(5, BOOT_TIMEOUT)
        g.console.wait_for('COMMITTED 3', RECORD_TIMEOUT)
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
        # NOTE: the thaw is sent within the bound; frozen_seconds runs to
        # its answer, which a loaded TCG guest may give later.
        self.assertLess(snap.frozen_seconds,
                        self.conf.agent.quiesce_max_freeze + 1.0)
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
        g.console.wait_durable(1, BOOT_TIMEOUT)
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


GUEST_DOMAIN_XML = '''<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>%(kernel)s</kernel>
    <initrd>%(initrd)s</initrd>
    <cmdline>%(cmdline)s</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%(disk)s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='unix'>
      <source mode='bind' path='%(console)s'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>'''


class LibvirtQuiesceTest(test_hypervisor_libvirt.LibvirtTestCase):
    """FSFreeze/FSThaw around backupBegin, on the real guest in a domain
    of a private libvirtd."""

    def test_quiesced_backup_needs_no_replay(self):
        # NOTE: libvirt's backupBegin alone takes 0.8-1.2 s here (TCG, two
        # shared cores: it creates the target and the bitmaps through
        # many monitor commands) and the freeze must cover it.
        self.conf.set_override('quiesce_max_freeze', 4.0, group='agent')
        image = guest_fixture.image()
        disk = guest_fixture.overlay(image.disk, self.path('guest.qcow2'))
        dom_uuid = base.new_uuid()
        sock = '/tmp/hs-console-%s.sock' % dom_uuid[:8]
        self.addCleanup(lambda: os.path.exists(sock) and os.unlink(sock))
        dom = self.conn.defineXML(GUEST_DOMAIN_XML % {
            'name': 'guest', 'uuid': dom_uuid, 'kernel': image.kernel,
            'initrd': image.initrd, 'cmdline': image.cmdline('workload'),
            'disk': disk, 'console': sock})
        self.addCleanup(self._remove_domain, dom_uuid)
        dom.createWithFlags(self.lv.VIR_DOMAIN_START_PAUSED)
        console = console_mod.Console(sock, name='libvirt-guest')
        console.connect(30)
        self.addCleanup(console.close)
        dom.resume()
        console.wait_durable(5, BOOT_TIMEOUT)
        console.wait_for('COMMITTED 3', RECORD_TIMEOUT)
        vm = self.attach(dom_uuid)
        before = time.time()
        snap = self.driver.snapshot(vm, quiesce=True)
        after = time.time()
        console.wait_durable(console.durable_before(time.time()) + 5,
                             RECORD_TIMEOUT)
        self.addDetail('quiesced-backup', content.text_content(json.dumps({
            'frozen_ms': snap.frozen_seconds * 1000,
            'snapshot_ms': (after - before) * 1000,
            'begin_ms': snap.transaction_seconds * 1000})))
        self.assertEqual(statuses.Consistency.FILESYSTEM, snap.consistency)
        self.assertLess(snap.frozen_seconds,
                        self.conf.agent.quiesce_max_freeze + 1.0)
        # The guest ends thawed: it goes on writing (checked above), and
        # its agent says so.
        import libvirt_qemu
        status = json.loads(libvirt_qemu.qemuAgentCommand(
            dom, '{"execute": "guest-fsfreeze-status"}', 10, 0))
        self.assertEqual('thawed', status['return'])
        # The first backup is the whole disk at backupBegin's instant.
        full = snap.disks[0]
        self.assertTrue(full.full)
        check = records.check_recovered(full.frozen.path)
        self.assertFalse(check.needs_recovery, check.fsck_output)
        self.assertFalse(check.journal_replayed, check.fsck_output)
        self.assertTrue(check.fsck_clean, check.fsck_output)
        self.assertTrue(check.records.ok, check.records.summary())
        self.assertTrue(check.records.durable_intact(
            console.durable_before(before)), check.records.summary())
        self.assertLessEqual(check.records.records,
                             console.durable_before(after) + 1)
        self.assertTrue(check.database.ok, check.database.summary())
