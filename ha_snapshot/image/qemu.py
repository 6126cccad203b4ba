"""qemu-img / qemu-io run through oslo.concurrency under prlimit.

Every call goes through :func:`run`, which applies the address-space and
CPU-time limits of ``[image]``. Untrusted qcow2 files are only ever named to
qemu through :func:`qcow2_nobacking`, a ``json:`` filename that sets a null
backing and a plain ``file`` protocol, so qemu never follows a name found in
the file's header.
"""

import json
import shutil

from oslo_concurrency import processutils
from oslo_log import log as logging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)


class Limits:
    """Resource limits for one qemu-img call, taken from ``[image]``."""

    def __init__(self, address_space: int, cpu_time: int):
        self.address_space = address_space
        self.cpu_time = cpu_time

    @classmethod
    def from_conf(cls, conf) -> 'Limits':
        return cls(conf.image.qemu_img_address_space,
                   conf.image.qemu_img_cpu_time)

    def prlimit(self) -> processutils.ProcessLimits:
        return processutils.ProcessLimits(address_space=self.address_space,
                                          cpu_time=self.cpu_time)

    def wrap(self, cmd: tuple) -> tuple:
        """``cmd`` under util-linux prlimit, or None without it.

        NOTE: oslo.concurrency's own prlimit starts a Python interpreter
        first (~50 ms of CPU per call); the agent runs qemu-img several
        times a cycle for every VM it protects.
        """
        if _PRLIMIT is None:
            return None
        return (_PRLIMIT, '--as=%d' % self.address_space,
                '--cpu=%d' % self.cpu_time, '--') + tuple(cmd)


DEFAULT_LIMITS = Limits(1 << 30, 120)
_PRLIMIT = shutil.which('prlimit')

# NOTE: glibc reserves 64 MiB of address space per malloc arena, one per
# thread up to 8 per core: a qemu-img convert whose I/O threads each got
# an arena ran out of the address-space limit ("qemu_thread_create:
# Resource temporarily unavailable", seen in CI restoring a real guest's
# disk under --as=1 GiB). Two arenas are plenty for qemu-img.
_ENV = {'LC_ALL': 'C', 'LANG': 'C', 'MALLOC_ARENA_MAX': '2'}


def run(path: str, *cmd: str, limits: Limits | None = None,
        ok_codes=(0,)) -> str:
    """Run qemu-img/qemu-io; failures name ``path`` and qemu's own words."""
    limits = limits or DEFAULT_LIMITS
    wrapped = limits.wrap(cmd)
    kwargs = {} if wrapped else {'prlimit': limits.prlimit()}
    try:
        out, _err = processutils.execute(
            *(wrapped or cmd), check_exit_code=list(ok_codes),
            env_variables=_ENV, **kwargs)
    except processutils.ProcessExecutionError as e:
        lines = ((e.stderr or '').strip() or (e.stdout or '').strip()
                 ).splitlines()
        raise exception.QemuImgError(
            path=path, reason=lines[-1] if lines
            else 'exit code %s, no message' % e.exit_code)
    except OSError as e:
        raise exception.QemuImgError(path=path, reason=str(e))
    return out


def qcow2_nobacking(path: str) -> str:
    """A qemu filename opening ``path`` as qcow2 with no backing at all."""
    return 'json:' + json.dumps({
        'driver': 'qcow2', 'backing': None,
        'file': {'driver': 'file', 'filename': path}})


def raw_file(path: str) -> str:
    return 'json:' + json.dumps({
        'driver': 'raw', 'file': {'driver': 'file', 'filename': path}})


def info(path: str, fmt: str, limits: Limits | None = None) -> dict:
    """``qemu-img info`` with the format forced (no probing).

    ``qemu-img info`` reads the header only; it does not open backing files.
    """
    out = run(path, 'qemu-img', 'info', '--output=json', '-f', fmt,
              '--', path, limits=limits)
    try:
        return json.loads(out)
    except ValueError as e:
        raise exception.QemuImgError(path=path,
                                     reason='unreadable info: %s' % e)


def check(path: str, limits: Limits | None = None) -> dict:
    """``qemu-img check`` of a qcow2 file alone (null backing).

    Exit 2 (corruptions) and 3 (leaked clusters) still print the report.
    """
    out = run(path, 'qemu-img', 'check', '--output=json',
              qcow2_nobacking(path), limits=limits, ok_codes=(0, 2, 3))
    try:
        return json.loads(out)
    except ValueError as e:
        raise exception.QemuImgError(path=path,
                                     reason='unreadable check: %s' % e)


def map_ranges(path: str, fmt: str, limits: Limits | None = None) -> list:
    """``qemu-img map --output=json`` of ``path`` alone (null backing)."""
    name = qcow2_nobacking(path) if fmt == 'qcow2' else raw_file(path)
    out = run(path, 'qemu-img', 'map', '--output=json', name, limits=limits)
    try:
        entries = json.loads(out)
    except ValueError as e:
        raise exception.QemuImgError(path=path,
                                     reason='unreadable map: %s' % e)
    if not isinstance(entries, list):
        raise exception.QemuImgError(path=path, reason='unexpected map')
    return entries


def convert_to_raw(path: str, fmt: str, out: str,
                   limits: Limits | None = None) -> None:
    """Convert ``path`` alone (null backing) to a sparse raw file."""
    name = qcow2_nobacking(path) if fmt == 'qcow2' else raw_file(path)
    run(path, 'qemu-img', 'convert', '-O', 'raw', '-S', '64k', name, out,
        limits=limits)


def chain_name(chain: list) -> str:
    """A qemu filename opening the chain ``[(path, format), ...]`` (top
    first) as given: every backing named here, none taken from a header."""
    node = None
    for path, fmt in reversed(chain):
        if fmt not in ('qcow2', 'raw'):
            raise exception.ImageError(path=path, reason='unsupported '
                                       'format %r in a chain' % fmt)
        opts = {'driver': fmt, 'file': {'driver': 'file', 'filename': path}}
        if fmt == 'qcow2':
            opts['backing'] = node
        elif node is not None:
            raise exception.ImageError(path=path, reason='a raw image '
                                       'cannot stand on a backing')
        node = opts
    return 'json:' + json.dumps(node)


def convert_chain_to_raw(chain: list, out: str,
                         limits: Limits | None = None) -> None:
    """The whole disk that the chain ``[(path, format), ...]`` (top first,
    see :func:`chain_name`) holds, as a sparse raw file. The images may be
    open in a QEMU that does not write them (frozen overlays, bases)."""
    run(chain[0][0], 'qemu-img', 'convert', '-U', '-O', 'raw', '-S', '64k',
        chain_name(chain), out, limits=limits)


def convert_raw_to_qcow2(path: str, out: str,
                         limits: Limits | None = None) -> None:
    run(path, 'qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', '-S', '64k',
        path, out, limits=limits)
