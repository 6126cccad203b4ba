"""The harness as a test fixture.

``CloudFixture`` starts a :class:`tools.cloud.cloud.Cloud` in the test
process and stops it at cleanup, whatever the test did; the tails of every
service's log are attached to the test (printed when it fails), and the
whole logs stay in ``cloud.log_dir``.
"""

import os

import fixtures
from testtools import content

from tools.cloud import cloud as cloud_mod
from tools.cloud import procs


class CloudFixture(fixtures.Fixture):
    def __init__(self, state_dir: str = cloud_mod.DEFAULT_STATE_DIR,
                 **kwargs):
        super().__init__()
        self.cloud = cloud_mod.Cloud(state_dir, **kwargs)

    def _setUp(self):
        self.addDetail('cloud-logs', content.Content(
            content.UTF8_TEXT, lambda: [log_tails(self.cloud).encode()]))
        self.cloud.start()
        self.addCleanup(self.cloud.stop)


def log_tails(cloud, lines: int = procs.TAIL_LINES) -> str:
    """The last lines of every log of ``cloud``'s run, one after another."""
    out = ['logs: %s' % cloud.log_dir]
    for top, dirs, files in sorted(os.walk(cloud.log_dir)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            out.append('--- %s ---\n%s' % (path, procs.tail(path, lines)))
    return '\n'.join(out)
