"""Configuration objects stay independent of each other."""

import testtools

from ha_snapshot.conf import opts
from ha_snapshot.tests import base


class ConfTestCase(testtools.TestCase):

    def test_overrides_do_not_leak_between_confs(self):
        a = base.make_conf('/a')
        b = base.make_conf('/b')
        a.set_override('keep_last', 1, group='retention')
        a.set_override('chunk_size', 1 << 20, group='storage')
        self.assertEqual(24, b.retention.keep_last)
        self.assertEqual(1 << 20, b.storage.chunk_size)
        self.assertEqual(('file:///a', 'file:///b'),
                         (a.storage.backend_url, b.storage.backend_url))

    def test_list_opts_names_every_group(self):
        groups = {g.name for g, _ in opts.list_opts()}
        self.assertTrue({'database', 'image', 'storage',
                         'retention'} <= groups)
