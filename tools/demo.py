#!/usr/bin/env python3
"""The local demo: a generated server disk goes round trip through the store.

What an operator would do by hand with ha-snapshot-manage, run for real:
a 1 GiB qcow2 disk gets a baseline and a chain of overlays (random writes,
zero writes, discards); each is imported as a restore point, every restore
point is exported (raw, and the newest as qcow2) and compared with
``qemu-img compare`` against the chain's own view at that point, then the
store is verified and garbage-collected. The last line is a JSON summary;
the exit status is 0 only if everything matched.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

MiB = 1 << 20


def sh(*cmd, capture=True):
    print('$ ' + ' '.join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, check=True, text=True,
                       capture_output=capture, timeout=600)
    return r.stdout.strip() if capture else ''


def manage(conf, *args):
    return sh(sys.executable, '-m', 'ha_snapshot.cmd.manage',
              '--config-file', conf, *args)


def du(path):
    total = 0
    for d, _dirs, files in os.walk(path):
        for f in files:
            total += os.stat(os.path.join(d, f)).st_blocks * 512
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--workdir', help='keep everything here (default: a '
                   'temporary directory, removed at the end)')
    p.add_argument('--deltas', type=int, default=5)
    args = p.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix='ha-snapshot-demo-',
                                            dir='/var/tmp')
    os.makedirs(work, exist_ok=True)
    rnd = random.Random(2026)
    try:
        store = os.path.join(work, 'store')
        conf = os.path.join(work, 'ha-snapshot.conf')
        with open(conf, 'w') as f:
            f.write('[storage]\nbackend_url = file://%s\n' % store)
        src = os.path.join(work, 'random.bin')
        with open(src, 'wb') as f:
            f.write(os.urandom(16 * MiB))
        instance = str(uuid.uuid4())
        disk = os.path.join(work, 'disk.qcow2')
        sh('qemu-img', 'create', '-q', '-f', 'qcow2', disk, '1G')
        sh('qemu-io', '-c', 'write -s %s 0 16M' % src,
           '-c', 'write -P 0x5a 512M 48M', disk)
        chain, timings = [disk], []
        for i in range(1, args.deltas + 1):
            ov = os.path.join(work, 'snap%d.qcow2' % i)
            sh('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'qcow2',
               '-b', chain[-1], ov)
            ops = []
            for _ in range(8):
                start = rnd.randrange(0, 1024 - 2) * MiB + rnd.randrange(
                    0, 2048) * 512
                ops += ['-c', 'write -s %s %d %d' % (src, start, MiB)]
            ops += ['-c', 'write -z %d 2M' % (rnd.randrange(0, 500) * MiB),
                    '-c', 'discard %d 1M' % (rnd.randrange(512, 560) * MiB)]
            sh('qemu-io', *ops, ov)
            chain.append(ov)
        points = []
        for layer in chain:
            t0 = time.monotonic()
            rp = manage(conf, 'image', 'import', '--instance', instance,
                        layer)
            timings.append(time.monotonic() - t0)
            points.append((rp, layer))
        listing = json.loads(manage(conf, 'restore-point', 'list',
                                    '--instance', instance, '--json'))
        print(manage(conf, 'restore-point', 'list', '--instance', instance),
              file=sys.stderr)
        matched = 0
        t0 = time.monotonic()
        for rp, layer in points:
            out = os.path.join(work, 'export.raw')
            manage(conf, 'image', 'export', '--instance', instance,
                   '--restore-point', rp, out)
            r = subprocess.run(['qemu-img', 'compare', '-q', '-f', 'raw',
                                '-F', 'qcow2', out, layer])
            matched += r.returncode == 0
            os.unlink(out)
        export_seconds = (time.monotonic() - t0) / len(points)
        out = os.path.join(work, 'newest.qcow2')
        manage(conf, 'image', 'export', '--instance', instance, '--format',
               'qcow2', out)
        qcow2_ok = subprocess.run(['qemu-img', 'compare', '-q', out,
                                   chain[-1]]).returncode == 0
        verify = subprocess.run(
            [sys.executable, '-m', 'ha_snapshot.cmd.manage', '--config-file',
             conf, 'store', 'verify'], capture_output=True, text=True)
        gc = json.loads(manage(conf, 'store', 'gc'))
        verified = (matched == len(points) and qcow2_ok
                    and verify.returncode == 0
                    and len(listing) == len(points))
        print(json.dumps({
            'verified': verified,
            'instance': instance,
            'restore_points': len(listing),
            'exports_identical': matched,
            'qcow2_export_identical': qcow2_ok,
            'store_verify': verify.returncode == 0,
            'changed_bytes': [p['changed_bytes'] for p in listing],
            'new_bytes_stored': [p['new_bytes'] for p in listing],
            'store_bytes_on_disk': du(store),
            'import_seconds': [round(t, 3) for t in timings],
            'export_seconds_mean': round(export_seconds, 3),
            'gc': gc,
        }))
        return 0 if verified else 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
