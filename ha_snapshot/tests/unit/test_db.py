"""The database layer on sqlite (a temporary file), migrations included.

:class:`DatabaseTests` holds the test bodies; the functional tests run the
same bodies on a real PostgreSQL server (tests/functional/
test_db_postgresql.py). A subclass provides ``new_url()``: the URL of a
fresh, empty database.
"""

import contextlib
import datetime
import io
import json
import pprint
import sqlite3
import threading
import time

from alembic import autogenerate
from alembic import migration as alembic_migration
import fixtures
import sqlalchemy
from oslo_config import cfg
from oslo_db import exception as db_exc
import sqlalchemy as sa

from ha_snapshot import conf as ha_conf
from ha_snapshot.conf import database as db_conf
from ha_snapshot.db import api
from ha_snapshot.db import cli as db_cli
from ha_snapshot.db import engine as db_engine
from ha_snapshot.db import migration
from ha_snapshot.db import models
from ha_snapshot import exception
from ha_snapshot import importer
from ha_snapshot import statuses
from ha_snapshot.storage import objects
from ha_snapshot.storage import store as store_mod
from ha_snapshot.tests import base

MiB = base.MiB
T0 = 1_700_000_000.0


def make_rp(instance, number, sequence=None, parent=None, project='p1',
            created_at=None, rp_id=None):
    return objects.RestorePoint(
        id=rp_id or base.new_uuid(), instance=instance, project=project,
        scope='p-' + project, number=number, parent=parent,
        created_at=created_at or T0 + number, virtual_size=64 * MiB,
        chunk_size=MiB, chunks={0: 'a' * 64},
        delta_sequence=number - 1 if sequence is None else sequence,
        changed_bytes=number * 1000, new_chunks=number, new_bytes=number * MiB)


def race(n, func):
    """Run ``func`` in ``n`` threads released together; return outcomes."""
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def run(i):
        barrier.wait(timeout=30)
        try:
            outcomes[i] = func(i)
        except Exception as e:
            outcomes[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


class DatabaseTests:
    """Test bodies for every backend; mix into a base.TestCase."""

    def new_url(self) -> str:
        raise NotImplementedError

    def make_db_conf(self, url):
        conf = base.make_conf(self.store_dir, storage__chunk_size=MiB)
        db_conf.register_opts(conf)
        conf.set_override('connection', url, group='database')
        return conf

    def make_db(self, url=None, migrate=True):
        conf = self.make_db_conf(url or self.new_url())
        db = api.Database(conf, clock=lambda: self.now)
        self.addCleanup(db.dispose)
        if migrate:
            migration.upgrade(conf, 'head', database=db)
        return conf, db

    def setUp(self):
        super().setUp()
        self.now = T0
        self.db_url = self.new_url()
        self.db_conf, self.db = self.make_db(self.db_url)

    def protected(self, project='p1', host='h1', **kw):
        uuid = base.new_uuid()
        self.db.create_instance(uuid, project, host=host, status='protected',
                                **kw)
        return uuid

    # --- statuses as enums --------------------------------------------------

    def test_status_enums_stored_as_their_strings(self):
        Status = statuses.InstanceStatus
        uuid = base.new_uuid()
        self.db.create_instance(uuid, 'p1', host='h1',
                                status=Status.PROTECTING)
        row = self.db.update_instance_status(
            uuid, (Status.PROTECTING, Status.PAUSED), Status.PROTECTED)
        self.assertEqual(Status.PROTECTED, row.status)
        with self.db.engine.connect() as conn:
            raw = conn.execute(sa.text(
                'SELECT status FROM instances WHERE uuid = :u'),
                {'u': uuid}).scalar()
        self.assertIs(str, type(raw))
        self.assertEqual('protected', raw)
        self.assertEqual([uuid], [r.uuid for r in self.db.list_instances(
            status=[Status.PROTECTED])])
        rec = self.db.create_recovery(uuid, 'restart')
        self.assertEqual('requested', rec.state)
        rec = self.db.update_recovery(rec.id,
                                      state=statuses.RecoveryState.RUNNING)
        self.assertEqual(statuses.RecoveryState.RUNNING,
                         self.db.get_recovery(rec.id).state)
        self.assertEqual('running', json.loads(json.dumps(
            self.db.get_recovery(rec.id).state)))

    # --- migrations ---------------------------------------------------------

    def test_upgrade_to_head_from_empty_and_again(self):
        conf, db = self.make_db(migrate=False)
        self.assertIsNone(migration.version(conf, database=db))
        self.assertRaises(
            exception.DatabaseNotUpToDate, migration.check, conf,
                          database=db)
        head = migration.head()
        self.assertEqual(head, migration.upgrade(conf))
        self.assertEqual(head, migration.upgrade(conf, database=db))
        self.assertEqual(head, migration.version(conf, database=db))
        migration.check(conf, database=db)
        self.assertEqual(
            {'agents', 'alembic_version', 'host_failures', 'instances',
             'leases', 'managers', 'recoveries', 'restore_points'},
            set(sa.inspect(db.engine).get_table_names()))

    def _diff(self, metadata):
        with self.db.engine.connect() as conn:
            context = alembic_migration.MigrationContext.configure(
                conn, opts={'compare_type': True,
                            'compare_server_default': True})
            return autogenerate.compare_metadata(context, metadata)

    def test_models_and_migrations_in_sync(self):
        diff = self._diff(models.Base.metadata)
        self.assertEqual([], diff, 'models and migrations differ:\n'
                         + pprint.pformat(diff))
        # NOTE: alembic does not compare check constraints; names do.
        inspector = sa.inspect(self.db.engine)
        for table in models.Base.metadata.sorted_tables:
            expected = {c.name for c in table.constraints
                        if isinstance(c, sa.CheckConstraint)}
            actual = {c['name'] for c in
                      inspector.get_check_constraints(table.name)}
            self.assertEqual(expected, actual, table.name)

    def test_drift_is_detected(self):
        # The sync test must not pass vacuously: a column added to the
        # models and not to the migrations shows up.
        metadata = sa.MetaData()
        for table in models.Base.metadata.sorted_tables:
            table.to_metadata(metadata)
        sa.Table('instances', metadata, sa.Column('extra', sa.Integer),
                 extend_existing=True)
        diff = self._diff(metadata)
        self.assertEqual([('add_column', None, 'instances', 'extra')],
                         [(d[0], d[1], d[2], d[3].name) for d in diff])

    def test_check_constraints_enforced(self):
        uuid = self.protected()
        with self.db.engine.begin() as conn:
            # NOTE: MariaDB reports a failed CHECK as an OperationalError
            # (4025), the others as an IntegrityError: the constraint's
            # name is what they share.
            e = self.assertRaises(
                (sa.exc.DBAPIError, db_exc.DBError), conn.execute,
                sa.update(models.Instance.__table__)
                .where(models.Instance.uuid == uuid).values(status='bogus'))
        self.assertIn('ck_instances_status', str(e))

    # --- instances ----------------------------------------------------------

    def test_create_instance_is_idempotent(self):
        uuid = base.new_uuid()
        a = self.db.create_instance(uuid, 'p1', host='h1', policy='fixed',
                                    driver='libvirt')
        self.now += 10
        b = self.db.create_instance(uuid, 'p1', host='h2')
        self.assertEqual((a.uuid, 'h1', 'protecting', 'fixed', 'libvirt', 0),
                         (b.uuid, b.host, b.status, b.policy, b.driver,
                          b.recovery_attempts))
        self.assertEqual(db_engine.to_datetime(T0), b.created_at)
        self.assertEqual(1, len(self.db.list_instances()))
        e = self.assertRaises(
            exception.InstanceConflict, self.db.create_instance,
                              uuid, 'p2')
        self.assertIn('project p1', str(e))

    def test_create_instance_race(self):
        uuid = base.new_uuid()
        outcomes = race(6, lambda i: self.db.create_instance(uuid, 'p1'))
        self.assertEqual([uuid] * 6, [getattr(o, 'uuid', o)
                                      for o in outcomes])
        self.assertEqual(1, len(self.db.list_instances()))

    def test_unknown_instance(self):
        uuid = base.new_uuid()
        for call in (lambda: self.db.get_instance(uuid),
                     lambda: self.db.list_restore_points(uuid),
                     lambda: self.db.update_instance_status(
                         uuid, 'protected', 'recovering'),
                     lambda: self.db.mark_instance_deleted(uuid),
                     lambda: self.db.record_report(uuid, 'x'),
                     lambda: self.db.create_recovery(uuid, 'rebuild'),
                     lambda: self.db.record_restore_point(make_rp(uuid, 1))):
            e = self.assertRaises(
            exception.InstanceNotFound, call)
            self.assertIn(uuid, str(e))
            self.assertIn('not recorded in the database', str(e))

    def test_list_instances_filters(self):
        a = self.protected('p1', 'h1')
        b = self.protected('p1', 'h2')
        c = self.protected('p2', 'h1')
        d = self.protected('p2', 'h2')
        self.db.update_instance_status(c, 'protected', 'paused')
        self.db.mark_instance_deleted(d)

        def uuids(**kw):
            return {i.uuid for i in self.db.list_instances(**kw)}

        self.assertEqual({a, b, c}, uuids())
        self.assertEqual({a, b, c, d}, uuids(include_deleted=True))
        self.assertEqual({a, b}, uuids(project='p1'))
        self.assertEqual({a, c}, uuids(host='h1'))
        self.assertEqual({c}, uuids(project='p2', host='h1'))
        self.assertEqual({c}, uuids(status='paused'))
        self.assertEqual({d}, uuids(status='deleted'))
        self.assertEqual({a, b, d}, uuids(status=['protected', 'deleted']))
        self.assertEqual(set(), uuids(project='p3'))
        self.assertRaises(
            exception.InvalidStatus, self.db.list_instances,
                          status='bogus')

    def test_update_instance_and_report(self):
        uuid = self.protected(host='h1')
        self.now += 5
        i = self.db.update_instance(uuid, host='h9', driver='qemu')
        self.assertEqual(('h9', 'qemu', None), (i.host, i.driver, i.policy))
        i = self.db.record_report(uuid, 'guest agent silent')
        self.assertEqual('guest agent silent', i.last_report_reason)
        self.assertEqual(db_engine.to_datetime(T0 + 5), i.last_report_at)

    # --- the recovery state machine -----------------------------------------

    def test_status_transitions_compare_and_swap(self):
        uuid = self.protected()
        i = self.db.update_instance_status(uuid, 'protected', 'recovering',
                                           count_attempt=True,
                                           cooldown_until=T0 + 600)
        self.assertEqual(('recovering', 1), (i.status, i.recovery_attempts))
        self.assertEqual(db_engine.to_datetime(T0 + 600), i.cooldown_until)
        e = self.assertRaises(exception.InstanceStatusConflict,
                              self.db.update_instance_status, uuid,
                              'protected', 'recovering')
        self.assertIn('is recovering, not protected', str(e))
        self.assertEqual('recovering', e.kwargs['actual'])
        i = self.db.update_instance_status(uuid, 'recovering', 'protected')
        self.assertEqual(('protected', 1), (i.status, i.recovery_attempts))
        self.db.update_instance_status(uuid, 'protected', 'recovering',
                                       count_attempt=True)
        i = self.db.update_instance_status(uuid, ['recovering', 'paused'],
                                           'failed', cooldown_until=None)
        self.assertEqual(('failed', 2, None), (i.status, i.recovery_attempts,
                                               i.cooldown_until))
        i = self.db.update_instance_status(uuid, 'failed', 'protected',
                                           reset_attempts=True)
        self.assertEqual(0, i.recovery_attempts)
        self.assertRaises(
            exception.InvalidStatus, self.db.update_instance_status,
                          uuid, 'protected', 'exploded')
        self.assertRaises(
            exception.InvalidStatus, self.db.update_instance_status,
                          uuid, 'bogus', 'protected')

    def test_status_race_exactly_one_wins(self):
        # Two managers (two Database objects, own pools) and several
        # threads each race for protected -> recovering, five times over.
        _conf, other = self.make_db(self.db_url, migrate=False)
        databases = [self.db, other]
        for _round in range(5):
            uuid = self.protected()
            outcomes = race(8, lambda i: databases[i % 2]
                            .update_instance_status(uuid, 'protected',
                                                    'recovering',
                                                    count_attempt=True))
            won = [o for o in outcomes if isinstance(o, models.Instance)]
            lost = [o for o in outcomes
                    if isinstance(o, exception.InstanceStatusConflict)]
            self.assertEqual((1, 7), (len(won), len(lost)), outcomes)
            i = self.db.get_instance(uuid)
            self.assertEqual(('recovering', 1),
                             (i.status, i.recovery_attempts))

    def test_mark_instance_deleted(self):
        uuid = self.protected()
        self.now += 7
        i = self.db.mark_instance_deleted(uuid)
        self.assertEqual(('deleted', db_engine.to_datetime(T0 + 7)),
                         (i.status, i.deleted_at))
        self.now += 7
        i = self.db.mark_instance_deleted(uuid)
        self.assertEqual(db_engine.to_datetime(T0 + 7), i.deleted_at)
        self.assertRaises(exception.InstanceStatusConflict,
                          self.db.update_instance_status, uuid, 'protected',
                          'recovering')

    # --- restore points -----------------------------------------------------

    def test_record_restore_point_idempotent_and_newest(self):
        uuid = self.protected()
        rp1 = make_rp(uuid, 1)
        rp2 = make_rp(uuid, 2, parent=rp1.id)
        row = self.db.record_restore_point(rp1)
        self.assertEqual((rp1.id, 0, rp1.key, 64 * MiB, MiB),
                         (row.id, row.delta_sequence, row.manifest_key,
                          row.virtual_size, row.chunk_size))
        self.db.record_restore_point(rp2, taken_at=1700000000.125)
        again = self.db.record_restore_point(rp2)
        self.assertEqual(rp2.id, again.id)
        rows = self.db.list_restore_points(uuid)
        self.assertEqual([(rp1.id, 1, None), (rp2.id, 2, rp1.id)],
                         [(r.id, r.number, r.parent_id) for r in rows])
        # When the snapshot was taken: to the microsecond; unknown: null.
        self.assertEqual([None, db_engine.to_datetime(1700000000.125)],
                         [r.taken_at for r in rows])
        i = self.db.get_instance(uuid)
        self.assertEqual((rp2.id, db_engine.to_datetime(rp2.created_at), 1),
                         (i.newest_restore_point_id,
                          i.newest_restore_point_at, i.last_sequence))
        # An older one recorded late does not become the newest.
        rp0 = make_rp(uuid, 0, sequence=7)
        self.db.record_restore_point(rp0)
        i = self.db.get_instance(uuid)
        self.assertEqual((rp2.id, 7), (i.newest_restore_point_id,
                                       i.last_sequence))

    def test_record_restore_point_conflicts(self):
        uuid = self.protected()
        rp1 = make_rp(uuid, 1)
        self.db.record_restore_point(rp1)
        same_seq = make_rp(uuid, 2, sequence=rp1.delta_sequence)
        e = self.assertRaises(exception.RestorePointConflict,
                              self.db.record_restore_point, same_seq)
        self.assertIn('same delta sequence 0', str(e))
        same_number = make_rp(uuid, 1, sequence=5)
        e = self.assertRaises(exception.RestorePointConflict,
                              self.db.record_restore_point, same_number)
        self.assertIn('same number 1', str(e))
        other = self.protected()
        e = self.assertRaises(exception.RestorePointConflict,
                              self.db.record_restore_point,
                              make_rp(other, 1, rp_id=rp1.id))
        self.assertIn('same id', str(e))
        self.assertEqual(1, len(self.db.list_restore_points(uuid)))

    def test_record_restore_point_round_trips(self):
        """A new restore point is inserted without a search for the rows
        it could conflict with (the unique constraints refuse those); a
        replay costs the search, and answers the row recorded."""
        uuid = self.protected()
        rp1 = make_rp(uuid, 1)
        self.db.record_restore_point(rp1)
        statements = []

        def seen(_conn, _cursor, statement, *_args):
            statements.append(' '.join(statement.split()[:4]))
        sqlalchemy.event.listen(self.db.engine, 'before_cursor_execute',
                                seen)
        self.addCleanup(sqlalchemy.event.remove, self.db.engine,
                        'before_cursor_execute', seen)
        rp2 = make_rp(uuid, 2, parent=rp1.id)
        self.db.record_restore_point(rp2)
        points = [s for s in statements if 'restore_points' in s]
        self.assertEqual(2, len(points), statements)
        self.assertTrue(points[0].startswith('INSERT'), statements)
        statements.clear()
        self.assertEqual(rp2.id, self.db.record_restore_point(rp2).id)
        self.assertEqual(2, len(self.db.list_restore_points(uuid)))
        self.assertEqual(2, self.db.get_instance(uuid).merges)

    def test_record_restore_point_race(self):
        uuid = self.protected()
        rp = make_rp(uuid, 1)
        outcomes = race(6, lambda i: self.db.record_restore_point(rp))
        self.assertEqual([rp.id] * 6, [getattr(o, 'id', o) for o in outcomes])
        self.assertEqual(1, len(self.db.list_restore_points(uuid)))

    def test_record_restore_point_forgets_retained_in_one_transaction(self):
        uuid = self.protected()
        rps = [make_rp(uuid, n) for n in (1, 2, 3)]
        for rp in rps:
            self.db.record_restore_point(rp)
        commits = []
        sqlalchemy.event.listen(self.db.engine, 'commit',
                                lambda conn: commits.append(1))
        new = make_rp(uuid, 4)
        self.db.record_restore_point(new, forget=[rps[0].id])
        self.assertEqual(1, len(commits))
        self.assertEqual([r.id for r in rps[1:]] + [new.id],
                         [r.id for r in self.db.list_restore_points(uuid)])
        i = self.db.get_instance(uuid)
        self.assertEqual((new.id, 3), (i.newest_restore_point_id,
                                       i.last_sequence))
        # Refused (another restore point has its number): nothing is
        # forgotten either.
        clash = make_rp(uuid, 4, sequence=9)
        self.assertRaises(exception.RestorePointConflict,
                          self.db.record_restore_point, clash,
                          forget=[rps[1].id])
        self.assertEqual(3, len(self.db.list_restore_points(uuid)))
        # Recorded again (a lost ack): the same row; forgetting holds.
        self.assertEqual(new.id, self.db.record_restore_point(
            new, forget=[rps[1].id]).id)
        self.assertEqual([rps[2].id, new.id],
                         [r.id for r in self.db.list_restore_points(uuid)])

    def test_delete_restore_points_moves_newest(self):
        uuid = self.protected()
        rps = [make_rp(uuid, n) for n in (1, 2, 3)]
        for rp in rps:
            self.db.record_restore_point(rp)
        other = self.protected()
        kept = make_rp(other, 1)
        self.db.record_restore_point(kept)
        self.assertEqual(0, self.db.delete_restore_points([]))
        self.assertEqual(2, self.db.delete_restore_points(
            [rps[0].id, rps[2].id, base.new_uuid()]))
        self.assertEqual([rps[1].id], [r.id for r in
                                       self.db.list_restore_points(uuid)])
        i = self.db.get_instance(uuid)
        self.assertEqual((rps[1].id, 2), (i.newest_restore_point_id,
                                          i.last_sequence))
        self.db.delete_restore_points([rps[1].id])
        i = self.db.get_instance(uuid)
        self.assertEqual((None, None, 2),
                         (i.newest_restore_point_id,
                          i.newest_restore_point_at, i.last_sequence))
        self.assertEqual(kept.id,
                         self.db.get_instance(other).newest_restore_point_id)

    # --- recoveries and agents ----------------------------------------------

    def test_recovery_lifecycle(self):
        uuid = self.protected()
        self.db.update_instance_status(uuid, 'protected', 'recovering',
                                       count_attempt=True)
        r = self.db.create_recovery(uuid, 'rebuild', reason='alarm a1')
        self.assertEqual(('requested', 1, None), (r.state, r.attempt,
                                                  r.started_at))
        self.now += 1
        r = self.db.update_recovery(r.id, state='running', step='upload')
        started = db_engine.to_datetime(T0 + 1)
        self.assertEqual(('running', 'upload', started),
                         (r.state, r.step, r.started_at))
        self.now += 1
        r = self.db.update_recovery(r.id, state='running', step='rebuild',
                                    restore_point_id='rp')
        self.assertEqual(('rebuild', started, 'rp'),
                         (r.step, r.started_at, r.restore_point_id))
        self.now += 1
        r = self.db.update_recovery(r.id, state='succeeded')
        self.assertEqual(('succeeded', db_engine.to_datetime(T0 + 3)),
                         (r.state, r.finished_at))
        e = self.assertRaises(exception.RecoveryStateConflict,
                              self.db.update_recovery, r.id, state='failed')
        self.assertIn('is succeeded; it cannot become failed', str(e))
        self.assertRaises(
            exception.RecoveryStateConflict, self.db.update_recovery,
                          r.id, step='again')
        self.assertRaises(
            exception.RecoveryNotFound, self.db.update_recovery,
                          base.new_uuid(), state='running')
        self.assertRaises(
            exception.RecoveryNotFound, self.db.get_recovery,
                          base.new_uuid())
        self.assertRaises(
            exception.InvalidStatus, self.db.update_recovery, r.id,
                          state='done')
        r2 = self.db.create_recovery(uuid, 'restart', attempt=2)
        self.assertRaises(
            exception.RecoveryStateConflict, self.db.update_recovery,
                          r2.id, state='succeeded')
        self.db.update_recovery(r2.id, state='failed', error='boom')
        other = self.protected()
        self.db.create_recovery(other, 'rebuild')
        self.assertEqual([(r.id, 'succeeded'), (r2.id, 'failed')],
                         [(x.id, x.state)
                          for x in self.db.list_recoveries(uuid)])
        self.assertEqual(['boom'], [x.error for x in self.db.list_recoveries(
            uuid, state='failed')])
        self.assertEqual(1, len(self.db.list_recoveries(state='requested')))
        self.assertEqual(3, len(self.db.list_recoveries()))

    def test_recovery_start_race(self):
        r = self.db.create_recovery(self.protected(), 'rebuild')
        outcomes = race(6, lambda i: self.db.update_recovery(
            r.id, state='failed', error='worker %d' % i))
        won = [o for o in outcomes if isinstance(o, models.Recovery)]
        self.assertEqual(1, len(won), outcomes)
        self.assertEqual(won[0].error, self.db.get_recovery(r.id).error)

    def test_agents(self):
        self.db.record_agent('h2', '1.0')
        self.now += 30
        a = self.db.record_agent('h2', '1.1')
        self.assertEqual(('1.1', db_engine.to_datetime(T0),
                          db_engine.to_datetime(T0 + 30)),
                         (a.version, a.created_at, a.last_seen))
        self.db.record_agent('h1')
        self.assertEqual(['h1', 'h2'],
                         [a.host for a in self.db.list_agents()])

    def test_concurrent_writers_never_fail(self):
        # NOTE: two Database objects are two managers (or a manager and
        # the API): separate engines, separate locks.
        _conf, other = self.make_db(self.db_url, migrate=False)
        dbs = (self.db, other)
        instances = [self.protected() for _ in range(6)]
        per_thread = 15

        def work(i):
            db, inst = dbs[i % 2], instances[i]
            made = []
            for n in range(1, per_thread + 1):
                made.append(db.record_restore_point(make_rp(inst, n)).id)
                db.record_agent('host-%d' % (i % 3), '1.0')
                db.list_instances(host='h1')
                if n % 5 == 0:
                    # NOTE: retention of the oldest, as the manager does.
                    db.delete_restore_points(made[:2])
                    made = made[2:]
            return made

        outcomes = race(len(instances), work)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        self.assertEqual([], errors)
        for inst, kept in zip(instances, outcomes):
            row = self.db.get_instance(inst)
            self.assertEqual((per_thread, per_thread - 1),
                             (row.merges, row.last_sequence))
            self.assertEqual(kept, [r.id for r in
                                    self.db.list_restore_points(inst)])

    # --- rebuild from the store ---------------------------------------------

    def _store_with_two_instances(self):
        store = self.make_store(self.db_conf)
        a, b = base.new_uuid(), base.new_uuid()
        img = self.make_qcow2('a.qcow2', 4 * MiB, 'write -P 1 0 1M')
        o1 = base.new_overlay(self.path('a1.qcow2'), img)
        base.qemu_io(o1, 'write -P 2 1M 1M')
        o2 = base.new_overlay(self.path('a2.qcow2'), o1)
        base.qemu_io(o2, 'write -P 3 3M 64k')
        for path in (img, o1, o2):
            importer.import_file(self.db_conf, store, a, path, project='pa')
        importer.import_file(self.db_conf, store, b,
                             self.make_qcow2('b.qcow2', 2 * MiB,
                                             'write -P 9 0 64k'),
                             project='pb')
        return store, a, b

    def assertMatchesStore(self, store):
        instances = self.db.list_instances()
        self.assertEqual(sorted(store.instances()),
                         sorted(i.uuid for i in instances))
        for i in instances:
            points = store.restore_points(i.uuid)
            rows = self.db.list_restore_points(i.uuid)
            self.assertEqual(
                [(p.id, p.number, p.delta_sequence, p.parent,
                  p.virtual_size, p.chunk_size, p.changed_bytes,
                  p.new_chunks, p.new_bytes, p.key) for p in points],
                [(r.id, r.number, r.delta_sequence, r.parent_id,
                  r.virtual_size, r.chunk_size, r.changed_bytes,
                  r.new_chunks, r.new_bytes, r.manifest_key) for r in rows])
            for p, r in zip(points, rows):
                self.assertAlmostEqual(p.created_at,
                                       db_engine.to_timestamp(r.created_at),
                                       places=5)
            self.assertEqual(
                (points[-1].project, points[-1].id,
                 max(p.delta_sequence for p in points)),
                (i.project_id, i.newest_restore_point_id, i.last_sequence))

    def test_rebuild_from_store(self):
        store, a, b = self._store_with_two_instances()
        result = self.db.rebuild_from_store(store)
        self.assertEqual({'instances_created': 2,
                          'restore_points_recorded': 4,
                          'restore_points_removed': 0, 'failed': []}, result)
        self.assertMatchesStore(store)
        self.assertEqual({'protected'},
                         {i.status for i in self.db.list_instances()})
        # Twice changes nothing; rows the manager changed stay.
        self.db.update_instance_status(a, 'protected', 'paused')
        self.assertEqual({'instances_created': 0,
                          'restore_points_recorded': 0,
                          'restore_points_removed': 0, 'failed': []},
                         self.db.rebuild_from_store(store))
        self.assertEqual('paused', self.db.get_instance(a).status)
        # A restore point the store lost (retention while the database was
        # away) is forgotten; one the database missed is recorded.
        oldest = store.restore_points(a)[0]
        store.driver.delete(oldest.key)
        newest_b = store.restore_points(b)[-1]
        self.db.delete_restore_points([newest_b.id])
        self.assertEqual({'instances_created': 0,
                          'restore_points_recorded': 1,
                          'restore_points_removed': 1, 'failed': []},
                         self.db.rebuild_from_store(store))
        self.assertMatchesStore(store)

    def test_rebuild_reports_unreadable_instance(self):
        store, a, b = self._store_with_two_instances()
        newest = store.restore_points(b)[-1]
        store.driver.delete(newest.key)
        store.driver.put(newest.key, b'not a manifest')
        result = self.db.rebuild_from_store(store)
        self.assertEqual((1, 3), (result['instances_created'],
                                  result['restore_points_recorded']))
        self.assertEqual([b], [uuid for uuid, _reason in result['failed']])
        self.assertIn('unreadable manifest', result['failed'][0][1])
        self.assertEqual([a], [i.uuid for i in self.db.list_instances()])


class SqliteDatabaseTestCase(DatabaseTests, base.TestCase):

    def new_url(self) -> str:
        return 'sqlite:///' + self.path('db-%s.sqlite' % base.new_uuid())


class SqliteLockTestCase(base.TestCase):
    """Another process holding sqlite's write lock is waited for, then
    retried; never an error while it lets go in time."""

    def setUp(self):
        super().setUp()
        self.file = self.path('db.sqlite')
        self.conf = base.make_conf(self.store_dir)
        db_conf.register_opts(self.conf)
        self.conf.set_override('connection', 'sqlite:///' + self.file,
                               group='database')
        self.db = api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        migration.upgrade(self.conf, 'head', database=self.db)
        self.instance = base.new_uuid()
        self.db.create_instance(self.instance, 'p1', status='protected')

    def hold_lock(self, seconds):
        """Another connection (another process) holds the write lock for
        ``seconds``."""
        holder = sqlite3.connect(self.file, isolation_level=None,
                                 check_same_thread=False)
        self.addCleanup(holder.close)
        holder.execute('BEGIN IMMEDIATE')
        timer = threading.Timer(seconds, holder.execute, ('ROLLBACK',))
        timer.start()
        self.addCleanup(timer.join)
        self.addCleanup(timer.cancel)

    def test_wal_and_busy_timeout_on_every_connection(self):
        with self.db.engine.connect() as conn:
            self.assertEqual('wal', conn.exec_driver_sql(
                'PRAGMA journal_mode').scalar())
            self.assertEqual(60000, conn.exec_driver_sql(
                'PRAGMA busy_timeout').scalar())

    def test_connections_are_pooled_and_transactions_begin_each_time(self):
        # NOTE: oslo.db opened and closed the file for every transaction.
        self.assertIsInstance(self.db.engine.pool, sqlalchemy.pool.QueuePool)
        with self.db.engine.connect() as conn:
            first = conn.connection.dbapi_connection
        self.db.list_instances()
        with self.db.engine.connect() as conn:
            self.assertIs(first, conn.connection.dbapi_connection)
        # A read followed by writes on the same pooled connection: each
        # write still takes the write lock first (a transaction left
        # marked as begun would run its statements in autocommit).
        seen = []
        sqlalchemy.event.listen(
            self.db.engine, 'before_cursor_execute',
            lambda conn, cursor, statement, *a: seen.append(statement))
        for _ in range(3):
            self.db.list_instances()
            self.db.record_agent('h1', '1.0')
        self.assertEqual(3, seen.count('BEGIN IMMEDIATE'), seen)
        self.assertEqual(['h1'], [a.host for a in self.db.list_agents()])

    def test_pooled_connections_serve_many_threads_at_once(self):
        # More threads than the pool keeps: none waits for a connection
        # and none gets another thread's transaction.
        errors = []

        def work(n):
            try:
                for i in range(5):
                    self.db.record_agent('h%d' % n, str(i))
                    self.db.list_instances()
            except Exception as e:
                errors.append(e)
        threads = [threading.Thread(target=work, args=(n,))
                   for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual([], errors)
        self.assertEqual({'h%d' % n: '4' for n in range(12)},
                         {a.host: a.version for a in self.db.list_agents()})

    def test_lock_held_longer_than_sqlite_default_is_waited_for(self):
        # NOTE: pysqlite's own busy timeout is 5 s.
        self.hold_lock(6.0)
        started = time.monotonic()
        rp = self.db.record_restore_point(make_rp(self.instance, 1))
        self.assertGreater(time.monotonic() - started, 5.5)
        self.assertEqual(rp.id, self.db.get_instance(
            self.instance).newest_restore_point_id)

    def test_lock_past_the_busy_timeout_is_retried(self):
        self.conf.set_override('sqlite_busy_timeout', 0.1, group='database')
        db = api.Database(self.conf)
        self.addCleanup(db.dispose)
        self.hold_lock(1.0)
        db.record_agent('h1', '1.0')
        self.assertEqual(['h1'], [a.host for a in db.list_agents()])

    def test_lock_held_through_every_retry_is_named(self):
        self.conf.set_override('sqlite_busy_timeout', 0.1, group='database')
        db = api.Database(self.conf)
        self.addCleanup(db.dispose)
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.db.api.RETRY_FOR', 0.5))
        self.hold_lock(3.0)
        e = self.assertRaises(exception.DatabaseBusy, db.record_agent, 'h1')
        self.assertIn('database is locked', str(e))
        self.assertIn('try again', str(e))


class ConfigurationTestCase(base.TestCase):

    def test_default_connection_is_embedded_sqlite(self):
        conf = cfg.ConfigOpts()
        db_conf.register_opts(conf)
        conf([], default_config_files=[])
        self.assertEqual('sqlite:////var/lib/ha-snapshot/ha-snapshot.sqlite',
                         conf.database.connection)
        [(group, opts)] = db_conf.list_opts().items()
        self.assertEqual('database', group.name)
        self.assertEqual(db_conf.DEFAULT_CONNECTION,
                         {o.dest: o for o in opts}['connection'].default)

    def test_missing_sqlite_directory_is_named(self):
        conf = base.make_conf(self.store_dir)
        db_conf.register_opts(conf)
        conf.set_override('connection', 'sqlite:///' + self.path('no', 'x.db'),
                          group='database')
        e = self.assertRaises(
            exception.ConfigurationError, api.Database,
                              conf)
        self.assertIn('directory %s does not exist' % self.path('no'), str(e))

    def test_times_are_naive_utc(self):
        aware = datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.timezone(
            datetime.timedelta(hours=2)))
        self.assertEqual(datetime.datetime(2024, 1, 1, 10),
                         db_engine.to_datetime(aware))
        self.assertEqual(datetime.datetime(2023, 11, 14, 22, 13, 20),
                         db_engine.to_datetime(T0))
        self.assertEqual(T0, db_engine.to_timestamp(
            db_engine.to_datetime(T0)))


class CommandsTestCase(base.TestCase):
    """ha-snapshot-manage db ... handlers, parsed the way manage.py does."""

    def manage(self, *argv):
        conf = cfg.ConfigOpts()
        conf.register_cli_opt(cfg.SubCommandOpt(
            'category', handler=db_cli.add_command_parsers))
        ha_conf.register_opts(conf)
        db_conf.register_opts(conf)
        conf(list(argv), default_config_files=[])
        conf.set_override('backend_url', 'file://' + self.store_dir,
                          group='storage')
        conf.set_override('chunk_size', MiB, group='storage')
        conf.set_override('connection', 'sqlite:///' + self.path('m.db'),
                          group='database')
        self.conf = conf
        store = store_mod.RecoveryStore.from_conf(conf)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = conf.category.func(conf, store)
        return rc, out.getvalue().strip()

    def test_sync_version_rebuild(self):
        head = migration.head()
        self.assertEqual((0, 'empty (head %s)' % head),
                         self.manage('db', 'version'))
        e = self.assertRaises(
            exception.DatabaseNotUpToDate, self.manage, 'db',
                              'rebuild')
        self.assertIn('run "ha-snapshot-manage db sync"', str(e))
        self.assertEqual((0, head), self.manage('db', 'sync'))
        self.assertEqual((0, head), self.manage('db', 'sync'))
        self.assertEqual((0, '%s (head %s)' % (head, head)),
                         self.manage('db', 'version'))
        store = store_mod.RecoveryStore.from_conf(self.conf)
        uuid = base.new_uuid()
        importer.import_file(self.conf, store, uuid, self.make_qcow2(
            'a.qcow2', MiB, 'write -P 1 0 64k'))
        rc, out = self.manage('db', 'rebuild', '--status', 'paused')
        self.assertEqual(0, rc)
        self.assertEqual({'instances_created': 1, 'restore_points_recorded': 1,
                          'restore_points_removed': 0, 'failed': []},
                         json.loads(out))
        db = api.Database(self.conf)
        self.addCleanup(db.dispose)
        self.assertEqual('paused', db.get_instance(uuid).status)
