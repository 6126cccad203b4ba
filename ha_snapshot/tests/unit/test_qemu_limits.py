"""qemu-img under the address-space limit (ha_snapshot.image.qemu).

A raw-to-qcow2 conversion of a restore point failed in CI with "qemu:
qemu_thread_create: Resource temporarily unavailable": its I/O threads
each took a glibc malloc arena (64 MiB of address space apiece). qemu-img
now runs with two arenas; the same conversion under a limit tight enough
to fail without that (300 MB here) succeeds and is byte-identical.
"""

import subprocess

from ha_snapshot.image import qemu
from ha_snapshot.tests import base

MiB = 1 << 20


class AddressSpaceTest(base.TestCase):

    def test_convert_fits_a_tight_address_space(self):
        raw = self.path('disk.raw')
        subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', raw,
                        str(512 * MiB)], check=True)
        subprocess.run(['qemu-io', '-f', 'raw', '-c',
                        'write -P 0x33 0 %d' % (384 * MiB), raw],
                       check=True, capture_output=True)
        out = self.path('disk.qcow2')
        qemu.convert_raw_to_qcow2(raw, out, limits=qemu.Limits(
            address_space=300 * 1000 * 1000, cpu_time=120))
        r = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw', '-F',
                            'qcow2', raw, out], capture_output=True)
        self.assertEqual(0, r.returncode, r.stderr)
