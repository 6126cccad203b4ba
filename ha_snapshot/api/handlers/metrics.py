"""GET /metrics: figures of every protected server and of every manager
replica, Prometheus text format.

Read from the manager's database at each scrape (no state in the API):

* ``ha_snapshot_rpo_seconds``: age of the newest restore point, the RPO
  achieved right now;
* ``ha_snapshot_restore_points``, ``ha_snapshot_restore_point_changed_bytes``
  and ``ha_snapshot_restore_point_new_bytes``: the restore points held now,
  the bytes their deltas shipped (changed) and added to the store (new);
  retention removes old restore points, so these go down too (gauges);
* ``ha_snapshot_merges_total``, ``ha_snapshot_shipped_bytes_total`` and
  ``ha_snapshot_stored_bytes_total``: every delta merged since the server
  was first recorded, the bytes it shipped and those it added to the store
  (counters: retention does not lower them);
* ``ha_snapshot_recoveries_total`` by state (``failed`` counts the failures)
  and ``ha_snapshot_recovery_attempts`` (failed attempts in a row);
* ``ha_snapshot_servers`` by status;
* ``ha_snapshot_restore_points_by_consistency`` (the held restore points
  by ``consistency``: ``crash`` or ``filesystem``, taken inside a guest
  file system freeze) and ``ha_snapshot_app_consistent_age_seconds``: age
  of the newest application-consistent (``filesystem``) restore point,
  absent while a server has none;
* ``ha_snapshot_restore_points_with_memory``: the held restore points that
  carry the VM's memory state (a restart from one resumes the guest).

Compute host failures (the host monitor's records):

* ``ha_snapshot_host_failures_open`` by host and state (1 per open
  record: a host failed and not back yet, or a partition, host ``*``);
* ``ha_snapshot_host_evacuations_total`` by state: the recoveries host
  evacuations started.

Per manager replica (an incarnation, labelled ``manager`` by its id and
``host``; manager.membership.survey, the same rules as GET /v1/managers):

* ``ha_snapshot_manager_up`` (1 alive, 0 dead by the heartbeat rule),
  ``ha_snapshot_manager_heartbeat_age_seconds``,
  ``ha_snapshot_manager_start_time_seconds``,
  ``ha_snapshot_manager_instances`` (protected servers it owns on the ring
  now) and ``ha_snapshot_manager_leases`` (held, not expired);
* ``ha_snapshot_manager_deltas_merged_total``,
  ``ha_snapshot_manager_shipped_bytes_total``,
  ``ha_snapshot_manager_stored_bytes_total`` and
  ``ha_snapshot_manager_recoveries_total`` by outcome: what it did since
  it registered, as of its last heartbeat (a restarted replica is a new
  series).
"""

import time

import prometheus_client
from prometheus_client import core as prom_core

from ha_snapshot.api import util
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import host_failures as db_failures
from ha_snapshot.db import models
from ha_snapshot.manager import membership
from ha_snapshot.manager import replica_counters as rc
from ha_snapshot.policies import metrics as metrics_policies
from ha_snapshot import statuses

# NOTE: what generate_latest() writes; Prometheus 2 and 3 both read it.
CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
LABELS = ['server', 'project']
MANAGER_LABELS = ['manager', 'host']
# NOTE: replica counter -> (metric, help); recoveries by outcome apart.
_REPLICA_COUNTERS = {
    rc.DELTAS_MERGED: ('ha_snapshot_manager_deltas_merged',
                       'Deltas this manager replica merged into restore '
                       'points since it registered.'),
    rc.SHIPPED_BYTES: ('ha_snapshot_manager_shipped_bytes',
                       'Bytes of changed ranges the deltas this replica '
                       'merged shipped.'),
    rc.STORED_BYTES: ('ha_snapshot_manager_stored_bytes',
                      'Bytes the deltas this replica merged added to the '
                      'store.'),
}
_RECOVERY_OUTCOMES = {'succeeded': rc.RECOVERIES_SUCCEEDED,
                      'failed': rc.RECOVERIES_FAILED}


class _Collector:
    """A one-scrape prometheus_client collector over database rows."""

    def __init__(self, conf, db, now):
        self.conf = conf
        self.db = db
        self.now = now

    def collect(self):
        rows = self.db.list_instances(include_deleted=False)
        totals = self.db.restore_point_totals()
        recoveries = self.db.recovery_counts()
        gauge = prom_core.GaugeMetricFamily
        servers = gauge('ha_snapshot_servers',
                        'Protected servers by status.', labels=['status'])
        by_status = {s: 0 for s in statuses.LIVE_INSTANCE_STATUSES}
        rpo = gauge('ha_snapshot_rpo_seconds',
                    'Age of the newest restore point (achieved RPO).',
                    labels=LABELS)
        points = gauge('ha_snapshot_restore_points',
                       'Restore points held.', labels=LABELS)
        changed = gauge('ha_snapshot_restore_point_changed_bytes',
                        'Bytes the deltas of the held restore points '
                        'shipped (changed ranges).', labels=LABELS)
        new = gauge('ha_snapshot_restore_point_new_bytes',
                    'Bytes the held restore points added to the store '
                    '(new chunks).', labels=LABELS)
        attempts = gauge('ha_snapshot_recovery_attempts',
                         'Failed recovery attempts in a row.', labels=LABELS)
        counter = prom_core.CounterMetricFamily
        merges = counter('ha_snapshot_merges',
                         'Deltas merged into restore points.', labels=LABELS)
        shipped = counter('ha_snapshot_shipped_bytes',
                          'Bytes of changed ranges the merged deltas '
                          'shipped.', labels=LABELS)
        stored = counter('ha_snapshot_stored_bytes',
                         'Bytes the merged deltas added to the store.',
                         labels=LABELS)
        recs = prom_core.CounterMetricFamily(
            'ha_snapshot_recoveries', 'Recoveries by state.',
            labels=LABELS + ['state'])
        kinds = self.db.restore_point_consistency()
        by_kind = gauge('ha_snapshot_restore_points_by_consistency',
                        'Restore points held, by consistency (crash, or '
                        'filesystem: taken inside a guest file system '
                        'freeze).', labels=LABELS + ['consistency'])
        app_age = gauge('ha_snapshot_app_consistent_age_seconds',
                        'Age of the newest application-consistent '
                        '(filesystem) restore point.', labels=LABELS)
        for row in rows:
            for kind in statuses.Consistency:
                held_kind, newest = kinds.get((row.uuid, kind), (0, None))
                by_kind.add_metric([row.uuid, row.project_id, kind],
                                   held_kind)
                if kind == statuses.Consistency.FILESYSTEM and held_kind:
                    app_age.add_metric([row.uuid, row.project_id],
                                       util.age(newest, self.now))
        memory = self.db.restore_point_memory()
        with_memory = gauge('ha_snapshot_restore_points_with_memory',
                            'Restore points held that carry the VM\'s '
                            'memory state.', labels=LABELS)
        for row in rows:
            with_memory.add_metric([row.uuid, row.project_id],
                                   memory.get(row.uuid, 0))
        for row in rows:
            by_status[row.status] = by_status.get(row.status, 0) + 1
            labels = [row.uuid, row.project_id]
            age = util.age(row.newest_restore_point_at, self.now)
            if age is not None:
                rpo.add_metric(labels, age)
            held, held_changed, held_new = totals.get(row.uuid, (0, 0, 0))
            points.add_metric(labels, held)
            changed.add_metric(labels, held_changed)
            new.add_metric(labels, held_new)
            attempts.add_metric(labels, row.recovery_attempts)
            merges.add_metric(labels, row.merges)
            shipped.add_metric(labels, row.shipped_bytes)
            stored.add_metric(labels, row.stored_bytes)
            for state in models.RECOVERY_STATES:
                recs.add_metric(labels + [state],
                                recoveries.get((row.uuid, state), 0))
        for status, n in by_status.items():
            servers.add_metric([status], n)
        yield from (servers, rpo, points, changed, new, merges, shipped,
                    stored, attempts, recs, by_kind, app_age, with_memory)
        yield from self._replicas([row.uuid for row in rows])
        yield from self._host_failures()

    def _host_failures(self):
        failures = db_failures.HostFailures(self.db)
        open_rows = prom_core.GaugeMetricFamily(
            'ha_snapshot_host_failures_open', 'Open compute host failure '
            'records (host * is a partition of the mirror network), by '
            'state.', labels=['host', 'state'])
        for row in failures.list(open_only=True):
            open_rows.add_metric([row.host, row.state], 1)
        evacuations = prom_core.CounterMetricFamily(
            'ha_snapshot_host_evacuations', 'Recoveries started by the '
            'evacuation of failed hosts, by state.', labels=['state'])
        counts = failures.evacuation_counts()
        for state in models.RECOVERY_STATES:
            evacuations.add_metric([state], counts.get(state, 0))
        yield from (open_rows, evacuations)

    def _replicas(self, instance_uuids):
        gauge = prom_core.GaugeMetricFamily
        up = gauge('ha_snapshot_manager_up',
                   'Whether the manager replica is alive (a heartbeat '
                   'within the dead limit).', labels=MANAGER_LABELS)
        age = gauge('ha_snapshot_manager_heartbeat_age_seconds',
                    'Age of the replica\'s last heartbeat by the '
                    'database\'s clock.', labels=MANAGER_LABELS)
        started = gauge('ha_snapshot_manager_start_time_seconds',
                        'When the replica registered (Unix time, by the '
                        'database\'s clock).', labels=MANAGER_LABELS)
        owned = gauge('ha_snapshot_manager_instances',
                      'Protected servers the replica owns on the hash '
                      'ring now.', labels=MANAGER_LABELS)
        leases = gauge('ha_snapshot_manager_leases',
                       'Leases on exclusive work the replica holds.',
                       labels=MANAGER_LABELS)
        counter = prom_core.CounterMetricFamily
        counts = {name: counter(metric, text, labels=MANAGER_LABELS)
                  for name, (metric, text) in _REPLICA_COUNTERS.items()}
        recs = counter('ha_snapshot_manager_recoveries',
                       'Recoveries this replica ran to their end since it '
                       'registered, by outcome.',
                       labels=MANAGER_LABELS + ['outcome'])
        for s in membership.survey(self.conf, self.db, instance_uuids):
            labels = [s.replica.id, s.replica.host]
            up.add_metric(labels, 1 if s.replica.alive else 0)
            age.add_metric(labels, s.replica.heartbeat_age)
            started.add_metric(
                labels, db_engine.to_timestamp(s.replica.started_at))
            owned.add_metric(labels, s.servers)
            leases.add_metric(labels, s.leases)
            for name, family in counts.items():
                family.add_metric(labels, s.counters[name])
            for outcome, name in _RECOVERY_OUTCOMES.items():
                recs.add_metric(labels + [outcome], s.counters[name])
        yield from (up, age, started, owned, leases, *counts.values(), recs)


@util.wsgify
def show_metrics(req):
    util.context(req).can(metrics_policies.SHOW)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    st = util.state(req)
    registry.register(_Collector(st.conf, st.db, time.time()))
    resp = req.response
    resp.status = 200
    resp.body = prometheus_client.generate_latest(registry)
    resp.headers['Content-Type'] = CONTENT_TYPE
    return resp
