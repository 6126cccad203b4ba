"""ha_snapshot.hypervisor.process: the spec of a VM without a guest, on
a real qemu-img disk."""

import json
import os
import subprocess

from ha_snapshot.hypervisor import process
from ha_snapshot.tests import base


class BareSpecTest(base.TestCase):

    def test_a_new_empty_disk_and_paths_beside_it(self):
        work = self.tmp
        spec = process.bare_spec(work, 'vm7', 3 << 20)
        self.assertEqual(('vm7', 'none'), (spec.name, spec.machine))
        self.assertEqual(os.path.join(work, 'vm7.qmp'), spec.qmp_path)
        self.assertEqual(os.path.join(work, 'vm7.log'), spec.log_path)
        info = json.loads(subprocess.run(
            ['qemu-img', 'info', '--output=json', spec.disks[0].path],
            check=True, capture_output=True, text=True).stdout)
        self.assertEqual(('qcow2', 3 << 20, None),
                         (info['format'], info['virtual-size'],
                          info.get('backing-filename')))

    def test_a_disk_that_cannot_be_made_fails(self):
        self.assertRaises(subprocess.CalledProcessError, process.bare_spec,
                          '/nonexistent-dir', 'vm7', 1 << 20)
