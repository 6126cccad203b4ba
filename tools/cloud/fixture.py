"""The harness as a test fixture.

``CloudFixture`` starts a :class:`tools.cloud.cloud.Cloud` in the test
process and stops it at cleanup, whatever the test did; the tails of every
service's log are attached to the test (printed when it fails), and the
whole logs stay in ``cloud.log_dir``.
"""

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
    import os
    out = ['logs: %s' % cloud.log_dir]
    try:
        names = sorted(os.listdir(cloud.log_dir))
    except OSError:
        return out[0]
    for name in names:
        path = os.path.join(cloud.log_dir, name)
        if os.path.isfile(path):
            out.append('--- %s ---\n%s' % (path, procs.tail(path, lines)))
    return '\n'.join(out)
