"""ha-snapshot-manage as operators run it: a real process per command."""

import json
import os

from ha_snapshot.tests import base

MiB = base.MiB


class ManageTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf_file = self.path('ha-snapshot.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[storage]\nbackend_url = file://%s\nchunk_size = %d\n'
                    % (self.store_dir, MiB))
        self.inst = base.new_uuid()

    def assertFails(self, expect, *args):
        before = base.tree_digest(self.store_dir)
        r = self.manage(*args, ok=False)
        self.assertNotEqual(0, r.returncode)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(1, len(lines), r.stderr)
        self.assertIn(expect, lines[0])
        self.assertEqual('', r.stdout)
        self.assertEqual(before, base.tree_digest(self.store_dir))
        return lines[0]

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
        self.assertEqual([1, 2], [p['number'] for p in listing])
        table = self.manage('restore-point', 'list', '--instance',
                            self.inst).stdout
        self.assertIn(rp2, table)
        out1 = self.path('rp1.raw')
        self.manage('image', 'export', '--instance', self.inst,
                    '--restore-point', rp1, out1)
        self.assertTrue(base.same_image(out1, b, 'raw', 'qcow2'))
        out2 = self.path('rp2.qcow2')
        self.manage('image', 'export', '--instance', self.inst, '--format',
                    'qcow2', out2)
        self.assertTrue(base.same_image(out2, o, 'qcow2', 'qcow2'))
        out3 = self.path('rp2-root.raw')
        self.manage('image', 'export', '--instance', self.inst, '--disk',
                    'root', out3)
        self.assertTrue(base.same_image(out3, o, 'raw', 'qcow2'))
        self.assertIn('OK', self.manage('store', 'verify').stdout)
        self.assertIn('OK', self.manage('store', 'verify', '--instance',
                                        self.inst).stdout)
        gc = json.loads(self.manage('store', 'gc').stdout)
        self.assertEqual(0, gc['chunks_removed'])

    def test_bad_input_one_line_store_unchanged(self):
        b = self.make_qcow2('base.qcow2', 16 * MiB, 'write -P 0x41 0 1M')
        self.manage('image', 'import', '--instance', self.inst, b)
        wrong_size = self.path('ws.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', b,
                      wrong_size, str(8 * MiB))
        hostile = self.path('hostile.qcow2')
        base.qemu_img('create', '-q', '-f', 'qcow2', '-u', '-F', 'raw', '-b',
                      '/etc/passwd', hostile, str(16 * MiB))
        garbage = self.path('garbage.qcow2')
        with open(garbage, 'wb') as f:
            f.write(b'QFI\xfb' + os.urandom(4000))
        cases = [
            ('does not exist', 'image', 'import', '--instance', self.inst,
             self.path('missing.qcow2')),
            ('expected a UUID', 'image', 'import', '--instance', 'nope', b),
            ('not the expected', 'image', 'import', '--instance', self.inst,
             hostile),
            ('refused', 'image', 'import', '--instance', self.inst, garbage),
            ('virtual size', 'image', 'import', '--instance', self.inst,
             wrong_size),
            ('has a backing file', 'image', 'import', '--instance',
             base.new_uuid(), wrong_size),
            ('no restore points', 'image', 'export', '--instance',
             base.new_uuid(), self.path('x.raw')),
            ('not found', 'image', 'export', '--instance', self.inst,
             '--restore-point', base.new_uuid(), self.path('x.raw')),
            ('does not exist', 'image', 'export', '--instance', self.inst,
             self.path('no', 'such', 'dir.raw')),
            ('disk vdb: the restore point holds its root disk only',
             'image', 'export', '--instance', self.inst, '--disk', 'vdb',
             self.path('x.raw')),
            ('no restore points', 'restore-point', 'list', '--instance',
             base.new_uuid()),
            ('expected a UUID', 'store', 'verify', '--instance', '1234'),
        ]
        for case in cases:
            self.assertFails(*case)
        self.assertFalse(os.path.exists(self.path('x.raw')))

    def test_verify_exit_code_names_objects(self):
        b = self.make_qcow2('base.qcow2', 4 * MiB, 'write -P 0x41 0 1M')
        self.manage('image', 'import', '--instance', self.inst, b)
        chunks = [os.path.join(d, f) for d, _, fs in os.walk(
            os.path.join(self.store_dir, 'chunks')) for f in fs]
        self.assertEqual(1, len(chunks))
        with open(chunks[0], 'ab') as f:
            f.write(b'junk')
        r = self.manage('store', 'verify', ok=False)
        self.assertEqual(1, r.returncode)
        self.assertIn(os.path.basename(chunks[0]), r.stderr)
        self.assertTrue(r.stderr.startswith('BROKEN chunks/'))

    def test_bad_config_value_one_line(self):
        with open(self.conf_file, 'a') as f:
            f.write('[retention]\nkeep_last = -3\n')
        b = self.make_qcow2('base.qcow2', MiB, 'write -P 1 0 64k')
        self.assertFails('keep_last', 'image', 'import', '--instance',
                         self.inst, b)

    def test_usage_errors(self):
        r = self.manage('image', 'import', ok=False)
        self.assertEqual(2, r.returncode)
        r = self.manage('store', 'frobnicate', ok=False)
        self.assertEqual(2, r.returncode)
