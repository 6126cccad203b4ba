"""Which restore points to keep: the newest N, then thinning by age tiers.

Pure functions over (number, created_at) pairs; no I/O.
"""

import dataclasses

from ha_snapshot import exception

_UNITS = {'s': 1, 'm': 60, 'h': 3600, 'd': 86400, 'w': 604800}


def parse_duration(text: str) -> int:
    text = text.strip().lower()
    if text == '0':
        return 0
    try:
        if text[-1] in _UNITS:
            return int(text[:-1]) * _UNITS[text[-1]]
        return int(text)
    except (ValueError, IndexError):
        raise exception.ConfigurationError(
            reason='bad duration %r in [retention] age_tiers (use e.g. 90m, '
                   '1h, 7d)' % text)


@dataclasses.dataclass(frozen=True)
class Policy:
    keep_last: int
    tiers: tuple  # ((max_age_seconds, interval_seconds), ...) ascending

    @classmethod
    def from_conf(cls, conf) -> 'Policy':
        tiers = []
        for item in conf.retention.age_tiers:
            age, sep, interval = item.partition(':')
            if not sep:
                raise exception.ConfigurationError(
                    reason='[retention] age_tiers entry %r is not '
                           'AGE:INTERVAL' % item)
            tiers.append((parse_duration(age), parse_duration(interval)))
        if [t[0] for t in tiers] != sorted(t[0] for t in tiers):
            raise exception.ConfigurationError(
                reason='[retention] age_tiers must be in ascending age')
        return cls(conf.retention.keep_last, tuple(tiers))

    def keep(self, points, now: float) -> set:
        """Numbers to keep among ``points``: iterable of (number, created)."""
        ordered = sorted(points, key=lambda p: p[0], reverse=True)
        kept = {number for number, _ in ordered[:self.keep_last]}
        buckets = set()
        # NOTE: oldest first, so that the restore point kept for a bucket is
        # the oldest in it and does not change as newer ones arrive.
        for number, created in reversed(ordered):
            age = max(0.0, now - created)
            for tier_index, (max_age, interval) in enumerate(self.tiers):
                if age <= max_age:
                    if interval == 0:
                        kept.add(number)
                    else:
                        bucket = (tier_index, int(created // interval))
                        if bucket not in buckets:
                            buckets.add(bucket)
                            kept.add(number)
                    break
        return kept
