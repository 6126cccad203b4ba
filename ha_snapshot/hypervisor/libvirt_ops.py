"""The libvirt driver's operations on one domain: backups, commits,
checkpoint upkeep. Called with the domain's operation lock held.

The rule kept here (see libvirt_tracking): libvirt holds checkpoint
metadata of ours only while one of these functions runs; the bitmaps stay
in the disks, described by the driver's tracking file.

May import ha_snapshot.hypervisor.*, ha_snapshot.image.qemu and
ha_snapshot.exception; ``drv`` is the LibvirtDriver.
"""

import json
import os
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import libvirt_tracking as tracking
from ha_snapshot.image import qemu

LOG = logging.getLogger(__name__)


def _load(drv, vm) -> tracking.Tracking:
    return tracking.Tracking.load(drv.workdir(vm))


def _protected_disks(drv, vm) -> tuple:
    """(disks we back up, every disk target): the writable qcow2 ones
    (a bitmap needs qcow2); others are named with checkpoint='no'."""
    disks = drv.disks(vm)
    all_targets = [d.target for d in drv.domain_disks(vm)]
    all_targets = list(dict.fromkeys(all_targets))
    ours = []
    for d in disks:
        if d.active.format == 'qcow2':
            ours.append(d)
        else:
            LOG.warning('Domain %s: disk %s is %s, not qcow2: no dirty '
                        'bitmap possible, not protected', vm.name, d.name,
                        d.active.format)
    return ours, all_targets


def _our_metadata(drv, vm) -> list:
    try:
        return [c for c in vm.dom.listAllCheckpoints()
                if c.getName().startswith(tracking.PREFIX)]
    except drv.lv.libvirtError:
        return []


def _delete_metadata(drv, vm) -> None:
    """Leave no checkpoint metadata of ours in libvirt (bitmaps stay)."""
    for cp in _our_metadata(drv, vm):
        try:
            cp.delete(drv.lv.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except drv.lv.libvirtError as e:
            LOG.warning('Domain %s: checkpoint metadata %s not deleted: %s',
                        vm.name, cp.getName(), e)


def drop_metadata(drv, vm) -> None:
    """After the domain stopped: no checkpoint metadata of ours may stay
    (see the module doc). Needs no operation lock: it removes only what a
    running backup would remove itself, and a backup caught by the stop
    fails anyway."""
    try:
        _delete_metadata(drv, vm)
    except Exception:
        LOG.exception('Domain %s: checkpoint metadata not dropped after the '
                      'domain stopped', vm.name)


def _redefine(drv, vm, xml: str, validate: bool):
    flags = drv.lv.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE
    if validate:
        flags |= drv.lv.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE
    return vm.dom.checkpointCreateXML(xml, flags)


def _remove_bitmaps(drv, vm, xml: str, name: str) -> bool:
    """Delete a checkpoint and its bitmaps from the disks, by redefining
    it first (no validation: a broken bitmap goes too)."""
    if not drv.is_alive(vm):
        # NOTE: libvirt deletes bitmaps only of a running domain, and
        # metadata redefined on a stopped one would make Nova's undefine
        # fail: leave them to the next full backup.
        LOG.info('Domain %s is not running: bitmaps of checkpoint %s stay '
                 'until the next full backup', vm.name, name)
        return False
    try:
        cp = _redefine(drv, vm, xml, validate=False)
        cp.delete(0)
        return True
    except drv.lv.libvirtError as e:
        _delete_metadata(drv, vm)
        if 'not found' in str(e):
            # NOTE: QEMU died before it stored the bitmap: nothing left.
            LOG.info('Domain %s: bitmap %s is gone already', vm.name, name)
            return True
        LOG.warning('Domain %s: bitmaps of checkpoint %s not removed (%s); '
                    'removed with the next full backup', vm.name, name, e)
        return False


def _stale_bitmaps(drv, vm, known) -> list:
    """(bitmap, disk) of ours in the disks that no checkpoint describes
    (tracking lost, or a removal that failed)."""
    out = []
    for d in drv.disks(vm):
        if d.active.format != 'qcow2':
            continue
        try:
            report = json.loads(qemu.run(
                d.active.path, 'qemu-img', 'info', '-U', '--output=json',
                '-f', 'qcow2', '--', d.active.path))
        except (exception.QemuImgError, ValueError) as e:
            LOG.debug('Domain %s: bitmaps of %s not listed: %s', vm.name,
                      d.name, e)
            continue
        data = (report.get('format-specific') or {}).get('data') or {}
        for bm in data.get('bitmaps') or ():
            name = bm.get('name') or ''
            if name.startswith(tracking.PREFIX) and name not in known:
                out.append((name, d.name))
    return out


def recover(drv, vm) -> None:
    """After attach: undo what an interrupted operation left behind."""
    try:
        state = _load(drv, vm)
    except exception.HaSnapshotException as e:
        LOG.warning('Domain %s: %s', vm.name, e)
        return
    for cp in _our_metadata(drv, vm):
        name = cp.getName()
        if state.get(name) is not None:
            continue
        # NOTE: a backup finished but never recorded (the agent died):
        # nobody knows its files; its writes are in the older
        # checkpoint's bitmap too, so they go with the next backup.
        LOG.warning('Domain %s: dropping unrecorded checkpoint %s',
                    vm.name, name)
        try:
            cp.delete(0)
        except drv.lv.libvirtError as e:
            LOG.warning('Domain %s: %s not deleted: %s', vm.name, name, e)
        for f in _listdir(state.workdir):
            if f.startswith(name + '.'):
                _unlink(os.path.join(state.workdir, f))
    _delete_metadata(drv, vm)


def _listdir(path) -> list:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _unlink(path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _wait_job(drv, vm, deadline) -> None:
    lv = drv.lv
    delay = 0.01
    while True:
        info = drv.call(vm, 'jobStats', vm.dom.jobStats, 0)
        if info.get('type', lv.VIR_DOMAIN_JOB_NONE) == lv.VIR_DOMAIN_JOB_NONE:
            break
        if time.monotonic() > deadline:
            try:
                vm.dom.abortJob()
            except lv.libvirtError:
                pass
            raise base.SnapshotFailed(
                vm=vm.name, reason='the backup job ran longer than '
                '[libvirt] backup_timeout (%s s) and was aborted'
                % drv.opts.backup_timeout)
        # NOTE: JOB_COMPLETED wakes us; polling covers a lost event.
        vm.job_done.wait(delay)
        delay = min(delay * 2, 0.5)
    done = drv.call(vm, 'jobStats', vm.dom.jobStats,
                    lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
    if done.get('operation') == lv.VIR_DOMAIN_JOB_OPERATION_BACKUP and (
            done.get('success') is False):
        raise base.SnapshotFailed(vm=vm.name, reason='backup job failed: %s'
                                  % done.get('errmsg', 'no message'))


def backup(drv, vm, around=None) -> base.Snapshot:
    """One backup job from the last checkpoint to a new one. ``around``:
    ``around(begin)`` runs ``begin()`` (backupBegin, the checkpoint's
    instant) inside a guest freeze and returns ``(None, outcome)``
    (quiesce.quiesced)."""
    lv = drv.lv
    started = time.monotonic()
    if not drv.is_alive(vm):
        # NOTE: before any redefinition (see _remove_bitmaps).
        raise base.VMNotRunning(vm=vm.name, reason='the domain is not '
                                'running')
    state = _load(drv, vm)
    disks, all_targets = _protected_disks(drv, vm)
    if not disks:
        raise base.SnapshotFailed(vm=vm.name,
                                  reason='no writable qcow2 disk')
    names = sorted(d.name for d in disks)
    prev = state.newest_live()
    reason = None
    if prev is None:
        reason = ('no checkpoint yet' if not state.checkpoints
                  else 'change tracking was stopped')
    elif sorted(prev.disks) != names:
        reason = 'the disks changed (%s, now %s)' % (
            ', '.join(prev.disks), ', '.join(names))
    else:
        try:
            _redefine(drv, vm, prev.xml, validate=True)
        except lv.libvirtError as e:
            reason = 'checkpoint %s is lost (%s)' % (prev.name, e)
    if reason is not None:
        if state.checkpoints:
            LOG.warning('Domain %s: %s; this snapshot is a FULL backup and '
                        'the manager re-baselines', vm.name, reason)
            _drop_bitmaps(drv, vm, state)
        else:
            LOG.info('Domain %s: first backup (full)', vm.name)
        prev = None
    name = state.new_name()
    state.save()  # NOTE: names stay unique even if we die mid-backup
    targets = {d.name: state.delta_path(name, d.name) for d in disks}
    for path in targets.values():
        _unlink(path)  # NOTE: libvirt creates the targets itself
    vm.job_done.clear()
    t0 = time.monotonic()
    xml = None
    outcome = None

    begin_seconds = []

    def begin():
        t = time.monotonic()
        vm.dom.backupBegin(
            tracking.backup_xml(prev.name if prev else None, targets,
                                all_targets),
            tracking.checkpoint_xml(name, names, all_targets), 0)
        begin_seconds.append(time.monotonic() - t)
    try:
        try:
            if around is None:
                begin()
            else:
                _, outcome = around(begin)
        except lv.libvirtError as e:
            if not drv.is_alive(vm):
                raise base.VMNotRunning(vm=vm.name, reason=str(e))
            raise base.SnapshotFailed(vm=vm.name, reason=str(e))
        begun = begin_seconds[0] if begin_seconds else (
            time.monotonic() - t0)
        # NOTE: the metadata goes at once, while the job runs (libvirt
        # allows it; the job and the bitmaps live in QEMU): Nova undefines
        # a domain without VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, and a
        # server deleted while a long backup ran would otherwise fail in
        # ERROR. What is left of the window is backupBegin itself.
        cp = vm.dom.checkpointLookupByName(name)
        xml = tracking.redefinable(cp.getXMLDesc(
            lv.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN))
        _delete_metadata(drv, vm)
        _wait_job(drv, vm, time.monotonic() + drv.opts.backup_timeout)
    except BaseException:
        if xml is not None:
            # The new checkpoint's bitmaps must not outlive a failed job;
            # but a job fails most often because the domain is going away
            # (Nova deleting the server destroys it, then undefines it at
            # once), and metadata redefined to delete them would make that
            # undefine fail: even "is it running?" answers yes while
            # libvirt destroys it. They are removed by a later commit
            # while the domain runs (or went with QEMU).
            state.orphans.append([name, xml])
            state.save()
        else:
            for c in _our_metadata(drv, vm):
                if c.getName() == name:
                    try:
                        c.delete(0)
                    except lv.libvirtError:
                        pass
        for path in targets.values():
            _unlink(path)
        _delete_metadata(drv, vm)
        raise
    state.checkpoints.append(tracking.Checkpoint(
        name=name, xml=xml, disks=names, full=prev is None))
    state.save()
    active = {d.name: d.active for d in disks}
    frozen = tuple(_frozen(d, targets[d], active[d], prev is None)
                   for d in names)
    LOG.debug('Domain %s: %s backup %s in %.3f s', vm.name,
              'full' if prev is None else 'incremental', name,
              time.monotonic() - started)
    return base.Snapshot(
        vm=vm.name, disks=frozen, qmp_seconds=time.monotonic() - started,
        transaction_seconds=begun, taken_at=time.time(),
        consistency=outcome.consistency if outcome else 'crash',
        frozen_seconds=outcome.frozen_seconds if outcome else None)


def _frozen(disk, path, active, full) -> base.FrozenOverlay:
    name = os.path.basename(path).split('.', 1)[0]
    return base.FrozenOverlay(
        disk=disk, frozen=base.Image(node=name, path=path, format='qcow2',
                                     owned=True),
        backing=None if full else active, active=active, full=full)


def frozen_images(drv, vm, disk: str) -> list:
    state = _load(drv, vm)
    active = None
    for d in drv.disks(vm):
        if d.name == disk:
            active = d.active
    if active is None:
        return []
    out = []
    for c in state.checkpoints:
        path = state.files(c).get(disk)
        if path:
            out.append(_frozen(disk, path, active, c.full))
    return out


def commit(drv, vm, items) -> list:
    state = _load(drv, vm)
    results = []
    newest_index = -1
    for fo in items:
        t0 = time.monotonic()
        c = state.get(fo.frozen.node)
        index = state.checkpoints.index(c) if c else -1
        for older in state.checkpoints[:max(index, 0)]:
            path = state.files(older).get(fo.disk)
            if path:
                raise base.CommitOrderError(vm=vm.name, top=fo.frozen.path,
                                            base=path)
        size = 0
        try:
            size = os.stat(fo.frozen.path).st_blocks * 512
        except FileNotFoundError:
            pass
        removed = _unlink(fo.frozen.path)
        newest_index = max(newest_index, index)
        results.append(base.CommitResult(
            disk=fo.disk, top=fo.frozen, base=None, committed=removed,
            seconds=time.monotonic() - t0, top_bytes=size))
    # NOTE: checkpoints older than the newest committed one are no longer
    # a base for anything: their bitmaps only cost write time. libvirt
    # deletes bitmaps of running domains only, and metadata of a stopped
    # one would stop Nova from undefining it: those wait for a later
    # commit while the domain runs.
    alive = drv.is_alive(vm)
    if alive and state.orphans:
        # NOTE: one try each while the domain runs; a removal that fails
        # leaves a stale bitmap, which the next full backup finds.
        state.orphans = [[n, x] for n, x in state.orphans
                         if not _remove_bitmaps(drv, vm, x, n)
                         and not drv.is_alive(vm)]
        state.save()
    keep = []
    for i, c in enumerate(state.checkpoints):
        if i < newest_index and not state.files(c):
            if not c.live:
                continue
            if alive and _remove_bitmaps(drv, vm, c.xml, c.name):
                continue
        keep.append(c)
    if len(keep) != len(state.checkpoints):
        state.checkpoints = keep
        state.save()
    return results


def _drop_bitmaps(drv, vm, state) -> None:
    """Remove every bitmap of ours; checkpoints with delta files left stay
    recorded (dead) until those are committed."""
    for c in state.checkpoints:
        if c.live:
            _remove_bitmaps(drv, vm, c.xml, c.name)
            c.live = False
    known = {c.name for c in state.checkpoints if c.live}
    for name, disk in _stale_bitmaps(drv, vm, known):
        LOG.info('Domain %s: removing stale bitmap %s of disk %s', vm.name,
                 name, disk)
        _remove_bitmaps(drv, vm, tracking.bitmap_only_xml(name, disk), name)
    # NOTE: orphans' bitmaps were stale ones just above.
    state.orphans = []
    state.checkpoints = [c for c in state.checkpoints if state.files(c)]
    state.save()


def full_next(drv, vm, snap) -> None:
    """Drop the backup ``snap`` (its files; the agent did not queue it)
    and the bitmaps: the next backup is a full one. Checkpoints older
    than it whose files wait to be shipped stay recorded (dead) until
    committed."""
    names = {fo.frozen.node for fo in snap.disks}
    for fo in snap.disks:
        _unlink(fo.frozen.path)
    state = _load(drv, vm)
    # NOTE: its checkpoint, with no files left, goes with the others'
    # bitmaps; those of a domain that stopped meanwhile are found stale by
    # the next (full) backup.
    if drv.is_alive(vm):
        _drop_bitmaps(drv, vm, state)
    else:
        for c in state.checkpoints:
            c.live = False
        state.checkpoints = [c for c in state.checkpoints if state.files(c)]
        state.save()
    LOG.info('Domain %s: backup %s dropped; the next one is full', vm.name,
             ', '.join(sorted(names)))


def drop_all(drv, vm) -> None:
    """Forget everything: bitmaps, checkpoints, delta files."""
    state = _load(drv, vm)
    if drv.is_alive(vm):
        _drop_bitmaps(drv, vm, state)
    for c in state.checkpoints:
        for path in state.files(c).values():
            _unlink(path)
    # NOTE: nothing left for this domain (it may be deleted for good).
    _unlink(state.path)
    try:
        os.rmdir(state.workdir)
    except OSError:
        pass
    _delete_metadata(drv, vm)


def new_checkpoint(drv, vm) -> None:
    """Start tracking writes from now on, with no backup."""
    state = _load(drv, vm)
    disks, all_targets = _protected_disks(drv, vm)
    names = sorted(d.name for d in disks)
    name = state.new_name()
    try:
        cp = vm.dom.checkpointCreateXML(
            tracking.checkpoint_xml(name, names, all_targets), 0)
        xml = tracking.redefinable(cp.getXMLDesc(
            drv.lv.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN))
    except drv.lv.libvirtError as e:
        _delete_metadata(drv, vm)
        raise exception.LibvirtError(call='checkpointCreateXML', vm=vm.name,
                                     reason=e)
    state.checkpoints.append(tracking.Checkpoint(name=name, xml=xml,
                                                 disks=names))
    state.save()
    _delete_metadata(drv, vm)
    LOG.info('Domain %s: change tracking starts afresh at checkpoint %s',
             vm.name, name)


def new_checkpoint_stopped(drv, vm) -> None:
    """Start tracking writes from the stopped domain's next start.

    libvirt creates checkpoints of running domains only; so a persistent
    dirty bitmap is added to each protected disk's image with ``qemu-img
    bitmap`` while no QEMU has it open (QEMU's write lock makes this fail
    if one does), and the checkpoint describing it is only written to the
    tracking file: the next backup redefines it, validated, as any other.
    QEMU loads the bitmap when the domain starts, so it holds every write
    of the guest from its first instruction on.
    """
    if drv.is_alive(vm):
        raise base.SnapshotFailed(vm=vm.name, reason='the domain runs: '
                                  'its change tracking starts through '
                                  'libvirt, not offline')
    state = _load(drv, vm)
    disks, all_targets = _protected_disks(drv, vm)
    names = sorted(d.name for d in disks)
    name = state.new_name()
    state.save()  # NOTE: the name is never used twice, even on failure
    added = []
    try:
        for d in disks:
            qemu.run(d.active.path, 'qemu-img', 'bitmap', '--add',
                     '-f', 'qcow2', '--', d.active.path, name)
            added.append(d)
    except exception.QemuImgError:
        for d in added:
            try:
                qemu.run(d.active.path, 'qemu-img', 'bitmap', '--remove',
                         '-f', 'qcow2', '--', d.active.path, name)
            except exception.QemuImgError as e:
                LOG.warning('Domain %s: bitmap %s left in %s: %s', vm.name,
                            name, d.active.path, e)
        raise
    state.checkpoints.append(tracking.Checkpoint(
        name=name, disks=names, xml=tracking.checkpoint_xml(
            name, names, all_targets, creation_time=time.time())))
    state.save()
    LOG.info('Domain %s (stopped): change tracking starts afresh at '
             'checkpoint %s with its next start', vm.name, name)


def qemu_io(drv, vm, disk: str, command: str) -> None:
    """One qemu-io command on a disk through libvirt's monitor
    passthrough (tests and the demo: libvirt marks the domain tainted)."""
    import libvirt_qemu
    dd = [d for d in drv.domain_disks(vm) if d.target == disk]
    if not dd or not dd[0].alias:
        raise base.DiskNotFound(vm=vm.name, disk=disk, known='?')
    device = dd[0].alias + ('/virtio-backend' if dd[0].bus == 'virtio'
                            else '')
    hmp = 'qemu-io -d %s "%s"' % (device, command)
    out = drv.call(vm, 'qemuMonitorCommand', libvirt_qemu.qemuMonitorCommand,
                   vm.dom, hmp,
                   libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if out.strip():
        raise exception.HmpError(command=hmp, vm=vm.name, reason=out.strip())
