"""Parsing OpenStack-API-Version."""

import testtools

from ha_snapshot.api import microversion


class MicroversionTestCase(testtools.TestCase):

    def test_parse(self):
        self.assertEqual((1, 0), microversion.parse_version_string('1.0'))
        self.assertEqual((1, 12), microversion.parse_version_string(' 1.12'))
        for bad in ('1', '1.', '01.0', '1.01', 'v1.0', '1.0.0', '', 'x.y'):
            self.assertRaises(ValueError,
                              microversion.parse_version_string, bad)

    def test_ordering(self):
        v = microversion.parse_version_string
        self.assertLess(v('1.9'), v('1.10'))
        self.assertTrue(v('1.5').matches(v('1.0'), v('1.5')))
        self.assertFalse(v('1.6').matches(v('1.0'), v('1.5')))

    def test_requested_picks_our_service(self):
        self.assertEqual('1.0', microversion.requested(
            {'OpenStack-API-Version': 'compute 2.1, ha-snapshot 1.0'}))
        self.assertIsNone(microversion.requested(
            {'OpenStack-API-Version': 'compute 2.1'}))
        self.assertIsNone(microversion.requested({}))

    def test_versions_are_ordered_and_unique(self):
        parsed = [microversion.parse_version_string(v)
                  for v in microversion.VERSIONS]
        self.assertEqual(sorted(set(parsed)), parsed)
