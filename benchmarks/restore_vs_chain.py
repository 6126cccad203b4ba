"""Restore (export) time after 1 delta and after a long chain of deltas.

Two instances in one file store, each a 1 GiB disk with a 256 MiB baseline
of random data (64 MiB with --quick): ``short`` gets 1 delta, ``long``
gets a chain of N deltas (N = 200, 30 with --quick). Every delta is 2 MiB
of random data in 16 extents of 128 KiB at random offsets inside the data
region (so the data to export stays the same while the chain grows), each
merged as a new restore point (no retention).

The exports (raw, newest restore point) of the two instances then run
alternately, 5 times each (the disk of a VM drifts; alternating puts both in
the same conditions): ``ratio`` = median export time of ``long`` / median
of ``short``. Also reported: the export of ``long`` right after its first
delta (measured then, for reference), the export of that first restore
point by id after the whole chain (``get_restore_point`` with an id), the
merge times of the first and last 5 deltas of the chain, and whether the
final export equals the overlay chain (``qemu-img compare``).

Goal (issue): ``ratio`` <= 1.2 -- restore cost does not grow with the
number of deltas (every restore point is a whole image).
"""

import os
import random

import _common as c

DISK = 1 * c.GiB
EXTENT = 128 * c.KiB
EXTENTS = 16
REPEAT = 5


class Chain:
    """One instance: a baseline, then deltas merged one by one."""

    def __init__(self, name, conf, st, wd, data, rng):
        self.name, self.conf, self.st, self.wd = name, conf, st, wd
        self.data, self.rng = data, rng
        self.instance = c.new_instance()
        self.backing = c.make_raw('%s/%s-base.raw' % (wd, name), DISK,
                                  [(0, c.random_bytes(data))])
        self.fmt = 'raw'
        self.rp = st.merge(c.build_delta(
            conf, c.inspect_whole(conf, self.backing),
            instance=self.instance), source=self.backing)
        self.seq = 0
        self.merges = []
        self.first_rp = None

    def add_delta(self):
        self.seq += 1
        overlay = c.make_overlay(
            '%s/%s-%04d.qcow2' % (self.wd, self.name, self.seq),
            self.backing, self.fmt, DISK,
            [(o, c.random_bytes(EXTENT)) for o in c.scattered_offsets(
                self.rng, EXTENTS, EXTENT, 0, self.data)])
        received, _ = c.wire_roundtrip(c.build_delta(
            self.conf, c.inspect_overlay(self.conf, overlay),
            instance=self.instance, sequence=self.seq, parent=self.rp.id))
        dt, self.rp = c.timed(self.st.merge, received, source=overlay)
        self.merges.append(dt)
        self.first_rp = self.first_rp or self.rp
        self.backing, self.fmt = overlay, 'qcow2'

    def export(self, rp_id=None) -> float:
        out = '%s/%s-export.raw' % (self.wd, self.name)
        c.sync()
        dt, _rp = c.timed(self.st.export, self.instance, out, rp_id=rp_id)
        os.unlink(out)
        return dt


def main():
    args = c.parse_args(__doc__, lambda p: p.add_argument(
        '--deltas', type=int, default=None,
        help='Length of the long chain (default 200, quick 30).'))
    n = args.deltas or (30 if args.quick else 200)
    data = (64 if args.quick else 256) * c.MiB
    rng = random.Random(args.seed)
    result = {'benchmark': 'restore_vs_chain', 'quick': args.quick,
              'disk_bytes': DISK, 'baseline_bytes': data, 'deltas': n,
              'delta_bytes': EXTENT * EXTENTS, 'repeat': REPEAT,
              'delta_layout': '%d random extents of %d KiB in the data region'
                              % (EXTENTS, EXTENT // c.KiB)}
    with c.workdir(args, 'chain') as wd:
        conf = c.make_conf(wd + '/store')
        st = c.make_store(conf)
        result['chunk_size'] = conf.storage.chunk_size
        short = Chain('short', conf, st, wd, data, rng)
        short.add_delta()
        long = Chain('long', conf, st, wd, data, rng)
        long.add_delta()
        early = [long.export() for _ in range(3)]
        c.log('long chain after delta 1: export %.3fs', c.median(early))
        while long.seq < n:
            long.add_delta()
            if long.seq % 25 == 0:
                c.log('delta %d merged (%.3fs)', long.seq, long.merges[-1])
        times = {'short': [], 'long': []}
        for rep in range(REPEAT):
            for chain in (short, long):
                times[chain.name].append(chain.export())
            c.log('rep %d: export short %.3fs, long %.3fs', rep,
                  times['short'][-1], times['long'][-1])
        by_id = [long.export(long.first_rp.id) for _ in range(3)]
        out = wd + '/final.raw'
        st.export(long.instance, out)
        result['export_matches_chain'] = 'identical' in c.run(
            'qemu-img', 'compare', '-f', 'raw', '-F', 'qcow2', out,
            long.backing)
        os.unlink(out)
        result['restore_points_long'] = len(st.restore_points(long.instance))
        result['stored_chunk_bytes'] = c.tree_bytes(wd + '/store/chunks')[1]
        result['manifest_bytes'] = c.tree_bytes(wd + '/store/instances')[1]
    for name, secs in times.items():
        result['export_%s' % name] = {
            'seconds': c.rnd(c.median(secs)), 'min': c.rnd(min(secs)),
            'all_seconds': [c.rnd(s) for s in secs]}
    result['export_seconds_1'] = result['export_short']['seconds']
    result['export_seconds_n'] = result['export_long']['seconds']
    result['export_long_after_delta_1'] = c.rnd(c.median(early))
    result['export_first_by_id_after_n'] = c.rnd(c.median(by_id))
    result['merge_seconds_first5'] = c.rnd(c.median(long.merges[:5]))
    result['merge_seconds_last5'] = c.rnd(c.median(long.merges[-5:]))
    result['ratio'] = c.rnd(result['export_seconds_n']
                            / result['export_seconds_1'], 3)
    result['ratio_min'] = c.rnd(result['export_long']['min']
                                / result['export_short']['min'], 3)
    result['ratio_first_by_id'] = c.rnd(
        result['export_first_by_id_after_n'] / result['export_seconds_1'], 3)
    result['goal'] = 'ratio <= 1.2'
    result['goal_met'] = result['ratio'] <= 1.2
    c.emit(result)


if __name__ == '__main__':
    main()
