"""python3 -m tools.cloud start|stop|status|openrc|kill-host [--state-dir DIR].

``start`` runs the cloud under a supervisor process of its own (detached,
so the shell gets its prompt back) and returns once everything answers,
printing where the logs are and how to use it; ``stop`` (from any shell)
asks the supervisor to stop everything, then stops by pid whatever is
still recorded; ``status`` lists the processes; ``openrc`` prints the
environment of an openstack client (``eval "$(... openrc)"``);
``kill-host HOST`` SIGKILLs every process of one compute host at once, as
a power cut would (its nova-compute, privsep daemons, libvirtd, virtlogd,
QEMU processes and ha-snapshot-agent).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

from tools.cloud import cloud as cloud_mod
from tools.cloud import computes
from tools.cloud import procs
from tools.cloud import stop as stop_mod

READY_TIMEOUT = float(os.environ.get('HA_SNAPSHOT_CLOUD_READY_TIMEOUT',
                                     1800))


def _state(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, 'state.json')) as f:
            return json.load(f)
    except (OSError, ValueError):
        raise procs.CloudError('no cloud state in %s: start one first '
                               '(python3 -m tools.cloud start)' % run_dir)


def openrc(state: dict, user: str = 'admin') -> str:
    project = {'admin': 'admin', 'demo': 'demo'}[user]
    env = {
        'OS_AUTH_URL': state['keystone_url'], 'OS_USERNAME': user,
        'OS_PASSWORD': state['passwords'][user],
        'OS_PROJECT_NAME': project, 'OS_USER_DOMAIN_NAME': 'Default',
        'OS_PROJECT_DOMAIN_NAME': 'Default',
        'OS_REGION_NAME': state['region'], 'OS_IDENTITY_API_VERSION': '3',
    }
    lines = ['export %s=%s' % kv for kv in sorted(env.items())]
    lines.append('# openstack CLI: %s/bin/openstack' % state['venv'])
    lines.append('# ha-snapshot config: %s' % state['ha_snapshot_conf'])
    lines.append('# logs: %s' % state['log_dir'])
    return '\n'.join(lines)


def cmd_serve(args) -> int:
    cloud = cloud_mod.Cloud(args.state_dir,
                            with_ha_snapshot=not args.openstack_only,
                            with_aodh=args.with_aodh)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    cloud.start()
    cloud.table.record('harness', os.getpid())
    try:
        stop.wait()
    finally:
        cloud.log('harness: stopping (%s)' % cloud.log_dir)
        cloud.stop()
        cloud.log('harness: stopped')
    return 0


def cmd_start(args) -> int:
    run_dir = os.path.join(os.path.abspath(args.state_dir), 'run')
    table = procs.ProcessTable(run_dir)
    if table.names():
        print('a cloud already runs from %s: %s' % (
            run_dir, ', '.join(table.names())), file=sys.stderr)
        return 1
    os.makedirs(args.state_dir, exist_ok=True)
    try:
        os.unlink(os.path.join(run_dir, 'state.json'))
    except FileNotFoundError:
        pass
    log_path = os.path.join(args.state_dir, 'harness.log')
    argv = [sys.executable, '-m', 'tools.cloud', '--state-dir',
            args.state_dir, 'serve']
    if args.openstack_only:
        argv.append('--openstack-only')
    if args.with_aodh:
        argv.append('--with-aodh')
    with open(log_path, 'wb') as log:
        sup = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=cloud_mod.REPO,
                               start_new_session=True)
    print('harness: starting (supervisor pid %d, its log %s)'
          % (sup.pid, log_path))

    def ready():
        if sup.poll() is not None:
            raise procs.CloudError(
                'the harness exited (status %s) before the cloud was '
                'ready:\n%s' % (sup.returncode, procs.tail(log_path, 200)))
        return table.process('harness') is not None
    try:
        procs.wait_for(ready, READY_TIMEOUT, 'the cloud to start (venv, '
                       'services; see %s)' % log_path)
    except procs.CloudError as e:
        print(e, file=sys.stderr)
        if sup.poll() is None:
            sup.terminate()
        return 1
    state = _state(run_dir)
    print(json.dumps(state['timings'], sort_keys=True))
    print(openrc(state))
    return 0


def cmd_stop(args) -> int:
    run_dir = os.path.join(os.path.abspath(args.state_dir), 'run')
    sup = stop_mod.running_supervisor(run_dir)
    t = time.monotonic()
    if sup is not None:
        sup.terminate()
        try:
            sup.wait(300)
        except Exception:
            print('harness: supervisor pid %d did not stop within 300 s; '
                  'stopping by pid files' % sup.pid, file=sys.stderr)
    stopped = stop_mod.stop_run_dir(run_dir)
    procs.ProcessTable(run_dir).stop('harness')
    print('harness: stopped in %.1f s%s; logs in %s' % (
        time.monotonic() - t,
        ' (left over, stopped by pid: %s)' % ', '.join(stopped)
        if stopped else '', os.path.join(run_dir, 'logs')))
    return 0


def cmd_status(args) -> int:
    run_dir = os.path.join(os.path.abspath(args.state_dir), 'run')
    table = procs.ProcessTable(run_dir)
    names = table.names()
    if not names:
        print('no cloud runs from %s' % run_dir)
        return 3
    dead = 0
    for name in names:
        proc = table.process(name)
        dead += proc is None
        print('%-32s %s' % (name, 'pid %d' % proc.pid if proc
                            else 'NOT RUNNING'))
    print('logs: %s' % os.path.join(run_dir, 'logs'))
    return 1 if dead else 0


def cmd_openrc(args) -> int:
    run_dir = os.path.join(os.path.abspath(args.state_dir), 'run')
    print(openrc(_state(run_dir), args.user))
    return 0


def cmd_kill_host(args) -> int:
    run_dir = os.path.join(os.path.abspath(args.state_dir), 'run')
    table = procs.ProcessTable(run_dir)
    host = computes.ComputeHost.recorded(table, args.host)
    if not host.processes():
        print('harness: compute host %s runs nothing' % args.host,
              file=sys.stderr)
        return 1
    t = host.kill()
    print('harness: killed compute host %s at %.3f (time.time())'
          % (args.host, t))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='python3 -m tools.cloud',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--state-dir', default=cloud_mod.DEFAULT_STATE_DIR,
                        help='venv cache and run directory (default: '
                             '%(default)s; env HA_SNAPSHOT_CLOUD_DIR)')
    sub = parser.add_subparsers(dest='command', required=True)
    for name in ('start', 'serve'):
        p = sub.add_parser(name, help='start the cloud' if name == 'start'
                           else argparse.SUPPRESS)
        p.add_argument('--openstack-only', action='store_true',
                       help='no ha-snapshot services, only OpenStack')
        p.add_argument('--with-aodh', action='store_true',
                       help='also Aodh (API, listener, notifier)')
    sub.add_parser('stop', help='stop everything the harness started')
    sub.add_parser('status', help='list the processes and whether they run')
    p = sub.add_parser('openrc', help='print OS_* variables')
    p.add_argument('--user', choices=['admin', 'demo'], default='admin')
    p = sub.add_parser('kill-host', help='SIGKILL every process of one '
                       'compute host')
    p.add_argument('host', help='its name (%s)'
                   % ', '.join(computes.COMPUTE_HOSTS))
    args = parser.parse_args(argv)
    handler = {'start': cmd_start, 'serve': cmd_serve, 'stop': cmd_stop,
               'status': cmd_status, 'openrc': cmd_openrc,
               'kill-host': cmd_kill_host}[args.command]
    try:
        return handler(args)
    except procs.CloudError as e:
        print('harness: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
