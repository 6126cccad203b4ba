"""The harness's compute hosts: several on one machine, each killable.

A :class:`ComputeHost` runs what one hypervisor host of a real cloud runs:
libvirtd + virtlogd (and the QEMU processes of its servers), nova-compute
(and the privsep daemons it starts) and ha-snapshot-agent. Several of them
on one machine need (DESIGN.md, "Evacuation on one machine"):

- a host name each: Nova takes the node name from libvirt's host name, and
  no option overrides it. libvirtd and virtlogd run in a UTS and mount
  namespace of their own (``unshare --uts --mount``, see
  ha_snapshot/tests/fixtures/libvirt.py) named after the host, with a
  private ``/etc/hosts`` naming it;
- storage each: every host has the same ``instances_path`` (Nova expects
  it), and inside each host's mount namespace ``data/HOST/instances`` is
  bind-mounted over it. Nova's shared-storage test (a file written by one
  host, looked for by path by the other) then answers "not shared", as on
  two real machines;
- nova-compute and the agent run inside those namespaces (``nsenter``
  into libvirtd's): the disk paths libvirt reports (``instances_path/
  UUID/disk`` and its ``_base`` backing file) resolve only in there, for
  Nova's privsep helpers as for the agent, which reads and snapshots them.

Processes are recorded as ``NAME@HOST`` (``nova-compute@ha-compute``) in
the harness's process table. Every process of a host, including the
privsep daemons that detach from nova-compute, is found by its mount
namespace, recorded in ``run/ns/HOST.json`` when the host starts: that is
how :meth:`ComputeHost.kill` kills a host whole and how stopping leaves
nothing behind (:func:`sweep_namespaces`).

May import the standard library, psutil, tools.cloud.procs and
ha_snapshot.tests.fixtures.libvirt.
"""

import json
import os
import shutil
import signal
import time

import psutil

from ha_snapshot.tests.fixtures import libvirt as libvirt_fx
from tools.cloud import procs

COMPUTE_HOSTS = ('ha-compute', 'ha-compute2')
# The processes of a compute host that the process table records.
HOST_PROCESSES = ('ha-snapshot-agent', 'nova-compute', 'libvirtd',
                  'virtlogd')
# NOTE: psutil's create_time is the boot time (whole seconds, from
# /proc/stat) plus clock ticks since boot: a process started right after
# `since` may appear to have started before it, by up to a second plus
# however far the wall clock was slewed since boot (0.7 s on this kind of
# machine after 11 hours up). The slack only has to stay below the age of
# a namespace's older processes, which the holder and `mark` exclude too.
_CLOCK_SLACK = 5.0


def process_name(base: str, host: str) -> str:
    return '%s@%s' % (base, host)


def base_name(name: str) -> str:
    """``nova-compute`` of ``nova-compute@ha-compute`` (or of itself)."""
    return name.partition('@')[0]


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink('/proc/%d/ns/mnt' % pid)
    except OSError:
        return None


def ns_members(mnt_ns: str, since: float, mark: str | None = None) -> list:
    """The live processes in mount namespace ``mnt_ns`` (as readlink
    shows it, ``mnt:[N]``) started after ``since``.

    NOTE: a namespace's number is reused once nothing holds it. The
    :class:`ComputeHost` that made it holds it open (no reuse while it
    lives); anyone else passes ``mark``, a string every process of the
    host has in its command line (the run directory: in the daemons'
    config paths, in QEMU's disk paths), and older processes never count.
    """
    if not mnt_ns or mnt_ns == _mnt_ns(os.getpid()):
        raise procs.CloudError('refusing to treat this process\'s own mount '
                               'namespace (%s) as a compute host\'s'
                               % mnt_ns)
    out = []
    for proc in psutil.process_iter(['create_time', 'status', 'cmdline']):
        if proc.info['status'] == psutil.STATUS_ZOMBIE:
            continue
        if (_mnt_ns(proc.pid) == mnt_ns
                and (proc.info['create_time'] or 0) >= since - _CLOCK_SLACK
                and (mark is None
                     or mark in ' '.join(proc.info['cmdline'] or ()))):
            out.append(proc)
    return out


def _dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_dead(procs_: list, timeout: float) -> list:
    """Wait until each process is gone or a zombie (a child of another
    process, the harness's supervisor say, stays one until that process
    reaps it); those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs_ if not _dead(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _ns_dir(run_dir: str) -> str:
    return os.path.join(run_dir, 'ns')


def kill_namespace(mnt_ns: str, since: float, first=(), mark=None,
                   timeout: float = 30) -> list:
    """SIGKILL every process of the namespace (``first``: pids signalled
    before the others; ``mark``: see ns_members) until none is left; the
    pids killed."""
    killed = []
    for _round in range(20):
        members = ns_members(mnt_ns, since, mark)
        if not members:
            break
        members.sort(key=lambda p: (p.pid not in first, p.pid))
        for proc in members:
            try:
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        alive = _wait_dead(members, timeout)
        if alive:
            raise procs.CloudError('processes %s of namespace %s outlived '
                                   'SIGKILL by %.0f s' % (
                                       [p.pid for p in alive], mnt_ns,
                                       timeout))
    else:
        raise procs.CloudError('namespace %s kept starting processes while '
                               'they were killed' % mnt_ns)
    return sorted(set(killed))


def recorded_namespaces(run_dir: str) -> list:
    """The namespaces of the compute hosts started from ``run_dir``."""
    out = []
    try:
        names = sorted(os.listdir(_ns_dir(run_dir)))
    except FileNotFoundError:
        return out
    for name in names:
        try:
            with open(os.path.join(_ns_dir(run_dir), name)) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def sweep_namespaces(run_dir: str) -> list:
    """Kill whatever of ``run_dir`` still runs in a compute host's
    namespace (privsep daemons, a QEMU libvirtd left behind), then forget
    the namespaces; the pids killed."""
    killed = []
    for rec in recorded_namespaces(run_dir):
        killed += kill_namespace(rec['mnt_ns'], rec['since'],
                                 mark=run_dir)
    shutil.rmtree(_ns_dir(run_dir), ignore_errors=True)
    return killed


class ComputeHost:
    """One compute host of the harness (see the module doc)."""

    def __init__(self, table: procs.ProcessTable, data_dir: str,
                 name: str):
        self.table = table
        self.name = name
        self.dir = os.path.join(data_dir, name)
        self.instances_dir = os.path.join(self.dir, 'instances')
        self.libvirtd = libvirt_fx.Libvirtd(os.path.join(self.dir,
                                                         'libvirt'))
        self.mnt_ns = None
        self.since = None
        self.killed_at = None
        self._ns_fd = None  # NOTE: holds the namespace (see ns_members)
        self._mark = None

    @classmethod
    def recorded(cls, table: procs.ProcessTable,
                 name: str) -> 'ComputeHost':
        """Host ``name`` of a cloud another process started, from the
        namespace it recorded (to kill it from a shell)."""
        for rec in recorded_namespaces(table.run_dir):
            if rec.get('host') == name:
                host = cls(table, os.path.dirname(os.path.dirname(
                    rec['libvirt_dir'])), name)
                host.mnt_ns, host.since = rec['mnt_ns'], rec['since']
                host._mark = table.run_dir
                host.libvirtd.libvirtd_pid = libvirt_fx._read_pid(
                    host.libvirtd.libvirtd_pidfile)
                host.libvirtd.virtlogd_pid = libvirt_fx._read_pid(
                    host.libvirtd.virtlogd_pidfile)
                return host
        known = [r.get('host', '?')
                 for r in recorded_namespaces(table.run_dir)]
        raise procs.CloudError('no compute host %r recorded in %s (hosts: '
                               '%s)' % (name, _ns_dir(table.run_dir),
                                        ', '.join(known) or 'none'))

    def pname(self, base: str) -> str:
        return process_name(base, self.name)

    @property
    def names(self) -> list:
        return [self.pname(b) for b in HOST_PROCESSES]

    @property
    def libvirt_uri(self) -> str:
        return self.libvirtd.uri

    @property
    def libvirt_dir(self) -> str:
        return self.libvirtd.workdir

    # --- start ---

    def start_libvirtd(self, instances_path: str) -> None:
        """libvirtd + virtlogd in the host's new namespaces, with its
        instances folder over ``instances_path``."""
        os.makedirs(self.instances_dir, exist_ok=True)
        os.makedirs(instances_path, exist_ok=True)
        os.makedirs(os.path.join(self.libvirt_dir, 'log'), exist_ok=True)
        hosts = os.path.join(self.dir, 'hosts')
        with open(hosts, 'w') as f:
            # NOTE: libvirt resolves its short host name; without this
            # line it logs errors and falls back to the machine's name.
            f.write('127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost\n'
                    % self.name)
        os.chmod(hosts, 0o644)
        self.since = time.time()
        self.libvirtd = libvirt_fx.Libvirtd(
            self.libvirt_dir, hostname=self.name,
            binds=[(hosts, '/etc/hosts'),
                   (self.instances_dir, instances_path)]).start()
        self.table.record(self.pname('libvirtd'), self.libvirtd.libvirtd_pid)
        self.table.record(self.pname('virtlogd'), self.libvirtd.virtlogd_pid)
        self._ns_fd = os.open('/proc/%d/ns/mnt' % self.libvirtd.libvirtd_pid,
                              os.O_RDONLY | os.O_CLOEXEC)
        self.mnt_ns = _mnt_ns(self.libvirtd.libvirtd_pid)
        os.makedirs(_ns_dir(self.table.run_dir), exist_ok=True)
        with open(os.path.join(_ns_dir(self.table.run_dir),
                               self.name + '.json'), 'w') as f:
            json.dump({'host': self.name, 'mnt_ns': self.mnt_ns,
                       'since': self.since,
                       'libvirt_dir': self.libvirt_dir}, f)

    def nsenter(self) -> list:
        """The command prefix that runs a program inside this host."""
        pid = self.libvirtd.libvirtd_pid
        if not libvirt_fx._alive(pid):
            raise procs.CloudError('compute host %s has no libvirtd running '
                                   '(pid %s): nothing to enter'
                                   % (self.name, pid))
        return ['nsenter', '--mount=/proc/%d/ns/mnt' % pid,
                '--uts=/proc/%d/ns/uts' % pid]

    def spawn(self, base: str, argv: list, **kwargs):
        """Start ``argv`` inside this host, recorded as ``BASE@HOST``."""
        return self.table.spawn(self.pname(base), self.nsenter() + argv,
                                **kwargs)

    # --- failure and stop ---

    def processes(self) -> list:
        """Every live process of this host (found by its namespace)."""
        if self.mnt_ns is None:
            return []
        return ns_members(self.mnt_ns, self.since, self._mark)

    def kill(self) -> float:
        """SIGKILL every process of the host at once, as a power cut
        would; the time (time.time()) of the first signal.

        The killed daemons' pid files go too (the process table's and
        libvirt's own, QEMU's included), so that nothing later signals
        a pid the system has given to someone else.
        """
        if self.mnt_ns is None:
            raise procs.CloudError('compute host %s was never started'
                                   % self.name)
        if self.killed_at is not None:
            raise procs.CloudError('compute host %s was already killed'
                                   % self.name)
        first = [p.pid for p in (self.table.process(self.pname(b)) for b in
                                 ('ha-snapshot-agent', 'nova-compute'))
                 if p is not None]
        t = time.time()
        kill_namespace(self.mnt_ns, self.since, first=first,
                       mark=self._mark)
        self.killed_at = t
        for name in self.names:
            self.table.stop(name, timeout=1)  # NOTE: reaps, drops pid file
        self._forget_libvirt_pids()
        return t

    def _forget_libvirt_pids(self) -> None:
        qemu_run = os.path.join(self.libvirtd.run_dir, 'qemu')
        paths = [self.libvirtd.libvirtd_pidfile,
                 self.libvirtd.virtlogd_pidfile]
        if os.path.isdir(qemu_run):
            paths += [os.path.join(qemu_run, n) for n in os.listdir(qemu_run)
                      if n.endswith('.pid')]
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.libvirtd.libvirtd_pid = self.libvirtd.virtlogd_pid = None

    def forget(self) -> None:
        """Let go of a killed host's (empty) namespace, to start it
        again."""
        if self.killed_at is None:
            raise procs.CloudError('compute host %s runs: kill it first'
                                   % self.name)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None
        self.mnt_ns = self.since = self.killed_at = None

    def stop_libvirtd(self) -> None:
        """Destroy the host's domains, stop its daemons, then kill what
        is left in its namespace (privsep daemons)."""
        if self.mnt_ns is None:
            return
        if self.killed_at is None:
            self.libvirtd.stop()
        kill_namespace(self.mnt_ns, self.since, mark=self._mark)
        if self._ns_fd is not None:
            os.close(self._ns_fd)
            self._ns_fd = None
        self.mnt_ns = None

    def state(self) -> dict:
        return {'libvirt_uri': self.libvirt_uri,
                'libvirt_dir': self.libvirt_dir,
                'instances_dir': self.instances_dir,
                'libvirtd_pid': self.libvirtd.libvirtd_pid,
                'mnt_ns': self.mnt_ns,
                'killed_at': self.killed_at}
