"""Merge throughput of the file store against a plain and a durable copy.

Merges one large delta, 256 MiB of incompressible (random) data (64 MiB
with --quick) at the start of a 1 GiB disk, into a fresh file store, as the
manager receives it: the wire form (``to_primitive``/JSON/``from_primitive``)
is built before the clock starts, so the time is ``RecoveryStore.merge``
alone (validate, verify the parts, decompress, split into chunks, sha256,
compress the chunks, write and fsync every chunk and the manifest). The
delta is a baseline (no parent), so the same received delta is merged into
a fresh store every repetition; its chunks are wholly covered, which is the
code path of any large chunk-aligned incremental delta. Both
``[storage] chunk_compression`` settings are measured (zstd is default).

Baselines, on the same filesystem and the same bytes: ``cp`` of a file
holding them (in the page cache, like the received delta in memory) alone,
and ``cp`` then ``sync FILE`` (fsync of the copy) -- the store fsyncs every
chunk, so the durable copy is the fair comparison. Two more references
isolate the storage protocol: the bytes written from memory to one file
with one fsync (``write_fsync``), and to one file per chunk with the file
driver's durability steps (temporary file, fsync, rename, fsync of the
directory) but no hashing or compression (``write_fsync_per_chunk``).
All contenders run interleaved in every repetition (the disk of a VM is
noisy); medians are reported.

The scattered case (``merge_scattered``, ``scattered_MBps``): a delta of
one 64 KiB extent at a random place in each 1 MiB chunk of the same data,
merged onto a restore point of that data (made untimed, in a fresh store
each repetition): every chunk it touches is read from the parent, patched,
hashed, compressed and written whole. Its MB/s count the changed bytes
(the delta's), not the chunk bytes written.

Goal (issue 16): ``ratio_vs_copy`` = merge MB/s (default settings) /
durable copy MB/s >= 0.7. ``--profile`` prints the top of a cProfile of
one merge on stderr.
"""

import cProfile
import io
import os
import pstats
import random
import shutil
import subprocess

import _common as c

DISK = 1 * c.GiB
EXTENT = 64 * c.KiB


def main():
    args = c.parse_args(__doc__, lambda p: p.add_argument(
        '--profile', action='store_true',
        help='Print a cProfile of one merge (default settings) on stderr.'))
    size = (64 if args.quick else 256) * c.MiB
    repeat = 3 if args.quick else 5
    result = {'benchmark': 'merge_throughput', 'quick': args.quick,
              'delta_bytes': size, 'repeat': repeat,
              'data': 'random (incompressible), contiguous, chunk-aligned, '
                      'merged as a baseline into an empty store'}
    with c.workdir(args, 'merge') as wd:
        payload = c.random_bytes(size)
        base = c.make_raw(wd + '/disk.raw', DISK, [(0, payload)])
        conf = c.make_conf(wd + '/unused')
        chunk = conf.storage.chunk_size
        result['chunk_size'] = chunk
        received, _n = c.wire_roundtrip(c.build_delta(
            conf, c.inspect_whole(conf, base), instance=c.new_instance()))
        src = wd + '/copy-src.raw'
        with open(src, 'wb') as f:
            f.write(payload)
        times = {}
        stored = {}

        def nbytes(name):
            return scattered_bytes if name == 'merge_scattered' else size

        def merge(compression, rep, profile=False):
            store_dir = '%s/store-%s-%d' % (wd, compression, rep)
            st = c.make_store(c.make_conf(store_dir,
                                          chunk_compression=compression))
            if profile:
                dt = _profiled(st.merge, received)
            else:
                dt, _rp = c.timed(st.merge, received)
            stored[compression] = c.tree_bytes(store_dir + '/chunks')[1]
            shutil.rmtree(store_dir)
            return dt

        extents = _scattered(size, chunk)
        scattered_bytes = EXTENT * len(extents)
        overlay = c.make_overlay(wd + '/scattered.qcow2', base, 'raw', DISK,
                                 [(o, c.random_bytes(EXTENT))
                                  for o in extents])

        def merge_scattered(rep):
            # NOTE: its parent, the same payload as a baseline, is merged
            # untimed into a fresh store; then the scattered delta is.
            store_dir = '%s/store-scattered-%d' % (wd, rep)
            sconf = c.make_conf(store_dir)
            st = c.make_store(sconf)
            inst = c.new_instance()
            parent = st.merge(c.build_delta(
                sconf, c.inspect_whole(sconf, base), instance=inst))
            delta, _n = c.wire_roundtrip(c.build_delta(
                sconf, c.inspect_overlay(sconf, overlay), instance=inst,
                sequence=1, parent=parent.id))
            c.sync()
            dt, rp = c.timed(st.merge, delta)
            stored['scattered'] = rp.new_bytes
            shutil.rmtree(store_dir)
            return dt

        contenders = {
            'merge_zstd': lambda rep: merge('zstd', rep,
                                            args.profile and rep == 0),
            'merge_none': lambda rep: merge('none', rep),
            'cp': lambda rep: _copy(src, wd + '/copy.raw', False),
            'cp_sync': lambda rep: _copy(src, wd + '/copy.raw', True),
            'write_fsync': lambda rep: _write_one(payload, wd + '/w.raw'),
            'write_fsync_per_chunk': lambda rep: _write_chunks(
                payload, wd + '/wchunks', chunk),
            'merge_scattered': merge_scattered,
        }
        for rep in range(repeat):
            for name, fn in contenders.items():
                c.sync()
                dt = fn(rep)
                times.setdefault(name, []).append(dt)
                c.log('rep %d %-22s %.3fs (%7.1f MB/s)', rep, name, dt,
                      nbytes(name) / c.MiB / dt)
    for name, secs in times.items():
        m = c.median(secs)
        result[name] = {'seconds': c.rnd(m),
                        'MBps': c.mb_per_s(nbytes(name), m),
                        'all_seconds': [c.rnd(s) for s in secs]}
    result['merge_zstd']['stored_bytes'] = stored['zstd']
    result['merge_none']['stored_bytes'] = stored['none']
    durable = result['cp_sync']['MBps']
    merge_mbps = result['merge_zstd']['MBps']
    result['merge_MBps'] = merge_mbps
    result['durable_copy_MBps'] = durable
    result['ratio_vs_copy'] = c.rnd(merge_mbps / durable, 3)
    result['ratio_vs_plain_copy'] = c.rnd(merge_mbps / result['cp']['MBps'],
                                          3)
    result['ratio_vs_copy_no_chunk_compression'] = c.rnd(
        result['merge_none']['MBps'] / durable, 3)
    result['ratio_write_fsync_per_chunk_vs_copy'] = c.rnd(
        result['write_fsync_per_chunk']['MBps'] / durable, 3)
    scattered = result['merge_scattered']
    scattered.update(changed_bytes=scattered_bytes,
                     chunks_touched=len(extents),
                     stored_bytes=stored['scattered'])
    result['scattered_MBps'] = scattered['MBps']
    result['goal'] = 'ratio_vs_copy >= 0.7'
    result['goal_met'] = result['ratio_vs_copy'] >= 0.7
    c.emit(result)


def _scattered(size, chunk):
    """One 64 KiB extent at a random place in every chunk of the data."""
    rng = random.Random(16)
    return [i + rng.randrange(chunk // EXTENT) * EXTENT
            for i in range(0, size, chunk)]


def _copy(src, dst, durable):
    t, _ = c.timed(subprocess.run, ['cp', src, dst], check=True)
    if durable:
        t2, _ = c.timed(subprocess.run, ['sync', dst], check=True)
        t += t2
    os.unlink(dst)
    return t


def _write_one(data, path):
    def write():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view[:4 * c.MiB]):]
            os.fsync(fd)
        finally:
            os.close(fd)
    t, _ = c.timed(write)
    os.unlink(path)
    return t


def _write_chunks(data, root, chunk):
    def write():
        for i in range(0, len(data), chunk):
            directory = '%s/%03x' % (root, i // chunk)
            os.makedirs(directory, exist_ok=True)
            tmp = directory + '/.tmp-x'
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, data[i:i + chunk])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, directory + '/x')
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    t, _ = c.timed(write)
    shutil.rmtree(root)
    return t


def _profiled(fn, *args):
    prof = cProfile.Profile()
    dt, _ = c.timed(prof.runcall, fn, *args)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats('tottime').print_stats(15)
    c.log('cProfile of one merge (tottime):\n%s', out.getvalue())
    return dt


if __name__ == '__main__':
    main()
