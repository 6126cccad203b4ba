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
import time

import psutil

from tools.cloud import computes
from tools.cloud import configs
from tools.cloud import ha_services
from tools.cloud import mariadb
from tools.cloud import openstack_services as services
from tools.cloud import procs
from tools.cloud import stop as stop_mod
from tools.cloud import venv as venv_mod

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = procs.REPO
DEFAULT_STATE_DIR = os.environ.get('HA_SNAPSHOT_CLOUD_DIR',
                                   '/var/tmp/ha-snapshot-cloud')
COMPUTE_HOST = computes.COMPUTE_HOSTS[0]
START_TIMEOUT = procs.START_TIMEOUT
USERS = configs.USERS
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
                self._timed('keystone', services.start_keystone, self)
            ks = pool.submit(keystone)

            def nova_db():
                # NOTE: Nova's schemas need no Keystone: they load while
                # Keystone starts. nova.conf names the broker and libvirtd.
                mdb.result()
                rabbit.result()
                virt.result()
                self._timed('nova_db', services.sync_nova, self)
            db = pool.submit(nova_db)
            self._timed('swift', self._start_swift)
            for f in (rabbit, virt, ks, db):
                f.result()
        # NOTE: Glance, Placement, the stub and Aodh start (db sync, the
        # server, an unauthenticated GET /) without Keystone's users and
        # catalog; Nova's computes need them (Placement): they wait below.
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(self._timed, name, fn, self)
                       for name, fn in (
                           ('keystone_setup', services.setup_keystone),
                           ('glance', services.start_glance),
                           ('placement', services.start_placement),
                           ('netstub', services.start_netstub))]
            if self.with_aodh:
                futures.append(pool.submit(self._timed, 'aodh',
                                           services.start_aodh, self))
            for f in futures:
                f.result()
        self._timed('nova', services.start_nova, self)
        if self.with_ha_snapshot:
            self._timed('ha_snapshot', ha_services.start, self)

    def _timed(self, name, fn, *args):
        t = time.monotonic()
        fn(*args)
        self.timings['%s_seconds' % name] = round(time.monotonic() - t, 1)

    def run_command(self, name: str, argv: list, env=None,
                    timeout: float = 300):
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

    def write_conf(self, service, name, sections) -> str:
        os.makedirs(self.path(service), exist_ok=True)
        return configs.write_ini(self.etc(service, name), sections)

    # --- infrastructure ---

    def _start_rabbit(self):
        from ha_snapshot.tests.fixtures import rabbitmq as rabbit_fx
        os.makedirs(self.path(), exist_ok=True)
        rabbit = rabbit_fx.RabbitMQServer(root_dir=self.path())
        # NOTE: a fixture whose setUp fails cleans itself up, and a second
        # cleanUp() raises TypeError, which hid the broker's own error from
        # stop(): kept only once it is up.
        rabbit.setUp()
        self._rabbit = rabbit
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
        swift = swift_fx.SwiftServer(base_dir=self.path())
        swift.setUp()  # NOTE: see _start_rabbit
        self._swift = swift
        self.swift_endpoint = self._swift.endpoint
        for name, proc in self._swift.procs.items():
            self.table.record('swift-' + name, proc.pid)

    def _start_libvirtds(self):
        with concurrent.futures.ThreadPoolExecutor(len(self.hosts)) as pool:
            for f in [pool.submit(h.start_libvirtd, self.instances_path)
                      for h in self.hosts]:
                f.result()

    # --- OpenStack ---

    def serve_wsgi(self, name: str, module: str, env: dict) -> None:
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

    def wait_http(self, name: str, path: str = '/', timeout=START_TIMEOUT):
        url = self.url(name) + path

        def ready():
            self.table.check_running(name)
            status = procs.http_status(url)
            return status is not None and status < 500
        procs.wait_for(ready, timeout, '%s to answer GET %s' % (name, url),
                       logs=[self.table.log_path(name)])

    def admin_connection(self):
        import openstack
        return openstack.connect(
            auth_url=self.keystone_url, username='admin',
            password=self.passwords['admin'], project_name='admin',
            user_domain_name='Default', project_domain_name='Default',
            region_name=configs.REGION, identity_api_version='3')

    # --- ha-snapshot ---

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

    def restart_host(self, name: str) -> float:
        """Start killed compute host ``name`` again, as a repaired
        machine boots: new namespaces on the same folders and
        configuration, its libvirtd, nova-compute and agent. Returns the
        seconds it took, once nova-compute reported to Nova again (its
        service stays down while forced down: unsetting that is the
        caller's business) and the agent logged its start."""
        host = self.host(name)
        if host.killed_at is None:
            raise procs.CloudError('compute host %s was not killed: '
                                   'nothing to restart' % name)
        t, t0 = time.time(), time.monotonic()
        host.forget()
        host.start_libvirtd(self.instances_path)
        services.start_compute(self, host)
        agent = host.pname('ha-snapshot-agent')
        if self.with_ha_snapshot:
            before = ha_services.started_count(self, agent,
                                               'ha-snapshot-agent')
            ha_services.start_agent(self, host)
        services.wait_reported(self, host, t)
        if self.with_ha_snapshot:
            ha_services.wait_started(self, agent, 'ha-snapshot-agent',
                                     before)
        self.log('harness: restarted compute host %s' % name)
        self._save_state()
        return time.monotonic() - t0

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
