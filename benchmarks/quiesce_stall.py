"""Guest-visible stall of a quiesced snapshot, against an unquiesced one.

Boots the real test guest (ha_snapshot/guest: a Linux kernel under TCG
appending fsync'ed records and printing ``DURABLE n`` on its serial
console) through the ``qemu`` driver, waits for its records to flow, then
takes 2 x 20 live snapshots (2 x 4 with --quick), quiesced (guest agent
freeze, snapshot, thaw) and unquiesced interleaved one by one, with the
commit of the previous frozen overlay after each (as the agent does) and a
pause between them.

* ``stall`` of one snapshot: the longest gap between two consecutive
  ``DURABLE`` console lines (stamped by the host as they arrive) whose
  interval overlaps the ``driver.snapshot()`` call: how long the guest's
  application saw its durable writes stop around that snapshot. A freeze
  blocks the guest's writes (the fsync waits for the thaw), the
  transaction pauses guest I/O briefly; between snapshots the gap is one
  record's fsync (``record_gap_p50_ms``, the baseline of the same run).
* ``quiesced_p50_ms``/``quiesced_p99_ms`` and ``unquiesced_p50_ms``/
  ``unquiesced_p99_ms``: nearest-rank percentiles of the stalls of each
  kind; ``frozen_p50_ms``/``frozen_p99_ms``: the freeze as the driver saw
  it (freeze sent to thaw answered); ``call_*``: the whole
  ``driver.snapshot()`` call. ``app_consistent``: quiesced snapshots that
  came out 'filesystem'.

Goal (issue 13): ``quiesced_p99_ms`` <= 100 under TCG. Measured, not
tuned: the guest is a TCG guest on a shared 2-core machine.
"""

import time

import _common as c

from ha_snapshot.guest import boot

GOAL_P99_MS = 100.0
BOOT_TIMEOUT = 120
PAUSE = 0.4
"""Seconds between two snapshots (records flow meanwhile)."""


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def stall(durable: list, t0: float, t1: float) -> float:
    """The longest gap between consecutive DURABLE lines (host wall time)
    overlapping [t0, t1]."""
    longest = 0.0
    for (_, a), (_, b) in zip(durable, durable[1:]):
        if b >= t0 and a <= t1:
            longest = max(longest, b - a)
    return longest


def main():
    def more(p):
        p.add_argument('--snapshots', type=int, default=None,
                       help='Snapshots of each kind (default 20, quick 4).')
    args = c.parse_args(__doc__, more)
    count = args.snapshots or (4 if args.quick else 20)
    with c.guest_workdir(args, 'quiesce') as g:
        driver = g.driver
        spec, paths = boot.spec(g.image, 'bench', g.short, g.disk)
        vm, console = boot.start(driver, spec, paths)
        try:
            console.wait_durable(20, BOOT_TIMEOUT)
            result = _measure(driver, vm, console, count)
        finally:
            console.close()
            driver.kill(vm)
    result.update({
        'benchmark': 'quiesce_stall', 'quick': args.quick,
        'snapshots_per_kind': count,
        'max_freeze_s': g.conf.agent.quiesce_max_freeze,
        'guest_packages': g.image.packages.get('linux-image-cloud-amd64'),
        'stall_definition': 'longest gap between consecutive DURABLE '
                            'console lines (host arrival time) overlapping '
                            'the snapshot call; nearest-rank percentiles',
        'goal': 'quiesced_p99_ms <= %g' % GOAL_P99_MS,
    })
    result['goal_met'] = result['quiesced_p99_ms'] <= GOAL_P99_MS
    c.emit(result)


def _measure(driver, vm, console, count) -> dict:
    stalls = {True: [], False: []}
    calls = {True: [], False: []}
    frozen, consistent = [], 0
    previous = None
    windows = []
    for i in range(2 * count):
        quiesce = i % 2 == 0
        time.sleep(PAUSE)
        n = console.durable[-1][0]
        t0 = time.time()
        snap = driver.snapshot(vm, quiesce=quiesce)
        t1 = time.time()
        windows.append((quiesce, t0, t1))
        calls[quiesce].append(t1 - t0)
        if quiesce:
            if snap.frozen_seconds is not None:
                frozen.append(snap.frozen_seconds)
            consistent += snap.consistency == 'filesystem'
        if previous is not None:
            driver.commit(vm, previous)
        previous = snap
        # NOTE: the gap after the call ends with the next record.
        console.wait_durable(n + 2, 60)
        c.log('%d/%d: %s snapshot, call %.1f ms', i + 1, 2 * count,
              'quiesced' if quiesce else 'unquiesced', (t1 - t0) * 1000)
    time.sleep(PAUSE)
    durable = list(console.durable)
    for quiesce, t0, t1 in windows:
        stalls[quiesce].append(stall(durable, t0, t1))
    # NOTE: the baseline: gaps between records away from any snapshot.
    gaps = [b - a for (_, a), (_, b) in zip(durable, durable[1:])
            if all(b < t0 - PAUSE / 4 or a > t1 + PAUSE / 4
                   for _, t0, t1 in windows)]
    pct = c.percentile
    out = {}
    for quiesce, name in ((True, 'quiesced'), (False, 'unquiesced')):
        out['%s_p50_ms' % name] = ms(pct(stalls[quiesce], 50))
        out['%s_p99_ms' % name] = ms(pct(stalls[quiesce], 99))
        out['%s_max_ms' % name] = ms(max(stalls[quiesce]))
        out['call_%s_p50_ms' % name] = ms(pct(calls[quiesce], 50))
    out['frozen_p50_ms'] = ms(pct(frozen, 50)) if frozen else None
    out['frozen_p99_ms'] = ms(pct(frozen, 99)) if frozen else None
    out['app_consistent'] = consistent
    out['record_gap_p50_ms'] = ms(pct(gaps, 50)) if gaps else None
    out['record_gap_p99_ms'] = ms(pct(gaps, 99)) if gaps else None
    return out


if __name__ == '__main__':
    main()
