"""The test guest's initramfs: a newc cpio archive, gzip'ed, written here.

:class:`Archive` collects directories, files, symlinks and device nodes
(owned by root, mtime 0: the same inputs give the same bytes, and no root
is needed for /dev/console) and writes the "newc" format the kernel reads.
:func:`needed_libraries` follows an ELF program's DT_NEEDED entries through
the unpacked packages, so that a dynamically linked program (qemu-ga)
carries exactly the libraries it loads; one missing from the packages is an
error naming it.

May import the standard library and ha_snapshot.exception only.
"""

import gzip
import os
import stat
import struct

from ha_snapshot import exception

TRAILER = 'TRAILER!!!'
LIB_DIRS = ('lib/x86_64-linux-gnu', 'usr/lib/x86_64-linux-gnu', 'lib64',
            'lib', 'usr/lib')
DT_NEEDED = 1
SHT_DYNAMIC = 6


class Archive:

    def __init__(self):
        self._entries = {}

    def _add(self, name, mode, data=b'', rdev=(0, 0)):
        name = name.strip('/')
        parent = os.path.dirname(name)
        if parent and parent not in self._entries:
            self.directory(parent)
        self._entries[name] = (mode, data, rdev)

    def directory(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def copy(self, name: str, source: str, mode: int | None = None) -> None:
        """A regular file with the contents of ``source`` (a symlink is
        followed)."""
        with open(source, 'rb') as f:
            data = f.read()
        if mode is None:
            mode = os.stat(source).st_mode & 0o777
        self.file(name, data, mode)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._add(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def names(self) -> list:
        return sorted(self._entries)

    def write(self, path: str, level: int = 6) -> int:
        """Write the gzip'ed archive; returns its size."""
        with open(path, 'wb') as raw:
            with gzip.GzipFile(filename='', fileobj=raw, mode='wb',
                               compresslevel=level,
                               mtime=0) as out:
                for ino, name in enumerate(sorted(self._entries), 1):
                    mode, data, rdev = self._entries[name]
                    nlink = 2 if stat.S_ISDIR(mode) else 1
                    _entry(out, ino, name, mode, nlink, data, rdev)
                _entry(out, 0, TRAILER, 0, 1, b'', (0, 0))
            return raw.tell()


def _entry(out, ino, name, mode, nlink, data, rdev):
    encoded = name.encode() + b'\0'
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
              len(encoded), 0)
    header = b'070701' + b''.join(b'%08X' % v for v in fields)
    out.write(header + encoded + _pad(len(header) + len(encoded)))
    out.write(data + _pad(len(data)))


def _pad(length: int) -> bytes:
    return b'\0' * (-length % 4)


def elf_needed(path: str) -> list:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF file."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        raise exception.GuestImageError(
            reason='%s is not a 64-bit little-endian ELF file' % path)
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum = struct.unpack_from('<HH', data, 0x3A)
    sections = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize)
                for i in range(shnum)]
    needed = []
    for sec in sections:
        if sec[1] != SHT_DYNAMIC:
            continue
        strtab = sections[sec[6]]
        str_off = strtab[4]
        for off in range(sec[4], sec[4] + sec[5], 16):
            tag, value = struct.unpack_from('<qQ', data, off)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                start = str_off + value
                needed.append(data[start:data.index(b'\0', start)].decode())
    return needed


def find_library(roots, soname: str) -> str | None:
    """The file (symlinks followed, never out of its root) of ``soname``
    in the unpacked packages."""
    for root in roots:
        top = os.path.realpath(root)
        for d in LIB_DIRS:
            path = os.path.realpath(os.path.join(root, d, soname))
            if path.startswith(top + os.sep) and os.path.isfile(path):
                return path
    return None


def needed_libraries(program: str, roots) -> dict:
    """soname -> path (in ``roots``, the unpacked packages) of every
    library ``program`` loads, directly or through another library."""
    found, todo = {}, list(elf_needed(program))
    while todo:
        soname = todo.pop()
        if soname in found:
            continue
        path = find_library(roots, soname)
        if path is None:
            raise exception.GuestImageError(
                reason='%s needs %s, which none of the unpacked packages '
                'holds: add the package that ships it'
                % (os.path.basename(program), soname))
        found[soname] = path
        todo.extend(elf_needed(path))
    return found
