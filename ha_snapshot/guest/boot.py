"""Run the test guest under QEMU through the project's ``qemu`` driver.

:func:`spec` describes a guest as a :class:`VMSpec`: q35 under TCG (a real
guest dies under the nested /dev/kvm here), its disk as a virtio-blk device
(and a second data disk, if given, as another: the workload writes
records to both), a serial console on a unix socket (and a log file QEMU
writes beside it), the guest agent's virtio-serial port (the driver's
``agent_path``), and either a ``-kernel`` boot (the kernel command line
chooses workload or verify, and whether qemu-ga starts) or SeaBIOS booting
the disk.
:func:`start` starts it paused, connects the console, then lets the CPUs
run, so no console line is lost; the driver then snapshots it like any
VM.

May import the standard library, ha_snapshot.hypervisor.base and
ha_snapshot.guest.*.
"""

import dataclasses
import os

from ha_snapshot.guest import build
from ha_snapshot.guest import console as console_mod
from ha_snapshot.hypervisor import base as hv_base

AGENT_PORT = 'org.qemu.guest_agent.0'
MEMORY_MB = 256


@dataclasses.dataclass(frozen=True)
class GuestPaths:
    console: str
    console_log: str
    agent: str


def _opt(path: str) -> str:
    """A path inside a QEMU key=value option (',' is doubled)."""
    return os.path.abspath(path).replace(',', ',,')


def spec(image: build.GuestImage, name: str, workdir: str, disk: str, *,
         disk_format: str = 'qcow2', kernel_boot: bool = True,
         mode: str = 'workload', records: int = 0,
         memory_mb: int = MEMORY_MB, agent: bool = True,
         qemu_ga: bool = True, data_disk: str | None = None) -> tuple:
    """(VMSpec, GuestPaths) of a guest on ``disk`` (its own image: an
    overlay on ``image.disk`` or a copy of a recovered disk). ``agent``
    False: no guest agent port; ``qemu_ga`` False: the port is there but
    the guest starts no agent on it (a silent agent; ``-kernel`` boots
    only). ``data_disk``: a second data disk (qcow2: an overlay of
    ``image.data_disk`` or a copy of a recovered one), node ``disk1``,
    device ``vd1`` (the names a restart gives a second disk)."""
    paths = _paths(name, workdir)
    disks = (hv_base.DiskSpec(disk, format=disk_format, node='disk0',
                              device='vd0'),)
    if data_disk:
        disks += (hv_base.DiskSpec(data_disk, format='qcow2', node='disk1',
                                   device='vd1'),)
    args = ['-no-reboot', '-chardev', _console_chardev(paths),
            '-serial', 'chardev:serial0']
    if kernel_boot:
        args += ['-kernel', image.kernel, '-initrd', image.initrd,
                 '-append', image.cmdline(mode, records, agent=qemu_ga)]
    vm_spec = hv_base.VMSpec(
        name=name, machine='q35', accel='tcg', memory_mb=memory_mb,
        paused=True, disks=disks,
        agent_path=paths.agent if agent else None,
        qmp_path=os.path.join(workdir, '%s.qmp' % name),
        log_path=os.path.join(workdir, '%s.log' % name),
        pidfile=os.path.join(workdir, '%s.pid' % name),
        extra_args=tuple(args))
    return vm_spec, paths


def respec(vm_spec: hv_base.VMSpec, name: str, workdir: str,
           disk: str, *data_disks: str) -> tuple:
    """(VMSpec, GuestPaths): the guest of ``vm_spec`` (from :func:`spec`)
    as another VM on ``disk`` (and ``data_disks`` in place of its other
    disks, if it has any), with a console, agent port, QMP socket and
    files of its own under ``workdir`` (a resume beside the first run, a
    cold boot of the same disk)."""
    if len(data_disks) != len(vm_spec.disks) - 1:
        raise hv_base.HypervisorError(
            vm=vm_spec.name, reason='%d disks, %d paths given' % (
                len(vm_spec.disks), 1 + len(data_disks)))
    paths = _paths(name, workdir)
    args = list(vm_spec.extra_args)
    args[args.index('-chardev') + 1] = _console_chardev(paths)
    return dataclasses.replace(
        vm_spec, name=name, extra_args=tuple(args),
        disks=tuple(dataclasses.replace(d, path=path) for d, path in zip(
            vm_spec.disks, (disk,) + data_disks)),
        agent_path=paths.agent if vm_spec.agent_path else None,
        qmp_path=os.path.join(workdir, '%s.qmp' % name),
        log_path=os.path.join(workdir, '%s.log' % name),
        pidfile=os.path.join(workdir, '%s.pid' % name)), paths


def _paths(name: str, workdir: str) -> GuestPaths:
    return GuestPaths(
        console=os.path.join(workdir, '%s.console' % name),
        console_log=os.path.join(workdir, '%s.console.log' % name),
        agent=os.path.join(workdir, '%s.qga' % name))


def _console_chardev(paths: GuestPaths) -> str:
    return ('socket,id=serial0,path=%s,server=on,wait=off,logfile=%s'
            % (_opt(paths.console), _opt(paths.console_log)))


def start(driver, vm_spec: hv_base.VMSpec, paths: GuestPaths,
          timeout: float = 30.0) -> tuple:
    """Start the guest paused, connect its console, run it: (vm,
    console). On failure the VM is killed."""
    for path in (paths.console, paths.agent):
        if os.path.exists(path):
            os.unlink(path)
    vm = driver.start(vm_spec)
    console = console_mod.Console(paths.console, name=vm_spec.name)
    try:
        console.connect(timeout)
        driver.qmp(vm, 'cont')
    except BaseException:
        console.close()
        driver.kill(vm)
        raise
    return vm, console
