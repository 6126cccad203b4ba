"""``ha-snapshot-manage db ...``: create, check and rebuild the database.

    ha-snapshot-manage db sync [--revision REV]
    ha-snapshot-manage db version
    ha-snapshot-manage db rebuild [--status STATUS]

ha_snapshot.cmd.manage wires these in with :func:`add_command_parsers`;
each handler takes ``(conf, store)`` like the other commands there and
returns the exit code.

May import ha_snapshot.db.
"""

import json

from ha_snapshot.db import api
from ha_snapshot.db import migration
from ha_snapshot import statuses


def db_sync(conf, store):
    print(migration.upgrade(conf, conf.category.revision))
    return 0


def db_version(conf, store):
    current = migration.version(conf)
    print('%s (head %s)' % (current or 'empty', migration.head()))
    return 0


def db_rebuild(conf, store):
    database = api.Database(conf)
    try:
        migration.check(conf, database=database)
        result = database.rebuild_from_store(store,
                                             status=conf.category.status)
    finally:
        database.dispose()
    print(json.dumps(result, sort_keys=True))
    return 1 if result['failed'] else 0


def add_command_parsers(subparsers) -> None:
    db = subparsers.add_parser('db', help='The manager\'s database.')
    sub = db.add_subparsers(dest='action')
    sub.required = True
    p = sub.add_parser('sync', help='Create or upgrade the schema (safe to '
                       'run again).')
    p.add_argument('--revision', default='head',
                   help='Target revision (default: head).')
    p.set_defaults(func=db_sync)
    p = sub.add_parser('version', help='Print the schema revision.')
    p.set_defaults(func=db_version)
    p = sub.add_parser('rebuild', help='Record every instance and restore '
                       'point the store holds; forget restore points it '
                       'no longer holds.')
    p.add_argument('--status', default=statuses.InstanceStatus.PROTECTED,
                   choices=statuses.INSTANCE_STATUSES,
                   help='Status of instances the database did not know '
                        '(default: protected).')
    p.set_defaults(func=db_rebuild)
