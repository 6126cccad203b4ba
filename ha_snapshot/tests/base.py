"""Test base classes and helpers shared by unit and functional tests.

Real qemu-img and qemu-io make every disk and overlay; nothing is mocked.
"""

import hashlib
import os
import subprocess
import sys
import time
import uuid

import fixtures
from oslo_config import cfg
import testtools

from ha_snapshot import conf as ha_conf
from ha_snapshot.storage import store as store_mod

KiB = 1024
MiB = 1024 * KiB


def qemu_img(*args: str) -> str:
    return subprocess.run(('qemu-img',) + args, check=True,
                          capture_output=True, text=True, timeout=120).stdout


def qemu_io(path: str, *commands: str, fmt: str = 'qcow2') -> None:
    """Run qemu-io commands; qemu-io reports some errors only in output."""
    args = ['qemu-io', '-f', fmt]
    for c in commands:
        args += ['-c', c]
    out = subprocess.run(args + [path], check=True, capture_output=True,
                         text=True, timeout=120)
    text = out.stdout + out.stderr
    if 'error' in text.lower() or 'failed' in text.lower():
        raise AssertionError('qemu-io %s: %s' % (commands, text))


def new_overlay(path: str, backing: str, backing_fmt: str = 'qcow2') -> str:
    qemu_img('create', '-q', '-f', 'qcow2', '-F', backing_fmt, '-b',
             os.path.abspath(backing), path)
    return path


def flatten(path: str, out: str, fmt: str = 'qcow2') -> str:
    """The guest view of ``path`` (with its chain) as a raw file."""
    qemu_img('convert', '-f', fmt, '-O', 'raw', path, out)
    return out


def same_image(a: str, b: str, fmt_a: str = 'raw', fmt_b: str = 'raw'):
    r = subprocess.run(['qemu-img', 'compare', '-q', '-f', fmt_a, '-F', fmt_b,
                        a, b], capture_output=True, text=True, timeout=120)
    return r.returncode == 0


def tree_digest(root: str) -> dict:
    """Path -> sha256 of every file under ``root`` (store snapshots)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        # NOTE: lock files are not data.
        dirs[:] = [d for d in dirs if d != '.locks']
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return out


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    """Poll ``predicate`` until it returns something true; return that.

    Fails the test naming ``what`` and the timeout when it does not come.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('timed out after %.0f s waiting for %s'
                                 % (timeout, what))
        time.sleep(poll)


def new_uuid() -> str:
    return str(uuid.uuid4())


def make_conf(store_dir: str, **overrides) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    conf([], project='ha-snapshot', default_config_files=[])
    conf.set_override('backend_url', 'file://' + store_dir, group='storage')
    for key, value in overrides.items():
        group, _, name = key.partition('__')
        conf.set_override(name, value, group=group)
    return conf


class FakeClock:
    """A clock for code that takes ``clock`` and ``sleep``: sleeping
    moves it on at once."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class TestCase(testtools.TestCase):

    # NOTE: a test that must run longer than OS_TEST_TIMEOUT (e.g. ten
    # real guests killed and recovered in a row) says so here.
    TEST_TIMEOUT = 0

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(
            max(int(os.environ.get('OS_TEST_TIMEOUT', 300)),
                self.TEST_TIMEOUT), gentle=True))
        self.tmp = self.useFixture(fixtures.TempDir(rootdir='/var/tmp')).path
        self.store_dir = os.path.join(self.tmp, 'store')

    def path(self, *names: str) -> str:
        return os.path.join(self.tmp, *names)

    def make_store(self, conf=None, **kwargs):
        conf = conf or make_conf(self.store_dir)
        self.conf = conf
        return store_mod.RecoveryStore.from_conf(conf, **kwargs)

    def manage(self, *args, ok=True):
        """Run ha-snapshot-manage with ``self.conf_file``, a real process."""
        r = subprocess.run(
            [sys.executable, '-m', 'ha_snapshot.cmd.manage', '--config-file',
             self.conf_file] + list(args),
            capture_output=True, text=True, timeout=300)
        if ok:
            self.assertEqual(0, r.returncode, r.stderr)
        return r

    def make_qcow2(self, name: str, size: int, *writes: str) -> str:
        path = self.path(name)
        qemu_img('create', '-q', '-f', 'qcow2', path, str(size))
        if writes:
            qemu_io(path, *writes)
        return path
