"""The disks a restore point covers: the layout of a multi-disk delta.

A server's writable disks (root, ephemeral, swap when the operator wants
it) are snapshotted in one transaction and shipped as ONE delta, whose
extents address one concatenated space: disk ``i`` occupies ``[offset,
offset + size)``, every offset a multiple of :data:`ALIGN` (1 GiB), so
that no chunk of the store (a power of two of at most 64 MiB, see
``[storage] chunk_size``) ever spans two disks. The delta header and the
restore point's manifest carry the layout, a list of ``{"target",
"role", "offset", "size"}`` objects sorted by offset, the root first at
offset 0. Merges, dedup, retention, gc and verify see one image and need
nothing else; the restart cuts it in disks again (:func:`disk_manifest`).

A header or manifest without a layout is one disk (the root), as every
restore point was before layouts existed.

Imports nothing of ha_snapshot: the delta engine, the store, the agent
and the API use it.
"""

import re

ALIGN = 1 << 30
"""Where each disk of the concatenated space begins (a multiple of it)."""
ROOT = 'root'
EPHEMERAL = 'ephemeral'
SWAP = 'swap'
ROLES = (ROOT, EPHEMERAL, SWAP)
MAX_DISKS = 26
# NOTE: a QEMU id (node name, device id) or a libvirt target (vda, sdb):
# short, and safe in a file name and a command line.
TARGET = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,30}$')
_KEYS = frozenset(('target', 'role', 'offset', 'size'))


def align_up(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def plan(disks) -> list:
    """The layout of ``disks``, a list of (target, role, size) with the
    root first: each disk at the next multiple of ALIGN."""
    out, offset = [], 0
    for target, role, size in disks:
        out.append({'target': target, 'role': role, 'offset': offset,
                    'size': int(size)})
        offset = align_up(offset + int(size))
    return out


def total_size(layout: list) -> int:
    """The virtual size of the concatenated space: the last disk's end."""
    last = layout[-1]
    return last['offset'] + last['size']


def shape(layout: list | None) -> list | None:
    """What a layout change is judged on: (target, role, size) in order;
    None for a single-disk point."""
    if not layout:
        return None
    return [[d['target'], d['role'], d['size']] for d in layout]


def check(layout, virtual_size: int) -> str | None:
    """Why ``layout`` is not a valid layout of a space of ``virtual_size``
    bytes, or None when it is."""
    if not isinstance(layout, list) or not layout:
        return 'disks must be a non-empty list'
    if len(layout) > MAX_DISKS:
        return 'disks lists %d disks, at most %d are taken' % (
            len(layout), MAX_DISKS)
    seen, end = set(), 0
    for i, d in enumerate(layout):
        where = 'disks[%d]' % i
        if not isinstance(d, dict) or set(d) != _KEYS:
            return '%s must be an object with exactly the keys %s' % (
                where, ', '.join(sorted(_KEYS)))
        target = d['target']
        if not isinstance(target, str) or not TARGET.match(target):
            return ('%s: target %r is not a disk name (a letter, then up '
                    'to 30 letters, digits, ".", "_" or "-")' % (where,
                                                                 target))
        if target in seen:
            return '%s: target %s is listed twice' % (where, target)
        seen.add(target)
        if d['role'] not in ROLES:
            return '%s (%s): role %r is not one of %s' % (
                where, target, d['role'], ', '.join(ROLES))
        if (d['role'] == ROOT) != (i == 0):
            return ('%s (%s): the root disk, and it only, comes first'
                    % (where, target))
        for key, minimum in (('offset', 0), ('size', 1)):
            value = d[key]
            if isinstance(value, bool) or not isinstance(value, int) or (
                    value < minimum):
                return '%s (%s): %s must be an integer >= %d, got %r' % (
                    where, target, key, minimum, value)
        if d['offset'] % ALIGN:
            return '%s (%s): offset %d is not a multiple of %d' % (
                where, target, d['offset'], ALIGN)
        if d['offset'] < end:
            return ('%s (%s): offset %d overlaps the disk before it or '
                    'is out of order (that one ends at %d)'
                    % (where, target, d['offset'], end))
        end = d['offset'] + d['size']
    if end != virtual_size:
        return ('the last disk ends at %d, the virtual size is %d: they '
                'must be equal' % (end, virtual_size))
    return None


def describe(layout: list | None) -> str:
    """``vda (root), vdb (ephemeral)``; a point without a layout is its
    root disk alone."""
    if not layout:
        return 'root disk only'
    return ', '.join('%s (%s)' % (d['target'], d['role']) for d in layout)


def select(layout: list | None, name: str, virtual_size: int) -> tuple:
    """(offset, size) of the disk ``name`` (its target, or "root") of a
    point of ``layout`` and ``virtual_size``; ValueError naming the disks
    there are when it has no such disk."""
    if not layout:
        if name == ROOT:
            return 0, virtual_size
        raise ValueError('disk %s: the restore point holds its root disk '
                         'only' % name)
    for d in layout:
        if name in (d['target'], ROOT if d['role'] == ROOT else None):
            return d['offset'], d['size']
    raise ValueError('disk %s: the restore point holds %s'
                     % (name, describe(layout)))


def disk_manifest(manifest: dict, disk: dict) -> dict:
    """The manifest of one disk of a multi-disk restore point (as the
    manager's ``get_manifest`` gives it): its chunks, numbered from the
    disk's start, and its size. ``first_chunk`` is the point's index of
    the disk's chunk 0 (what ``get_chunk`` is asked for)."""
    chunk_size = int(manifest['chunk_size'])
    first = disk['offset'] // chunk_size
    count = -(-disk['size'] // chunk_size)
    chunks = {}
    for key, sha in manifest['chunks'].items():
        index = int(key) - first
        if 0 <= index < count:
            chunks[str(index)] = sha
    return dict(manifest, chunks=chunks, virtual_size=disk['size'],
                first_chunk=first, disks=None)
