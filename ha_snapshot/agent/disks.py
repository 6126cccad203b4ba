"""Which disks of a snapshot an agent protects, and how they are queued.

A snapshot freezes every writable disk of the VM in one transaction
(:attr:`ha_snapshot.hypervisor.base.Snapshot.disks`). :func:`split` sorts
them: the root (the spec's ``disk``, else the first) and, when the agent
ships multi-disk deltas (``[agent] multi_disk`` and a manager of RPC 1.5),
every other one whose role is protected (ha_snapshot/disk_layout.py: swap
only when the spec says ``protect_swap``); the rest are committed at once,
as every disk but the root was before. :func:`entry_fields` makes the
queue entry of the protected ones (ha_snapshot/agent/state.py ``Pending``):
a set of disks other than the last one queued (one added, removed,
resized) is a re-baseline, every disk sent whole.

May import the hypervisor contract and the protection spec.
"""

import dataclasses

from ha_snapshot import disk_layout


@dataclasses.dataclass
class Split:
    protected: list
    """(FrozenOverlay, role), the root first; empty if the root is not
    among the snapshot's disks."""
    others: list
    """FrozenOverlays to commit at once (not protected)."""


def multi_disk(conf, spec, manager_api) -> bool:
    """Whether this agent ships every writable disk (both drivers: the
    libvirt (Nova) path restores the other disks in its re-baseline,
    ha_snapshot/agent/rebaseline_disks.py)."""
    return bool(conf.agent.multi_disk) and manager_api.can_multi_disk()


def with_nova_roles(spec, disks):
    """``spec`` with the roles of a Nova server's disks that its
    ``disk_roles`` does not name: Nova calls a server's swap disk
    ``disk.swap`` (``<uuid>_disk.swap`` on LVM), its ephemeral ones
    ``disk.local`` and ``disk.eph<n>``. ``disks``: the driver's Disks."""
    if not spec.nova:
        return spec
    roles = {d.name: disk_layout.SWAP for d in disks
             if d.chain and d.active.path.endswith('disk.swap')}
    roles.update(spec.disk_roles or {})
    if roles == (spec.disk_roles or {}):
        return spec
    return spec.replace(disk_roles=roles)


def split(snap, root: str, spec, multi: bool) -> Split:
    protected, others = [], []
    for fo in snap.disks:
        role = spec.role_of(fo.disk, root)
        if fo.disk == root:
            protected.insert(0, (fo, role))
        elif multi and spec.protects(role):
            protected.append((fo, role))
        else:
            others.append(fo)
    if protected and protected[0][0].disk != root:
        # NOTE: no root in this snapshot: nothing is shipped (as before).
        others += [fo for fo, _ in protected]
        protected = []
    return Split(protected, others)


def is_first(fo) -> bool:
    """The frozen image is the whole disk (its base, or tracking lost)."""
    return fo.full or (not fo.committable and fo.backing is None)


def shape_of(protected: list, sizes: dict) -> list | None:
    """The layout shape (disk_layout.shape) of the protected disks; None
    for the root alone."""
    if len(protected) < 2:
        return None
    return [[fo.disk, role, sizes[fo.disk]] for fo, role in protected]


def entry_fields(protected: list, shape, known_shape) -> dict:
    """The ``PendingQueue.add`` fields of a snapshot's protected disks
    (``taken_at``, ``consistency`` and ``memory`` apart)."""
    firsts = [is_first(fo) for fo, _ in protected]
    changed = shape != known_shape
    full = any(firsts) or changed
    root = protected[0][0]
    fields = dict(disk=root.disk, frozen=root.frozen.path,
                  backing=root.backing.path if root.backing else None,
                  committable=root.committable, full=full)
    if shape is not None or changed:
        fields['disks'] = [
            {'disk': fo.disk, 'role': role, 'frozen': fo.frozen.path,
             'backing': fo.backing.path if fo.backing else None,
             'committable': fo.committable,
             # NOTE: a re-baseline of a disk whose frozen image holds
             # only its latest writes: the delta reads its whole chain.
             'whole': full and not first}
            for (fo, role), first in zip(protected, firsts)]
    return fields


def adopt_groups(frozen_by_disk: list) -> list:
    """Frozen overlays of several disks found in their chains (oldest
    first each, one list per disk, the root's first), grouped by snapshot:
    one transaction froze one overlay of every disk, so the n-th of each
    belong together. Groups beyond the shortest list are left out."""
    count = min(len(x) for x in frozen_by_disk) if frozen_by_disk else 0
    return [[x[i] for x in frozen_by_disk] for i in range(count)]
