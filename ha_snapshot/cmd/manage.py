"""ha-snapshot-manage: offline tools for operators (nova-manage style).

    ha-snapshot-manage image import --instance UUID FILE
    ha-snapshot-manage image export --instance UUID [--restore-point ID]
                                    [--format raw|qcow2] [--disk NAME] OUT
    ha-snapshot-manage restore-point list --instance UUID [--json]
    ha-snapshot-manage store verify [--instance UUID]
    ha-snapshot-manage store gc
    ha-snapshot-manage db sync [--revision REV] | db version | db rebuild
    ha-snapshot-manage rpc-key generate | rpc-key derive (--host H | --api)

Exit codes: 0 success, 1 a failure reported on stderr in one line (or, for
``store verify``, one line per broken object), 2 a usage error.
"""

import datetime
import json
import sys

from oslo_config import cfg
from oslo_db import exception as db_exc
from oslo_log import log as logging

from ha_snapshot.cmd import rpc_key
from ha_snapshot import conf as ha_conf
from ha_snapshot.db import cli as db_cli
from ha_snapshot import exception
from ha_snapshot import importer
from ha_snapshot.image import qemu
from ha_snapshot.storage import store as store_mod


def image_import(conf, store):
    rp = importer.import_file(conf, store, conf.category.instance,
                              conf.category.file,
                              project=conf.category.project)
    print(rp.id)
    return 0


def image_export(conf, store):
    rp = store.export(conf.category.instance, conf.category.out,
                      rp_id=conf.category.restore_point,
                      fmt=conf.category.format,
                      limits=qemu.Limits.from_conf(conf),
                      disk=conf.category.disk)
    print(rp.id)
    return 0


def restore_point_list(conf, store):
    points = store.restore_points(conf.category.instance)
    if not points:
        raise exception.InstanceNotFound(instance=conf.category.instance)
    if conf.category.json:
        print(json.dumps([p.summary() for p in points], indent=2))
        return 0
    print('%-36s %6s %-20s %14s %8s' % ('id', 'number', 'created',
                                        'changed_bytes', 'chunks'))
    for p in points:
        created = datetime.datetime.fromtimestamp(
            p.created_at, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')
        print('%-36s %6d %-20s %14d %8d' % (p.id, p.number, created,
                                            p.changed_bytes, len(p.chunks)))
    return 0


def store_verify(conf, store):
    broken = store.verify(conf.category.instance)
    for key, reason in broken:
        print('BROKEN %s: %s' % (key, reason), file=sys.stderr)
    if broken:
        return 1
    print('store %s: OK' % store.driver.describe())
    return 0


def store_gc(conf, store):
    result = store.gc()
    print(json.dumps(result, sort_keys=True))
    return 0


def _instance_arg(parser, required=True):
    parser.add_argument('--instance', required=required, metavar='UUID',
                        help='Instance (server) UUID.')


def add_command_parsers(subparsers):
    image = subparsers.add_parser('image', help='Import and export images.')
    sub = image.add_subparsers(dest='action')
    sub.required = True
    p = sub.add_parser('import', help='Import a baseline image or an '
                       'overlay as a new restore point.')
    _instance_arg(p)
    p.add_argument('--project', help='Owning project of a new instance '
                   '(default: the instance\'s own, else "default").')
    p.add_argument('file', metavar='FILE')
    p.set_defaults(func=image_import)
    p = sub.add_parser('export', help='Export a restore point to a file.')
    _instance_arg(p)
    p.add_argument('--restore-point', metavar='ID',
                   help='Restore point id (default: the newest).')
    p.add_argument('--format', choices=('raw', 'qcow2'), default='raw')
    p.add_argument('--disk', metavar='NAME',
                   help='One disk of the point: its target (vdb) or '
                        '"root" (default: the whole point; every disk of '
                        'a multi-disk point in its concatenated space).')
    p.add_argument('out', metavar='OUT')
    p.set_defaults(func=image_export)

    rp = subparsers.add_parser('restore-point', help='Restore points.')
    sub = rp.add_subparsers(dest='action')
    sub.required = True
    p = sub.add_parser('list', help='List the restore points of an instance.')
    _instance_arg(p)
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=restore_point_list)

    st = subparsers.add_parser('store', help='Check and clean the store.')
    sub = st.add_subparsers(dest='action')
    sub.required = True
    p = sub.add_parser('verify', help='Re-hash chunks and check manifests.')
    _instance_arg(p, required=False)
    p.set_defaults(func=store_verify)
    p = sub.add_parser('gc', help='Apply retention, remove unreferenced '
                       'chunks and leftovers of interrupted writes.')
    p.set_defaults(func=store_gc)
    db_cli.add_command_parsers(subparsers)
    rpc_key.add_command_parsers(subparsers)


def main(argv=None) -> int:
    conf = cfg.ConfigOpts()
    conf.register_cli_opt(cfg.SubCommandOpt(
        'category', title='Command categories', handler=add_command_parsers))
    ha_conf.register_opts(conf)
    logging.register_options(conf)
    # NOTE: stdout carries results (ids, JSON); logs go to stderr.
    conf.set_default('use_stderr', True)
    try:
        conf(sys.argv[1:] if argv is None else argv, project='ha-snapshot',
             prog='ha-snapshot-manage')
    except cfg.Error as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 2
    if not conf.debug:
        logging.set_defaults(default_log_levels=(
            logging.get_default_log_levels() + [
                'ha_snapshot=WARN', 'oslo_concurrency=WARN',
                'oslo_utils.imageutils.format_inspector=ERROR']))
    logging.setup(conf, 'ha-snapshot')
    try:
        # NOTE: "db sync" and "db version" must not create a store.
        store = None
        if conf.category.name != 'rpc-key' and (
                conf.category.name, conf.category.action) not in (
                ('db', 'sync'), ('db', 'version')):
            store = store_mod.RecoveryStore.from_conf(conf)
        if conf.category.name == 'store' and conf.category.action == 'gc':
            for instance in store.instances():
                store.apply_retention(instance)
        return conf.category.func(conf, store)
    except (exception.HaSnapshotException, OSError, db_exc.DBError) as e:
        print('ERROR: %s' % e, file=sys.stderr)
        return 1
    except (cfg.Error, ValueError) as e:
        # NOTE: oslo.config checks option values when they are first read.
        print('ERROR: invalid configuration: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
