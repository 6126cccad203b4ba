"""The harness: a real OpenStack control plane plus ha-snapshot, on loopback.

:class:`Cloud` starts, in one run directory (``STATE/run``): a private
RabbitMQ, MariaDB (Nova's databases), Swift, Keystone, Glance (file
store), Placement, a network stub, Nova API, conductor and scheduler, two
compute hosts (tools/cloud/computes.py: each its own libvirtd + virtlogd,
nova-compute with the libvirt driver on QEMU TCG, and ha-snapshot-agent,
in namespaces of its own), then ha-snapshot-manager and ha-snapshot-api,
configured as the devstack plugin would. :meth:`Cloud.kill_host` kills
one compute host whole. ``state.json`` there holds what a client needs
(URLs, passwords); ``pids/`` and ``logs/`` hold every process's pid file
and log. :meth:`Cloud.stop` (or :func:`tools.cloud.stop.stop_run_dir` from
another process)
stops everything by pid, in reverse order.

Runs in the project's interpreter; the OpenStack services run from the
cached venv (tools/cloud/venv.py).
"""

import concurrent.futures
import json
import os
import secrets
import shutil
import subprocess
import sys
import time

import psutil

from tools.cloud import computes
from tools.cloud import configs
from tools.cloud import mariadb
from tools.cloud import procs
from tools.cloud import stop as stop_mod
from tools.cloud import venv as venv_mod

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_STATE_DIR = os.environ.get('HA_SNAPSHOT_CLOUD_DIR',
                                   '/var/tmp/ha-snapshot-cloud')
COMPUTE_HOST = computes.COMPUTE_HOSTS[0]
START_TIMEOUT = float(os.environ.get('HA_SNAPSHOT_CLOUD_START_TIMEOUT', 180))
USERS = ('admin', 'demo', 'nova', 'glance', 'placement', 'ha-snapshot')
HA_SERVICES = ('ha-snapshot-manager', 'ha-snapshot-api')


class Cloud:
    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, *,
                 with_ha_snapshot: bool = True, with_aodh: bool = False,
                 ha_overrides=None, compute_hosts=computes.COMPUTE_HOSTS,
                 log=print):
        self.state_dir = os.path.abspath(state_dir)
        self.run_dir = os.path.join(self.state_dir, 'run')
        self.log_dir = os.path.join(self.run_dir, 'logs')
        self.with_ha_snapshot = with_ha_snapshot
        self.with_aodh = with_aodh
        self.ha_overrides = ha_overrides or {}
        self.log = log
        self.table = procs.ProcessTable(self.run_dir)
        self.timings = {}
        if not compute_hosts or len(set(compute_hosts)) != len(
                compute_hosts):
            raise procs.CloudError('compute_hosts must name one host or '
                                   'more, each once: %r' % (compute_hosts,))
        self.hosts = [computes.ComputeHost(self.table, self.path(), name)
                      for name in compute_hosts]
        # NOTE: the first host keeps the one-host harness's meaning.
        self.compute_host = self.hosts[0].name
        self._rabbit = self._swift = None

    # --- paths and facts the config writers use ---

    def path(self, *names) -> str:
        return os.path.join(self.run_dir, 'data', *names)

    def etc(self, service: str, name: str) -> str:
        return os.path.join(self.run_dir, 'etc', service, name)

    @property
    def keystone_url(self) -> str:
        return 'http://%s:%d/v3' % (procs.LOOPBACK, self.ports['keystone'])

    def url(self, name: str) -> str:
        return 'http://%s:%d' % (procs.LOOPBACK, self.ports[name])

    @property
    def instances_path(self) -> str:
        """Nova's instances_path, the same on every compute host."""
        return self.path('nova', 'instances')

    def host(self, name: str) -> computes.ComputeHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise procs.CloudError('no compute host %r in this cloud (hosts: %s)'
                               % (name, ', '.join(h.name
                                                  for h in self.hosts)))

    # --- start ---

    def start(self) -> dict:
        """Start everything; the state (also in ``state.json``)."""
        if (stop_mod.running_supervisor(self.run_dir)
                or self.table.names()):
            raise procs.CloudError(
                'a cloud already runs from %s (pids in %s): stop it first '
                '(python3 -m tools.cloud stop)' % (self.run_dir,
                                                   self.table.pid_dir))
        t0 = time.monotonic()
        info = venv_mod.ensure(self.state_dir, log=self.log)
        self.venv = info['path']
        self.timings['venv_install_seconds'] = (
            0.0 if info['cached'] else info['install_seconds'])
        shutil.rmtree(self.run_dir, ignore_errors=True)
        os.makedirs(self.log_dir)
        self.log('harness: logs in %s' % self.log_dir)
        self._allocate()
        t1 = time.monotonic()
        try:
            self._start_all()
        except BaseException:
            self.log('harness: start failed; logs in %s' % self.log_dir)
            self.stop()
            raise
        self.timings['start_seconds'] = round(time.monotonic() - t1, 1)
        self.timings['total_seconds'] = round(time.monotonic() - t0, 1)
        self.timings.update(self.memory())
        self._save_state()
        self.log('harness: cloud ready in %.0f s (%s)'
                 % (self.timings['start_seconds'], self.log_dir))
        return self.state

    def _allocate(self):
        from ha_snapshot.tests.fixtures import rabbitmq as rabbit_fx
        names = ('keystone', 'glance', 'placement', 'nova-api', 'netstub',
                 'mariadb', 'aodh')
        self.ports = {}
        for name in names:
            self.ports[name] = rabbit_fx.free_port(set(self.ports.values()))
        self.ports['ha-snapshot-api'] = (
            8799 if not procs.port_accepts(8799)
            else rabbit_fx.free_port(set(self.ports.values())))
        self.passwords = {u: secrets.token_hex(12)
                          for u in USERS + ('aodh',)}
        self.passwords['alarm-key'] = secrets.token_hex(16)
        self.passwords['nova-db'] = secrets.token_hex(12)
        self.passwords['os-db'] = secrets.token_hex(12)
        self.passwords['aodh-db'] = secrets.token_hex(12)

    def _start_all(self):
        # NOTE: Swift's servers die with the thread that started them
        # (PR_SET_PDEATHSIG): it starts in this thread, the rest around it.
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            rabbit = pool.submit(self._timed, 'rabbitmq', self._start_rabbit)
            virt = pool.submit(self._timed, 'libvirtd', self._start_libvirtds)
            mdb = pool.submit(self._timed, 'mariadb', self._start_mariadb)

            def keystone():
                mdb.result()
                self._timed('keystone', self._start_keystone)
            ks = pool.submit(keystone)

            def nova_db():
                # NOTE: Nova's schemas need no Keystone: they load while
                # Keystone starts. nova.conf names the broker and libvirtd.
                mdb.result()
                rabbit.result()
                virt.result()
                self._timed('nova_db', self._sync_nova)
            db = pool.submit(nova_db)
            self._timed('swift', self._start_swift)
            for f in (rabbit, virt, ks, db):
                f.result()
        self._timed('keystone_setup', self._setup_keystone)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(self._timed, name, fn) for name, fn in (
                ('glance', self._start_glance),
                ('placement', self._start_placement),
                ('netstub', self._start_netstub))]
            if self.with_aodh:
                futures.append(pool.submit(self._timed, 'aodh',
                                           self._start_aodh))
            for f in futures:
                f.result()
        self._timed('nova', self._start_nova)
        if self.with_ha_snapshot:
            self._timed('ha_snapshot', self._start_ha_snapshot)

    def _timed(self, name, fn):
        t = time.monotonic()
        fn()
        self.timings['%s_seconds' % name] = round(time.monotonic() - t, 1)

    def _run(self, name: str, argv: list, env=None, timeout: float = 300):
        """A one-shot command (db sync...), output to logs/NAME.log."""
        log = self.table.log_path(name)
        with open(log, 'ab') as out:
            out.write(('$ %s\n' % ' '.join(argv)).encode())
            out.flush()
            try:
                rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env,
                                    cwd=self.run_dir,
                                    timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise procs.CloudError('timed out after %.0f s waiting for '
                                       '%s' % (timeout, ' '.join(argv[:3])))
        if rc:
            raise procs.CloudError('%s failed (exit %d); end of %s:\n%s' % (
                ' '.join(argv[:4]), rc, log, procs.tail(log)))

    def bin(self, name: str) -> str:
        return os.path.join(self.venv, 'bin', name)

    def _write(self, service, name, sections) -> str:
        os.makedirs(self.path(service), exist_ok=True)
        return configs.write_ini(self.etc(service, name), sections)

    # --- infrastructure ---

    def _start_rabbit(self):
        from ha_snapshot.tests.fixtures import rabbitmq as rabbit_fx
        os.makedirs(self.path(), exist_ok=True)
        self._rabbit = rabbit_fx.RabbitMQServer(root_dir=self.path())
        self._rabbit.setUp()
        self.transport_url = self._rabbit.transport_url
        self.table.record('rabbitmq', self._rabbit._beam.pid)
        self.table.record('rabbitmq-epmd', self._rabbit._epmd.pid)
        self.rabbit_log_dir = self._rabbit.log_dir

    def _start_mariadb(self):
        self._mariadb = mariadb.MariaDB(self.table, self.path('mariadb'),
                                        self.ports['mariadb'])
        self._mariadb.start()
        self.nova_db = {
            name: self._mariadb.create_database(name, 'nova',
                                                self.passwords['nova-db'])
            for name in ('nova_api', 'nova', 'nova_cell0')}
        # NOTE: not sqlite: under load Placement on sqlite answered the
        # scheduler '500 database is locked' and a boot ended in
        # NoValidHost; Keystone and Glance write as often.
        self.os_db = {
            name: self._mariadb.create_database(name, name,
                                                self.passwords['os-db'])
            for name in ('keystone', 'glance', 'placement')}

    def _start_swift(self):
        from ha_snapshot.tests.fixtures import swift as swift_fx
        self._swift = swift_fx.SwiftServer(base_dir=self.path())
        self._swift.setUp()
        self.swift_endpoint = self._swift.endpoint
        for name, proc in self._swift.procs.items():
            self.table.record('swift-' + name, proc.pid)

    def _start_libvirtds(self):
        with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
            for f in [pool.submit(h.start_libvirtd, self.instances_path)
                      for h in self.hosts]:
                f.result()

    # --- OpenStack ---

    def _gunicorn(self, name: str, module: str, env: dict) -> None:
        env = dict(os.environ, HA_CLOUD_WSGI_MODULE=module,
                   PYTHONUNBUFFERED='1', **env)
        self.table.spawn(name, [
            self.bin('gunicorn'), '--bind',
            '%s:%d' % (procs.LOOPBACK, self.ports[name]),
            '--workers', '1', '--threads', '4', '--timeout', '300',
            '--name', name, '--pythonpath', HERE,
            '--control-socket', os.path.join(self.run_dir, name + '.ctl'),
            '--access-logfile', '-', '--error-logfile', '-',
            'wsgi_app:application'], env=env)

    def _wait_http(self, name: str, path: str = '/', timeout=START_TIMEOUT):
        url = self.url(name) + path

        def ready():
            self.table.check_running(name)
            status = procs.http_status(url)
            return status is not None and status < 500
        procs.wait_for(ready, timeout, '%s to answer GET %s' % (name, url),
                       logs=[self.table.log_path(name)])

    def _start_keystone(self):
        conf = self._write('keystone', 'keystone.conf',
                           configs.keystone(self))
        manage = [self.bin('keystone-manage'), '--config-file', conf]
        self._run('keystone-manage', manage + ['db_sync'])
        for repo in ('fernet_setup', 'credential_setup'):
            self._run('keystone-manage', manage + [
                repo, '--keystone-user', 'root', '--keystone-group', 'root'])
        self._run('keystone-manage', manage + [
            'bootstrap', '--bootstrap-password', self.passwords['admin'],
            '--bootstrap-admin-url', self.keystone_url,
            '--bootstrap-public-url', self.keystone_url,
            '--bootstrap-internal-url', self.keystone_url,
            '--bootstrap-region-id', configs.REGION])
        self._gunicorn('keystone', 'keystone.wsgi.api', {
            'OS_KEYSTONE_CONFIG_DIR': os.path.dirname(conf),
            'OS_KEYSTONE_CONFIG_FILES': 'keystone.conf'})
        self._wait_http('keystone', '/v3')

    def admin_connection(self):
        import openstack
        return openstack.connect(
            auth_url=self.keystone_url, username='admin',
            password=self.passwords['admin'], project_name='admin',
            user_domain_name='Default', project_domain_name='Default',
            region_name=configs.REGION, identity_api_version='3')

    def _setup_keystone(self):
        conn = self.admin_connection()
        ident = conn.identity
        roles = {r.name: r for r in ident.roles()}
        for name in ('service', 'member', 'reader'):
            if name not in roles:
                roles[name] = ident.create_role(name=name)
        projects = {n: ident.create_project(name=n, domain_id='default')
                    for n in ('service', 'demo')}
        services = USERS[2:] + (('aodh',) if self.with_aodh else ())
        for user in services:
            u = ident.create_user(name=user, password=self.passwords[user],
                                  domain_id='default')
            for role in ('admin', 'service'):
                ident.assign_project_role_to_user(projects['service'], u,
                                                  roles[role])
        demo = ident.create_user(name='demo', password=self.passwords['demo'],
                                 domain_id='default')
        for role in ('member', 'reader'):
            ident.assign_project_role_to_user(projects['demo'], demo,
                                              roles[role])
        for name, stype, url in (
                ('glance', 'image', self.url('glance')),
                ('placement', 'placement', self.url('placement')),
                ('nova', 'compute', self.url('nova-api') + '/v2.1'),
                ('neutron', 'network', self.url('netstub')),
                ('ha-snapshot', 'ha-snapshot',
                 self.url('ha-snapshot-api'))) + ((
                ('aodh', 'alarming', self.url('aodh')),)
                    if self.with_aodh else ()):
            svc = ident.create_service(name=name, type=stype)
            ident.create_endpoint(service_id=svc.id, interface='public',
                                  url=url, region_id=configs.REGION)
        conn.close()

    def _start_glance(self):
        etc = os.path.dirname(self.etc('glance', 'x'))
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(self.venv, 'etc', 'glance',
                                 'glance-api-paste.ini'), etc)
        conf = self._write('glance', 'glance-api.conf', configs.glance(self))
        self._run('glance-manage', [self.bin('glance-manage'),
                                    '--config-file', conf, 'db_sync'])
        self._gunicorn('glance', 'glance.wsgi.api',
                       {'OS_GLANCE_CONFIG_DIR': etc})
        self._wait_http('glance', '/')

    def _start_placement(self):
        conf = self._write('placement', 'placement.conf',
                           configs.placement(self))
        self._run('placement-manage', [self.bin('placement-manage'),
                                       '--config-file', conf, 'db', 'sync'])
        self._gunicorn('placement', 'placement.wsgi.api',
                       {'OS_PLACEMENT_CONFIG_DIR': os.path.dirname(conf)})
        self._wait_http('placement', '/')

    def _start_netstub(self):
        self.table.spawn('netstub', [
            sys.executable, '-m', 'tools.cloud.netstub',
            str(self.ports['netstub'])], cwd=REPO)
        self._wait_http('netstub', '/', timeout=30)

    def _sync_nova(self):
        etc = os.path.dirname(self.etc('nova', 'x'))
        os.makedirs(etc, exist_ok=True)
        shutil.copy(os.path.join(self.venv, 'etc', 'nova', 'api-paste.ini'),
                    etc)
        conf = self._write('nova', 'nova.conf', configs.nova(self))
        for host in self.hosts:
            os.makedirs(os.path.join(host.dir, 'nova'), exist_ok=True)
            self._write('nova', 'nova-compute-%s.conf' % host.name,
                        configs.nova(self, host))
        manage = [self.bin('nova-manage'), '--config-file', conf]
        self._run('nova-manage', manage + ['api_db', 'sync'])
        self._run('nova-manage', manage + [
            'cell_v2', 'map_cell0', '--database_connection',
            self.nova_db['nova_cell0']])
        self._run('nova-manage', manage + [
            'cell_v2', 'create_cell', '--name', 'cell1', '--verbose'])
        self._run('nova-manage', manage + ['db', 'sync'])

    def _start_nova(self):
        conf = self.etc('nova', 'nova.conf')
        self._gunicorn('nova-api', 'nova.wsgi.osapi_compute',
                       {'OS_NOVA_CONFIG_DIR': os.path.dirname(conf)})
        for name in ('nova-conductor', 'nova-scheduler'):
            self.table.spawn(name, [self.bin(name), '--config-file', conf])
        for host in self.hosts:
            host.spawn('nova-compute', [
                self.bin('nova-compute'), '--config-file',
                self.etc('nova', 'nova-compute-%s.conf' % host.name)])
        self._wait_http('nova-api', '/')
        names = {h.name for h in self.hosts}
        conn = self.admin_connection()
        try:
            def computes_up():
                for name in ('nova-conductor', 'nova-scheduler'):
                    self.table.check_running(name)
                for host in self.hosts:
                    self.table.check_running(host.pname('nova-compute'))
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
                           logs=[self.table.log_path(h.pname('nova-compute'))
                                 for h in self.hosts])
        finally:
            conn.close()
        manage = [self.bin('nova-manage'), '--config-file', conf,
                  'cell_v2']
        self._run('nova-manage', manage + ['discover_hosts', '--verbose'])
        out = subprocess.run(manage + ['list_hosts'], capture_output=True,
                             text=True, timeout=120).stdout
        missing = [n for n in sorted(names) if ' %s ' % n not in out]
        if missing:
            raise procs.CloudError('nova-manage cell_v2 discover_hosts left '
                                   '%s unmapped:\n%s' % (missing, out))

    def _start_aodh(self):
        self.aodh_db = self._mariadb.create_database(
            'aodh', 'aodh', self.passwords['aodh-db'])
        conf = self._write('aodh', 'aodh.conf', configs.aodh(self))
        self._run('aodh-dbsync', [self.bin('aodh-dbsync'), '--config-file',
                                  conf])
        # NOTE: aodh.wsgi.api, and the keystonemiddleware in its paste
        # pipeline, read the default config files of project aodh only,
        # the first of which is ~/.aodh/aodh.conf: HOME points there.
        home = self.path('aodh', 'home')
        os.makedirs(os.path.join(home, '.aodh'), exist_ok=True)
        os.symlink(conf, os.path.join(home, '.aodh', 'aodh.conf'))
        self._gunicorn('aodh', 'aodh.wsgi.api', {'HOME': home})
        for name in ('aodh-listener', 'aodh-notifier'):
            self.table.spawn(name, [self.bin(name), '--config-file', conf])
        self._wait_http('aodh', '/')
        for name in ('aodh-listener', 'aodh-notifier'):
            self.table.check_running(name)

    # --- ha-snapshot ---

    def _write_key(self, name: str, key: str) -> str:
        path = self.etc('ha-snapshot', name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(key + '\n')
        return path

    def _rpc_keys(self) -> dict:
        """Provision the bus keys as an operator does: a master key for
        the manager, and for the API and each compute host's agent the
        keys derived from it (ha-snapshot-manage rpc-key derive): process
        name -> extra config."""
        from ha_snapshot import rpc_auth
        master = secrets.token_hex(32)
        self._write_key('rpc-master.key', master)

        def key(name, identity):
            return self._write_key(name + '.key', rpc_auth.derive(
                master.encode(), identity).decode())
        extra = {'ha-snapshot-api': ['--config-file', self._write(
            'ha-snapshot', 'ha-snapshot-api-rpc.conf',
            configs.rpc_key_conf(key('ha-snapshot-api', rpc_auth.API)))]}
        for host in self.hosts:
            name = host.pname('ha-snapshot-agent')
            extra[name] = ['--config-file', self._write(
                'ha-snapshot', name + '.conf', configs.agent_host(
                    host, key(name, rpc_auth.host_identity(host.name))))]
        return extra

    def _start_ha_snapshot(self):
        extra = self._rpc_keys()
        conf = self._write('ha-snapshot', 'ha-snapshot.conf',
                           configs.ha_snapshot(self))
        self._run('ha-snapshot-manage', [
            sys.executable, '-m', 'ha_snapshot.cmd.manage', '--config-file',
            conf, 'db', 'sync'])
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        for name, module in (
                ('ha-snapshot-manager', 'ha_snapshot.cmd.manager'),
                ('ha-snapshot-api', 'ha_snapshot.cmd.api')):
            self.table.spawn(name, [sys.executable, '-m', module,
                                    '--config-file', conf]
                             + extra.get(name, []), env=env, cwd=REPO)
        # NOTE: each agent runs inside its host, where the disk paths
        # libvirt gives it (instances_path/UUID/disk, its _base backing
        # file) are that host's files.
        for host in self.hosts:
            name = host.pname('ha-snapshot-agent')
            host.spawn('ha-snapshot-agent', [
                sys.executable, '-m', 'ha_snapshot.cmd.agent',
                '--config-file', conf] + extra[name], env=env, cwd=REPO)
        self._wait_http('ha-snapshot-api', '/')
        waits = [('ha-snapshot-manager', 'ha-snapshot-manager')] + [
            (h.pname('ha-snapshot-agent'), 'ha-snapshot-agent')
            for h in self.hosts]
        for name, daemon in waits:
            path = self.table.log_path(name)
            marker = '%s started' % daemon

            def started(name=name, path=path, marker=marker):
                self.table.check_running(name)
                return marker in procs.tail(path, 2000)
            procs.wait_for(started, START_TIMEOUT, '%s to log "%s"'
                           % (name, marker), logs=[path])

    # --- a host failure ---

    def kill_host(self, name: str) -> float:
        """SIGKILL everything of compute host ``name`` at once (its
        agent, nova-compute and privsep daemons, libvirtd, virtlogd and
        every QEMU), as a power cut would; the time.time() of the kill.

        Nova notices by missed heartbeats (``service_down_time``, 20 s
        here) unless told first (``forced_down``).
        """
        t = self.host(name).kill()
        self.log('harness: killed compute host %s' % name)
        if os.path.exists(os.path.join(self.run_dir, 'state.json')):
            self._save_state()
        return t

    def memory(self) -> dict:
        """RSS and PSS of every process of the cloud, in MiB (PSS shares
        the pages of the many Python processes fairly)."""
        seen = {}
        for name in self.table.names():
            proc = self.table.process(name)
            if proc is None:
                continue
            try:
                for p in [proc] + proc.children(recursive=True):
                    seen[p.pid] = p
            except psutil.NoSuchProcess:
                pass
        for host in self.hosts:
            for p in host.processes():
                seen[p.pid] = p
        rss = pss = 0
        for p in seen.values():
            try:
                info = p.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += info.pss
        return {'memory_rss_mib': round(rss / 2 ** 20),
                'memory_pss_mib': round(pss / 2 ** 20),
                'processes': len(seen)}

    # --- state and stop ---

    @property
    def state(self) -> dict:
        first = self.hosts[0]
        return {
            'run_dir': self.run_dir, 'log_dir': self.log_dir,
            'venv': self.venv, 'ports': self.ports,
            'passwords': self.passwords, 'keystone_url': self.keystone_url,
            'region': configs.REGION, 'transport_url': self.transport_url,
            'swift_endpoint': self.swift_endpoint,
            # NOTE: compute_host, libvirt_uri and libvirt_dir are the
            # first host's, as when the harness had one; 'hosts' has
            # each host's (libvirt, its instances folder, namespace).
            'compute_host': self.compute_host,
            'compute_hosts': [h.name for h in self.hosts],
            'hosts': {h.name: h.state() for h in self.hosts},
            'libvirt_uri': first.libvirt_uri,
            'libvirt_dir': first.libvirt_dir,
            'ha_snapshot_url': self.url('ha-snapshot-api'),
            'aodh_url': self.url('aodh') if self.with_aodh else None,
            'ha_snapshot_conf': self.etc('ha-snapshot', 'ha-snapshot.conf'),
            'nova_instances': self.instances_path,
            'timings': self.timings,
        }

    def _save_state(self):
        with open(os.path.join(self.run_dir, 'state.json'), 'w') as f:
            json.dump(self.state, f, indent=1, sort_keys=True)

    def stop(self) -> float:
        """Stop everything this cloud started, a killed host's leftovers
        and whatever runs inside a host's namespaces included; the
        seconds it took."""
        t = time.monotonic()
        for group in stop_mod.STOP_GROUPS[:2]:
            stop_mod.stop_group(self.table, stop_mod.members(
                group, self.table.names()))
        with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
            for f in [pool.submit(h.stop_libvirtd) for h in self.hosts]:
                f.result()
        for host in self.hosts:
            stop_mod.copy_tree(host.libvirtd.log_dir, os.path.join(
                self.log_dir, 'libvirt-%s' % host.name))
        stop_mod.stop_group(self.table, stop_mod.members(
            stop_mod.STOP_GROUPS[3], self.table.names()))
        # NOTE: the fixtures stop their own (and reap them); their logs
        # are copied first, as their cleanup removes their directories.
        # NOTE: stop may run twice (a test's own, then its fixture's).
        rabbit, swift, self._rabbit, self._swift = (self._rabbit,
                                                    self._swift, None, None)
        if rabbit is not None:
            stop_mod.copy_tree(rabbit.log_dir,
                               os.path.join(self.log_dir, 'rabbitmq'))
            rabbit.cleanUp()
        if swift is not None:
            with open(os.path.join(self.log_dir, 'swift.log'), 'w') as f:
                f.write(swift.log_text(100000))
            swift.cleanUp()
        stop_mod.stop_run_dir(self.run_dir)
        return time.monotonic() - t
