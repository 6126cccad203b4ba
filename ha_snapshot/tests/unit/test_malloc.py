"""The daemons' C allocator: the arena cap and the trimmer (glibc).

Each measurement runs in a fresh Python process (what a daemon is), so
that the test runner's own heap does not blur it; every check has its
control (the same process without the setting) that shows the effect.
"""

import os
import subprocess
import sys
import textwrap
import threading

from oslo_config import cfg

from ha_snapshot import conf as ha_conf
from ha_snapshot import malloc
from ha_snapshot import service
from ha_snapshot.tests import base

# NOTE: a child that starts THREADS threads, each allocating (outside
# pymalloc) while all are alive, and prints how much address space the
# process reserved meanwhile: glibc reserves 64 MiB per arena.
ARENAS = textwrap.dedent('''
    import sys, threading
    from ha_snapshot import malloc
    if int(sys.argv[1]):
        assert malloc.limit_arenas(int(sys.argv[1]), environ={})
    threading.stack_size(256 * 1024)

    def vm_size():
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmSize:'):
                    return int(line.split()[1]) * 1024

    before = vm_size()
    held, barrier = [], threading.Barrier(13)

    def work():
        held.append([bytearray(4096) for _ in range(64)])
        barrier.wait()
        barrier.wait()
    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    barrier.wait()
    print(vm_size() - before)
    barrier.wait()
    for t in threads:
        t.join()
''')

# NOTE: a child that fills 64 MiB of the heap with 4 KiB blocks (malloc,
# not pymalloc), frees all of them but the last (which pins the top of the
# heap: free() alone gives nothing back), and prints its resident memory
# then and after the trim (or a second reading without it).
TRIM = textwrap.dedent('''
    import sys
    from ha_snapshot import malloc

    def rss():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * 4096

    blocks = [bytes(4096) for _ in range(16384)]
    pin = bytes(4096)
    del blocks
    freed = rss()
    if sys.argv[1] == 'trim':
        assert malloc.trim()
    print(freed, rss())
    del pin
''')

MiB = 1024 * 1024


def child(script: str, *args: str) -> list:
    env = dict(os.environ)
    env.pop('MALLOC_ARENA_MAX', None)
    env['PYTHONPATH'] = os.path.dirname(os.path.dirname(
        os.path.dirname(malloc.__file__)))
    out = subprocess.run([sys.executable, '-c', script, *args], env=env,
                         capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [int(v) for v in out.split()]


class ArenaLimitTest(base.TestCase):

    def test_threads_share_the_capped_arenas(self):
        [capped] = child(ARENAS, '2')
        [default] = child(ARENAS, '0')
        # NOTE: one arena besides the main one (64 MiB reserved), and the
        # threads' small stacks; glibc's default gives most threads one.
        self.assertLess(capped, 100 * MiB)
        self.assertGreater(default, 4 * 64 * MiB)

    def test_the_environment_wins(self):
        self.assertFalse(malloc.limit_arenas(
            2, environ={'MALLOC_ARENA_MAX': '4'}))

    def test_zero_keeps_the_default(self):
        self.assertFalse(malloc.limit_arenas(0, environ={}))


class TrimTest(base.TestCase):

    def test_trim_gives_freed_pages_back(self):
        freed, trimmed = child(TRIM, 'trim')
        freed0, kept = child(TRIM, 'keep')
        # NOTE: without the trim the 64 MiB freed stay resident.
        self.assertGreater(kept, freed0 - 8 * MiB)
        self.assertLess(trimmed, freed - 48 * MiB)

    def test_trimmer_runs_until_stopped(self):
        trimmer = malloc.Trimmer(0.01)
        self.assertTrue(trimmer.start())
        self.addCleanup(trimmer.stop)
        base.wait_for(lambda: trimmer.trims >= 3, 10, 'three trims')
        trimmer.stop()
        self.assertFalse(trimmer._thread.is_alive())
        count = trimmer.trims
        self.assertEqual(count, trimmer.trims)

    def test_no_interval_no_thread(self):
        before = threading.active_count()
        trimmer = malloc.Trimmer(0)
        self.assertFalse(trimmer.start())
        trimmer.stop()
        self.assertEqual(before, threading.active_count())

    def test_no_glibc_no_thread(self):
        trimmer = malloc.Trimmer(1)
        trimmer.lib = None
        self.assertFalse(trimmer.start())


class ServiceTest(base.TestCase):
    """service.run() trims while the daemon runs and stops the trimmer
    with it."""

    def test_run_trims_while_the_service_runs(self):
        conf = base.make_conf(self.store_dir,
                              malloc__trim_interval=1)
        seen = []

        class Daemon(service.Service):
            name = 'test-daemon'

            def start(self):
                seen.extend(t.name for t in threading.enumerate())
                # NOTE: as SIGTERM would: run() stops the service.
                os.kill(os.getpid(), 15)

            def stop(self):
                pass

        self.assertEqual(0, service.run(Daemon(), conf))
        self.assertIn('malloc-trim', seen)
        self.assertNotIn('malloc-trim',
                         [t.name for t in threading.enumerate()])

    def test_the_options_of_before_their_group_was_renamed_still_work(self):
        """[memory] malloc_arena_max / malloc_trim_interval (their first
        names) are read as [malloc] arena_max / trim_interval."""
        path = os.path.join(self.store_dir, 'old.conf')
        os.makedirs(self.store_dir, exist_ok=True)
        with open(path, 'w') as f:
            f.write('[memory]\nmalloc_arena_max = 5\n'
                    'malloc_trim_interval = 7\n')
        conf = cfg.ConfigOpts()
        ha_conf.register_opts(conf)
        conf(['--config-file', path], project='ha-snapshot',
             default_config_files=[])
        self.assertEqual((5, 7), (conf.malloc.arena_max,
                                  conf.malloc.trim_interval))
