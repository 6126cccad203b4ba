"""ha-snapshot-agent as a service: one per compute host.

Serves the agent RPC API (protect, unprotect, restart, rebaseline) on
topic ``ha-snapshot-agent``, server = this host; runs a snapshot agent
and a health monitor per protected VM; re-creates them at start-up from
the state directory, so frozen overlays not yet acknowledged are sent
again.

The hypervisor driver is chosen per VM from its spec
(ha_snapshot/protection_spec.py): ``driver`` when given, ``libvirt`` for
a Nova server (``nova: true``: its domain is named by the instance uuid),
else ``[agent] hypervisor``.
"""

import os
import socket
import threading
import time

from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot.agent import health as health_mod
from ha_snapshot.agent import instance as instance_mod
from ha_snapshot.agent import live_restore as live_mod
from ha_snapshot.agent import rebaseline_disks
from ha_snapshot.agent import restart_disks
from ha_snapshot.agent import memory as memory_mod
from ha_snapshot.agent import restore as restore_mod
from ha_snapshot.agent import state as state_mod
from ha_snapshot import disk_layout
from ha_snapshot import exception
from ha_snapshot import hypervisor
from ha_snapshot.hypervisor import base as hv_base
from ha_snapshot.hypervisor import process
from ha_snapshot.image import qemu
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot import policy as policy_mod
from ha_snapshot import protection_spec
from ha_snapshot.policy import metrics
from ha_snapshot import rpc
from ha_snapshot import rpc_auth
from ha_snapshot import service
from ha_snapshot import statuses

LOG = logging.getLogger(__name__)

NOVA_DRIVER = protection_spec.NOVA_DRIVER
Spec = protection_spec.ProtectionSpec


class Protected:
    """A protected VM: its snapshot agent and its health monitor."""

    def __init__(self, agent, monitor):
        self.agent = agent
        self.monitor = monitor

    def stop(self) -> None:
        self.monitor.stop()
        self.agent.stop()


class AgentService(service.Service):

    name = 'ha-snapshot-agent'

    def __init__(self, conf, transport=None, driver=None):
        self.conf = conf
        self.transport = transport
        self.driver = driver
        self.drivers = {}
        """Driver name -> driver, for VMs not on [agent] hypervisor."""
        self.host = conf.agent.host or socket.gethostname()
        self.instances = {}
        self.restarts = {}
        """Instance -> the answer of its latest restart (the demo, tests)."""
        self._rebaselines = {}
        """Instance -> the lock its re-baselines take."""
        self.lock = threading.RLock()
        self.rpc_server = None
        self.app_metrics = None
        self._beat = threading.Event()
        self._beat_thread = None

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        conf = self.conf
        os.makedirs(conf.agent.state_dir, exist_ok=True)
        self.transport = self.transport or rpc.get_transport(conf)
        self.driver = self.driver or hypervisor.get_driver(
            conf, conf.agent.hypervisor)
        me = rpc_auth.host_identity(self.host)
        keys = rpc_auth.Keys.from_conf(conf, me)
        self.manager_api = manager_rpcapi.ManagerAPI(
            self.transport, timeout=conf.agent.rpc_timeout,
            signer=rpc_auth.Signer(me, keys))
        # NOTE: only the manager's messages signed with this host's key
        # are obeyed: another compute host cannot stop or restart VMs here.
        verifier = rpc_auth.Verifier.from_conf(
            conf, keys, rpc_auth.agent_audience(self.host),
            lambda sender: sender == rpc_auth.MANAGER)
        self.app_metrics = metrics.AppMetrics.from_entry_points()
        for st in state_mod.InstanceState.load_all(conf.agent.state_dir):
            try:
                self._start_instance(st)
            except exception.HaSnapshotException as e:
                LOG.error('Instance %s not resumed: %s', st.instance, e)
                self.report(st.instance, 'not resumed after agent restart: '
                            '%s' % e, {})
        self.rpc_server = rpc.get_server(self.transport, rpc.AGENT_TOPIC,
                                         self.host, [AgentEndpoint(self)],
                                         guard=verifier.verify)
        self.rpc_server.start()
        self._beat_thread = threading.Thread(target=self._heartbeat,
                                             name='heartbeat', daemon=True)
        self._beat_thread.start()
        LOG.info('Agent on %s: %d instances resumed', self.host,
                 len(self.instances))

    def stop(self) -> None:
        self._beat.set()
        if self.rpc_server is not None:
            self.rpc_server.stop()
            self.rpc_server.wait()
        with self.lock:
            # NOTE: all are told first, then waited for: one at a time,
            # 200 instances took longer than a service manager waits.
            for p in self.instances.values():
                p.monitor._stopping.set()
                p.agent._stopping.set()
                p.agent._now_event.set()
            for p in self.instances.values():
                p.stop()
            for p in self.instances.values():
                if p.agent.vm is not None:
                    p.agent.driver.detach(p.agent.vm)

    def reload(self) -> None:
        for p in list(self.instances.values()):
            p.agent.policy = self._policy(p.agent.state)

    def _heartbeat(self) -> None:
        while not self._beat.wait(self.conf.agent.heartbeat_interval):
            try:
                self.manager_api.heartbeat(self.host,
                                           sorted(self.instances))
            except messaging.MessagingException as e:
                LOG.debug('Heartbeat not sent: %s', e)

    # --- instances ----------------------------------------------------------

    def report(self, instance: str, reason: str, details: dict) -> None:
        """Report an abnormal VM to the manager, on a thread of its own
        that calls until a manager answers (a cast could be lost with the
        manager that took it: the incident would never be recovered)."""
        with self.lock:
            p = self.instances.get(instance)
        if p is not None:
            p.agent.mark_failed(reason)
        threading.Thread(target=self._deliver_report,
                         args=(instance, reason, details), daemon=True,
                         name='report-%s' % instance[:8]).start()

    def _deliver_report(self, instance: str, reason: str,
                        details: dict) -> bool:
        """True once a manager answered the report."""
        delay = self.conf.agent.retry_initial
        while True:
            try:
                decision = self.manager_api.report_health(
                    instance, self.host, reason, details)
            except messaging.MessagingException as e:
                LOG.warning('Instance %s: report "%s" not delivered (%s); '
                            'trying again in %.1f s', instance, reason, e,
                            delay)
            except exception.InstanceMoved as e:
                self.moved(instance, e)
                return False
            except exception.HaSnapshotException as e:
                LOG.error('Instance %s: report "%s" refused: %s', instance,
                          reason, e)
                return False
            else:
                LOG.info('Instance %s: report "%s" taken by the manager: '
                         '%s', instance, reason, decision)
                return True
            if self._beat.wait(delay):
                LOG.error('Instance %s: report "%s" not delivered before '
                          'the agent stopped', instance, reason)
                return False
            delay = min(delay * 2, self.conf.agent.retry_max)

    def driver_name(self, spec: Spec) -> str:
        return spec.driver_name(self.conf.agent.hypervisor)

    def driver_for(self, spec: Spec):
        """The hypervisor driver of a VM with this spec (loaded once)."""
        name = self.driver_name(spec)
        if name == self.conf.agent.hypervisor:
            return self.driver
        with self.lock:
            if name not in self.drivers:
                self.drivers[name] = hypervisor.get_driver(self.conf, name)
            return self.drivers[name]

    def _policy(self, st):
        """The policy of the instance's spec, else [policy] name."""
        return policy_mod.load_policy(self.conf, st.instance,
                                      name=st.spec.policy)

    def _check_policy(self, instance: str, spec: Spec) -> None:
        name = spec.policy
        if name is None:
            return
        available = policy_mod.available_policies()
        if name not in available:
            raise exception.HaSnapshotException(
                'Instance %s cannot be protected: its spec asks for the '
                'snapshot policy %r, which is not installed on %s '
                '(available: %s).' % (instance, name, self.host,
                                      ', '.join(available) or 'none'))

    def _start_instance(self, st, vm=None,
                        await_start: bool = False) -> Protected:
        driver = self.driver_for(st.spec)
        # NOTE: a sampler per instance: its window of readings follows
        # that instance's decisions, not anyone's.
        agent = instance_mod.SnapshotAgent(
            self.conf, driver, self.manager_api, st,
            self._policy(st), self.host, reporter=self.report,
            sampler=metrics.HostSampler(
                window=self.conf.policy.host_window),
            app_metrics=self.app_metrics, on_moved=self.moved)
        agent.vm = vm or agent._attach()
        monitor = health_mod.HealthMonitor(
            self.conf, driver, agent.vm, st.instance, self.report,
            figures=agent._figures, qga_path=st.spec.qga_path)
        if await_start and not driver.is_alive(agent.vm):
            # NOTE: re-baselined while stopped: Nova starts it next.
            agent.start_deadline = monitor.start_deadline = (
                time.monotonic() + self.conf.agent.rebaseline_start_timeout)
        p = Protected(agent, monitor)
        with self.lock:
            self.instances[st.instance] = p
        monitor.start()
        agent.start()
        # NOTE: a VM that died while no agent watched is reported now.
        if agent.start_deadline is None and not driver.is_alive(agent.vm):
            monitor._report('VM not running when protection resumed', {})
        return p

    def protect(self, instance: str, project: str, spec) -> None:
        """Protect ``instance`` as ``spec`` (a ProtectionSpec or its JSON
        object) says; InvalidProtectionSpec names what is wrong with it."""
        # NOTE: a Nova server's domain is named by its uuid.
        spec = Spec.from_dict(spec).for_agent(instance,
                                              self.conf.agent.hypervisor)
        self._check_policy(instance, spec)
        with self.lock:
            p = self.instances.get(instance)
            if p is not None:
                self._change_policy(p, spec.policy)
                LOG.info('Instance %s is already protected here', instance)
                return
            st = state_mod.InstanceState(instance=instance, project=project,
                                         spec=spec)
            st.save(self.conf.agent.state_dir)
            self._start_instance(st)
        LOG.info('Instance %s: protection started', instance)

    def _adopt(self, instance: str, project, spec, restore_point) -> None:
        """The state of an instance evacuated here, on ``restore_point``,
        unless this agent protects it already."""
        spec = Spec.from_dict(spec).for_agent(instance,
                                              self.conf.agent.hypervisor)
        self._check_policy(instance, spec)
        path = state_mod.InstanceState.path_for(self.conf.agent.state_dir,
                                                instance)
        with self.lock:
            if instance in self.instances or os.path.exists(path):
                return
            if not isinstance(project, str) or not project:
                raise exception.InvalidProtectionSpec(
                    reason='instance %s is not protected here and the '
                    'rebaseline names no project' % instance)
            st = state_mod.InstanceState(instance=instance, project=project,
                                         spec=spec)
            st.parent = restore_point
            st.save(self.conf.agent.state_dir)
        LOG.info('Instance %s: moved here (evacuated); protected from '
                 'restore point %s', instance, restore_point)

    def _change_policy(self, p, name) -> None:
        """A protect of a protected instance naming another policy."""
        st = p.agent.state
        if name is None or name == st.spec.policy:
            return
        # NOTE: built first: a policy that refuses its options changes
        # nothing.
        new = policy_mod.load_policy(self.conf, st.instance, name=name)
        with p.agent.lock:
            st.spec = st.spec.replace(policy=name)
            p.agent.policy = new
            p.agent.save()
        LOG.info('Instance %s: snapshot policy now %s', st.instance, name)

    def unprotect(self, instance: str) -> None:
        with self.lock:
            p = self.instances.pop(instance, None)
        if p is None:
            return
        p.stop()
        if p.agent.vm is not None:
            # NOTE: nothing of ours stays in the VM's disks (the libvirt
            # driver's bitmaps); the domain may be gone already.
            try:
                p.agent.driver.stop_tracking(p.agent.vm)
            except exception.HaSnapshotException as e:
                LOG.warning('Instance %s: change tracking not removed: %s',
                            instance, e)
            p.agent.driver.detach(p.agent.vm)
        p.agent.state.remove(self.conf.agent.state_dir)
        LOG.info('Instance %s: protection stopped', instance)

    def moved(self, instance: str, error) -> None:
        """The manager says ``instance`` runs on another host now (it was
        evacuated while this one was away): stop protecting it here and
        drop its state; its old domain and disk are Nova's to clean."""
        with self.lock:
            p = self.instances.pop(instance, None)
        if p is not None:
            p.stop()
            if p.agent.vm is not None:
                p.agent.driver.detach(p.agent.vm)
            st = p.agent.state
        else:
            path = state_mod.InstanceState.path_for(self.conf.agent.state_dir,
                                                    instance)
            if not os.path.exists(path):
                return
            st = state_mod.InstanceState.load(path)
        st.remove(self.conf.agent.state_dir)
        LOG.warning('Instance %s: protection on %s stopped, the server '
                    'moved while this host was away (%s)', instance,
                    self.host, error)

    def _take(self, instance: str, expected_exit: bool = False) -> tuple:
        """Stop protecting ``instance`` for a while: (state, vm or None)."""
        with self.lock:
            p = self.instances.pop(instance, None)
        if p is None:
            path = state_mod.InstanceState.path_for(self.conf.agent.state_dir,
                                                    instance)
            if not os.path.exists(path):
                raise exception.InstanceNotFound(
                    'Instance %s is not protected on %s.' % (instance,
                                                             self.host),
                    instance=instance)
            return state_mod.InstanceState.load(path), None
        p.monitor.expected_exit = expected_exit
        p.stop()
        return p.agent.state, p.agent.vm

    def restart(self, instance: str, restore_point: str,
                recovery: str | None = None) -> dict:
        """Make sure the failed VM is gone, start it on the restore point.

        Once per ``recovery``: asked again by the same recovery (a manager
        replica took it over after the first had started the VM), the VM
        it started is left running and described again.
        """
        t0 = time.monotonic()
        with self.lock:
            p = self.instances.get(instance)
        if recovery is not None and p is not None and (
                p.agent.state.restarted_by == recovery):
            st = p.agent.state
            if st.spec.pid and process.pid_running(st.spec.pid):
                LOG.info('Instance %s: recovery %s restarted it already '
                         '(pid %d); left running', instance, recovery,
                         st.spec.pid)
                return {'pid': st.spec.pid, 'disk': st.spec.disk_path,
                        'already': True}
        if p is not None and self.driver_name(p.agent.state.spec) == (
                NOVA_DRIVER):
            raise exception.OperationNotSupported(
                vm=instance, driver=NOVA_DRIVER, what='restart a VM',
                reason='its VMs are recovered by a Nova rebuild, then a '
                'rebaseline')
        if p is not None:
            _check_restartable(instance, p.agent.state.spec)
        st, vm = self._take(instance, expected_exit=True)
        spec = st.spec
        _check_restartable(instance, spec)
        if vm is not None:
            try:
                self.driver.kill(vm)
            except exception.HaSnapshotException:
                pass
        _kill_pid(spec.pid)
        workdir = os.path.join(self.conf.agent.state_dir, instance)
        os.makedirs(workdir, exist_ok=True)
        disk_path = os.path.join(workdir, 'restored-%s.qcow2' % restore_point)
        vm_spec = spec.vm
        # NOTE: every disk of a multi-disk point but the root is restored
        # whole before the VM starts (also with live restore: only the
        # root streams); see doc/source/admin/protected-disks.rst.
        manifest = self.manager_api.get_manifest(instance, restore_point)
        disks = restart_disks.RestartDisks(
            manifest, workdir, restore_point, vm_spec)
        disks.fetch_others(lambda m, path: restore_mod.fetch(
            self.manager_api, instance, restore_point, path,
            limits=qemu.Limits.from_conf(self.conf), manifest=m))
        extra = tuple(vm_spec.extra_args or ())
        if vm_spec.serial_log:
            extra += ('-chardev', 'file,id=serial0,path=%s,append=on'
                      % vm_spec.serial_log.replace(',', ',,'),
                      '-serial', 'chardev:serial0')

        def vm_of(path):
            return hv_base.VMSpec(
                name=spec.name, qmp_path=spec.qmp_path,
                log_path=spec.log_path or os.path.join(workdir, 'qemu.log'),
                machine=_default(vm_spec.machine, 'none'),
                accel=_default(vm_spec.accel, 'tcg'),
                memory_mb=_default(vm_spec.memory_mb, 64),
                paused=_default(vm_spec.paused, False),
                pidfile=vm_spec.pidfile, extra_args=extra,
                # NOTE: the guest agent's port again, so that the restarted
                # guest is quiesced (and health-pinged) as before.
                agent_path=(spec.qga_path if _default(vm_spec.machine,
                                                      'none') != 'none'
                            else None),
                disks=disks.specs(path))

        def start_vm(path):
            return self.driver.start(vm_of(path))

        fetched = []

        def fetch():
            restore_mod.fetch(self.manager_api, instance, restore_point,
                              disk_path,
                              limits=qemu.Limits.from_conf(self.conf),
                              manifest=disks.root_manifest)
            fetched.append(disk_path)
        # NOTE: memory state wins over live restore: the guest may run
        # only once its whole state is loaded, and on a disk that is
        # whole (see doc/source/admin/memory-state.rst).
        new_vm, memory_info = memory_mod.resume(
            self.conf, self.driver, self.manager_api, instance,
            restore_point, vm_of(disk_path), fetch)
        if new_vm is not None:
            running = round(time.monotonic() - t0, 3)
            timings = {'live': False, 'recover_seconds': running,
                       'restored_seconds': running}
        elif self.conf.agent.live_restore and not fetched:
            # NOTE: returns once the stream completed; raises
            # LiveRestoreFailed (VM stopped) when it did not.
            disk_path = os.path.join(workdir, 'live-%s.qcow2' % restore_point)
            if os.path.exists(disk_path):
                os.unlink(disk_path)  # NOTE: left by a failed attempt
            outcome = live_mod.restore(
                self.conf, self.driver, disks.root_manifest,
                lambda index: self.manager_api.get_chunk(
                    instance, restore_point, index),
                disk_path, start_vm, t0=t0, name=spec.name,
                stop_event=self._beat)
            new_vm, timings = outcome.vm, outcome.result()
        else:
            if not fetched:
                fetch()
            new_vm = start_vm(disk_path)
            running = round(time.monotonic() - t0, 3)
            timings = {'live': False, 'recover_seconds': running,
                       'restored_seconds': running}
        timings.update(memory_info)
        old_files = [image['frozen'] for x in st.pending
                     for image in x.images()] + [spec.disk_path]
        old_files += disks.stale_files(disk_path)
        for x in st.pending:
            if x.memory:
                old_files += [x.memory, x.memory + '.json']
        # NOTE: the stopped agent may have made a restore point durable
        # after the manager chose this one (a delta in flight when the VM
        # died): the restored disk is then no child of the newest point and
        # is sent whole (a full delta) instead of taken as the baseline.
        newer = st.parent not in (None, restore_point)
        st.spec = spec.replace(pid=new_vm.pid, disk_path=disk_path,
                               disk=disks.root_name)
        st.layout = disks.shape
        st.pending = []
        st.parent = restore_point
        st.baseline_restore_point = None if newer else restore_point
        st.status = statuses.InstanceStatus.PROTECTING
        st.restarted_by = recovery
        st.save(self.conf.agent.state_dir)
        self._start_instance(st, vm=new_vm)
        for path in old_files:
            if path and path not in disks.paths(disk_path) and (
                    os.path.exists(path)) and path.startswith(workdir):
                os.unlink(path)
        # NOTE: the recovery named: the failover benchmark counts the
        # restarts of each recovery from this line (exactly one each).
        LOG.info('Instance %s restarted from restore point %s (pid %d; '
                 'running after %.3f s, restored after %.3f s%s) by '
                 'recovery %s', instance, restore_point, new_vm.pid,
                 timings['recover_seconds'], timings['restored_seconds'],
                 ', live' if timings['live'] else
                 ', resumed from memory in %.3f s' % timings['resume_seconds']
                 if timings['memory_state_restored'] else '', recovery)
        self.restarts[instance] = dict(timings, pid=new_vm.pid,
                                       disk=disk_path,
                                       disks=disks.paths(disk_path))
        return self.restarts[instance]


    def rebaseline(self, instance: str, restore_point: str, *,
                   project: str | None = None, spec=None) -> dict:
        """The VM's disk was replaced by an image of ``restore_point`` (a
        Nova rebuild): drop what was known of the old disk, track changes
        of the new one from now on, and ship the next delta with parent
        ``restore_point``, not a full.

        A delta this agent made durable after ``restore_point`` means the
        manager's newest point is not the disk's: the next delta is then
        a full (a re-baseline on top of the newest), as after a restart.

        ``project`` and ``spec`` (the manager sends them after an
        evacuation): an instance this agent does not protect yet is
        protected from ``restore_point`` on, as if it had always been.

        The rebuild gave the root disk back; every other disk the point
        holds (its ephemeral disk; swap when protected) is written over
        the stopped domain's file of that disk before change tracking
        starts (ha_snapshot/agent/rebaseline_disks.py); the answer names
        them (``disks_restored``) and the disks of the domain the point
        does not hold (``disks_left``, as Nova made them).

        One at a time per instance: a recovery that asks again while the
        first call still writes the disks (its call timed out) waits for
        it, then does it again (the writes are the same).
        """
        with self.lock:
            lock = self._rebaselines.setdefault(instance, threading.Lock())
        with lock:
            return self._rebaseline(instance, restore_point,
                                    project=project, spec=spec)

    def _rebaseline(self, instance: str, restore_point: str, *,
                    project: str | None, spec) -> dict:
        if spec is not None:
            self._adopt(instance, project, spec, restore_point)
        st, vm = self._take(instance, expected_exit=True)
        driver = self.driver_for(st.spec)
        newer = st.parent not in (None, restore_point)
        if vm is not None:
            driver.detach(vm)
        # NOTE: after a rebuild the domain is a new one (same name): attach
        # afresh; the agent's own files of the old disk go.
        spec = st.spec
        vm = driver.attach(spec.domain or spec.name, spec.qmp_path,
                           spec.pid, log_path=spec.log_path)
        old_files = [x.frozen for x in st.pending if x.committable]
        workdir = os.path.join(self.conf.agent.state_dir, instance)
        try:
            # NOTE: before change tracking starts: the bitmaps begin on
            # the disks as the restore point has them (see
            # ha_snapshot/agent/rebaseline_disks.py).
            manifest = self.manager_api.get_manifest(instance,
                                                     restore_point)
            written = rebaseline_disks.restore(
                driver, vm, restore_point, manifest,
                lambda m, path: restore_mod.fetch(
                    self.manager_api, instance, restore_point, path,
                    limits=qemu.Limits.from_conf(self.conf), manifest=m),
                workdir, limits=qemu.Limits.from_conf(self.conf))
            if newer:
                driver.stop_tracking(vm)
                tracked = False
            else:
                tracked = driver.start_tracking(vm)
        except BaseException:
            # NOTE: e.g. a domain Nova is still stopping: let the domain
            # go, or its event callbacks stay registered and the next
            # attach of it (a protect cast, the recovery's next try) fails
            # with "event callback already tracked".
            driver.detach(vm)
            raise
        for path in old_files:
            if path.startswith(workdir) and os.path.exists(path):
                os.unlink(path)
        st.pending = []
        st.spec = st.spec.replace(disk=None)
        # NOTE: the disks are the point's now (a disk left as Nova made
        # it, or protected otherwise, is a change of disks: a full delta).
        st.layout = disk_layout.shape(manifest.get('disks') or None)
        if not newer:
            st.parent = restore_point
        st.baseline_restore_point = (None if tracked or newer
                                     else restore_point)
        st.status = statuses.InstanceStatus.PROTECTING
        st.save(self.conf.agent.state_dir)
        # NOTE: the recoveries re-baseline a stopped server, then start it:
        # its protection begins when it runs.
        self._start_instance(st, vm=vm, await_start=True)
        driver_name = self.driver_name(st.spec)
        LOG.info('Instance %s: rebaselined on restore point %s (%s driver; '
                 'disks restored: %s; left as they were: %s; next delta '
                 '%s)', instance, restore_point, driver_name,
                 ', '.join(written['restored']) or 'none (root only)',
                 ', '.join(written['left']) or 'none',
                 'a full: newer restore points exist' if newer
                 else 'an increment' if tracked else 'none: the base is it')
        return {'instance': instance, 'restore_point': restore_point,
                'driver': driver_name, 'full': newer,
                'disks_restored': written['restored'],
                'disks_left': written['left']}


def _check_restartable(instance: str, spec: Spec) -> None:
    if spec.vm is None:
        raise exception.InvalidProtectionSpec(
            reason="instance %s cannot be restarted: its spec has no 'vm' "
            "(how the driver starts the VM again)" % instance)


def _default(value, default):
    return default if value is None else value


def _kill_pid(pid) -> None:
    if not pid:
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


class AgentEndpoint:
    """RPC API 1.3; see ha_snapshot/agent/rpcapi.py for the history."""

    target = messaging.Target(version='1.3')

    def __init__(self, svc: AgentService):
        self.svc = svc

    def protect(self, ctxt, instance, project, spec):
        try:
            self.svc.protect(instance, project, spec)
        except exception.HaSnapshotException as e:
            LOG.error('Instance %s not protected: %s', instance, e)

    def unprotect(self, ctxt, instance):
        self.svc.unprotect(instance)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def restart(self, ctxt, instance, restore_point, recovery=None):
        return self.svc.restart(instance, restore_point, recovery)

    @messaging.expected_exceptions(exception.HaSnapshotException)
    def rebaseline(self, ctxt, instance, restore_point, project=None,
                   spec=None):
        if spec is None:
            return self.svc.rebaseline(instance, restore_point)
        return self.svc.rebaseline(instance, restore_point, project=project,
                                   spec=spec)
