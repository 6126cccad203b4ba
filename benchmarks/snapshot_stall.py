"""QMP latency of a live snapshot of a running VM, and commit throughput.

Starts a real QEMU VM through the ``qemu`` hypervisor driver (``-machine
none``: a running VM with a bare ``-blockdev`` qcow2 node; ``--machine
q35``: a paused q35 machine with a virtio-blk device) on a 1 GiB disk,
then runs the agent's cycle 2 x 200 times (2 x 30 with --quick): a 64 KiB
write at a random cluster (qemu-io through the monitor), one live
snapshot, and the commit of the previous frozen overlay. The driver
prepares the next overlay (``qemu-img create`` + ``blockdev-add``) at the
end of each commit, so a snapshot is a flush and one transaction.

* ``p50_ms``/``p99_ms``: monitor time of each snapshot
  (``Snapshot.qmp_seconds``) with the default settings: the flush of the
  disk (guest I/O goes on) and the ``transaction`` that switches to the
  new overlay. ``txn_p50_ms``/``txn_p99_ms``: the transaction alone, the
  only step that pauses guest I/O. ``without_preflush``: the same with
  ``[qemu] snapshot_preflush = false`` (the transaction does the flush),
  measured in the same run, cycle by cycle interleaved. ``wall_*``: the
  whole ``driver.snapshot()`` call (default settings).
* baseline, in the same run and interleaved with the snapshots: the
  latency of a trivial QMP command (``query-status``), ``baseline_p50_ms``
  and ``baseline_p99_ms``.
* ``commit_mb_s``: a frozen overlay holding 256 MiB (64 MiB with --quick)
  written through qemu-io, committed into its backing: data bytes over the
  time from ``block-commit`` to ``BLOCK_JOB_COMPLETED``. The page cache is
  flushed (sync) before the commit starts.

Goal (issue): ``p99_ms`` <= 20.
"""

import math
import os
import random
import subprocess

import _common as c

from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot.hypervisor import base as hv
from ha_snapshot.hypervisor import impl_qemu

DISK = 1 * c.GiB
CLUSTER = 64 * c.KiB
GOAL_P99_MS = 20.0


def percentile(values, q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def main():
    def more(p):
        p.add_argument('--snapshots', type=int, default=None,
                       help='Cycles per flush mode (default 200, quick 30).')
        p.add_argument('--machine', choices=('none', 'q35'), default='none',
                       help='QEMU machine type (default: %(default)s).')
    args = c.parse_args(__doc__, more)
    count = args.snapshots or (30 if args.quick else 200)
    commit_bytes = (64 if args.quick else 256) * c.MiB
    rng = random.Random(args.seed)
    with c.workdir(args, 'stall') as wd:
        conf = c.make_conf(wd + '/store')
        hypervisor_conf.register_opts(conf)
        driver = impl_qemu.QemuDriver(conf)
        disk_path = wd + '/disk.qcow2'
        c.run('qemu-img', 'create', '-q', '-f', 'qcow2', disk_path,
              str(DISK))
        spec = hv.VMSpec(name='bench', disks=(hv.DiskSpec(disk_path),),
                         qmp_path=wd + '/bench.qmp',
                         log_path=wd + '/bench.log', machine=args.machine,
                         paused=args.machine != 'none')
        vm = driver.start(spec)
        try:
            result = _measure(driver, conf, vm, count, commit_bytes, rng)
        finally:
            driver.kill(vm)
    result.update({
        'benchmark': 'snapshot_stall', 'quick': args.quick,
        'machine': args.machine, 'snapshots': count, 'disk_bytes': DISK,
        'qemu': _qemu_version(conf.qemu.binary),
        'p_definition': 'monitor time of a snapshot (Snapshot.qmp_seconds) '
                        'with the default [qemu] snapshot_preflush=true: '
                        'flush + transaction (the overlay was prepared at '
                        'the previous commit); txn_*: the transaction '
                        'alone (guest I/O paused); nearest-rank '
                        'percentiles',
        'goal': 'p99_ms <= %g' % GOAL_P99_MS,
    })
    result['goal_met'] = result['p99_ms'] <= GOAL_P99_MS
    c.emit(result)


def _stats(samples) -> dict:
    qmp = [s.qmp_seconds for s in samples]
    txn = [s.transaction_seconds for s in samples]
    return {'p50_ms': ms(percentile(qmp, 50)),
            'p99_ms': ms(percentile(qmp, 99)), 'max_ms': ms(max(qmp)),
            'txn_p50_ms': ms(percentile(txn, 50)),
            'txn_p99_ms': ms(percentile(txn, 99))}


def _measure(driver, conf, vm, count, commit_bytes, rng) -> dict:
    disk = driver.disks(vm)[0].name
    snaps = {True: [], False: []}
    wall, baseline, commits = [], [], []
    previous = None
    slots = DISK // CLUSTER
    # NOTE: both flush modes interleaved, cycle by cycle, so that they see
    # the same machine (other processes, page cache, disk).
    for i in range(2 * count):
        preflush = i % 2 == 0
        conf.set_override('snapshot_preflush', preflush, group='qemu')
        t, _ = c.timed(driver.qmp, vm, 'query-status')
        baseline.append(t)
        driver.write(vm, disk, rng.randrange(slots) * CLUSTER, CLUSTER,
                     1 + i % 255)
        t, snap = c.timed(driver.snapshot, vm)
        snaps[preflush].append(snap)
        if preflush:
            wall.append(t)
        if previous is not None:
            for r in driver.commit(vm, previous):
                if r.committed:
                    commits.append(r.seconds)
        previous = snap
        if (i + 1) % max(1, 2 * count // 5) == 0:
            c.log('%d/%d snapshots, last %.2f ms (txn %.2f ms)', i + 1,
                  2 * count, snap.qmp_seconds * 1000,
                  snap.transaction_seconds * 1000)
    conf.clear_override('snapshot_preflush', group='qemu')
    driver.commit(vm, previous)

    c.log('writing %d MiB for the commit', commit_bytes // c.MiB)
    piece = 32 * c.MiB
    for n, offset in enumerate(range(0, commit_bytes, piece)):
        driver.write(vm, disk, offset, min(piece, commit_bytes - offset),
                     0x40 + n % 64)
    big = driver.snapshot(vm)
    c.sync()
    [result] = [r for r in driver.commit(vm, big) if r.committed]
    c.log('commit of %d MiB: %.3f s', commit_bytes // c.MiB, result.seconds)
    out = _stats(snaps[True])
    out.update({
        'without_preflush': _stats(snaps[False]),
        'wall_p50_ms': ms(percentile(wall, 50)),
        'wall_p99_ms': ms(percentile(wall, 99)),
        'baseline_p50_ms': ms(percentile(baseline, 50)),
        'baseline_p99_ms': ms(percentile(baseline, 99)),
        'small_commit_p50_ms': ms(percentile(commits, 50)),
        'commit_bytes': commit_bytes,
        'commit_file_bytes': result.top_bytes,
        'commit_seconds': c.rnd(result.seconds),
        'commit_mb_s': c.mb_per_s(commit_bytes, result.seconds),
    })
    return out


def _qemu_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, '--version'], capture_output=True,
                             text=True, timeout=30).stdout
    except OSError:
        return 'unknown'
    return out.splitlines()[0] if out else 'unknown'


if __name__ == '__main__':
    os.environ.setdefault('LC_ALL', 'C')
    main()
