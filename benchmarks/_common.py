"""Shared helpers of the benchmark scripts (not a benchmark itself).

Every script under benchmarks/ prints progress on stderr and one JSON object
on the last line of stdout; ``--quick`` shrinks it to a CI smoke test and
``--workdir`` picks where its temporary directory goes (default /var/tmp,
a real disk: /tmp may be a tmpfs, where fsync costs nothing).

Disks are made with the real tools: a baseline is a sparse raw file filled
with ``os.pwrite``; an overlay is a qcow2 whose own clusters hold exactly the
given writes, made by ``qemu-img convert`` of a sparse raw scratch file (the
same cluster layout as guest writes through ``qemu-io``, but at disk speed
and with arbitrary, e.g. incompressible, data) and then pointed at its
backing file with ``qemu-img rebase -u`` (nothing is read from the backing).
Deltas are built and merged with the project's public code only.
"""

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import logging
import uuid

from oslo_config import cfg

from ha_snapshot import conf as ha_conf
from ha_snapshot.conf import storage as storage_conf
from ha_snapshot import delta as delta_mod
from ha_snapshot import delta_images
from ha_snapshot.image import inspect as image_inspect
from ha_snapshot.storage import store as store_mod

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_T0 = time.monotonic()

# NOTE: the format inspector warns on every overlay ("Safety check
# backing_file ... failed"), which inspect() accepts for overlays.
logging.getLogger('oslo_utils.imageutils.format_inspector').setLevel(
    logging.ERROR)


# --- command line, output ---------------------------------------------------

def parse_args(doc: str, add_arguments=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        epilog='Prints progress on stderr and one JSON object on the last '
               'line of stdout.')
    parser.add_argument('--quick', action='store_true',
                        help='Small sizes: a smoke test that ends well '
                             'under a minute.')
    parser.add_argument('--workdir', default='/var/tmp',
                        help='Parent directory of the temporary working '
                             'directory (default: %(default)s).')
    parser.add_argument('--seed', type=int, default=20240601,
                        help='Seed of the offsets and data generators.')
    if add_arguments:
        add_arguments(parser)
    return parser.parse_args()


def log(fmt: str, *args) -> None:
    msg = fmt % args if args else fmt
    print('[%7.1fs] %s' % (time.monotonic() - _T0, msg), file=sys.stderr,
          flush=True)


def _code_version() -> str:
    """``git describe`` of the code measured (ha_snapshot may be dirty)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(
            ['git', 'describe', '--always', '--dirty'], cwd=here,
            capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def emit(result: dict) -> None:
    """Print the result: one JSON object, the last line of stdout."""
    result.setdefault('elapsed_seconds', round(time.monotonic() - _T0, 2))
    result.setdefault('code_version', _code_version())
    sys.stdout.write(json.dumps(result, sort_keys=True) + '\n')
    sys.stdout.flush()


@contextlib.contextmanager
def workdir(args, name: str):
    """A fresh directory under ``--workdir``, removed at the end."""
    os.makedirs(args.workdir, exist_ok=True)
    path = tempfile.mkdtemp(prefix='ha-bench-%s-' % name, dir=args.workdir)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def guest_workdir(args, name: str):
    """What a benchmark on the real test guest starts from: a namespace of
    ``wd`` (a :func:`workdir`), ``short`` (a short directory for the
    guest's unix sockets, whose paths must be short), ``conf`` (with the
    hypervisor and agent options), ``driver`` (the ``qemu`` driver),
    ``image`` (the built test guest) and ``disk`` (a new overlay on its
    disk, in ``wd``). The guest itself is the caller's to boot
    (ha_snapshot.guest.boot) and to kill."""
    import types

    from ha_snapshot.conf import agent as agent_conf
    from ha_snapshot.conf import hypervisor as hypervisor_conf
    from ha_snapshot.guest import build
    from ha_snapshot.hypervisor import impl_qemu

    image = build.build(os.environ.get('HA_SNAPSHOT_GUEST_CACHE',
                                       build.DEFAULT_CACHE))
    with workdir(args, name) as wd, tempfile.TemporaryDirectory(
            prefix='hs-%s-' % name, dir='/tmp') as short:
        conf = make_conf(wd + '/store')
        hypervisor_conf.register_opts(conf)
        agent_conf.register_opts(conf)
        disk = os.path.join(wd, 'guest.qcow2')
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'qcow2',
            '-b', os.path.abspath(image.disk), disk)
        yield types.SimpleNamespace(
            wd=wd, short=short, conf=conf, image=image, disk=disk,
            driver=impl_qemu.QemuDriver(conf))


# --- timing -----------------------------------------------------------------

def timed(fn, *args, **kwargs):
    """(seconds, result) of one call."""
    t = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t, result


def median(values) -> float:
    return statistics.median(values)


def rnd(x: float, digits: int = 4) -> float:
    return round(x, digits)


def mb_per_s(nbytes: int, seconds: float) -> float:
    return round(nbytes / MiB / seconds, 1) if seconds > 0 else float('inf')


def sync() -> None:
    """Flush dirty pages so one measurement does not pay for another."""
    os.sync()


# --- configuration and store ------------------------------------------------

def manager_conf(work: str, connection: str) -> cfg.ConfigOpts:
    """A manager's options for a benchmark's own manager process: a file
    store, spool and the database ``connection`` under ``work``."""
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    conf.set_override('backend_url', 'file://' + os.path.join(work, 'store'),
                      group='storage')
    conf.set_override('connection', connection, group='database')
    conf.set_override('spool_dir', os.path.join(work, 'spool'),
                      group='manager')
    return conf


def write_master_key(path: str) -> str:
    """An [rpc_auth] master key file (0600) for daemons started apart:
    without one each process signs with its own ephemeral key and the
    others refuse its messages."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(secrets.token_hex(32) + '\n')
    return path


def manager_signer(conf):
    """What the benchmark process signs its casts to agents with: the
    manager's identity, from the config's master key."""
    from ha_snapshot import rpc_auth
    return rpc_auth.Signer(rpc_auth.MANAGER, rpc_auth.Keys.from_conf(conf))


def start_manager_child(script: str, work: str,
                        url: str) -> subprocess.Popen:
    """``python script --serve WORK --url URL``: a benchmark's manager
    endpoint in a child process, returned once it printed READY; its
    stderr in WORK/manager.log (shown if it did not start)."""
    log_path = os.path.join(work, 'manager.log')
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(script), '--serve', work,
         '--url', url], stdout=subprocess.PIPE,
        stderr=open(log_path, 'w'), text=True)
    if child.stdout.readline().strip() != 'READY':
        child.kill()
        child.wait()
        with open(log_path) as f:
            raise RuntimeError('the manager child did not start: %s'
                               % f.read()[-3000:])
    return child


def make_conf(store_dir: str, **storage_overrides) -> cfg.ConfigOpts:
    """A private ConfigOpts for one store.

    NOTE: [storage] overrides are cleared first: when option groups were
    registered as shared module-level OptGroup objects (oslo.config copies
    a group shallowly), an override set on one ConfigOpts showed in all of
    them. Build the store (``make_store`` reads the values) right away.
    """
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    for opt in storage_conf.OPTS:
        conf.clear_override(opt.name, group='storage')
    conf.set_override('backend_url', 'file://' + os.path.abspath(store_dir),
                      group='storage')
    for name, value in storage_overrides.items():
        conf.set_override(name, value, group='storage')
    return conf


def make_store(conf) -> store_mod.RecoveryStore:
    return store_mod.RecoveryStore.from_conf(conf)


def new_instance() -> str:
    return str(uuid.uuid4())


# --- data -------------------------------------------------------------------

def random_bytes(n: int) -> bytes:
    """Incompressible bytes (the kernel's generator is the fastest here)."""
    return os.urandom(n)


_WORDS = None


def text_bytes(n: int, rng: random.Random) -> bytes:
    """Compressible, log/text-like bytes: never-repeating lines of words.

    Lines of a timestamp, a level and random words from a 4,000-word
    vocabulary; zstd shrinks it about 3-4x, like logs and source text.
    """
    global _WORDS
    if _WORDS is None:
        wrng = random.Random(7)
        letters = 'abcdefghijklmnopqrstuvwxyz'
        _WORDS = [''.join(wrng.choices(letters, k=wrng.randint(2, 11)))
                  for _ in range(4000)]
    levels = ('INFO', 'DEBUG', 'WARNING', 'ERROR')
    out, size, ts = [], 0, 1700000000.0
    while size < n:
        ts += rng.random()
        line = '%.6f %s %s\n' % (ts, rng.choice(levels),
                                 ' '.join(rng.choices(_WORDS,
                                                      k=rng.randint(4, 18))))
        out.append(line)
        size += len(line)
    return ''.join(out).encode()[:n]


def data_of(kind: str, n: int, rng: random.Random) -> bytes:
    if kind == 'random':
        return random_bytes(n)
    if kind == 'text':
        return text_bytes(n, rng)
    raise ValueError(kind)


def scattered_offsets(rng: random.Random, count: int, length: int,
                      start: int, end: int) -> list:
    """``count`` distinct, non-overlapping, ``length``-aligned offsets."""
    slots = (end - start) // length
    if count > slots:
        raise ValueError('%d extents of %d bytes do not fit' % (count, length))
    return sorted(start + s * length for s in rng.sample(range(slots), count))


# --- disks ------------------------------------------------------------------

def run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError('%s failed (%d): %s' % (
            ' '.join(cmd), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def make_raw(path: str, size: int, writes=()) -> str:
    """A sparse raw disk of ``size`` bytes holding ``writes`` [(off, data)]."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, data in writes:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return os.path.abspath(path)


def make_overlay(path: str, backing: str, backing_fmt: str, size: int,
                 writes) -> str:
    """A qcow2 overlay on ``backing`` whose own clusters hold ``writes``.

    Offsets and lengths should be multiples of the 64 KiB cluster size (a
    partial-cluster write in a real overlay copies the rest of its cluster
    from the backing file; here it would hold zeros instead).
    """
    path = os.path.abspath(path)
    scratch = path + '.scratch.raw'
    try:
        make_raw(scratch, size, writes)
        run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    run('qemu-img', 'rebase', '-u', '-f', 'qcow2', '-F', backing_fmt,
        '-b', os.path.abspath(backing), path)
    return path


def qemu_io(path: str, fmt: str, *commands: str) -> None:
    """Run qemu-io commands (e.g. ``write -P 0x5a 0 1M``) on ``path``."""
    cmd = ['qemu-io', '-f', fmt]
    for c in commands:
        cmd += ['-c', c]
    run(*cmd, path)


# --- deltas -----------------------------------------------------------------

def inspect_whole(conf, path: str, fmt: str = 'raw'):
    return image_inspect.inspect(path, fmt,
                                 max_virtual_size=conf.image.max_virtual_size)


def inspect_overlay(conf, path: str):
    return image_inspect.inspect(path, 'qcow2',
                                 max_virtual_size=conf.image.max_virtual_size,
                                 allow_backing=True)


def build_delta(conf, info, *, instance: str, project: str = 'p',
                sequence: int = 0, parent: str | None = None):
    """The lazy delta of an inspected file (from_image)."""
    return delta_images.from_image(
        info, instance=instance, project=project, sequence=sequence,
        parent=parent, max_part_bytes=conf.image.max_part_bytes,
        max_part_extents=conf.image.max_part_extents,
        compression_level=conf.image.compression_level)


def materialize(delta):
    """The same delta with every part produced (read, compressed, hashed)."""
    return delta_mod.Delta(delta.header, parts=list(delta.parts()))


def wire_roundtrip(delta) -> tuple:
    """(received delta, serialised length): to_primitive/json/from_primitive.

    What the manager gets after oslo.messaging's JSON; the length is that
    of the JSON text (ASCII, so characters == bytes).
    """
    text = json.dumps(delta.to_primitive())
    return delta_mod.Delta.from_primitive(json.loads(text)), len(text)


def tree_bytes(path: str) -> tuple:
    """(files, apparent bytes) under ``path``, temporary files included."""
    files = size = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue
            files += 1
    return files, size


# --- percentiles, broker -----------------------------------------------------

def percentile(values, q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of a non-empty sequence."""
    import math
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]


@contextlib.contextmanager
def rabbitmq(root_dir: str | None = None):
    """A private RabbitMQ broker on loopback for the block; yields it.

    The test fixture (ha_snapshot.tests.fixtures.rabbitmq) is used as is:
    its ``transport_url`` is the broker's; cleanup stops it by pid.
    """
    from ha_snapshot.tests.fixtures import rabbitmq as rabbitmq_fixture
    broker = rabbitmq_fixture.RabbitMQServer(root_dir=root_dir)
    t = time.monotonic()
    broker.setUp()
    try:
        log('RabbitMQ up on port %d in %.1f s', broker.port,
            time.monotonic() - t)
        yield broker
    finally:
        broker.cleanUp()


def exit_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: cleanups (brokers, VMs) run."""
    import signal

    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


# --- CPU accounting -------------------------------------------------------

_BUSY_FIELDS = ('user', 'nice', 'system', 'irq', 'softirq', 'steal')


def cpu_of(procs) -> float:
    """CPU seconds (user + system) the psutil processes ``procs`` used so
    far; those gone since are left out."""
    import psutil
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def host_busy(before, after) -> float:
    """CPU seconds the whole host was busy between two psutil.cpu_times()
    readings (every core; stolen time counts as busy)."""
    return sum(getattr(after, f) - getattr(before, f) for f in _BUSY_FIELDS)
