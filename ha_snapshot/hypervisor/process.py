"""QEMU processes: the command line of a VMSpec, and watching a process.

A :class:`ProcessHandle` follows one process by a pidfd (Linux >= 5.3), so
that a recycled pid can never be mistaken for the VM and an exit is seen at
once, without polling; without pidfd it falls back to polling the pid.

May import the standard library, oslo.log and ha_snapshot.hypervisor.base
only.
"""

import json
import os
import re
import select
import signal
import subprocess
import threading
import time

from oslo_log import log as logging

from ha_snapshot.hypervisor import base

LOG = logging.getLogger(__name__)

# NOTE: what QEMU accepts as an id (node names, device ids): a letter, then
# letters, digits, '-', '.', '_'; at most 31 characters for node names.
QEMU_ID = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,30}$')
VM_NAME = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$')
MACHINES = ('none', 'q35')
ACCELS = ('tcg', 'kvm')
POLL_INTERVAL = 0.2


def _opt_path(path: str) -> str:
    """A path inside a QEMU key=value option (',' is doubled)."""
    return path.replace(',', ',,')


def command_line(binary: str, spec: base.VMSpec) -> list:
    """The argv that starts ``spec`` (validated: nothing reaches QEMU's
    option parser unescaped)."""
    def bad(reason):
        raise base.HypervisorError(vm=spec.name, reason='invalid VM spec: '
                                   + reason)
    if not VM_NAME.match(spec.name or ''):
        bad('name %r: use letters, digits, "-", "_", ".", ":"' % spec.name)
    if spec.machine not in MACHINES:
        bad('machine %r, expected one of %s' % (spec.machine, MACHINES))
    if spec.accel not in ACCELS:
        bad('accel %r, expected one of %s' % (spec.accel, ACCELS))
    if not spec.disks:
        bad('no disks')
    args = [binary, '-name', 'guest=%s' % spec.name, '-nodefaults',
            '-no-user-config', '-display', 'none', '-msg', 'timestamp=on',
            '-machine', spec.machine]
    if spec.machine != 'none':
        args += ['-accel', spec.accel, '-m', str(int(spec.memory_mb))]
    if spec.paused:
        args.append('-S')
    for i, disk in enumerate(spec.disks):
        node = disk.node or 'disk%d' % i
        device = disk.device or 'vd%d' % i
        if not QEMU_ID.match(node) or not QEMU_ID.match(device):
            bad('disk ids %r/%r are not QEMU ids' % (node, device))
        if disk.format not in ('qcow2', 'raw'):
            bad('disk format %r' % disk.format)
        args += ['-blockdev', json.dumps({
            'driver': disk.format, 'node-name': node,
            'file': {'driver': 'file',
                     'filename': os.path.abspath(disk.path)}})]
        if spec.machine != 'none':
            args += ['-device', 'virtio-blk-pci,drive=%s,id=%s'
                     % (node, device)]
    if spec.agent_path:
        if spec.machine == 'none':
            bad('a guest agent channel needs a machine with devices')
        args += ['-device', 'virtio-serial-pci,id=vser0',
                 '-chardev', 'socket,id=qga0,path=%s,server=on,wait=off'
                 % _opt_path(os.path.abspath(spec.agent_path)),
                 '-device', 'virtserialport,bus=vser0.0,chardev=qga0,'
                 'name=org.qemu.guest_agent.0']
    args += ['-qmp', 'unix:%s,server=on,wait=off'
             % _opt_path(os.path.abspath(spec.qmp_path))]
    if spec.pidfile:
        args += ['-pidfile', os.path.abspath(spec.pidfile)]
    return args + [str(a) for a in spec.extra_args]


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except (OSError, IndexError):
        return False


def launch(argv: list, log_path: str) -> subprocess.Popen:
    """Start QEMU in its own session, stdout and stderr into the log."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, 'ab') as log:
        log.write(('== %s starting: %s\n' % (
            time.strftime('%Y-%m-%d %H:%M:%S'), ' '.join(argv))).encode())
        log.flush()
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
            env=dict(os.environ, LC_ALL='C', LANG='C'))


def log_tail(path: str | None, lines: int = 20) -> str:
    if not path:
        return ' (no log)'
    try:
        with open(path, 'rb') as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode('utf-8', 'replace')
    except OSError as e:
        return ' (unreadable: %s)' % e
    return ''.join('\n  ' + line for line in text.splitlines()[-lines:])


class ProcessHandle:
    """One process, by pidfd when the kernel has it; ``popen`` when it is
    our child (then it is reaped and its exit status known)."""

    def __init__(self, pid: int, popen: subprocess.Popen | None = None):
        self.pid = pid
        self.popen = popen
        self._pidfd = None
        self._watcher = None
        self._wake_r = self._wake_w = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise
        except (AttributeError, OSError):
            os.kill(pid, 0)  # NOTE: raises ProcessLookupError if gone

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def exited(self) -> bool:
        return self.wait(0)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the exit; True once exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self._pidfd is not None:
                poller = select.poll()
                poller.register(self._pidfd, select.POLLIN)
                done = bool(poller.poll(
                    max(0.0, deadline - time.monotonic()) * 1000))
            else:
                done = not self._pid_alive()
            if done:
                if self.popen is not None:
                    self.popen.wait()
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._pidfd is None:
                threading.Event().wait(min(POLL_INTERVAL, remaining))

    def _pid_alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_running(self.pid)

    def signal(self, signum: int = signal.SIGKILL) -> None:
        """Signal the process; never a recycled pid: by pidfd, or through
        Popen (which knows whether it was reaped), else not at all."""
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signum)
            elif self.popen is not None:
                self.popen.send_signal(signum)
            else:
                LOG.warning('process %d: not signalled (no pidfd)', self.pid)
        except ProcessLookupError:
            pass

    def watch(self, on_exit) -> None:
        """Call ``on_exit(returncode)`` from a thread when the process
        exits (not after :meth:`close`)."""
        self._wake_r, self._wake_w = os.pipe()
        self._watcher = threading.Thread(
            target=self._watch, args=(on_exit,), daemon=True,
            name='qemu-watch-%d' % self.pid)
        self._watcher.start()

    def _watch(self, on_exit) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        while True:
            events = dict(poller.poll(
                None if self._pidfd is not None else POLL_INTERVAL * 1000))
            if self._wake_r in events:
                return
            if self._pidfd in events or (self._pidfd is None
                                         and not self._pid_alive()):
                break
        if self.popen is not None:
            self.popen.wait()
        try:
            on_exit(self.returncode)
        except Exception:
            LOG.exception('process %d: exit handler failed', self.pid)

    def join_watcher(self, timeout: float) -> None:
        """Wait for the watcher to report an exit that happened."""
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)

    def close(self) -> None:
        if self._wake_w is not None:
            os.write(self._wake_w, b'x')
            if (self._watcher is not None
                    and self._watcher is not threading.current_thread()):
                self._watcher.join(5)
            os.close(self._wake_w)
            os.close(self._wake_r)
            self._wake_w = self._wake_r = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def bare_spec(workdir: str, name: str, size: int) -> base.VMSpec:
    """The spec of a VM without a guest (machine ``none``: bare block
    nodes) on a new, empty qcow2 disk ``<workdir>/<name>.qcow2`` of
    ``size`` bytes, its QMP socket and log beside it: what the demo and
    the benchmarks write to through the monitor."""
    disk = os.path.join(workdir, '%s.qcow2' % name)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', disk,
                    str(size)], check=True, timeout=60)
    return base.VMSpec(name=name,
                       qmp_path=os.path.join(workdir, '%s.qmp' % name),
                       log_path=os.path.join(workdir, '%s.log' % name),
                       disks=(base.DiskSpec(path=disk),))
