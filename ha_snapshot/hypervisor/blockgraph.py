"""A VM's writable disks, read from QEMU's block graph.

Pure functions over the JSON of ``query-named-block-nodes`` (flat) and
``query-block``; no I/O. A disk is a writable format node (qcow2 or raw)
that is nobody's backing; its chain follows backing file names down to the
nodes that have those files open. Overlays this driver creates carry node
names matching :data:`OWN_NODE`, which is how a restarted agent tells its
overlays from the base image it must never commit.

May import the standard library and ha_snapshot.hypervisor.base only.
"""

import json
import os
import re

from ha_snapshot.hypervisor import base

FORMATS = ('qcow2', 'raw')
OWN_PREFIX = 'hsnap'
OWN_NODE = re.compile(r'^%s-[0-9a-f]{6}-[0-9]+$' % OWN_PREFIX)
PERIPHERAL = '/machine/peripheral/'


def own_node(token: str, seq: int) -> str:
    return '%s-%s-%d' % (OWN_PREFIX, token, seq)


def overlay_path(base_image: base.Image, node: str,
                 overlay_dir: str | None = None) -> str:
    """``<dir>/<base stem>.<node>.qcow2``: next to the base by default."""
    stem = os.path.basename(base_image.path)
    for ext in ('.qcow2', '.raw', '.img'):
        if stem.endswith(ext):
            stem = stem[:-len(ext)]
            break
    folder = overlay_dir or os.path.dirname(base_image.path)
    return os.path.join(folder, '%s.%s.qcow2' % (stem, node))


def node_path(node: dict) -> str | None:
    """The file a format node has open (also when QEMU names it json:)."""
    name = node.get('file')
    if not isinstance(name, str):
        return None
    if name.startswith('json:'):
        try:
            opts = json.loads(name[5:])
            inner = opts.get('file') or {}
            if inner.get('driver') == 'file':
                return inner.get('filename')
        except (ValueError, AttributeError):
            pass
        return None
    return name


def _backing_name(node: dict) -> str | None:
    # NOTE: ``backing_file`` is None when the node was opened without its
    # backing (backing: null), while image/full-backing-filename still
    # shows the name in the header.
    if not node.get('backing_file'):
        return None
    image = node.get('image') or {}
    return image.get('full-backing-filename') or node['backing_file']


def device_id(qdev: str) -> str:
    """'vd0' for '/machine/peripheral/vd0/virtio-backend'."""
    if qdev.startswith(PERIPHERAL):
        return qdev[len(PERIPHERAL):].split('/', 1)[0]
    return qdev


def format_nodes(nodes: list) -> dict:
    """Node name -> node, for the qcow2/raw nodes with a plain file."""
    out = {}
    for node in nodes:
        name = node.get('node-name')
        if (isinstance(name, str) and node.get('drv') in FORMATS
                and node_path(node)):
            out[name] = node
    return out


def disks_from(nodes: list, blocks: list) -> list:
    """The writable disks (list of base.Disk) of one VM, by name."""
    fmt = format_nodes(nodes)
    by_path = {}
    for name, node in fmt.items():
        by_path.setdefault(node_path(node), name)

    def backing(name):
        b = _backing_name(fmt[name])
        return by_path.get(b) if b else None

    backs = {backing(name) for name in fmt} - {None}
    devices = {}
    for blk in blocks:
        inserted = blk.get('inserted') or {}
        if inserted.get('node-name'):
            devices[inserted['node-name']] = blk.get('qdev') or None
    disks = []
    for name, node in fmt.items():
        if name in backs or node.get('ro'):
            continue
        if OWN_NODE.match(name) and not _backing_name(node):
            # NOTE: an overlay added for a snapshot that did not happen.
            continue
        chain, seen, cur = [], set(), name
        while cur is not None and cur not in seen:
            seen.add(cur)
            chain.append(base.Image(node=cur, path=node_path(fmt[cur]),
                                    format=fmt[cur]['drv'],
                                    owned=bool(OWN_NODE.match(cur))))
            cur = backing(cur)
        qdev = devices.get(name)
        provisional = base.Disk(name=name, device=qdev, virtual_size=0,
                                chain=tuple(chain))
        disks.append(base.Disk(
            name=device_id(qdev) if qdev else provisional.base.node,
            device=qdev,
            virtual_size=int((node.get('image') or {}).get('virtual-size')
                             or 0),
            chain=tuple(chain)))
    return sorted(disks, key=lambda d: d.name)


def orphans(nodes: list, disks: list) -> list:
    """Our overlay nodes that are in no disk's chain (left by an
    interrupted snapshot or commit): safe to blockdev-del."""
    used = {image.node for d in disks for image in d.chain}
    return sorted(name for name in format_nodes(nodes)
                  if OWN_NODE.match(name) and name not in used)


def overlay_options(node: dict) -> dict:
    """blockdev-add options a new overlay inherits from the active node."""
    opts = {'discard': 'unmap'}
    cache = node.get('cache') or {}
    if cache:
        opts['cache'] = {'direct': bool(cache.get('direct')),
                         'no-flush': bool(cache.get('no-flush'))}
    if node.get('detect_zeroes') in ('on', 'unmap'):
        opts['detect-zeroes'] = node['detect_zeroes']
    return opts


def blockstats_from(disks: list, devices: list, nodes: list) -> dict:
    """Disk name -> BlockStats, from ``query-blockstats`` without and with
    ``query-nodes``: a device's counters when the disk has one, else the
    active node's (where QEMU keeps only ``wr_highest_offset``)."""
    by_qdev = {e.get('qdev'): e for e in devices if e.get('qdev')}
    by_node = {e.get('node-name'): e for e in nodes}
    out = {}
    for d in disks:
        entry = by_qdev.get(d.device) if d.device else None
        accounted = entry is not None
        entry = entry or by_node.get(d.active.node) or {}
        s = entry.get('stats') or {}
        out[d.name] = base.BlockStats.from_counters(
            d.name, d.active.node, s, s.get('wr_highest_offset', 0),
            accounted)
    return out
