"""The ``qemu`` hypervisor driver: QEMU driven over its QMP socket.

A snapshot is one QMP ``transaction`` of ``blockdev-snapshot`` actions, one
per writable disk, onto overlays made beforehand with ``qemu-img create -u``
and ``blockdev-add`` (``blockdev-snapshot-sync`` loses the new node on
``-machine none``; this path works with and without guest devices). A
commit is a non-active ``block-commit`` of the frozen overlay into the image
below it, followed by ``blockdev-del`` and deleting the file.

Per VM: one QMP connection (its reader thread), one thread delivering
events to subscribers in order, one thread waiting on the process's pidfd.
Snapshots and commits of one VM are serialised by a lock.

A VM's guest agent (its virtio-serial port's unix socket, ``agent_path``)
freezes the guest's file systems around a snapshot when asked
(ha_snapshot/hypervisor/quiesce.py).

May import ha_snapshot.hypervisor.*, ha_snapshot.conf.hypervisor and
ha_snapshot.conf.agent.
"""

import os
import queue
import secrets
import shutil
import socket
import threading
import time

from oslo_log import log as logging

from ha_snapshot.conf import agent as agent_conf
from ha_snapshot.conf import hypervisor as hypervisor_conf
from ha_snapshot.hypervisor import base
from ha_snapshot.hypervisor import blockgraph
from ha_snapshot.hypervisor import hmp
from ha_snapshot.hypervisor import jobs
from ha_snapshot.hypervisor import memstate
from ha_snapshot.hypervisor import process
from ha_snapshot.hypervisor import qmp
from ha_snapshot.hypervisor import quiesce as quiesce_mod
from ha_snapshot.hypervisor import snapshots

LOG = logging.getLogger(__name__)


class QemuVM(base.VM):
    """The driver's state of one VM (use only through the driver)."""

    def __init__(self, name, pid, qmp_path, log_path, proc,
                 agent_path=None):
        super().__init__(name, pid, qmp_path, log_path)
        self.agent_path = agent_path
        self.process = proc
        self.client = None
        self.token = secrets.token_hex(3)
        self._seq = 0
        self.op_lock = threading.Lock()
        self.graph_lock = threading.RLock()
        self.busy = None
        self.disks = {}
        self.overlay_opts = {}
        self.prepared = {}
        self.jobs = jobs.JobTable()
        self.events = queue.Queue()
        self.subscribers = base.Subscribers()
        self.dispatcher = None
        self.detached = False
        self.quitting = False
        self.own_stops = 0
        """STOP events coming from our own ``stop`` (a memory snapshot):
        delivered with ``data['ha_snapshot']`` so that the health monitor
        does not take them for a failure."""

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq


class QemuDriver(base.HypervisorDriver):

    def __init__(self, conf):
        super().__init__(conf)
        hypervisor_conf.register_opts(conf)
        agent_conf.register_opts(conf)
        self.opts = conf.qemu

    # --- lifecycle -----------------------------------------------------------

    def start(self, spec: base.VMSpec) -> QemuVM:
        binary = shutil.which(self.opts.binary)
        if binary is None:
            raise base.QemuNotFound(vm=spec.name, binary=self.opts.binary)
        argv = process.command_line(binary, spec)
        for disk in spec.disks:
            if not os.path.isfile(disk.path):
                raise base.VMStartFailed(
                    vm=spec.name, reason='disk image %s does not exist'
                    % disk.path, log=spec.log_path, tail=' (not started)')
        self._free_socket(spec)
        popen = process.launch(argv, spec.log_path)
        proc = process.ProcessHandle(popen.pid, popen)

        def retry_wait(seconds):
            if proc.wait(seconds):
                raise base.VMStartFailed(
                    vm=spec.name, log=spec.log_path,
                    reason='QEMU exited with status %s' % proc.returncode,
                    tail=process.log_tail(spec.log_path))
        try:
            return self._attach(spec.name, spec.qmp_path, proc,
                                spec.log_path, retry_wait, spec.agent_path)
        except Exception as e:
            proc.signal()
            proc.wait(10)
            proc.close()
            if not isinstance(e, base.VMStartFailed):
                e = base.VMStartFailed(vm=spec.name, log=spec.log_path,
                                       reason=str(e),
                                       tail=process.log_tail(spec.log_path))
            # NOTE: QEMU leaves its socket behind when it fails to start.
            if os.path.exists(spec.qmp_path):
                os.unlink(spec.qmp_path)
            raise e

    def _free_socket(self, spec):
        if not os.path.exists(spec.qmp_path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(spec.qmp_path)
        except OSError:
            os.unlink(spec.qmp_path)  # NOTE: stale, nobody listens
            return
        finally:
            probe.close()
        raise base.VMStartFailed(
            vm=spec.name, log=spec.log_path, tail=' (not started)',
            reason='another process serves the QMP socket %s'
            % spec.qmp_path)

    def attach(self, name: str, qmp_path: str, pid: int, *,
               log_path: str | None = None,
               agent_path: str | None = None) -> QemuVM:
        try:
            proc = process.ProcessHandle(pid)
        except ProcessLookupError:
            raise base.VMAttachFailed(vm=name, path=qmp_path, pid=pid,
                                      reason='no such process')
        try:
            return self._attach(name, qmp_path, proc, log_path, None,
                                agent_path)
        except base.HypervisorError as e:
            proc.close()
            if isinstance(e, base.VMAttachFailed):
                raise
            raise base.VMAttachFailed(vm=name, path=qmp_path, pid=pid,
                                      reason=str(e))

    def _attach(self, name, qmp_path, proc, log_path, retry_wait,
                agent_path=None) -> QemuVM:
        vm = QemuVM(name, proc.pid, os.path.abspath(qmp_path), log_path,
                    proc, agent_path and os.path.abspath(agent_path))
        vm.client = qmp.QmpClient(
            vm.qmp_path, vm=name,
            on_event=lambda msg: self._on_qmp_event(vm, msg),
            on_close=lambda reason: self._on_qmp_close(vm, reason))
        vm.client.connect(self.opts.connect_timeout, retry_wait)
        if vm.client.peer_pid not in (None, proc.pid):
            vm.client.close()
            raise base.VMAttachFailed(
                vm=name, path=qmp_path, pid=proc.pid,
                reason='the socket is served by process %s'
                % vm.client.peer_pid)
        vm.dispatcher = threading.Thread(
            target=self._dispatch, args=(vm,), daemon=True,
            name='qemu-events-%s' % name)
        vm.dispatcher.start()
        proc.watch(lambda rc: self._on_exit(vm, rc))
        try:
            nodes = self._refresh(vm)
            for node in blockgraph.orphans(nodes, list(vm.disks.values())):
                self._delete_node(vm, node, nodes)
        except BaseException:
            # NOTE: the caller closes the process handle (and its watcher).
            vm.detached = True
            vm.client.close()
            vm.events.put(None)
            raise
        LOG.info('VM %s (pid %d): attached, disks %s', name, proc.pid,
                 ', '.join(vm.disks) or 'none')
        return vm

    def detach(self, vm: QemuVM) -> None:
        if vm.detached:
            return
        if vm.process.exited():
            # NOTE: let the exit and the end of the monitor be reported
            # before the event thread stops.
            vm.process.join_watcher(5)
            vm.client.wait_closed(5)
        vm.detached = True
        vm.client.close()
        vm.process.close()
        vm.events.put(None)
        if vm.dispatcher is not threading.current_thread():
            vm.dispatcher.join(5)

    def is_alive(self, vm: QemuVM) -> bool:
        return not vm.process.exited() and not vm.client.closed

    def quit(self, vm: QemuVM, timeout: float | None = None) -> int | None:
        timeout = self.opts.quit_timeout if timeout is None else timeout
        vm.quitting = True
        try:
            vm.client.execute('quit', timeout=self.opts.command_timeout)
        except base.HypervisorError as e:
            LOG.debug('VM %s: quit: %s', vm.name, e)
        if not vm.process.wait(timeout):
            LOG.warning('VM %s: no exit %s s after quit; killing pid %d',
                        vm.name, timeout, vm.pid)
            vm.process.signal()
            vm.process.wait(10)
        rc = vm.process.returncode
        self.detach(vm)
        return rc

    def kill(self, vm: QemuVM) -> None:
        vm.quitting = True
        vm.process.signal()
        vm.process.wait(10)
        self.detach(vm)

    # --- events --------------------------------------------------------------

    def subscribe(self, vm, callback, events=None) -> base.Subscription:
        return vm.subscribers.add(callback, events)

    def _on_qmp_event(self, vm, msg):  # the QMP reader thread
        ts = msg.get('timestamp') or {}
        try:
            when = float(ts['seconds']) + float(ts['microseconds']) / 1e6
        except (KeyError, TypeError, ValueError):
            when = time.time()
        data = msg.get('data') if isinstance(msg.get('data'), dict) else {}
        if msg['event'] == 'STOP' and vm.own_stops > 0:
            vm.own_stops -= 1
            data = dict(data, ha_snapshot='memory snapshot')
        event = base.Event(vm.name, str(msg['event']), data, when)
        vm.jobs.on_event(event)
        vm.events.put(event)

    def _on_qmp_close(self, vm, reason):
        vm.jobs.fail_all('the monitor closed: %s' % reason)
        if not vm.detached:
            vm.events.put(base.Event(vm.name, base.MONITOR_CLOSED,
                                     {'reason': reason}, time.time()))

    def _on_exit(self, vm, returncode):  # the process watcher thread
        vm.jobs.fail_all('the QEMU process exited')
        (LOG.info if vm.quitting else LOG.warning)(
            'VM %s: QEMU process %d exited (status %s)', vm.name, vm.pid,
            returncode)
        vm.events.put(base.Event(vm.name, base.PROCESS_EXITED,
                                 {'pid': vm.pid, 'returncode': returncode},
                                 time.time()))

    def _dispatch(self, vm) -> None:
        vm.subscribers.dispatch(vm.events, 'VM %s' % vm.name)

    # --- QMP -----------------------------------------------------------------

    def qmp(self, vm: QemuVM, command: str, arguments: dict | None = None,
            timeout: float | None = None, fd: int | None = None):
        """One QMP command (not part of the driver contract)."""
        return vm.client.execute(
            command, arguments, fd=fd,
            timeout=self.opts.command_timeout if timeout is None else timeout)

    def _refresh(self, vm) -> list:
        """Re-read the block graph; returns query-named-block-nodes."""
        with vm.graph_lock:
            nodes = self.qmp(vm, 'query-named-block-nodes', {'flat': True})
            blocks = self.qmp(vm, 'query-block')
            disks = blockgraph.disks_from(nodes, blocks)
            by_name = {n.get('node-name'): n for n in nodes}
            vm.disks = {d.name: d for d in disks}
            vm.overlay_opts = {
                d.name: blockgraph.overlay_options(by_name[d.active.node])
                for d in disks}
        return nodes

    def _delete_node(self, vm, node, nodes=None) -> bool:
        """blockdev-del one of our nodes; its file goes too when QEMU
        confirmed it was unused."""
        path = None
        for n in nodes or ():
            if n.get('node-name') == node:
                path = blockgraph.node_path(n)
        try:
            self.qmp(vm, 'blockdev-del', {'node-name': node})
        except base.QmpError as e:
            LOG.warning('VM %s: cannot delete node %s: %s', vm.name, node,
                        e.kwargs.get('reason'))
            return False
        if path and blockgraph.OWN_NODE.match(node):
            snapshots.unlink_quietly(path)
        return True

    def disks(self, vm: QemuVM, refresh: bool = True) -> list:
        if refresh or not vm.disks:
            self._refresh(vm)
        return list(vm.disks.values())

    def _disk(self, vm, name) -> base.Disk:
        return base.find_disk(vm, name, self._refresh)

    def _check_alive(self, vm):
        if vm.process.exited():
            raise base.VMNotRunning(vm=vm.name, reason='process %d exited'
                                    % vm.pid)

    # --- snapshot and commit -------------------------------------------------

    def snapshot(self, vm: QemuVM, *, wait: float | None = None,
                 quiesce: bool = False, require_quiesce: bool = False):
        wait = self.opts.snapshot_wait if wait is None else wait
        with base.operation(vm, 'a snapshot', wait):
            self._check_alive(vm)
            channel = (quiesce_mod.SocketChannel(vm.agent_path, vm.name)
                       if vm.agent_path else None)
            return quiesce_mod.snapshot(
                vm.name, channel, lambda: snapshots.take_snapshot(self, vm),
                quiesce_mod.Options.from_conf(self.conf), quiesce,
                require_quiesce)

    def snapshot_with_memory(self, vm: QemuVM, sink, *,
                             wait: float | None = None,
                             timeout: float = 300.0) -> tuple:
        """A disk snapshot and the memory state of the same instant,
        never quiesced (a guest resumed from memory saved inside a freeze
        would stay frozen). ``(Snapshot, memstate.MemorySave)``; the
        stream goes to ``sink(bytes)``."""
        wait = self.opts.snapshot_wait if wait is None else wait
        with base.operation(vm, 'a memory snapshot', wait):
            self._check_alive(vm)
            if not vm.disks:
                self._refresh(vm)
            return memstate.save(self, vm, sink, timeout)

    def resume(self, spec: base.VMSpec, chunks,
               timeout: float = 300.0) -> tuple:
        """Start ``spec`` from saved memory (``chunks``: its bytes):
        ``(vm, seconds until the guest ran)``; MemoryStateError when it
        did not (no QEMU left running)."""
        if spec.machine == 'none':
            raise base.MemoryStateError(vm=spec.name, reason='a VM without '
                                        'a machine has no memory state')
        return memstate.resume(self, spec, chunks, timeout)

    def commit(self, vm: QemuVM, frozen, *, timeout: float | None = None):
        items = base.frozen_items(frozen)
        timeout = self.opts.commit_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        tops = ', '.join(i.frozen.path for i in items)
        with base.operation(vm, 'a commit of %s' % tops, timeout,
                            lambda busy: base.CommitFailed(
                                vm=vm.name, top=tops, base='its backing',
                                reason='%s held the VM for %s s'
                                % (busy, timeout))):
            self._check_alive(vm)
            results = snapshots.commit_overlays(self, vm, items, deadline)
            snapshots.prepare_overlays(self, vm)
            return results

    # --- I/O -----------------------------------------------------------------

    def blockstats(self, vm: QemuVM) -> dict:
        disks = self.disks(vm, refresh=not vm.disks)
        return blockgraph.blockstats_from(
            disks, self.qmp(vm, 'query-blockstats'),
            self.qmp(vm, 'query-blockstats', {'query-nodes': True}))

    def write(self, vm: QemuVM, disk: str, offset: int, length: int,
              pattern: int = 0x11) -> None:
        base.checked_write(vm.name, offset, length, pattern,
                           lambda: self._disk(vm, disk))
        with vm.graph_lock:
            d = vm.disks[disk]
            target = '-d %s' % d.device if d.device else d.active.node
            hmp.qemu_io(self, vm, target,
                        'write -P 0x%02x %d %d' % (pattern, offset, length))

