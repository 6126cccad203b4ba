"""Memory state with the real test guest: saved with the disk snapshot at
one instant, resumed by a new QEMU on the disk of that instant.

The proof of consistency: the resumed guest's records go on from exactly
the number after the last one it had reported at the saved instant, with
no boot messages (no reboot, so no journal replay either); a state loaded
into a QEMU of another configuration is refused and leaves no QEMU.
"""

import dataclasses
import os
import time

from ha_snapshot import exception
from ha_snapshot.guest import boot
from ha_snapshot.guest import console as console_mod
from ha_snapshot.hypervisor import process
from ha_snapshot import memory_state
from ha_snapshot.tests.fixtures import guest as guest_fixture
from ha_snapshot.tests.functional import test_guest

BOOT_TIMEOUT = test_guest.BOOT_TIMEOUT
RECORD_TIMEOUT = test_guest.RECORD_TIMEOUT
BOOT_MARKS = ('GUEST up', 'Linux version')


def save_state(driver, vm, spool):
    """(Snapshot, MemorySave, SpoolIndex) of a running guest."""
    writer = memory_state.SpoolWriter(spool)
    snap, saved = driver.snapshot_with_memory(vm, writer.write, timeout=120)
    assert saved.error is None, saved.error
    index = writer.finish(memory_state.proc_config(vm.pid),
                          saved_at=saved.stopped_at,
                          save_seconds=saved.save_seconds,
                          pause_seconds=saved.pause_seconds)
    return snap, saved, index


class MemoryStateTest(test_guest.GuestTestCase):

    def test_resume_goes_on_from_the_next_record(self):
        # NOTE: one boot for both checks (CI time): a QEMU of another
        # configuration refuses the state first, then the right one
        # resumes it.
        g = self.guest('mem')
        g.console.wait_durable(20, BOOT_TIMEOUT)
        spool = self.path('mem.hsm')
        snap, saved, index = save_state(self.driver, g.vm, spool)
        g.console.wait_durable(g.console.durable[-1][0] + 5, RECORD_TIMEOUT)
        self.driver.kill(g.vm)
        g.console.close()
        at_stop = g.console.durable_before(saved.stopped_at)
        # NOTE: a line QEMU wrote just before STOP may reach the host a
        # little later; nothing the guest printed after the instant can.
        near_stop = {n for n, t in g.console.durable
                     if t <= saved.stopped_at + 0.5}
        frozen = snap.disks[0].frozen.path

        other_disk = guest_fixture.overlay(frozen, self.path('other.qcow2'))
        other, _ = boot.respec(g.spec, 'other', self.tmp, other_disk)
        other = dataclasses.replace(other, memory_mb=other.memory_mb * 2)
        t0 = time.monotonic()
        e = self.assertRaises(
            exception.MemoryStateError, self.driver.resume, other,
            memory_state.iter_spool(spool), timeout=60)
        refused_seconds = time.monotonic() - t0
        self.assertIn('other', str(e))
        self.assertFalse(_running(other.pidfile))
        self.assertRaises(exception.MemoryStateMismatch,
                          memory_state.check_config, 'other', index.config,
                          dict(index.config, m='512'))

        disk = guest_fixture.overlay(frozen, self.path('resumed.qcow2'))
        spec, paths = boot.respec(g.spec, 'resumed', self.tmp, disk)
        memory_state.check_config('resumed', index.config,
                                  memory_state.config_of(
                                      process.command_line('qemu', spec)))
        console = console_mod.Console(paths.console, name='resumed')
        self.addCleanup(console.close)
        t0 = time.monotonic()
        vm, seconds = self.driver.resume(
            spec, memory_state.iter_spool(spool), timeout=60)
        self.addCleanup(self.driver.kill, vm)
        console.connect(10)
        console.wait_durable(at_stop + 10, RECORD_TIMEOUT)
        first = console.durable[0][0]
        self.note('memory-state', {
            'state_bytes': index.size, 'chunks': len(index.chunks),
            'stored_bytes': os.path.getsize(spool),
            'pause_seconds': saved.pause_seconds,
            'save_seconds': saved.save_seconds, 'resume_seconds': seconds,
            'wall_resume_seconds': time.monotonic() - t0,
            'refused_seconds': refused_seconds,
            'durable_at_stop': at_stop, 'first_resumed': first})
        self.assertGreaterEqual(first - 1, at_stop)
        self.assertIn(first - 1, near_stop)
        numbers = [n for n, _t in console.durable]
        self.assertEqual(list(range(first, first + len(numbers))), numbers)
        for line in console.lines:
            for mark in BOOT_MARKS:
                self.assertNotIn(mark, line.text)
        self.assertLess(saved.pause_seconds, 1.0)
        self.assertLess(seconds, 10)


def _running(pidfile: str) -> bool:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    return process.pid_running(pid)
