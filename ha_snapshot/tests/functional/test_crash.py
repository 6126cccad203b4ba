"""SIGKILL the merging process at random points; nothing committed is lost.

After every kill: ``store verify`` is clean, every restore point that was
reported committed (its id printed) exports identical to its chain's view,
and a killed import is simply run again.
"""

import os
import random
import signal
import subprocess
import sys
import time

from ha_snapshot.tests import base

MiB = base.MiB
DISK = 96 * MiB


class CrashTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf_file = self.path('ha-snapshot.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[storage]\nbackend_url = file://%s\nchunk_size = %d\n'
                    % (self.store_dir, MiB))
        self.conf = base.make_conf(self.store_dir, storage__chunk_size=MiB)
        self.store = self.make_store(self.conf)

    def import_cmd(self, inst, path):
        return [sys.executable, '-m', 'ha_snapshot.cmd.manage',
                '--config-file', self.conf_file, 'image', 'import',
                '--instance', inst, path]

    def random_file(self, name, size):
        path = self.path(name)
        with open(path, 'wb') as f:
            f.write(os.urandom(size))
        return path

    def make_chain(self, layers):
        rnd = random.Random(7)
        top = self.make_qcow2('base.qcow2', DISK)
        src = self.random_file('src', 32 * MiB)
        base.qemu_io(top, 'write -s %s 0 32M' % src)
        chain = [top]
        for i in range(1, layers):
            ov = base.new_overlay(self.path('o%d.qcow2' % i), chain[-1])
            ops = []
            for _ in range(6):
                start = rnd.randrange(0, DISK // 65536 - 64) * 65536
                ops.append('write -s %s %d 2M' % (src, start))
            ops.append('write -z %d 1M' % (rnd.randrange(0, DISK // MiB)
                                          * MiB))
            base.qemu_io(ov, *ops)
            chain.append(ov)
        return chain

    def test_sigkill_during_imports(self):
        chain = self.make_chain(6)
        views = {p: base.flatten(p, p + '.view') for p in chain}
        # How long one uninterrupted import takes here, to aim the kills.
        t0 = time.monotonic()
        subprocess.run(self.import_cmd(base.new_uuid(), chain[0]),
                       check=True, capture_output=True, timeout=300)
        span = time.monotonic() - t0
        rnd = random.Random(1234)
        inst = base.new_uuid()
        reported, kills = {}, 0
        for layer in chain:
            for attempt in range(4):
                proc = subprocess.Popen(self.import_cmd(inst, layer),
                                        stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                if attempt < 3:
                    try:
                        proc.wait(rnd.uniform(0.05, span * 1.2))
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGKILL)
                        kills += 1
                out, err = proc.communicate(timeout=300)
                if proc.returncode == 0:
                    reported[out.strip()] = views[layer]
                else:
                    self.assertEqual(-signal.SIGKILL, proc.returncode, err)
                self.assertEqual([], self.store.verify())
                for rp_id, view in reported.items():
                    out_path = self.path('check.raw')
                    self.store.export(inst, out_path, rp_id=rp_id)
                    self.assertTrue(base.same_image(out_path, view), rp_id)
                newest = self.store.newest(inst)
                if newest is not None and newest.source == layer:
                    # Committed (reported or not): on to the next layer.
                    if proc.returncode != 0:
                        reported[newest.id] = views[layer]
                    break
            else:
                self.fail('layer %s never committed' % layer)
        self.assertGreater(kills, 0)
        self.assertEqual(len(chain), len(self.store.restore_points(inst)))
        # Leftovers of killed writes are invisible and collected later.
        late = self.make_store(self.conf, clock=lambda: time.time() + 1e6)
        late.gc()
        self.assertEqual([], late.verify())
        for rp_id, view in reported.items():
            out_path = self.path('check.raw')
            self.store.export(inst, out_path, rp_id=rp_id)
            self.assertTrue(base.same_image(out_path, view), rp_id)
