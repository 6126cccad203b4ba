"""Retention: keep_last and age tiers."""

import testtools

from ha_snapshot import exception
from ha_snapshot.storage import retention
from ha_snapshot.tests import base

H = 3600
D = 86400


class RetentionTestCase(testtools.TestCase):

    def policy(self, keep_last=24, tiers=('1h:0', '1d:1h', '7d:1d')):
        conf = base.make_conf('/nonexistent')
        conf.set_override('keep_last', keep_last, group='retention')
        conf.set_override('age_tiers', list(tiers), group='retention')
        return retention.Policy.from_conf(conf)

    def test_tiers(self):
        now = 100 * D
        # One restore point every 10 minutes for 10 days.
        points = [(n, now - (10 * D) + n * 600) for n in range(1, 1441)]
        keep = self.policy(keep_last=3).keep(points, now)
        ages = sorted(now - dict(points)[n] for n in keep)
        last_hour = [a for a in ages if a <= H]
        day = [a for a in ages if H < a <= D]
        week = [a for a in ages if D < a <= 7 * D]
        self.assertEqual(7, len(last_hour))          # every one: 0..60 min
        self.assertTrue(22 <= len(day) <= 24)         # one per hour
        self.assertTrue(6 <= len(week) <= 7)          # one per day
        self.assertFalse([a for a in ages if a > 7 * D])
        self.assertIn(1440, keep)

    def test_keep_last_wins_over_age(self):
        now = 1000 * D
        points = [(n, n * 60.0) for n in range(1, 41)]  # all ancient
        keep = self.policy().keep(points, now)
        self.assertEqual(set(range(17, 41)), keep)

    def test_stable_choice_per_bucket(self):
        now = 10 * D
        points = [(n, 5 * D + n * 60.0) for n in range(1, 30)]
        first = self.policy(keep_last=1).keep(points, now)
        more = points + [(30, 5 * D + 30 * 60.0)]
        second = self.policy(keep_last=1).keep(more, now)
        self.assertEqual(first - {29}, second - {30})

    def test_bad_tiers(self):
        self.assertRaises(exception.ConfigurationError, self.policy,
                          tiers=['1x:0'])
        self.assertRaises(exception.ConfigurationError, self.policy,
                          tiers=['1d'])
        self.assertRaises(exception.ConfigurationError, self.policy,
                          tiers=['1d:1h', '1h:0'])
