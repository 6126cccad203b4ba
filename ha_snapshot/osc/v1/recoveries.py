"""``openstack ha recover`` and ``openstack ha recovery list``.

``recover --wait`` polls the recovery (GET .../recoveries/{id}) and writes
one line on stderr each time its state or step changes, so that stdout
stays the recovery's record (``-f json`` remains parseable). A poll that
cannot reach the API is retried until the timeout: the recovery goes on
in the manager whatever the client sees, and an API restarting during a
recovery is no reason to stop following it.
"""

import argparse
import time

from osc_lib.command import command
from osc_lib import exceptions as osc_exc
from osc_lib import utils

from ha_snapshot import exception
from ha_snapshot.osc import resolve
from ha_snapshot.osc.v1 import servers
from ha_snapshot import statuses

FINAL_STATES = statuses.FINAL_RECOVERY_STATES
SHOW_FIELDS = (
    'id', 'server_id', 'action', 'state', 'step', 'reason',
    'restore_point_id', 'attempt', 'error', 'created_at', 'started_at',
    'updated_at', 'finished_at',
)


def positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise argparse.ArgumentTypeError(
            'expected a number of seconds greater than 0, got %r' % value)
    return seconds


def show_recovery(recovery: dict) -> tuple:
    fields = [f for f in SHOW_FIELDS if f in recovery]
    fields += sorted(set(recovery) - set(SHOW_FIELDS))
    return tuple(fields), utils.get_dict_properties(recovery, fields)


def describe(recovery: dict) -> str:
    text = recovery.get('state') or 'unknown'
    if recovery.get('step'):
        text += ' (step: %s)' % recovery['step']
    if recovery.get('error'):
        text += ': %s' % recovery['error']
    return text


def wait_for_recovery(client, server_id: str, recovery: dict, *,
                      timeout: float | None, interval: float, out,
                      clock=time.monotonic, sleep=time.sleep) -> dict:
    """Poll until the recovery is final; report each change on ``out``."""
    start = clock()
    last = None
    unreachable = False
    while True:
        seen = (recovery.get('state'), recovery.get('step'),
                recovery.get('error'))
        if seen != last:
            out.write('Recovery %s of server %s: %s [%d s]\n' % (
                recovery['id'], server_id, describe(recovery),
                clock() - start))
            out.flush()
            last = seen
        if recovery.get('state') in FINAL_STATES:
            return recovery
        left = None if timeout is None else timeout - (clock() - start)
        if left is not None and left <= 0:
            raise exception.RecoveryTimeout(
                recovery=recovery['id'], server=server_id,
                state=describe(recovery), timeout='%g' % timeout)
        sleep(interval if left is None else min(interval, left))
        try:
            recovery = client.get_recovery(server_id, recovery['id'])
        except exception.ApiUnreachable as e:
            if not unreachable:
                out.write('%s; retrying until the timeout\n' % e)
                out.flush()
            unreachable = True
        else:
            unreachable = False


class RecoverServer(command.ShowOne):
    """Recover a protected server from a restore point.

    The newest restore point is used unless one is chosen (or the newest
    application-consistent one, with --app-consistent). The command
    returns once the recovery is accepted, or, when asked to wait, follows
    the recovery to its end, shows each state and step on stderr, and
    fails if the recovery fails.
    """

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        servers.add_server_argument(parser, 'Server to recover')
        parser.add_argument(
            '--restore-point', metavar='<restore-point-id>',
            help='Restore point to recover to (default: the newest; see '
                 '"openstack ha restore point list")')
        parser.add_argument(
            '--app-consistent', action='store_true', default=False,
            help='Recover to the newest application-consistent restore '
                 'point (Consistency "filesystem": taken while the guest '
                 'agent froze the file systems) instead of the newest')
        parser.add_argument(
            '--wait', action='store_true', default=False,
            help='Wait for the recovery to end, showing its progress')
        parser.add_argument(
            '--timeout', metavar='<seconds>', type=positive_seconds,
            help='With --wait, stop waiting after this many seconds (the '
                 'recovery goes on); default: wait until it ends')
        parser.add_argument(
            '--poll-interval', metavar='<seconds>', type=positive_seconds,
            default=2.0,
            help='With --wait, seconds between two looks at the recovery '
                 '(default: 2)')
        return parser

    def take_action(self, parsed_args):
        if parsed_args.timeout is not None and not parsed_args.wait:
            raise osc_exc.CommandError('--timeout needs --wait')
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        if parsed_args.app_consistent and parsed_args.restore_point:
            raise osc_exc.CommandError('--app-consistent and '
                                       '--restore-point exclude each other')
        recovery = mgr.ha.create_recovery(
            server_id, restore_point_id=parsed_args.restore_point,
            consistency='filesystem' if parsed_args.app_consistent
            else None)
        if parsed_args.wait:
            recovery = wait_for_recovery(
                mgr.ha, server_id, recovery, timeout=parsed_args.timeout,
                interval=parsed_args.poll_interval, out=self.app.stderr)
            if recovery.get('state') == statuses.RecoveryState.FAILED:
                raise exception.ClientError(
                    reason='Recovery %s of server %s failed%s: %s' % (
                        recovery['id'], server_id,
                        ' at step %s' % recovery['step']
                        if recovery.get('step') else '',
                        recovery.get('error') or 'no error recorded'))
        return show_recovery(recovery)


class ListRecoveries(command.Lister):
    """List the recoveries of a server, oldest first."""

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        servers.add_server_argument(parser, 'Server whose recoveries to list')
        servers.add_long_argument(parser)
        return parser

    def take_action(self, parsed_args):
        mgr = self.app.client_manager
        server_id = resolve.server_id(mgr, parsed_args.server)
        recoveries = mgr.ha.list_recoveries(server_id)
        fields = ['id', 'action', 'state', 'step', 'restore_point_id',
                  'created_at', 'finished_at', 'error']
        headers = ['ID', 'Action', 'State', 'Step', 'Restore Point',
                   'Created At', 'Finished At', 'Error']
        if parsed_args.long:
            fields += ['reason', 'attempt', 'started_at', 'updated_at',
                       'host_failure_id']
            headers += ['Reason', 'Attempt', 'Started At', 'Updated At',
                        'Host Failure']
        return headers, (utils.get_dict_properties(r, fields)
                         for r in recoveries)
