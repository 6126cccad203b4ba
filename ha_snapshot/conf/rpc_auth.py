"""[rpc_auth]: the keys that sign and check every message on the bus.

The manager holds the operator's master key(s); every compute host holds
only the key derived from them for its own host name, the API the key
derived for "api" (``ha-snapshot-manage rpc-key derive``). See
doc/source/admin/security.rst.
"""

from oslo_config import cfg

from ha_snapshot.conf import base

GROUP = cfg.OptGroup(
    'rpc_auth', title='Message signing on the bus',
    help='Every RPC message between the API, the manager and the agents '
         'carries an HMAC-SHA256 signature over its sender, receiver, '
         'method, arguments, time and a nonce. With neither key file set, '
         'a process makes up an ephemeral key: only services inside that '
         'same process (the demo, tests) can then talk to each other.')

OPTS = [
    cfg.StrOpt('master_key_file',
               help='File of the master key(s), one per line, newest '
                    'first: the first signs, every one is accepted. Needed '
                    'by ha-snapshot-manager (and by any process on the '
                    'same node, which then derives its own key). At least '
                    '32 characters per key, e.g. "openssl rand -hex 32". '
                    'Keep it readable by the service user only.'),
    cfg.StrOpt('key_file',
               help='File of this process\'s own derived key(s), one per '
                    'line, newest first: an agent\'s host key or the '
                    'API\'s key, as printed by "ha-snapshot-manage rpc-key '
                    'derive". Used instead of master_key_file by agents '
                    'and the API when set.'),
    cfg.IntOpt('max_message_age', default=600, min=10,
               help='Seconds a signed message stays valid after it was '
                    'sent (and before: clock skew). Older messages are '
                    'refused, so a copied message cannot be replayed '
                    'later; it also bounds how long a cast may wait in a '
                    'queue while its receiver is down. Keep the clocks of '
                    'all hosts in sync (NTP).'),
    cfg.IntOpt('replay_window', default=4096, min=64, max=1 << 20,
               help='How many messages of one sending process may arrive '
                    'after a later one of the same process and still be '
                    'accepted (each at most once). Receivers remember, per '
                    'sending process, the highest message number seen and '
                    'a bit per number of this window: about window / 8 '
                    'bytes per process heard from within '
                    'max_message_age.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    base.register(conf, GROUP, OPTS)


def list_opts():
    return {GROUP: OPTS}
