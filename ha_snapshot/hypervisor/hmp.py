"""Human monitor commands through QMP: qemu-io writes without a guest.

``human-monitor-command`` reports an HMP-level failure (unknown node,
read-only node, permission conflict) as a non-empty *return string*, not
as a QMP error. qemu-io's own messages, including "write failed: ...",
go to QEMU's stdout instead (QEMU 7.2): when the VM's log is known, the
lines QEMU wrote there during the command are checked too. Either text is
untrusted: it is cut short and control characters are escaped before it
goes into an exception.

May import the standard library and ha_snapshot.hypervisor.base only.
"""

import os
import re

from ha_snapshot.hypervisor import base

MAX_TEXT = 400
# qemu-io targets: a node name, or "-d" and a device's QOM path.
_TARGET = re.compile(r'^(-d /?[A-Za-z0-9_.\-/\[\]]{1,200}'
                     r'|[A-Za-z#][A-Za-z0-9_.\-]{0,63})$')
_QEMU_IO_CMD = re.compile(r'^[a-z]+( -?[A-Za-z0-9]+)*$')
_FAILURE = re.compile(r'(?i)\b(fail(ed|ure)?|error|not found|cannot)\b')


def sanitize(text: str, limit: int = MAX_TEXT) -> str:
    """One line of printable text, at most ``limit`` characters."""
    text = ' / '.join(line.strip() for line in str(text).splitlines()
                      if line.strip())
    out = ''.join(c if c.isprintable() else '\\x%02x' % ord(c)
                  if ord(c) < 256 else '\\u%04x' % ord(c) for c in text)
    if len(out) > limit:
        out = '%s... (%d more characters)' % (out[:limit], len(out) - limit)
    return out


def hmp(driver, vm, command_line: str) -> str:
    """Run one HMP command; a non-empty answer is its error."""
    out = driver.qmp(vm, 'human-monitor-command',
                     {'command-line': command_line})
    if not isinstance(out, str):
        raise base.HmpError(vm=vm.name, command=sanitize(command_line),
                            reason='unexpected answer %s' % sanitize(out))
    if out.strip():
        raise base.HmpError(vm=vm.name, command=sanitize(command_line),
                            reason=sanitize(out), output=out)
    return out


def qemu_io(driver, vm, target: str, command: str) -> None:
    """``qemu-io TARGET "COMMAND"`` in the VM; raises HmpError."""
    if not _TARGET.match(target) or not _QEMU_IO_CMD.match(command):
        raise base.HmpError(vm=vm.name, command='qemu-io',
                            reason='refusing target %s / command %s'
                            % (sanitize(target, 80), sanitize(command, 80)))
    line = 'qemu-io %s "%s"' % (target, command)
    log_size = _size(vm.log_path)
    hmp(driver, vm, line)
    if log_size is None:
        return
    said = _read_from(vm.log_path, log_size)
    if _FAILURE.search(said):
        raise base.HmpError(vm=vm.name, command=sanitize(line),
                            reason='qemu-io said: %s' % sanitize(said),
                            output=said)


def _size(path):
    try:
        return os.stat(path).st_size if path else None
    except OSError:
        return None


def _read_from(path, offset, limit=65536) -> str:
    try:
        with open(path, 'rb') as f:
            f.seek(offset)
            return f.read(limit).decode('utf-8', 'replace')
    except OSError:
        return ''
