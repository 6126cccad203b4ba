"""ha-snapshot's services in the harness: bus keys, manager, API, agents.

:func:`start` provisions the bus keys as an operator would (a master key
for the manager, derived keys for the API and for each compute host's
agent), syncs the database and starts ha-snapshot-manager,
ha-snapshot-api and one ha-snapshot-agent inside each compute host
(tools/cloud/computes.py), then waits until each says it started.

May import the standard library, ha_snapshot.rpc_auth and tools.cloud's
own modules.
"""

import os
import secrets
import sys

from tools.cloud import configs
from tools.cloud import procs
from tools.cloud.procs import REPO
from tools.cloud.procs import START_TIMEOUT


def write_key(c, name: str, key: str) -> str:
    path = c.etc('ha-snapshot', name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(key + '\n')
    return path


def rpc_keys(c) -> dict:
    """Provision the bus keys as an operator does: a master key for
    the manager, and for the API and each compute host's agent the
    keys derived from it (ha-snapshot-manage rpc-key derive): process
    name -> extra config."""
    from ha_snapshot import rpc_auth
    master = secrets.token_hex(32)
    write_key(c, 'rpc-master.key', master)

    def key(name, identity):
        return write_key(c, name + '.key', rpc_auth.derive(
            master.encode(), identity).decode())
    extra = {'ha-snapshot-api': ['--config-file', c.write_conf(
        'ha-snapshot', 'ha-snapshot-api-rpc.conf',
        configs.rpc_key_conf(key('ha-snapshot-api', rpc_auth.API)))]}
    for host in c.hosts:
        name = host.pname('ha-snapshot-agent')
        extra[name] = ['--config-file', c.write_conf(
            'ha-snapshot', name + '.conf', configs.agent_host(
                host, key(name, rpc_auth.host_identity(host.name))))]
    return extra


def start(c) -> None:
    extra = rpc_keys(c)
    conf = c.write_conf('ha-snapshot', 'ha-snapshot.conf',
                        configs.ha_snapshot(c))
    c.run_command('ha-snapshot-manage', [
        sys.executable, '-m', 'ha_snapshot.cmd.manage', '--config-file',
        conf, 'db', 'sync'])
    for name, module in (
            ('ha-snapshot-manager', 'ha_snapshot.cmd.manager'),
            ('ha-snapshot-api', 'ha_snapshot.cmd.api')):
        c.table.spawn(name, [sys.executable, '-m', module,
                             '--config-file', conf] + extra.get(name, []),
                      env=_env(), cwd=REPO)
    for host in c.hosts:
        start_agent(c, host)
    c.wait_http('ha-snapshot-api', '/')
    wait_started(c, 'ha-snapshot-manager', 'ha-snapshot-manager')
    for host in c.hosts:
        wait_started(c, host.pname('ha-snapshot-agent'), 'ha-snapshot-agent')


def _env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED='1')


def start_agent(c, host) -> None:
    """Start ``host``'s agent inside it, where the disk paths libvirt
    gives it (instances_path/UUID/disk, its _base backing file) are that
    host's files; its own file (rpc_keys) after the shared one."""
    name = host.pname('ha-snapshot-agent')
    host.spawn('ha-snapshot-agent', [
        sys.executable, '-m', 'ha_snapshot.cmd.agent',
        '--config-file', c.etc('ha-snapshot', 'ha-snapshot.conf'),
        '--config-file', c.etc('ha-snapshot', name + '.conf')],
        env=_env(), cwd=REPO)


def started_count(c, name: str, daemon: str) -> int:
    """How often process ``name`` logged "DAEMON started" (its log is
    appended to when it starts again)."""
    try:
        with open(c.table.log_path(name), errors='replace') as f:
            return f.read().count('%s started' % daemon)
    except FileNotFoundError:
        return 0


def wait_started(c, name: str, daemon: str, before: int = 0) -> None:
    """Wait until process ``name`` logged "DAEMON started" (more than
    ``before`` times)."""
    path = c.table.log_path(name)
    marker = '%s started' % daemon

    def started():
        c.table.check_running(name)
        return started_count(c, name, daemon) > before
    procs.wait_for(started, START_TIMEOUT, '%s to log "%s"'
                   % (name, marker), logs=[path])
