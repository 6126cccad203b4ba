"""The ``adaptive`` policy: keep the achieved RPO under [policy] rpo_target.

Terms (seconds and bytes):

* R, the RPO target. The achieved RPO of restore point k+1 is the age of
  the data of restore point k when k+1 becomes durable: the interval I
  between the two snapshots plus the shipping time S of delta k+1.
* w, the instance's write rate (bytes/s).
* B, the shipping throughput: EWMA(delta bytes) / EWMA(shipping seconds),
  latency included.
* S(I) = w * I / B, the expected shipping time of the delta of interval I.
* m, the safety margin: ``safety_margin`` * R plus twice the EWMA of the
  error of S (observed - predicted), at most R / 2.
* I_keep = (R - m) / (1 + w / B), the longest interval whose predicted RPO
  I + S(I) stays m under R (it solves I + w * I / B = R - m).
  I_limit = R / (1 + w / B), the longest whose predicted RPO is R.
  Both within [min_interval, R].

The rule, first match wins (f is ``backoff_factor``, I_prev the previous
decision):

1. Idle, w == 0, once a restore point is durable: I = min(max(I_prev,
   I_keep) * f, max_interval). An idle instance's snapshots are empty:
   there is nothing to lose by waiting, and the next decision after writes
   resume is back to rule 4. (Before its first restore point is durable
   the instance is not idle yet: a zero rate then comes from the moments
   between attaching and the baseline, too short to tell.) (Writes
   that resume during a stretched wait are exposed until it ends: an agent
   that watches block statistics may cut the wait short and ask again.)
2. Severe host overload that is ours to relieve: CPU >= ``host_cpu_severe``
   or I/O wait >= ``host_iowait_severe``, AND our share s of that load
   (below) >= ``host_own_share_severe``: I = min(max(I_prev, I_keep) * f_s,
   I_cap), f_s = 1 + (f - 1) * s, I_cap = min(I_keep *
   ``backoff_max_stretch``, max_interval) (at least I_limit). The host
   comes first: the RPO target is given up and the reason says so.
3. Host overload (CPU > ``host_cpu_high``, I/O wait > ``host_iowait_high``,
   the sampler's ``host_load_ok`` false, or a severe overload mostly
   someone else's): I = min(max(I_prev * f_s, I_keep), I_limit). The
   interval stretches only into the safety margin: the predicted RPO still
   meets the target.
4. Otherwise I = I_keep.

Our share s is what backing off can relieve: the agent's CPU time (its
process and the qemu-img processes it ran) over the busy host CPU time, or
for an I/O wait overload the agent's disk bytes over the host's, whichever
of the overloaded resources gives the larger; unknown (a sampler that does
not measure it) counts as 1, all ours. The host figures are averaged by
the sampler over ``host_window`` seconds, not taken from one instant.

The result is clamped to [min_interval, max_interval]. Until a first delta
has been shipped, or while w is unknown (no block statistics yet) or no
delta held data, the size of the next delta cannot be predicted: I_keep =
I_limit = min((R - m) / 2, R - m - EWMA(S)), EWMA(S) = 0 before any.

Why the proportional model S = w * I / B is enough: B is measured at the
current delta size, latency included, so at a steady write rate the fixed
point of the rule is the exact optimum (I + L + w * I / B_true = R - m for a
latency L); it is off only while the interval moves, and the margin's
error term covers that.
"""

from ha_snapshot import exception
from ha_snapshot.policy import base
from ha_snapshot.policy import metrics


class AdaptivePolicy(base.Policy):

    name = 'adaptive'

    def __init__(self, conf, instance_uuid):
        super().__init__(conf, instance_uuid)
        opts = conf.policy
        _check(opts.min_interval <= opts.rpo_target,
               '[policy] min_interval (%s) is above rpo_target (%s)'
               % (opts.min_interval, opts.rpo_target))
        _check(opts.max_interval >= opts.rpo_target,
               '[policy] max_interval (%s) is below rpo_target (%s)'
               % (opts.max_interval, opts.rpo_target))
        _check(opts.host_cpu_severe >= opts.host_cpu_high,
               '[policy] host_cpu_severe (%s) is below host_cpu_high (%s)'
               % (opts.host_cpu_severe, opts.host_cpu_high))
        _check(opts.host_iowait_severe >= opts.host_iowait_high,
               '[policy] host_iowait_severe (%s) is below host_iowait_high '
               '(%s)' % (opts.host_iowait_severe, opts.host_iowait_high))
        self._ship = None        # EWMA of shipping seconds
        self._delta = None       # EWMA of delta bytes
        self._error = 0.0        # EWMA of |observed - predicted| shipping
        self._predicted = None   # shipping predicted for the next delta
        self._last_seen = None   # the observation already counted
        self._interval = None    # the previous decision

    def decide(self, figures: metrics.Figures) -> base.Decision:
        opts = self.conf.policy
        self._observe(figures)
        w = figures.write_rate_bps
        margin = min(opts.safety_margin * opts.rpo_target
                     + 2.0 * self._error, opts.rpo_target / 2.0)
        keep, limit, throughput = self._bounds(w, margin)
        previous = self._interval or keep
        overload, load_text, share = self._overload(figures)
        idle = (w is not None and w <= 0
                and figures.last_durable_at is not None)
        interval, reason = self._rule(idle, overload, load_text, share,
                                      keep, limit, previous, throughput)
        interval = _clamp(interval, opts.min_interval, opts.max_interval)

        expected = self._expected_ship(interval, w, throughput)
        predicted_rpo = None if expected is None else interval + expected
        if (predicted_rpo is not None and predicted_rpo > opts.rpo_target
                and interval <= keep):
            reason += '; target unreachable even at min_interval'
        if throughput is not None and w is not None and w >= throughput:
            reason += '; writes outpace shipping'
        self._predicted = expected
        self._interval = interval

        inputs = figures.as_inputs()
        inputs.update({
            'rpo_target': opts.rpo_target,
            'rpo_now_seconds': _rpo_now(figures),
            'predicted_rpo_seconds': predicted_rpo,
            'expected_ship_seconds': expected,
            'ship_ewma_seconds': self._ship,
            'delta_ewma_bytes': self._delta,
            'throughput_bps': throughput,
            'ship_error_seconds': self._error,
            'safety_margin_seconds': margin,
            'interval_keep': keep,
            'interval_limit': limit,
            'previous_interval': previous,
            'overload': overload or 'none',
            'own_share': share,
        })
        return base.Decision(interval, reason, inputs)

    def _bounds(self, w, margin):
        """(I_keep, I_limit, B or None): see the module's docstring."""
        opts = self.conf.policy
        target = opts.rpo_target
        throughput = None
        if self._ship is None:
            keep = limit = (target - margin) / 2.0
        elif w is None or not self._delta:
            # NOTE: without a write rate the size of the next delta is a
            # guess; the latest shipping time may be a baseline's or an
            # empty delta's. Half the budget for this one cycle.
            keep = limit = min((target - margin) / 2.0,
                               target - margin - self._ship)
        else:
            throughput = self._delta / max(self._ship, 1e-6)
            ratio = 1.0 + w / throughput
            keep, limit = (target - margin) / ratio, target / ratio
        keep = _clamp(keep, opts.min_interval, target)
        return keep, _clamp(limit, keep, target), throughput

    def _rule(self, idle, overload, load_text, share, keep, limit,
              previous, throughput):
        """The four rules of the module's docstring, first match wins."""
        opts = self.conf.policy
        factor = opts.backoff_factor
        if idle:
            return (min(max(previous, keep) * factor, opts.max_interval),
                    'idle: no writes, stretching toward max_interval')
        # NOTE: snapshotting less often relieves the host of our part of
        # its load only: the stretch is in proportion to it.
        stretch = 1.0 + (factor - 1.0) * share
        ours = opts.host_own_share_severe / 100.0
        if overload == 'severe' and share >= ours:
            cap = max(min(keep * opts.backoff_max_stretch,
                          opts.max_interval), limit)
            return (min(max(previous, keep) * stretch, cap),
                    'severe host overload (%s): backing off, RPO target '
                    'given up' % load_text)
        if overload == 'severe':
            return (min(max(previous * stretch, keep), limit),
                    'severe host overload (%s), mostly not ours: backing '
                    'off within the RPO target' % load_text)
        if overload == 'moderate':
            return (min(max(previous * stretch, keep), limit),
                    'host overloaded (%s): backing off within the RPO '
                    'target' % load_text)
        if self._ship is None:
            return keep, 'no shipping measured yet: half the RPO target'
        if throughput is None:
            return keep, ('write rate or delta sizes unknown: half the RPO '
                          'target')
        return keep, 'keeping the RPO under target'

    def _observe(self, f: metrics.Figures) -> None:
        """Fold the latest shipped delta into the averages, once."""
        if f.last_ship_seconds is None or f.last_delta_bytes is None:
            return
        seen = (f.last_durable_at, f.last_delta_bytes, f.last_ship_seconds)
        if seen == self._last_seen:
            return
        self._last_seen = seen
        alpha = self.conf.policy.ewma_alpha
        ship = max(float(f.last_ship_seconds), 0.0)
        delta = max(float(f.last_delta_bytes), 0.0)
        if self._predicted is not None:
            self._error = _ewma(self._error, abs(ship - self._predicted),
                                alpha)
        self._ship = _ewma(self._ship, ship, alpha)
        self._delta = _ewma(self._delta, delta, alpha)

    def _expected_ship(self, interval, w, throughput):
        if self._ship is None:
            return None
        if throughput is None or w is None:
            return self._ship
        return w * interval / throughput

    def _overload(self, f: metrics.Figures):
        """(None | 'moderate' | 'severe', text for the log, our share).

        Our share (0 to 1) is that of the resources over their limits:
        CPU time for a CPU overload, disk bytes for an I/O wait overload
        (or a busy disk, load_ok false), the larger if both.
        """
        opts = self.conf.policy
        cpu, iowait = f.host_cpu_percent, f.host_iowait_percent
        if f.host_own_cpu_percent is None or cpu <= 0:
            cpu_share = None
        else:
            cpu_share = min(f.host_own_cpu_percent / cpu, 1.0)
        io_share = (None if f.host_own_io_percent is None
                    else f.host_own_io_percent / 100.0)
        severe_cpu = cpu >= opts.host_cpu_severe
        severe_io = iowait >= opts.host_iowait_severe
        if severe_cpu or severe_io:
            level, cpu_over, io_over = 'severe', severe_cpu, severe_io
        else:
            level = None
            cpu_over = cpu > opts.host_cpu_high
            io_over = iowait > opts.host_iowait_high or not f.host_load_ok
            if cpu_over or io_over:
                level = 'moderate'
        shares = [s for over, s in ((cpu_over, cpu_share),
                                    (io_over, io_share)) if over]
        # NOTE: a share we cannot measure is counted as all ours: the host
        # comes first when we cannot tell.
        share = (max(1.0 if s is None else s for s in shares) if shares
                 else 0.0)
        text = 'cpu %.0f%%, iowait %.0f%%, load %s' % (
            cpu, iowait, 'ok' if f.host_load_ok else 'high')
        if level:
            text += ', %s ours' % ('%.0f%%' % (100 * share)
                                   if None not in shares else 'all assumed')
        if f.host_window_seconds:
            text += ' over %.0f s' % f.host_window_seconds
        return level, text, share


def _check(ok: bool, reason: str) -> None:
    if not ok:
        raise exception.ConfigurationError(reason=reason)


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(value, high))


def _ewma(average: float | None, value: float, alpha: float) -> float:
    return value if average is None else alpha * value + (1 - alpha) * average


def _rpo_now(f: metrics.Figures) -> float | None:
    """Age of the newest durable restore point's data at ``f.now``."""
    if f.last_durable_at is None or f.last_ship_seconds is None:
        return None
    return f.now - (f.last_durable_at - f.last_ship_seconds)
