"""The disks a re-baseline writes back: every disk of a restore point but
its root.

A Nova rebuild (ha_snapshot/recovery/rebuild.py, evacuate.py) gives the
server its root disk from a Glance image of the restore point's root, and
every other disk as Nova makes it (an empty ephemeral disk, a fresh swap
disk). Before the agent tracks the stopped domain's disks again
(``AgentService.rebaseline``), each other disk the restore point holds
(ha_snapshot/disk_layout.py) is written over the domain's file for that
target:

* fetched from the manager, every chunk checked against its sha256
  (agent/restore.py), into a qcow2 file of the agent's work directory;
* copied into the domain's file with ``qemu-img convert -n``, which
  writes through the file's own format: a Nova ephemeral disk stays a
  qcow2 file on its backing file in ``_base``; the zeros of the point are
  written as zeros (qcow2 zero clusters), so nothing of the backing file
  shows through;
* compared (``qemu-img compare``, the file read through its backing
  chain) with the fetched copy: the guest sees the point's disk byte for
  byte, or the re-baseline fails.

Everything that can be refused is refused before the first write: a
running domain (its guest would see its disk change under it), a disk of
the point that the domain lacks, a disk whose size differs from the
point's (Nova's flavor changed), a disk in a format other than qcow2 or
raw. A disk of the domain that the point does not hold (a point from
before multi-disk deltas, or one whose disk was not protected) is left as
Nova made it and named in the result.

May import the disk layout, the image tools and the hypervisor contract.
"""

import dataclasses
import os

from oslo_log import log as logging

from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)

FORMATS = ('qcow2', 'raw')


@dataclasses.dataclass(frozen=True)
class Write:
    target: str
    role: str
    manifest: dict
    """The manifest of the disk (disk_layout.disk_manifest)."""
    path: str
    """The domain's file of the disk (the active image)."""
    format: str


@dataclasses.dataclass
class Plan:
    writes: list
    left: list
    """Targets of the domain's disks (not its root) the point lacks."""


def plan(vm_name: str, restore_point: str, manifest: dict,
         disks) -> Plan:
    """What writing ``manifest``'s disks over the domain's ``disks``
    (hypervisor Disks, the root first) takes; DiskRestoreRefused names the
    first disk that cannot be written."""
    layout = manifest.get('disks') or []
    root = layout[0]['target'] if layout else None
    by_name = {d.name: d for d in disks}
    writes = []

    def refuse(disk, reason):
        return exception.DiskRestoreRefused(
            vm=vm_name, disk=disk, restore_point=restore_point,
            reason=reason)

    for d in layout[1:]:
        disk = by_name.get(d['target'])
        if disk is None:
            raise refuse(d['target'], 'the domain has no such disk (it has '
                         '%s); its %s content cannot be given back'
                         % (', '.join(sorted(by_name)) or 'none',
                            d['role']))
        if int(disk.virtual_size) != int(d['size']):
            raise refuse(d['target'], 'the domain\'s disk is %d bytes, the '
                         'point\'s %d: a disk of another size (the flavor '
                         'changed?) is not written' % (
                             disk.virtual_size, d['size']))
        active = disk.active
        if active.format not in FORMATS:
            raise refuse(d['target'], 'its file %s is %s; only %s are '
                         'written' % (active.path, active.format,
                                      ' and '.join(FORMATS)))
        writes.append(Write(target=d['target'], role=d['role'],
                            manifest=disk_layout.disk_manifest(manifest, d),
                            path=active.path, format=active.format))
    known = {d['target'] for d in layout}
    first = disks[0].name if disks else None
    left = [d.name for d in disks
            if d.name not in known and d.name not in (root, first)]
    return Plan(writes, left)


def write_over(source: str, dest: str, fmt: str,
               limits: qemu.Limits | None = None) -> None:
    """Write the qcow2 image ``source`` over the content of ``dest`` (of
    format ``fmt``, same virtual size), keeping ``dest``'s format and
    backing file; then check that ``dest``, read through its chain, holds
    exactly ``source`` (QemuImgError when it does not)."""
    qemu.run(dest, 'qemu-img', 'convert', '-n', '-f', 'qcow2', '-O', fmt,
             '--', source, dest, limits=limits)
    qemu.run(dest, 'qemu-img', 'compare', '-f', 'qcow2', '-F', fmt,
             '--', source, dest, limits=limits)


def restore(driver, vm, restore_point: str, manifest: dict, fetch,
            workdir: str, limits: qemu.Limits | None = None) -> dict:
    """Write every disk of ``manifest`` but the root over the stopped
    domain's file of that disk. ``fetch(disk_manifest, path)`` writes one
    disk of the point to ``path`` (qcow2). Returns ``{'restored':
    [targets], 'left': [targets]}``."""
    if not manifest.get('disks') or len(manifest['disks']) < 2:
        # NOTE: a point of the root alone: nothing to write, whatever
        # state the domain is in (as before multi-disk points).
        return {'restored': [],
                'left': plan(vm.name, restore_point, manifest,
                             driver.disks(vm)).left}
    if driver.is_alive(vm):
        raise exception.DiskRestoreRefused(
            vm=vm.name, disk=', '.join(d['target']
                                       for d in manifest['disks'][1:]),
            restore_point=restore_point,
            reason='the domain runs; its disks are written only while it '
            'is stopped (the recoveries re-baseline a stopped server)')
    p = plan(vm.name, restore_point, manifest, driver.disks(vm))
    os.makedirs(workdir, exist_ok=True)
    restored = []
    for w in p.writes:
        tmp = os.path.join(workdir, 'rebaseline-%s-%s.qcow2'
                           % (restore_point, w.target))
        try:
            if os.path.exists(tmp):
                os.unlink(tmp)  # NOTE: left by a failed attempt
            fetch(w.manifest, tmp)
            write_over(tmp, w.path, w.format, limits=limits)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        restored.append(w.target)
        LOG.info('Domain %s: disk %s (%s, %d bytes) written from restore '
                 'point %s over %s', vm.name, w.target, w.role,
                 w.manifest['virtual_size'], restore_point, w.path)
    for target in p.left:
        LOG.warning('Domain %s: disk %s is not in restore point %s: left '
                    'as Nova made it', vm.name, target, restore_point)
    return {'restored': restored, 'left': p.left}
