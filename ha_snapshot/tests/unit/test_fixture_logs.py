"""The log tails fixtures print when something they started fails."""

import os

from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import logs


class TailTest(base.TestCase):

    def test_last_lines_of_a_long_log(self):
        path = self.path('daemon.log')
        with open(path, 'w') as f:
            f.writelines('line %d\n' % i for i in range(10000))
        self.assertEqual('line 9997\nline 9998\nline 9999\n',
                         logs.tail(path, 3))

    def test_undecodable_bytes_do_not_hide_the_log(self):
        path = self.path('qemu.log')
        with open(path, 'wb') as f:
            f.write(b'start\n\xff\xfe broken\nlast\n')
        self.assertEqual('\ufffd\ufffd broken\nlast\n', logs.tail(path, 2))

    def test_missing_log_is_named(self):
        path = os.path.join(self.path(), 'never-written.log')
        text = logs.tail(path, 5)
        self.assertIn('(no log %s: ' % path, text)
        self.assertIn('No such file', text)
