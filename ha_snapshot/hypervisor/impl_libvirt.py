"""The ``libvirt`` hypervisor driver: Nova's domains, backed up incrementally.

Nova owns its domains' disks: overlays the driver left in a disk chain
would be a layout Nova knows nothing about (and breaks its snapshots,
resizes and migrations). So this driver never changes a disk chain. A
snapshot is a push-mode backup job (``virDomainBackupBegin``) that copies
the clusters written since the previous checkpoint (the disk's dirty
bitmap) into a new qcow2 file of ours, and starts the next checkpoint in
the same step. Those files are the frozen images the agent ships:

* an incremental file has the disk as its backing file in its header and
  holds only the dirty clusters (the rest unallocated), so read with a
  null backing it gives exactly the changed ranges, like an overlay;
* a full file (first protection, or a checkpoint that was lost) has no
  backing and holds the whole disk; it is flagged ``full`` so the manager
  re-baselines, and the fallback is logged with its reason.

A commit, once the manager made a delta durable, deletes the file and the
checkpoints older than it; nothing is ever merged into Nova's disk. How
checkpoints are kept so that Nova can still undefine its domains:
:mod:`ha_snapshot.hypervisor.libvirt_tracking`. Events: libvirt's domain
events, on libvirt's event loop thread (libvirt_events), queued and
delivered in order by one thread per domain.

Needs libvirt >= 7.2 (push-mode backups and checkpoints enabled for QEMU,
checkpoint redefinition with validation; Debian 12 has 9.0) and QEMU >= 6.0
(Debian 12: 7.2). May import ha_snapshot.hypervisor.*,
ha_snapshot.conf.hypervisor and ha_snapshot.conf.agent; libvirt-python is
imported when the driver is created.
"""

import os
import queue
import threading
import time

from oslo_log import log as logging
from oslo_utils import uuidutils

from ha_snapshot.conf import agent as agent_conf
from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot import exception
from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import libvirt_events as events
from ha_snapshot.hypervisor import libvirt_tracking as tracking
from ha_snapshot.hypervisor import libvirt_ops as ops
from ha_snapshot.hypervisor import libvirt_quiesce
from ha_snapshot.hypervisor import quiesce as quiesce_mod

LOG = logging.getLogger(__name__)

NAME = 'libvirt'
RECONNECT_WINDOW = 60.0
"""Seconds libvirt may be unreachable before the domains are reported."""


class LibvirtVM(base.VM):
    """The driver's state of one domain (use only through the driver)."""

    def __init__(self, name, dom):
        super().__init__(name, None, None)
        self.dom = dom
        self.uuid = dom.UUIDString()
        self.op_lock = threading.Lock()
        self.busy = None
        self.callbacks = []
        self.events = queue.Queue()
        self.subscribers = base.Subscribers()
        self.dispatcher = None
        self.detached = False
        self.job_done = threading.Event()
        self.disks = {}


class LibvirtDriver(base.HypervisorDriver):

    def __init__(self, conf):
        super().__init__(conf)
        hypervisor_conf.register_opts(conf)
        agent_conf.register_opts(conf)
        self.opts = conf.libvirt
        try:
            import libvirt
        except ImportError as e:
            raise exception.HypervisorDriverNotFound(
                name=NAME, reason='libvirt-python is not installed (%s)' % e)
        self.lv = libvirt
        # NOTE: libvirt prints every error on stderr by default; they are
        # raised (and logged) here as exceptions already.
        libvirt.registerErrorHandler(lambda ctx, err: None, None)
        events.ensure_loop(libvirt)
        self._conn = None
        self._conn_lock = threading.Lock()
        self._vms = []
        self._down_since = None
        """When the connection closed, while it is being opened again."""

    # --- connection ----------------------------------------------------------

    def conn(self):
        with self._conn_lock:
            if self._conn is not None and self._conn.isAlive():
                return self._conn
            uri = self.opts.connection_uri
            try:
                conn = self.lv.open(uri)
            except self.lv.libvirtError as e:
                raise exception.LibvirtUnavailable(uri=uri, reason=e)
            conn.registerCloseCallback(self._on_close, None)
            old, self._conn = self._conn, conn
            if old is not None:
                # NOTE: libvirtd restarted: domain handles and events are
                # the new connection's.
                for vm in list(self._vms):
                    try:
                        vm.dom = conn.lookupByUUIDString(vm.uuid)
                    except self.lv.libvirtError as e:
                        LOG.warning('Domain %s is gone after libvirtd came '
                                    'back: %s', vm.name, e)
                        continue
                    self._register_events(vm)
            return conn

    def close(self) -> None:
        """Close the connection (not part of the driver contract)."""
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.unregisterCloseCallback()
                conn.close()
            except self.lv.libvirtError:
                pass

    def _on_close(self, conn, reason, opaque):  # the event loop thread
        if reason == self.lv.VIR_CONNECT_CLOSE_REASON_CLIENT:
            return
        self._down_since = time.monotonic()
        LOG.warning('libvirt connection %s closed (reason %s); it is '
                    'opened again on next use', self.opts.connection_uri,
                    reason)
        threading.Thread(target=self._reconnect, daemon=True,
                         name='libvirt-reconnect').start()

    def _reconnect(self) -> None:
        deadline = time.monotonic() + RECONNECT_WINDOW
        while time.monotonic() < deadline:
            try:
                self.conn()
            except exception.LibvirtUnavailable:
                time.sleep(1)
                continue
            self._down_since = None
            LOG.info('libvirt connection %s open again',
                     self.opts.connection_uri)
            for vm in list(self._vms):
                if not self.is_alive(vm):
                    self._emit(vm, base.PROCESS_EXITED,
                               {'reason': 'not running after libvirtd '
                                'came back'})
            return
        for vm in list(self._vms):
            self._emit(vm, base.MONITOR_CLOSED,
                       {'reason': 'libvirt unreachable for %d s'
                        % RECONNECT_WINDOW})

    def call(self, vm, what: str, func, *args):
        try:
            return func(*args)
        except self.lv.libvirtError as e:
            if not self.is_alive(vm):
                raise base.VMNotRunning(vm=vm.name, reason=str(e))
            raise exception.LibvirtError(call=what, vm=vm.name, reason=e)

    # --- lifecycle -----------------------------------------------------------

    def start(self, spec: base.VMSpec):
        raise exception.OperationNotSupported(
            vm=spec.name, driver=NAME, what='start a VM',
            reason='it protects domains that Nova (or an operator) defines '
                   'and starts; recovery goes through a Nova rebuild')

    def attach(self, name: str, qmp_path: str | None = None,
               pid: int | None = None, *, log_path: str | None = None,
               agent_path: str | None = None):
        conn = self.conn()
        by = 'uuid' if uuidutils.is_uuid_like(name) else 'name'
        try:
            dom = (conn.lookupByUUIDString(name) if by == 'uuid'
                   else conn.lookupByName(name))
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                raise exception.DomainNotFound(vm=name, by=by,
                                               uri=self.opts.connection_uri)
            raise exception.VMAttachFailed(vm=name, path=self.opts
                                           .connection_uri, pid=pid,
                                           reason=e)
        vm = LibvirtVM(name, dom)
        vm.dispatcher = threading.Thread(
            target=self._dispatch, args=(vm,), daemon=True,
            name='libvirt-events-%s' % name[:8])
        vm.dispatcher.start()
        try:
            self._register_events(vm)
            self._vms.append(vm)
            with vm.op_lock:
                ops.recover(self, vm)
        except BaseException:
            # NOTE: half an attach leaves nothing behind: callbacks left
            # registered make every later attach of the domain fail.
            self.detach(vm)
            raise
        LOG.info('Domain %s attached (%s), disks %s', name,
                 'running' if self.is_alive(vm) else 'not running',
                 ', '.join(d.name for d in self._safe_disks(vm)) or 'none')
        return vm

    def _safe_disks(self, vm):
        try:
            return self.disks(vm)
        except exception.HaSnapshotException:
            return []

    def _register_events(self, vm) -> None:
        conn = self._conn
        lv = self.lv
        # NOTE: appended one by one, so that detach() deregisters those
        # registered when a later one fails.
        vm.callbacks = []
        for event, callback in (
                (lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                 lambda c, d, ev, detail, op: self._emit(
                     vm, *events.lifecycle(lv, ev, detail))),
                (lv.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON,
                 lambda c, d, path, alias, action, reason, op: self._emit(
                     vm, *events.io_error(path, alias, action, reason))),
                (lv.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
                 lambda c, d, params, op: self._emit(
                     vm, events.JOB_COMPLETED, dict(params)))):
            vm.callbacks.append(conn.domainEventRegisterAny(
                vm.dom, event, callback, None))

    def detach(self, vm) -> None:
        if vm.detached:
            return
        vm.detached = True
        if vm in self._vms:
            self._vms.remove(vm)
        for cb in vm.callbacks:
            try:
                self._conn.domainEventDeregisterAny(cb)
            except (self.lv.libvirtError, AttributeError):
                pass
        vm.callbacks = []
        vm.events.put(None)
        if vm.dispatcher is not threading.current_thread():
            vm.dispatcher.join(5)

    def is_alive(self, vm) -> bool:
        try:
            return bool(vm.dom.isActive())
        except self.lv.libvirtError:
            # NOTE: libvirtd restarting says nothing about the domain: it
            # counts as alive while the connection is being opened again
            # (_reconnect reports it if it is gone then).
            down = self._down_since
            return down is not None and (
                time.monotonic() - down < RECONNECT_WINDOW)

    def quit(self, vm, timeout: float | None = None) -> int | None:
        timeout = self.opts.quit_timeout if timeout is None else timeout
        try:
            vm.dom.shutdown()
        except self.lv.libvirtError as e:
            LOG.debug('Domain %s: shutdown: %s', vm.name, e)
        deadline = time.monotonic() + timeout
        while self.is_alive(vm) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.is_alive(vm):
            LOG.warning('Domain %s: still running %s s after shutdown; '
                        'destroying it', vm.name, timeout)
            self.kill(vm)
            return None
        self.detach(vm)
        return None

    def kill(self, vm) -> None:
        try:
            vm.dom.destroy()
        except self.lv.libvirtError as e:
            LOG.debug('Domain %s: destroy: %s', vm.name, e)
        self.detach(vm)

    # --- events --------------------------------------------------------------

    def subscribe(self, vm, callback, events=None) -> base.Subscription:
        return vm.subscribers.add(callback, events)

    def _emit(self, vm, kind: str, data: dict) -> None:
        if kind == events.JOB_COMPLETED:
            vm.job_done.set()
        if kind in (base.PROCESS_EXITED, events.DOMAIN_STOPPED):
            LOG.info('Domain %s stopped (%s)', vm.name, data.get('reason'))
            # NOTE: Nova undefines a stopped domain right after destroying
            # it, and refuses to if checkpoint metadata is left: a backup
            # caught by the stop may still hold some. Drop it now, off the
            # event loop thread (callbacks must not call libvirt), and wake
            # a backup waiting for its job.
            vm.job_done.set()
            threading.Thread(target=ops.drop_metadata, args=(self, vm),
                             name='libvirt-stop-%s' % vm.name,
                             daemon=True).start()
        if not vm.detached:
            vm.events.put(base.Event(vm.name, kind, data, time.time()))

    def _dispatch(self, vm) -> None:
        vm.subscribers.dispatch(vm.events, 'Domain %s' % vm.name)

    # --- disks ---------------------------------------------------------------

    def domain_disks(self, vm) -> list:
        xml = self.call(vm, 'XMLDesc', vm.dom.XMLDesc, 0)
        return tracking.domain_disks(xml)

    def disks(self, vm, refresh: bool = True) -> list:
        if refresh or not vm.disks:
            out = {}
            for dd in self.domain_disks(vm):
                if dd.device != 'disk' or dd.readonly or not dd.chain:
                    continue
                info = self.call(vm, 'blockInfo', vm.dom.blockInfo,
                                 dd.target)
                chain = tuple(
                    base.Image(node='libvirt-%s-format' % index if index
                               else dd.target, path=path,
                               format=fmt or 'raw')
                    for path, fmt, index in dd.chain)
                out[dd.target] = base.Disk(
                    name=dd.target, device=dd.alias,
                    virtual_size=int(info[0]), chain=chain)
            vm.disks = out
        return list(vm.disks.values())

    def _disk(self, vm, name) -> base.Disk:
        return base.find_disk(vm, name, self.disks)

    def workdir(self, vm) -> str:
        return os.path.join(self.opts.backup_dir, vm.uuid)

    # --- snapshot and commit -------------------------------------------------

    def snapshot(self, vm, *, wait: float | None = None,
                 quiesce: bool = False,
                 require_quiesce: bool = False) -> base.Snapshot:
        wait = self.opts.snapshot_wait if wait is None else wait
        around = libvirt_quiesce.around(
            self.lv, vm.dom, vm.name, quiesce_mod.Options.from_conf(
                self.conf), require_quiesce) if (
            quiesce or require_quiesce) else None
        with base.operation(vm, 'a backup', wait):
            if not self.is_alive(vm):
                raise base.VMNotRunning(vm=vm.name,
                                        reason='the domain is not running')
            return ops.backup(self, vm, around)

    def commit(self, vm, frozen, *, timeout: float | None = None) -> list:
        items = base.frozen_items(frozen)
        timeout = self.opts.backup_timeout if timeout is None else timeout
        with base.operation(vm, 'a commit', timeout,
                            lambda busy: base.CommitFailed(
                                vm=vm.name,
                                top=', '.join(i.frozen.path for i in items),
                                base='nothing',
                                reason='%s held the domain for %s s'
                                % (busy, timeout))):
            return ops.commit(self, vm, items)

    def frozen_images(self, vm, disk: str) -> list:
        with vm.op_lock:
            return ops.frozen_images(self, vm, disk)

    def start_tracking(self, vm) -> bool:
        # NOTE: a stopped domain (a server rebuilt while stopped) gets its
        # bitmaps before its guest runs: no write of it escapes them.
        with vm.op_lock:
            ops.drop_all(self, vm)
            if self.is_alive(vm):
                ops.new_checkpoint(self, vm)
            else:
                ops.new_checkpoint_stopped(self, vm)
        return True

    def stop_tracking(self, vm) -> None:
        with vm.op_lock:
            ops.drop_all(self, vm)

    frozen_in_chain = False

    def full_next(self, vm, snap) -> None:
        with vm.op_lock:
            ops.full_next(self, vm, snap)

    # --- I/O -----------------------------------------------------------------

    def blockstats(self, vm) -> dict:
        out = {}
        for d in self.disks(vm, refresh=not vm.disks):
            s = self.call(vm, 'blockStatsFlags', vm.dom.blockStatsFlags,
                          d.name, 0)
            info = self.call(vm, 'blockInfo', vm.dom.blockInfo, d.name)
            out[d.name] = base.BlockStats.from_counters(
                d.name, d.active.node, s, info[1], accounted=True)
        return out

    def write(self, vm, disk: str, offset: int, length: int,
              pattern: int = 0x11) -> None:
        base.checked_write(vm.name, offset, length, pattern,
                           lambda: self._disk(vm, disk))
        ops.qemu_io(self, vm, disk, 'write -P 0x%02x %d %d'
                    % (pattern, offset, length))
