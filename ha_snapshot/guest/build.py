"""Build (or find in the cache) the test guest: kernel, initramfs, disk.

:func:`build` asks apt for the versions of the guest's Debian packages (the
cloud kernel, busybox-static, qemu-guest-agent and the libraries it loads),
and returns the images of those versions from the cache directory when they
are there; otherwise it fetches and unpacks the packages, writes the
initramfs (busybox, the virtio modules, qemu-ga, ``init.sh`` as /init) and
the bootable disk, and moves them into the cache in one rename. The cache
key covers the package versions, the host tools' versions, /init and the
layout, so a change of any of them builds anew.

May import the standard library, oslo.log, ha_snapshot.exception and
ha_snapshot.guest.*.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.guest import disk as disk_mod
from ha_snapshot.guest import initramfs
from ha_snapshot.guest import packages

LOG = logging.getLogger(__name__)

DEFAULT_CACHE = '/var/tmp/ha-snapshot-guest'
KERNEL = 'linux-image-cloud-amd64'
BUSYBOX = 'busybox-static'
AGENT = ('qemu-guest-agent', 'libc6', 'libglib2.0-0', 'libnuma1', 'libudev1',
         'liburing2', 'libpcre2-8-0')
SQLITE = ('sqlite3', 'libsqlite3-0', 'libreadline8', 'libtinfo6', 'zlib1g',
          'libc6')
# NOTE: the order insmod needs (no modprobe, no depmod in the guest).
MODULES = (('drivers/virtio', 'virtio_ring'), ('drivers/virtio', 'virtio'),
           ('drivers/virtio', 'virtio_pci_modern_dev'),
           ('drivers/virtio', 'virtio_pci_legacy_dev'),
           ('drivers/virtio', 'virtio_pci'), ('drivers/block', 'virtio_blk'),
           ('drivers/char', 'virtio_console'))
# NOTE: no_timer_check: under TCG on a busy host the kernel's check of the
# IO-APIC timer can fail and panic the boot (seen at load 36 on 2 cores).
CMDLINE = 'console=ttyS0 quiet panic=-1 no_timer_check'
LAYOUT = 2
"""Bump when what is built from the same packages changes."""
DATA2_MIB = 32
"""The second data disk's ext4 partition."""
INIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'init.sh')


@dataclasses.dataclass(frozen=True)
class GuestImage:
    directory: str
    kernel: str
    initrd: str
    disk: str
    """The bootable qcow2 disk (boots with ``ha.mode=workload``); use it
    as the backing file of each guest's own overlay."""
    key: str
    packages: dict
    cached: bool
    """Found in the cache (nothing fetched or built)."""
    seconds: float
    data_disk: str = ''
    """A second data disk (qcow2: an MBR, one ext4 partition, empty);
    a guest given an overlay of it as its second disk writes records to
    both (init.sh)."""

    def cmdline(self, mode: str = 'workload', records: int = 0,
                agent: bool = True) -> str:
        """The kernel command line of a ``-kernel`` boot: ``workload``
        (stop after ``records`` records, 0: never), or ``verify``;
        ``agent`` False: qemu-ga is not started."""
        line = '%s ha.mode=%s' % (CMDLINE, mode)
        if not agent:
            line += ' ha.agent=0'
        return line + (' ha.records=%d' % records if records else '')

    def sizes(self) -> dict:
        return {name: os.path.getsize(path) for name, path in (
            ('kernel', self.kernel), ('initrd', self.initrd),
            ('disk_qcow2', self.disk), ('data2_qcow2', self.data_disk))}


def _names(kernel_package: str, agent: bool, sqlite: bool) -> list:
    names = [kernel_package, BUSYBOX] + (list(AGENT) if agent else [])
    return list(dict.fromkeys(names + (list(SQLITE) if sqlite else [])))


def _versions(cache_dir: str, names: list) -> dict:
    """name -> Package (and 'kernel': the real kernel package), asked of
    apt once per state of its lists (see packages.apt_state)."""
    kernel_package = names[0]
    state = hashlib.sha256(json.dumps(
        [names, packages.apt_state()]).encode()).hexdigest()[:16]
    memo = os.path.join(cache_dir, 'versions', state + '.json')
    try:
        with open(memo) as f:
            return {k: packages.Package(*v) for k, v in json.load(f).items()}
    except (OSError, ValueError, TypeError):
        pass
    found = packages.candidates(names)
    meta = found[kernel_package]
    if 'linux-image-' in meta.depends:
        real = packages.depends_on(meta, 'linux-image-')
        found['kernel'] = packages.candidates([real])[real]
    else:
        found['kernel'] = meta
    os.makedirs(os.path.dirname(memo), exist_ok=True)
    tmp = '%s.%d.tmp' % (memo, os.getpid())
    with open(tmp, 'w') as f:
        json.dump({k: dataclasses.astuple(p) for k, p in found.items()}, f)
    os.replace(tmp, memo)
    return found


def _key(found: dict, names: list, boot_mib: int, data_mib: int) -> str:
    with open(INIT, 'rb') as f:
        init = f.read()
    material = {
        'layout': LAYOUT, 'names': names, 'boot_mib': boot_mib,
        'data_mib': data_mib, 'cmdline': CMDLINE,
        'init': hashlib.sha256(init).hexdigest(),
        'packages': sorted((p.name, p.version) for p in found.values()),
        'host': packages.host_versions(disk_mod.HOST_PACKAGES)}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()
                          ).hexdigest()[:16]


def _load(directory: str) -> GuestImage | None:
    try:
        with open(os.path.join(directory, 'manifest.json')) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return GuestImage(
        directory=directory, kernel=os.path.join(directory, 'vmlinuz'),
        initrd=os.path.join(directory, 'initrd.img'),
        disk=os.path.join(directory, 'disk.qcow2'),
        data_disk=os.path.join(directory, 'data2.qcow2'), key=manifest['key'],
        packages=manifest['packages'], cached=True, seconds=0.0)


def build(cache_dir: str | None = None, *, kernel_package: str = KERNEL,
          agent: bool = True, sqlite: bool = True, boot_mib: int = 40,
          data_mib: int = 64) -> GuestImage:
    """The guest images for the current package versions (see module)."""
    t0 = time.monotonic()
    cache_dir = os.path.abspath(cache_dir or DEFAULT_CACHE)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise exception.GuestImageError(
            reason='cannot use the cache directory %s: %s' % (cache_dir, e))
    disk_mod.check_tools()
    names = _names(kernel_package, agent, sqlite)
    found = _versions(cache_dir, names)
    key = _key(found, names, boot_mib, data_mib)
    final = os.path.join(cache_dir, 'images', key)
    image = _load(final)
    if image is not None:
        return dataclasses.replace(image, seconds=time.monotonic() - t0)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    debs = packages.download(
        [p for n, p in found.items() if n != kernel_package],
        os.path.join(cache_dir, 'debs'))
    staging = tempfile.mkdtemp(prefix='build-', dir=os.path.dirname(final))
    try:
        out = os.path.join(staging, 'out')
        os.mkdir(out)
        _assemble(found, debs, staging, out, agent, sqlite)
        disk_mod.make_disk(
            os.path.join(out, 'disk.qcow2'), staging,
            os.path.join(out, 'vmlinuz'), os.path.join(out, 'initrd.img'),
            '%s ha.mode=workload' % CMDLINE, boot_mib, data_mib)
        disk_mod.make_data_disk(os.path.join(out, 'data2.qcow2'), staging,
                                DATA2_MIB)
        versions = {p.name: p.version for p in found.values()}
        with open(os.path.join(out, 'manifest.json'), 'w') as f:
            json.dump({'key': key, 'packages': versions,
                       'built_seconds': round(time.monotonic() - t0, 3)},
                      f, indent=1, sort_keys=True)
        try:
            os.rename(out, final)
        except OSError:
            if _load(final) is None:  # NOTE: not a parallel build's result
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info('test guest %s built in %.1f s', key, time.monotonic() - t0)
    image = _load(final)
    return dataclasses.replace(image, cached=False,
                               seconds=time.monotonic() - t0)


def _assemble(found, debs, staging, out, agent, sqlite) -> None:
    kernel = found['kernel']
    release = kernel.name[len('linux-image-'):]
    kernel_files = ['./boot/vmlinuz-%s' % release] + [
        './lib/modules/%s/kernel/%s/%s.ko' % (release, subdir, module)
        for subdir, module in MODULES]
    roots = {}
    for name, deb in debs.items():
        roots[name] = packages.unpack(
            deb, os.path.join(staging, name),
            kernel_files if name == kernel.name else None)
    kroot = roots[kernel.name]
    vmlinuz = os.path.join(kroot, 'boot', 'vmlinuz-' + release)
    if not os.path.isfile(vmlinuz):
        raise exception.GuestImageError(
            reason='package %s %s has no boot/vmlinuz-%s' % (
                kernel.name, kernel.version, release))
    shutil.copyfile(vmlinuz, os.path.join(out, 'vmlinuz'))

    arc = initramfs.Archive()
    for d in ('dev', 'proc', 'sys', 'run', 'tmp', 'data', 'modules'):
        arc.directory(d)
    arc.char_device('dev/console', 5, 1)
    arc.copy('init', INIT, 0o755)
    busybox = os.path.join(roots[BUSYBOX], 'bin', 'busybox')
    arc.copy('bin/busybox', busybox, 0o755)
    applets = subprocess.run([busybox, '--list-full'], capture_output=True,
                             text=True, check=True, timeout=60).stdout
    for applet in applets.split():
        if os.path.basename(applet) != 'busybox':
            arc.symlink(applet, '/bin/busybox')
    for subdir, module in MODULES:
        path = os.path.join(kroot, 'lib', 'modules', release, 'kernel',
                            subdir, module + '.ko')
        if not os.path.isfile(path):
            raise exception.GuestImageError(
                reason='package %s has no %s (compressed modules are not '
                'handled)' % (kernel.name, os.path.relpath(path, kroot)))
        arc.copy('modules/%s.ko' % module, path, 0o644)
    programs = []
    if agent:
        programs.append(('qemu-guest-agent', 'usr/sbin/qemu-ga'))
    if sqlite:
        programs.append(('sqlite3', 'usr/bin/sqlite3'))
    for package, program in programs:
        path = os.path.join(roots[package], program)
        arc.copy(program, path, 0o755)
        libs = initramfs.needed_libraries(path, list(roots.values()))
        for soname, lib in libs.items():
            arc.copy('lib/x86_64-linux-gnu/' + soname, lib, 0o755)
    if programs:
        arc.symlink('lib64/ld-linux-x86-64.so.2',
                    '/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2')
    arc.write(os.path.join(out, 'initrd.img'))
