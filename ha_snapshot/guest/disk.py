"""The test guest's bootable disk, made from files: no loop, nbd or mounts.

Layout (MBR): syslinux's ``mbr.bin`` in the first 440 bytes; partition 1,
FAT16, active, holding syslinux (``syslinux --install`` on the file system
image), the kernel, the initramfs and ``syslinux.cfg``; partition 2, Linux,
an ext4 file system made by ``mkfs.ext4`` on a file. Both file systems are
made as files and written into place; the whole is converted to qcow2.
SeaBIOS boots it; a ``-kernel`` boot uses the same disk for its data.
:func:`make_data_disk` makes the guest's second data disk the same way:
the MBR with one Linux partition holding an empty ext4 file system (the
recovered-disk check finds it as it finds the first disk's).

:func:`partitions` reads the table back (the recovered-disk check finds
the data partition by it).

May import the standard library, ha_snapshot.exception and
ha_snapshot.guest.packages only.
"""

import dataclasses
import os
import struct
import subprocess

from ha_snapshot import exception
from ha_snapshot.guest import packages

MiB = 1 << 20
SECTOR = 512
FIRST = MiB
HEADS, SECTORS = 64, 32
FAT16, LINUX = 0x06, 0x83
MBR_BIN = '/usr/lib/syslinux/mbr/mbr.bin'
DISK_ID = 0x48415347
TOOL_TIMEOUT = 300
HOST_PACKAGES = ('mtools', 'syslinux', 'syslinux-common', 'e2fsprogs',
                 'qemu-utils')


@dataclasses.dataclass(frozen=True)
class Partition:
    index: int
    type: int
    offset: int
    size: int
    bootable: bool


def _run(argv, what):
    env = dict(os.environ, LC_ALL='C', LANG='C', MTOOLS_SKIP_CHECK='1')
    r = subprocess.run(argv, capture_output=True, text=True, env=env,
                       timeout=TOOL_TIMEOUT)
    if r.returncode != 0:
        raise exception.GuestImageError(
            reason='%s failed (%s, exit %d): %s' % (
                what, ' '.join(argv), r.returncode,
                (r.stderr or r.stdout).strip()[-500:]))
    return r.stdout


def check_tools() -> None:
    for tool, package in (('mformat', 'mtools'), ('mcopy', 'mtools'),
                          ('syslinux', 'syslinux'),
                          ('mkfs.ext4', 'e2fsprogs'),
                          ('qemu-img', 'qemu-utils')):
        packages.require_tool(tool, package)
    if not os.path.isfile(MBR_BIN):
        raise exception.GuestToolMissing(tool=MBR_BIN,
                                         package='syslinux-common')


def _chs(lba: int) -> bytes:
    cylinder = lba // (HEADS * SECTORS)
    if cylinder > 1023:
        return b'\xfe\xff\xff'
    head = (lba // SECTORS) % HEADS
    sector = lba % SECTORS + 1
    return bytes((head, sector | ((cylinder >> 2) & 0xC0), cylinder & 0xFF))


def _entry(ptype: int, start: int, size: int, bootable: bool) -> bytes:
    first, count = start // SECTOR, size // SECTOR
    return (bytes((0x80 if bootable else 0,)) + _chs(first)
            + bytes((ptype,)) + _chs(first + count - 1)
            + struct.pack('<II', first, count))


def write_mbr(path: str, parts) -> None:
    """Boot code (syslinux's mbr.bin), disk id, the partition entries."""
    with open(MBR_BIN, 'rb') as f:
        code = f.read()
    if len(code) > 440:
        raise exception.GuestImageError(
            reason='%s is %d bytes, more than the 440 of an MBR'
            % (MBR_BIN, len(code)))
    table = b''.join(_entry(*p) for p in parts).ljust(64, b'\0')
    sector = (code.ljust(440, b'\0') + struct.pack('<IH', DISK_ID, 0)
              + table + b'\x55\xaa')
    with open(path, 'r+b') as f:
        f.write(sector)


def partitions(path: str) -> list:
    """The primary partitions of a raw disk image's MBR."""
    with open(path, 'rb') as f:
        sector = f.read(SECTOR)
    if len(sector) < SECTOR or sector[510:] != b'\x55\xaa':
        raise exception.GuestImageError(
            reason='%s has no MBR partition table' % path)
    out = []
    for i in range(4):
        e = sector[446 + 16 * i:462 + 16 * i]
        first, count = struct.unpack_from('<II', e, 8)
        if e[4] and count:
            out.append(Partition(i + 1, e[4], first * SECTOR, count * SECTOR,
                                 bool(e[0] & 0x80)))
    return out


def _place(src: str, dest: str, offset: int) -> None:
    """Write ``src`` into ``dest`` at ``offset``, skipping zero chunks."""
    chunk = 64 * 1024
    zero = bytes(chunk)
    with open(src, 'rb') as fin, open(dest, 'r+b') as fout:
        pos = 0
        while True:
            data = fin.read(chunk)
            if not data:
                break
            if data != zero[:len(data)]:
                fout.seek(offset + pos)
                fout.write(data)
            pos += len(data)


def syslinux_cfg(cmdline: str) -> str:
    return ('DEFAULT guest\nPROMPT 0\nTIMEOUT 0\nLABEL guest\n'
            '  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n'
            % cmdline)


def _ext4(path: str, size: int, label: str) -> None:
    with open(path, 'wb') as f:
        f.truncate(size)
    _run(['mkfs.ext4', '-q', '-F', '-L', label, '-b', '4096',
          '-E', 'lazy_itable_init=0,lazy_journal_init=0', path,
          '%dk' % (size // 1024)], 'mkfs.ext4')


def make_data_disk(out: str, workdir: str, data_mib: int = 32,
                   label: str = 'ha-data2') -> None:
    """A qcow2 data disk at ``out``: an MBR, one Linux partition from
    1 MiB holding an empty ext4 file system (scratch files in
    ``workdir``)."""
    check_tools()
    data_size = data_mib * MiB
    raw = os.path.join(workdir, 'data2.raw')
    data = os.path.join(workdir, 'data2.ext4')
    with open(raw, 'wb') as f:
        f.truncate(FIRST + data_size)
    write_mbr(raw, [(LINUX, FIRST, data_size, False)])
    _ext4(data, data_size, label)
    _place(data, raw, FIRST)
    _run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, out],
         'qemu-img convert')
    for path in (raw, data):
        os.unlink(path)


def make_disk(out: str, workdir: str, kernel: str, initrd: str,
              cmdline: str, boot_mib: int = 40, data_mib: int = 64) -> None:
    """The bootable qcow2 disk at ``out`` (scratch files in ``workdir``)."""
    check_tools()
    boot_size, data_size = boot_mib * MiB, data_mib * MiB
    raw = os.path.join(workdir, 'disk.raw')
    boot = os.path.join(workdir, 'boot.fat')
    data = os.path.join(workdir, 'data.ext4')
    cfg = os.path.join(workdir, 'syslinux.cfg')
    for path, size in ((raw, FIRST + boot_size + data_size),
                       (boot, boot_size)):
        with open(path, 'wb') as f:
            f.truncate(size)
    write_mbr(raw, [(FAT16, FIRST, boot_size, True),
                    (LINUX, FIRST + boot_size, data_size, False)])
    _run(['mformat', '-i', boot, '-v', 'GUESTBOOT', '-H',
          str(FIRST // SECTOR), '-T', str(boot_size // SECTOR),
          '-h', str(HEADS), '-s', str(SECTORS), '::'], 'mformat')
    _run(['syslinux', '--install', boot], 'syslinux')
    with open(cfg, 'w') as f:
        f.write(syslinux_cfg(cmdline))
    for src, name in ((kernel, 'vmlinuz'), (initrd, 'initrd.img'),
                      (cfg, 'syslinux.cfg')):
        _run(['mcopy', '-i', boot, src, '::/' + name], 'mcopy')
    _ext4(data, data_size, 'ha-data')
    _place(boot, raw, FIRST)
    _place(data, raw, FIRST + boot_size)
    _run(['qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, out],
         'qemu-img convert')
    for path in (raw, boot, data, cfg):
        os.unlink(path)
