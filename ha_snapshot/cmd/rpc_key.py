"""``ha-snapshot-manage rpc-key``: make and derive the bus signing keys.

    ha-snapshot-manage rpc-key generate
    ha-snapshot-manage rpc-key derive (--host NAME | --api)
                                      [--master-key-file FILE]

``derive`` prints one derived key per master key, in the master file's
order: the content of that host's (or the API's) ``[rpc_auth] key_file``.
"""

import secrets

from ha_snapshot import exception
from ha_snapshot import rpc_auth


def generate(conf, store) -> int:
    print(secrets.token_hex(32))
    return 0


def derive(conf, store) -> int:
    path = conf.category.master_key_file or conf.rpc_auth.master_key_file
    if not path:
        raise exception.ConfigurationError(
            reason='no master key: pass --master-key-file or set [rpc_auth] '
            'master_key_file')
    if conf.category.for_api == bool(conf.category.for_host):
        raise exception.ConfigurationError(
            reason='name one identity: --host NAME or --api')
    identity = (rpc_auth.API if conf.category.for_api
                else rpc_auth.host_identity(conf.category.for_host))
    for master in rpc_auth.read_key_file(path):
        print(rpc_auth.derive(master, identity).decode())
    return 0


def add_command_parsers(subparsers) -> None:
    keys = subparsers.add_parser('rpc-key', help='Keys that sign messages '
                                 'on the bus (doc: admin/security).')
    sub = keys.add_subparsers(dest='action')
    sub.required = True
    p = sub.add_parser('generate', help='Print a new random master key.')
    p.set_defaults(func=generate)
    p = sub.add_parser('derive', help='Print the key(s) of one compute host '
                       'or of the API, derived from the master key(s).')
    p.add_argument('--host', dest='for_host',
                   help='Compute host name, as its agent knows it ([agent] '
                   'host, else the host name).')
    p.add_argument('--api', dest='for_api', action='store_true',
                   help='The key of ha-snapshot-api.')
    p.add_argument('--master-key-file', metavar='FILE',
                   help='Default: [rpc_auth] master_key_file.')
    p.set_defaults(func=derive)
