"""The qemu driver's snapshot and commit procedures (called under the VM's
operation lock by :class:`~ha_snapshot.hypervisor.impl_qemu.QemuDriver`).

Snapshot: write an empty overlay per disk (as ``qemu-img create -u``
would, see :mod:`~ha_snapshot.hypervisor.qcow2new`) on the absolute
path of its active image, ``blockdev-add`` each with a null backing, then
one ``transaction`` of ``blockdev-snapshot`` actions: all disks switch or
none does. Each active image is flushed just before (guest I/O goes
on), so the transaction, during which it is paused, has little to flush.
The first two steps are done ahead, at the end of each commit
(:func:`prepare_overlays`), so that a snapshot is usually the transaction
alone. Whatever failed is undone (nodes deleted, files removed) except
after a transaction timeout, where the graph is re-read to learn whether
QEMU applied it: a file QEMU may write into is never deleted.

Commit: a non-active ``block-commit`` of the frozen overlay into the image
right below it, which must not be another uncommitted overlay (oldest
first), then ``blockdev-del`` of the frozen node and deleting its file.

May import the standard library and ha_snapshot.hypervisor.* only.
"""

import dataclasses
import os
import subprocess
import time

from oslo_log import log as logging

from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import blockgraph
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import qcow2new

LOG = logging.getLogger(__name__)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def create_overlay_file(vm, path: str, backing: base.Image, size: int,
                        cluster_size: int) -> None:
    """An empty overlay on ``backing``'s absolute path, written in Python
    (:mod:`~ha_snapshot.hypervisor.qcow2new`: the same bytes as
    ``qemu-img create -u``, no process) when its simple layout applies,
    else by ``qemu-img create``."""
    name = os.path.abspath(backing.path)
    if not qcow2new.layout_fits(size, cluster_size, name, backing.format):
        return qemu_img_create(vm, path, backing, size, cluster_size)
    try:
        qcow2new.create(path, size, cluster_size, name, backing.format)
    except OSError as e:
        raise base.SnapshotFailed(vm=vm.name, reason='writing overlay %s: '
                                  '%s' % (path, e))


def qemu_img_create(vm, path: str, backing: base.Image, size: int,
                    cluster_size: int) -> None:
    """An empty overlay on ``backing``'s absolute path (-u: not opened)."""
    cmd = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-u',
           '-F', backing.format, '-b', os.path.abspath(backing.path),
           '-o', 'cluster_size=%d' % cluster_size, path, str(size)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, LC_ALL='C'))
    except (OSError, subprocess.TimeoutExpired) as e:
        raise base.SnapshotFailed(vm=vm.name, reason='qemu-img create %s: %s'
                                  % (path, e))
    if r.returncode:
        raise base.SnapshotFailed(
            vm=vm.name, reason='qemu-img create %s: %s'
            % (path, (r.stderr or r.stdout).strip()[-500:]))


def _new_overlay(driver, vm, disk: base.Disk) -> base.Image:
    """Create the next overlay file of ``disk`` (never over a file)."""
    active = disk.active
    while True:
        node = blockgraph.own_node(vm.token, vm.next_seq())
        path = blockgraph.overlay_path(disk.base, node,
                                       driver.opts.overlay_dir)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise base.SnapshotFailed(vm=vm.name, reason='cannot create %s: '
                                      '%s' % (path, e))
        os.close(fd)
        break
    try:
        create_overlay_file(vm, path, active, disk.virtual_size,
                            driver.opts.overlay_cluster_size)
        # NOTE: QEMU may run as another user than the agent: the overlay
        # gets the owner and mode of the image it goes on.
        st = os.stat(active.path)
        if os.geteuid() == 0:
            os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, st.st_mode & 0o666)
    except BaseException:
        unlink_quietly(path)
        raise
    return base.Image(node=node, path=path, format='qcow2', owned=True)


def _add_overlay(driver, vm, disk: base.Disk, new: base.Image) -> None:
    args = {'driver': 'qcow2', 'node-name': new.node, 'backing': None,
            'file': {'driver': 'file', 'filename': new.path}}
    args.update(vm.overlay_opts.get(disk.name, {}))
    driver.qmp(vm, 'blockdev-add', args)


def _discard(driver, vm, image: base.Image) -> None:
    """Delete an overlay node never switched to, and its file."""
    try:
        driver.qmp(vm, 'blockdev-del', {'node-name': image.node})
    except base.HypervisorError as e:
        LOG.warning('VM %s: could not remove node %s: %s', vm.name,
                    image.node, e)
        return  # NOTE: keep the file while a node may use it
    unlink_quietly(image.path)


def prepare_overlays(driver, vm) -> None:
    """Create and add the next overlay of every disk ahead of time, so that
    the next snapshot is the transaction alone. Never raises: a snapshot
    without a prepared overlay makes its own."""
    for disk in list(vm.disks.values()):
        ready = vm.prepared.get(disk.name)
        if ready is not None and ready[0] == disk.active:
            continue
        if ready is not None:
            del vm.prepared[disk.name]
            _discard(driver, vm, ready[1])
        new = None
        try:
            new = _new_overlay(driver, vm, disk)
            _add_overlay(driver, vm, disk, new)
        except base.HypervisorError as e:
            LOG.warning('VM %s: no overlay prepared for %s: %s', vm.name,
                        disk.name, e)
            if new is not None:
                unlink_quietly(new.path)
            continue
        vm.prepared[disk.name] = (disk.active, new)


def _flush(driver, vm, disk: base.Disk) -> None:
    """Flush the active image without pausing the guest, so that the
    transaction (which drains guest I/O and flushes) finds little to do.
    There is no QMP flush command: qemu-io's, through the monitor."""
    target = '-d %s' % disk.device if disk.device else disk.active.node
    try:
        hmp.qemu_io(driver, vm, target, 'flush')
    except base.HmpError as e:
        LOG.warning('VM %s: flush of %s before the snapshot: %s', vm.name,
                    disk.name, e)


def flush_disks(driver, vm) -> None:
    """Flush every disk's active image now (guest I/O goes on)."""
    with vm.graph_lock:
        for disk in list(vm.disks.values()):
            _flush(driver, vm, disk)


def take_snapshot(driver, vm, preflush: bool | None = None) -> base.Snapshot:
    """``preflush`` False: the caller flushed already (default: [qemu]
    snapshot_preflush)."""
    if preflush is None:
        preflush = driver.opts.snapshot_preflush
    disks = list(vm.disks.values()) if vm.disks else driver.disks(vm)
    if not disks:
        raise base.SnapshotFailed(vm=vm.name, reason='it has no writable '
                                  'disk')
    plans, added = [], []
    try:
        for disk in disks:
            ready = vm.prepared.pop(disk.name, None)
            if ready is not None and ready[0] == disk.active:
                plans.append((disk, ready[1]))
                added.append(ready[1].node)
                continue
            if ready is not None:
                _discard(driver, vm, ready[1])
            plans.append((disk, _new_overlay(driver, vm, disk)))
        t0 = time.perf_counter()
        for disk, new in plans:
            if new.node not in added:
                _add_overlay(driver, vm, disk, new)
                added.append(new.node)
        actions = [{'type': 'blockdev-snapshot',
                    'data': {'node': disk.active.node, 'overlay': new.node}}
                   for disk, new in plans]
        with vm.graph_lock:
            if preflush:
                for disk, _ in plans:
                    _flush(driver, vm, disk)
            t1 = time.perf_counter()
            try:
                driver.qmp(vm, 'transaction', {'actions': actions})
            except base.QmpTimeout:
                if not _applied_after_timeout(driver, vm, plans):
                    raise
            t2 = time.perf_counter()
            for disk, new in plans:
                vm.disks[disk.name] = dataclasses.replace(
                    disk, chain=(new,) + disk.chain)
    except base.HypervisorError as e:
        if e.kwargs.get('state_unknown'):
            raise
        _undo(driver, vm, plans, added)
        if isinstance(e, (base.SnapshotFailed, base.VMNotRunning)):
            raise
        desc = str(e.kwargs.get('desc') or e.kwargs.get('reason') or e)
        if 'block job' in desc:
            raise base.CommitInProgress(
                vm=vm.name, reason='QEMU refuses: %s' % desc)
        raise base.SnapshotFailed(vm=vm.name, reason=str(e))
    except BaseException:
        _undo(driver, vm, plans, added)
        raise
    frozen = []
    for disk, new in plans:
        frozen.append(base.FrozenOverlay(
            disk=disk.name, frozen=disk.active,
            backing=disk.chain[1] if len(disk.chain) > 1 else None,
            active=new))
    snap = base.Snapshot(vm=vm.name, disks=tuple(frozen),
                         qmp_seconds=t2 - t0, transaction_seconds=t2 - t1,
                         taken_at=time.time())
    LOG.debug('VM %s: snapshot of %d disks, QMP %.1f ms', vm.name,
              len(frozen), snap.qmp_seconds * 1000)
    return snap


def _applied_after_timeout(driver, vm, plans) -> bool:
    """After a transaction timed out: did QEMU apply it? (The monitor runs
    commands in order, so the graph read after it tells.)"""
    try:
        driver._refresh(vm)
    except base.HypervisorError as e:
        raise base.HypervisorError(
            vm=vm.name, reason='snapshot transaction timed out and the disk '
            'graph cannot be read (%s): state unknown, overlays %s kept'
            % (e, ', '.join(new.path for _, new in plans)),
            state_unknown=True)
    active = {d.active.node for d in vm.disks.values()}
    applied = [new.node in active for _, new in plans]
    if all(applied):
        return True
    if any(applied):  # NOTE: a transaction is atomic; cannot happen
        raise base.HypervisorError(vm=vm.name, reason='snapshot transaction '
                                   'half applied: %s' % applied,
                                   state_unknown=True)
    return False


def _undo(driver, vm, plans, added) -> None:
    """Remove what a failed snapshot made: nothing of it stays."""
    for _, new in plans:
        if new.node in added:
            _discard(driver, vm, new)
        else:
            unlink_quietly(new.path)


# --- commit ------------------------------------------------------------------

def _position(disk: base.Disk, image: base.Image):
    for i, img in enumerate(disk.chain):
        if img.node == image.node and img.path == image.path:
            return i
    return None


def commit_overlays(driver, vm, items, deadline: float) -> list:
    nodes = driver._refresh(vm)
    results, started = [], []
    try:
        for item in items:
            disk = driver._disk(vm, item.disk)
            pos = _position(disk, item.frozen)
            if not item.frozen.owned:
                results.append(base.CommitResult(
                    disk=disk.name, top=item.frozen, base=None,
                    committed=False))
                continue
            if pos is None:
                # NOTE: committed earlier (e.g. before an agent restart);
                # finish the clean-up if it was interrupted.
                if any(n.get('node-name') == item.frozen.node
                       for n in nodes):
                    driver._delete_node(vm, item.frozen.node, nodes)
                results.append(base.CommitResult(
                    disk=disk.name, top=item.frozen, base=None,
                    committed=False))
                continue
            if pos == 0:
                raise base.CommitFailed(vm=vm.name, top=item.frozen.path,
                                        base='-', reason='it is the active '
                                        'image')
            below = disk.chain[pos + 1]
            if below.owned:
                raise base.CommitOrderError(vm=vm.name, top=item.frozen.path,
                                            base=below.path)
            started.append(_start_commit(driver, vm, disk, item.frozen,
                                         below))
    except BaseException:
        _wait_jobs(driver, vm, started, deadline)
        raise
    errors = _wait_jobs(driver, vm, started, deadline)
    if started:
        driver._refresh(vm)
    for job in started:
        if job['error']:
            continue
        disk = vm.disks.get(job['disk'])
        if disk is not None and _position(disk, job['top']) is not None:
            errors.append(base.CommitFailed(
                vm=vm.name, top=job['top'].path, base=job['base'].path,
                reason='QEMU reported success but the overlay is still in '
                       'the chain'))
            continue
        try:
            driver.qmp(vm, 'blockdev-del', {'node-name': job['top'].node})
        except base.QmpError as e:
            LOG.warning('VM %s: node %s committed but not deleted: %s',
                        vm.name, job['top'].node, e)
        unlink_quietly(job['top'].path)
        results.append(base.CommitResult(
            disk=job['disk'], top=job['top'], base=job['base'],
            committed=True, seconds=job['seconds'],
            top_bytes=job['top_bytes']))
        LOG.debug('VM %s: committed %s into %s in %.3f s', vm.name,
                  job['top'].path, job['base'].path, job['seconds'])
    if errors:
        raise errors[0]
    return results


def _start_commit(driver, vm, disk, top, below) -> dict:
    job_id = '%s-commit-%s-%d' % (blockgraph.OWN_PREFIX, vm.token,
                                  vm.next_seq())
    try:
        top_bytes = os.stat(top.path).st_blocks * 512
    except OSError:
        top_bytes = 0
    args = {'job-id': job_id, 'device': disk.active.node,
            'top-node': top.node, 'base-node': below.node}
    if os.path.isabs(below.path):
        args['backing-file'] = below.path
    if driver.opts.commit_speed:
        args['speed'] = driver.opts.commit_speed
    waiter = vm.jobs.add(job_id)
    t0 = time.perf_counter()
    try:
        driver.qmp(vm, 'block-commit', args)
    except base.QmpError as e:
        vm.jobs.remove(job_id)
        raise base.CommitFailed(vm=vm.name, top=top.path, base=below.path,
                                reason=str(e))
    return {'id': job_id, 'disk': disk.name, 'top': top, 'base': below,
            'waiter': waiter, 't0': t0, 'top_bytes': top_bytes,
            'error': None, 'seconds': 0.0}


def _wait_jobs(driver, vm, started, deadline) -> list:
    errors = []
    for job in started:
        waiter = job['waiter']
        if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
            try:
                driver.qmp(vm, 'block-job-cancel',
                           {'device': job['id'], 'force': True})
            except base.HypervisorError as e:
                LOG.warning('VM %s: cancelling %s: %s', vm.name, job['id'],
                            e)
            waiter.done.wait(driver.opts.command_timeout)
            if not waiter.done.is_set() or waiter.error:
                # NOTE: a job that completed while being cancelled counts.
                waiter.error = ('not finished within the commit timeout; '
                                'the job was cancelled')
        vm.jobs.remove(job['id'])
        if waiter.error:
            job['error'] = waiter.error
            errors.append(base.CommitFailed(
                vm=vm.name, top=job['top'].path, base=job['base'].path,
                reason=waiter.error))
        else:
            job['seconds'] = waiter.finished - job['t0']
    return errors
