"""The OpenStack services of the harness: started, set up, waited for.

Each function takes the :class:`tools.cloud.cloud.Cloud` being started
(``c``: its ports, passwords, paths, process table and helpers) and
starts one service the way devstack would on a single node: Keystone
(then its users, projects and catalog), Glance, Placement, the network
stub, Nova (databases, then API, conductor, scheduler and each compute
host's nova-compute) and Aodh.

May import the standard library and tools.cloud's own modules.
"""

import datetime
import os
import shutil
import subprocess
import sys

from tools.cloud import configs
from tools.cloud import procs
from tools.cloud.procs import REPO
from tools.cloud.procs import START_TIMEOUT


def start_keystone(c):
    conf = c.write_conf('keystone', 'keystone.conf',
                        configs.keystone(c))
    manage = [c.bin('keystone-manage'), '--config-file', conf]
    c.run_command('keystone-manage', manage + ['db_sync'])
    for repo in ('fernet_setup', 'credential_setup'):
        c.run_command('keystone-manage', manage + [
            repo, '--keystone-user', 'root', '--keystone-group', 'root'])
    c.run_command('keystone-manage', manage + [
        'bootstrap', '--bootstrap-password', c.passwords['admin'],
        '--bootstrap-admin-url', c.keystone_url,
        '--bootstrap-public-url', c.keystone_url,
        '--bootstrap-internal-url', c.keystone_url,
        '--bootstrap-region-id', configs.REGION])
    c.serve_wsgi('keystone', 'keystone.wsgi.api', {
        'OS_KEYSTONE_CONFIG_DIR': os.path.dirname(conf),
        'OS_KEYSTONE_CONFIG_FILES': 'keystone.conf'})
    c.wait_http('keystone', '/v3')


def setup_keystone(c):
    conn = c.admin_connection()
    ident = conn.identity
    roles = {r.name: r for r in ident.roles()}
    for name in ('service', 'member', 'reader'):
        if name not in roles:
            roles[name] = ident.create_role(name=name)
    projects = {n: ident.create_project(name=n, domain_id='default')
                for n in ('service', 'demo')}
    services = configs.USERS[2:] + (('aodh',) if c.with_aodh else ())
    for user in services:
        u = ident.create_user(name=user, password=c.passwords[user],
                              domain_id='default')
        for role in ('admin', 'service'):
            ident.assign_project_role_to_user(projects['service'], u,
                                              roles[role])
    demo = ident.create_user(name='demo', password=c.passwords['demo'],
                             domain_id='default')
    for role in ('member', 'reader'):
        ident.assign_project_role_to_user(projects['demo'], demo,
                                          roles[role])
    endpoints = [
        ('glance', 'image', c.url('glance')),
        ('placement', 'placement', c.url('placement')),
        ('nova', 'compute', c.url('nova-api') + '/v2.1'),
        ('neutron', 'network', c.url('netstub')),
        ('ha-snapshot', 'ha-snapshot', c.url('ha-snapshot-api'))]
    if c.with_aodh:
        endpoints.append(('aodh', 'alarming', c.url('aodh')))
    for name, stype, url in endpoints:
        svc = ident.create_service(name=name, type=stype)
        ident.create_endpoint(service_id=svc.id, interface='public',
                              url=url, region_id=configs.REGION)
    conn.close()


def start_glance(c):
    etc = os.path.dirname(c.etc('glance', 'x'))
    os.makedirs(etc, exist_ok=True)
    shutil.copy(os.path.join(c.venv, 'etc', 'glance',
                             'glance-api-paste.ini'), etc)
    conf = c.write_conf('glance', 'glance-api.conf', configs.glance(c))
    c.run_command('glance-manage', [c.bin('glance-manage'),
                                    '--config-file', conf, 'db_sync'])
    c.serve_wsgi('glance', 'glance.wsgi.api',
                   {'OS_GLANCE_CONFIG_DIR': etc})
    c.wait_http('glance', '/')


def start_placement(c):
    conf = c.write_conf('placement', 'placement.conf',
                        configs.placement(c))
    c.run_command('placement-manage', [c.bin('placement-manage'),
                                       '--config-file', conf, 'db', 'sync'])
    c.serve_wsgi('placement', 'placement.wsgi.api',
                   {'OS_PLACEMENT_CONFIG_DIR': os.path.dirname(conf)})
    c.wait_http('placement', '/')


def start_netstub(c):
    c.table.spawn('netstub', [
        sys.executable, '-m', 'tools.cloud.netstub',
        str(c.ports['netstub'])], cwd=REPO)
    c.wait_http('netstub', '/', timeout=30)


def sync_nova(c):
    etc = os.path.dirname(c.etc('nova', 'x'))
    os.makedirs(etc, exist_ok=True)
    shutil.copy(os.path.join(c.venv, 'etc', 'nova', 'api-paste.ini'),
                etc)
    conf = c.write_conf('nova', 'nova.conf', configs.nova(c))
    for host in c.hosts:
        os.makedirs(os.path.join(host.dir, 'nova'), exist_ok=True)
        c.write_conf('nova', 'nova-compute-%s.conf' % host.name,
                     configs.nova(c, host))
    manage = [c.bin('nova-manage'), '--config-file', conf]
    c.run_command('nova-manage', manage + ['api_db', 'sync'])
    c.run_command('nova-manage', manage + [
        'cell_v2', 'map_cell0', '--database_connection',
        c.nova_db['nova_cell0']])
    c.run_command('nova-manage', manage + [
        'cell_v2', 'create_cell', '--name', 'cell1', '--verbose'])
    c.run_command('nova-manage', manage + ['db', 'sync'])


def start_nova(c):
    conf = c.etc('nova', 'nova.conf')
    c.serve_wsgi('nova-api', 'nova.wsgi.osapi_compute',
                 {'OS_NOVA_CONFIG_DIR': os.path.dirname(conf)})
    for name in ('nova-conductor', 'nova-scheduler'):
        c.table.spawn(name, [c.bin(name), '--config-file', conf])
    for host in c.hosts:
        start_compute(c, host)
    c.wait_http('nova-api', '/')
    names = {h.name for h in c.hosts}
    conn = c.admin_connection()
    try:
        def computes_up():
            for name in ('nova-conductor', 'nova-scheduler'):
                c.table.check_running(name)
            for host in c.hosts:
                c.table.check_running(host.pname('nova-compute'))
            up = {s.host for s in conn.compute.services()
                  if s.binary == 'nova-compute' and s.state == 'up'}
            # NOTE: a service counts as up from its creation on, before
            # its compute node (named by libvirt's host name) exists,
            # and discover_hosts maps only existing nodes; the resource
            # provider is made right after the node.
            nodes = {rp.name for rp in
                     conn.placement.resource_providers()}
            return names <= up and names <= nodes
        procs.wait_for(computes_up, START_TIMEOUT,
                       'nova-compute on %s to report up to Nova, each '
                       'with its resource provider of the same name'
                       % ' and '.join(sorted(names)),
                       logs=[c.table.log_path(h.pname('nova-compute'))
                             for h in c.hosts])
    finally:
        conn.close()
    manage = [c.bin('nova-manage'), '--config-file', conf,
              'cell_v2']
    c.run_command('nova-manage', manage + ['discover_hosts', '--verbose'])
    out = subprocess.run(manage + ['list_hosts'], capture_output=True,
                         text=True, timeout=120).stdout
    missing = [n for n in sorted(names) if ' %s ' % n not in out]
    if missing:
        raise procs.CloudError('nova-manage cell_v2 discover_hosts left '
                               '%s unmapped:\n%s' % (missing, out))


def start_compute(c, host) -> None:
    """nova-compute of ``host``, inside it (its QEMU and privsep
    daemons see that host's files)."""
    host.spawn('nova-compute', [
        c.bin('nova-compute'), '--config-file',
        c.etc('nova', 'nova-compute-%s.conf' % host.name)])


def wait_reported(c, host, since: float) -> None:
    """Wait until ``host``'s nova-compute reported to Nova after
    ``since`` (time.time()); forced down or not."""
    conn = c.admin_connection()

    def reported():
        c.table.check_running(host.pname('nova-compute'))
        for s in conn.compute.services(binary='nova-compute',
                                       host=host.name):
            if s.updated_at and datetime.datetime.fromisoformat(
                    s.updated_at.replace('Z', '')).replace(
                        tzinfo=datetime.timezone.utc).timestamp() > since:
                return True
        return False
    try:
        procs.wait_for(reported, START_TIMEOUT, 'nova-compute on %s to '
                       'report to Nova again' % host.name,
                       logs=[c.table.log_path(host.pname('nova-compute'))])
    finally:
        conn.close()


def start_aodh(c):
    c.aodh_db = c._mariadb.create_database(
        'aodh', 'aodh', c.passwords['aodh-db'])
    conf = c.write_conf('aodh', 'aodh.conf', configs.aodh(c))
    c.run_command('aodh-dbsync', [c.bin('aodh-dbsync'), '--config-file',
                                  conf])
    # NOTE: aodh.wsgi.api, and the keystonemiddleware in its paste
    # pipeline, read the default config files of project aodh only,
    # the first of which is ~/.aodh/aodh.conf: HOME points there.
    home = c.path('aodh', 'home')
    os.makedirs(os.path.join(home, '.aodh'), exist_ok=True)
    os.symlink(conf, os.path.join(home, '.aodh', 'aodh.conf'))
    c.serve_wsgi('aodh', 'aodh.wsgi.api', {'HOME': home})
    for name in ('aodh-listener', 'aodh-notifier'):
        c.table.spawn(name, [c.bin(name), '--config-file', conf])
    c.wait_http('aodh', '/')
    for name in ('aodh-listener', 'aodh-notifier'):
        c.table.check_running(name)
