"""Memory the manager's spool holds for parts never committed.

Parts of zero extents only (no bytes; their extents are all they carry)
of deltas that are never committed, put into a Spool with
``--memory-mb``: what the spool counts (``held_bytes``), what tracemalloc
sees it allocate, and what went to its directory. The baseline, measured
in the same run, is the same number of data parts of one 64 KiB extent
each: the goal is that both kinds stay within ``--memory-mb`` (the
spool's count within 10 % of tracemalloc's).

    python benchmarks/spool_memory.py [--parts N] [--extents E] [--memory-mb M]

Prints one JSON object on the last line.
"""

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid

from ha_snapshot import codec
from ha_snapshot.manager import spool as spool_mod

MiB = 1 << 20


def part(instance, sequence, index, extents, payload):
    return {'instance': instance, 'sequence': sequence, 'index': index,
            'extents': extents, 'raw_size': len(payload),
            'sha256': hashlib.sha256(payload).hexdigest(),
            'compression': 'none', 'payload': codec.b64encode(payload)}


def run(kind: str, parts: int, extents: int, memory: int) -> dict:
    root = tempfile.mkdtemp(prefix='spool-bench-')
    spool = spool_mod.Spool(root, 4 * MiB, max(extents, 16),
                            memory_bytes=memory,
                            max_deltas_per_instance=4)
    payload = os.urandom(64 << 10)
    instances = [str(uuid.uuid4()) for _ in range(parts // 400 + 1)]
    started = time.monotonic()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    peak = 0
    try:
        for i in range(parts):
            inst, seq, index = instances[i // 400], i // 100 % 4, i % 100
            if kind == 'zero':
                p = part(inst, seq, index, [
                    [(index * extents + k) * 2 * 65536, 65536, 'zero']
                    for k in range(extents)], b'')
            else:
                p = part(inst, seq, index, [[index * 65536, 65536, 'data']],
                         payload)
            spool.put(inst, seq, json.loads(json.dumps(p)))
            if i % 50 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
        traced = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    disk = sum(os.path.getsize(os.path.join(d, n))
               for d, _s, names in os.walk(root) for n in names)
    shutil.rmtree(root)
    return {'parts': parts, 'held_bytes': spool.held_bytes,
            'traced_bytes': traced, 'traced_peak_bytes': max(peak, traced),
            'spool_dir_bytes': disk,
            'seconds': round(time.monotonic() - started, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--parts', type=int, default=2000)
    ap.add_argument('--extents', type=int, default=4096)
    ap.add_argument('--memory-mb', type=int, default=16)
    args = ap.parse_args()
    memory = args.memory_mb * MiB
    baseline = run('data', args.parts, args.extents, memory)
    zero = run('zero', args.parts, args.extents, memory)
    print(json.dumps({
        'memory_bytes': memory, 'extents_per_part': args.extents,
        'baseline_data_parts': baseline, 'zero_only_parts': zero,
        'goal_met': all(r['traced_bytes'] <= memory * 1.1
                        and r['held_bytes'] <= memory
                        for r in (baseline, zero))}))


if __name__ == '__main__':
    main()
