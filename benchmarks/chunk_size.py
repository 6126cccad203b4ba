"""Sweep of ``[storage] chunk_size``: merge speed, write amplification,
object count, manifest size and export time.

For each chunk size (256 KiB, 1 MiB, 4 MiB, 16 MiB), in a fresh file store:

* (c) baseline: a 1 GiB disk with 256 MiB of random data (64 MiB with
  --quick): baseline merge time, objects, manifest size, then the export
  time (raw, median of 3);
* (a) sequential: a 64 MiB (16 MiB) contiguous, chunk-aligned delta of
  incompressible data on that disk: merge time (median of 3, each a fresh
  delta on the chain; the wire form is built before the clock starts), MB/s,
  stored bytes and objects added;
* (b) scattered: 1000 random 64 KiB writes (250 with --quick) over a 4 GiB
  disk (1 GiB with --quick) whose baseline holds almost nothing: merge time,
  objects added, and write amplification = bytes of new chunks / bytes
  changed, both logical (uncompressed: what is stored when the rest of each
  chunk is incompressible data, the case of a full disk) and as stored
  (after chunk compression: here the rest of each chunk is zeros).

Rule for ``recommended_chunk_size``: among the sizes whose logical write
amplification in (b) is at most 4x the smallest one, the one with the best
merge throughput in (a). Manifest bytes per TiB of data (every restore
point holds a full manifest) are reported for the trade-off the rule does
not weigh.

Overlays are made as described in _common.py: the same cluster layout
``qemu-io`` writes would give, with unique incompressible data. The inputs
do not depend on the chunk size, so they are made and received (wire form)
once, and every store merges the same deltas.
"""

import dataclasses
import os
import random
import shutil
import uuid

import _common as c
from ha_snapshot import delta as delta_mod

SIZES = (256 * c.KiB, 1 * c.MiB, 4 * c.MiB, 16 * c.MiB)
WRITE = 64 * c.KiB
TiB = 1 << 40


def main():
    args = c.parse_args(__doc__)
    q = args.quick
    base_data = (64 if q else 256) * c.MiB
    seq_bytes = (16 if q else 64) * c.MiB
    seq_reps = 2 if q else 3
    scat_disk = (1 if q else 4) * c.GiB
    scat_writes = 250 if q else 1000
    rng = random.Random(args.seed)
    result = {'benchmark': 'chunk_size', 'quick': q,
              'sizes': list(SIZES),
              'a_sequential': {'delta_bytes': seq_bytes, 'repeat': seq_reps},
              'b_scattered': {'disk_bytes': scat_disk, 'writes': scat_writes,
                              'write_bytes': WRITE},
              'c_export': {'disk_bytes': c.GiB, 'data_bytes': base_data}}
    with c.workdir(args, 'chunks') as wd:
        # NOTE: the inputs do not depend on the chunk size: they are made,
        # and their deltas received (wire form), once; each store gets the
        # same deltas, re-parented onto its own restore points.
        conf = c.make_conf(wd + '/unused')
        instance, sinst = c.new_instance(), c.new_instance()
        base = c.make_raw(wd + '/base.raw', c.GiB,
                          [(0, c.random_bytes(base_data))])
        base_delta = _received(conf, c.inspect_whole(conf, base), instance,
                               0)
        seq_deltas, backing, fmt = [], base, 'raw'
        for rep in range(seq_reps):
            overlay = c.make_overlay(
                '%s/seq-%d.qcow2' % (wd, rep), backing, fmt, c.GiB,
                [(base_data // 4, c.random_bytes(seq_bytes))])
            seq_deltas.append(_received(conf, c.inspect_overlay(
                conf, overlay), instance, rep + 1))
            backing, fmt = overlay, 'qcow2'
        sbase = c.make_raw(wd + '/sbase.raw', scat_disk,
                           [(0, c.random_bytes(WRITE))])
        sbase_delta = _received(conf, c.inspect_whole(conf, sbase), sinst, 0)
        overlay = c.make_overlay(
            wd + '/scat.qcow2', sbase, 'raw', scat_disk,
            [(o, c.random_bytes(WRITE)) for o in c.scattered_offsets(
                rng, scat_writes, WRITE, 0, scat_disk)])
        scat_delta = _received(conf, c.inspect_overlay(conf, overlay), sinst,
                               1)
        changed = scat_delta.header.changed_bytes
        c.log('inputs ready')
        for cs in SIZES:
            key = _label(cs)
            root = '%s/store-%s' % (wd, key)
            st = c.make_store(c.make_conf(root, chunk_size=cs))
            chunks_dir = root + '/chunks'
            row = {'chunk_size': cs}
            # (c) baseline and export
            c.sync()
            dt, rp = c.timed(st.merge, base_delta)
            row['baseline_merge_seconds'] = c.rnd(dt)
            row['baseline_objects'] = c.tree_bytes(chunks_dir)[0]
            row['manifest_bytes'] = os.path.getsize('%s/%s' % (root, rp.key))
            row['manifest_bytes_per_TiB_data'] = int(
                row['manifest_bytes'] * TiB / base_data)
            row['export_seconds'] = c.rnd(c.median(
                [_export(st, instance, wd) for _ in range(3)]))
            # (a) sequential
            secs, stored, objects = [], [], []
            for delta in seq_deltas:
                delta = _reparent(delta, rp.id)
                before = c.tree_bytes(chunks_dir)
                c.sync()
                dt, rp = c.timed(st.merge, delta)
                after = c.tree_bytes(chunks_dir)
                secs.append(dt)
                stored.append(after[1] - before[1])
                objects.append(after[0] - before[0])
            m = c.median(secs)
            row['a_merge_seconds'] = c.rnd(m)
            row['a_merge_MBps'] = c.mb_per_s(seq_bytes, m)
            row['a_all_seconds'] = [c.rnd(s) for s in secs]
            row['a_stored_bytes'] = stored[-1]
            row['a_objects'] = objects[-1]
            row['a_write_amplification'] = c.rnd(stored[-1] / seq_bytes)
            # (b) scattered
            srp = st.merge(sbase_delta)
            delta = _reparent(scat_delta, srp.id)
            before = c.tree_bytes(chunks_dir)
            c.sync()
            dt, srp = c.timed(st.merge, delta)
            after = c.tree_bytes(chunks_dir)
            row['b_merge_seconds'] = c.rnd(dt)
            row['b_changed_bytes'] = changed
            row['b_objects'] = after[0] - before[0]
            row['b_new_bytes_logical'] = srp.new_bytes
            row['b_stored_bytes'] = after[1] - before[1]
            row['b_write_amplification'] = c.rnd(srp.new_bytes / changed, 2)
            row['b_write_amplification_stored'] = c.rnd(
                (after[1] - before[1]) / changed, 2)
            result[key] = row
            c.log('%-5s a: %.3fs (%.0f MB/s) | b: %.3fs, WA %.1f (stored '
                  '%.2f), %d objects | c: export %.3fs, manifest %d B',
                  key, m, seq_bytes / c.MiB / m, dt,
                  row['b_write_amplification'],
                  row['b_write_amplification_stored'], row['b_objects'],
                  row['export_seconds'], row['manifest_bytes'])
            shutil.rmtree(root)
    rows = [result[_label(cs)] for cs in SIZES]
    best_wa = min(r['b_write_amplification'] for r in rows)
    eligible = [r for r in rows if r['b_write_amplification'] <= 4 * best_wa]
    pick = max(eligible, key=lambda r: r['a_merge_MBps'])
    result['rule'] = ('best (a) merge MB/s among chunk sizes whose (b) '
                      'logical write amplification <= 4 x the smallest')
    result['eligible'] = [r['chunk_size'] for r in eligible]
    result['recommended_chunk_size'] = pick['chunk_size']
    result['recommended_label'] = _label(pick['chunk_size'])
    result['current_default'] = c.make_conf(wd + '/x').storage.chunk_size
    c.emit(result)


def _received(conf, info, instance, sequence):
    """The wire form of an inspected file's delta (parent set later)."""
    parent = None if sequence == 0 else str(uuid.uuid4())
    return c.wire_roundtrip(c.build_delta(
        conf, info, instance=instance, sequence=sequence, parent=parent))[0]


def _reparent(delta, parent):
    """The same received delta, on top of ``parent``."""
    return delta_mod.Delta(dataclasses.replace(delta.header, parent=parent),
                           parts=list(delta.parts()))


def _label(cs):
    return '%dK' % (cs // c.KiB) if cs < c.MiB else '%dM' % (cs // c.MiB)


def _export(st, instance, wd):
    out = wd + '/export.raw'
    c.sync()
    dt, _rp = c.timed(st.export, instance, out)
    os.unlink(out)
    return dt


if __name__ == '__main__':
    main()
