"""What the integration scenario does to the harness's cloud, from outside.

Everything here talks to the real services the way a user, an operator or
the hypervisor would: openstacksdk against Keystone/Glance/Nova, Nova's
versioned notifications read off RabbitMQ, libvirt for the domain (its
QEMU monitor for writes into the running disk, its pid file to kill it),
qemu-io on a copy of the disk file for reads. It never asks ha-snapshot
what it did except through its public REST API.

This module may import openstack, oslo.messaging, libvirt and
ha_snapshot.rpc (for the transport helper); it must not import the
manager, agent or storage code it checks.
"""

import datetime
import os
import queue
import subprocess
import time

from oslo_config import cfg
import oslo_messaging as messaging

from ha_snapshot import rpc

_POLL = 0.2


class ScenarioError(Exception):
    """A step of the scenario did not go as it must."""


def api_time(text: str) -> float:
    """An ISO 8601 time of the ha-snapshot API (``...Z`` or ``+00:00``)
    as epoch seconds."""
    return datetime.datetime.fromisoformat(
        text.replace('Z', '+00:00')).timestamp()


def wait_for(predicate, timeout: float, what: str, poll: float = _POLL):
    """The first truthy ``predicate()``; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise ScenarioError('timed out after %.0f s waiting for %s'
                                % (timeout, what))
        time.sleep(poll)


def connect(state: dict, user: str = 'admin'):
    import openstack
    project = {'admin': 'admin', 'demo': 'demo'}[user]
    return openstack.connect(
        auth_url=state['keystone_url'], username=user,
        password=state['passwords'][user], project_name=project,
        user_domain_name='Default', project_domain_name='Default',
        region_name=state['region'], identity_api_version='3')


class NotificationLog:
    """Nova's versioned notifications, as they arrive, in a queue.

    A listener pool of its own: it sees every notification besides (not
    instead of) ha-snapshot-manager's listener.
    """

    def __init__(self, transport_url: str):
        self.conf = cfg.ConfigOpts()
        self.conf([], project='ha-snapshot-e2e', default_config_files=[])
        self.transport = rpc.get_notification_transport(
            self.conf, url=transport_url)
        self.events = queue.Queue()
        self.seen = []

        log = self

        class Endpoint:
            def _record(self, ctxt, publisher_id, event_type, payload,
                        metadata):
                log.events.put((event_type, payload))

            info = warn = error = _record

        self.listener = messaging.get_notification_listener(
            self.transport,
            [messaging.Target(topic='versioned_notifications',
                              exchange='nova')],
            [Endpoint()], executor='threading', pool='ha-snapshot-e2e')

    def start(self):
        self.listener.start()

    def stop(self):
        self.listener.stop()
        self.listener.wait()
        self.transport.cleanup()

    def wait(self, event_type: str, uuid: str, timeout: float) -> dict:
        """The payload of ``event_type`` for instance ``uuid``."""
        for event, payload in self.seen:
            if event == event_type and _uuid(payload) == uuid:
                return payload
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ScenarioError(
                    'timed out after %.0f s waiting for the notification '
                    '%s of server %s (seen: %s)' % (
                        timeout, event_type, uuid,
                        sorted({e for e, _p in self.seen})))
            try:
                event, payload = self.events.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            self.seen.append((event, payload))
            if event == event_type and _uuid(payload) == uuid:
                return payload


class EventPublisher:
    """Events on Aodh's event-alarm topic, as Ceilometer publishes them.

    Ceilometer does not run here; what it would send when a server fails
    (an ``event`` sample on topic ``alarm.all`` of exchange ``aodh``, a
    list of events with typed traits) is sent instead, and Aodh's own
    listener, evaluator and notifier do the rest.
    """

    def __init__(self, transport_url: str):
        import oslo_messaging.opts
        self.conf = cfg.ConfigOpts()
        for group, opts in oslo_messaging.opts.list_opts():
            self.conf.register_opts(opts, group=group)
        self.conf([], project='ha-snapshot-e2e', default_config_files=[])
        # NOTE: Aodh's listener reads its topic on its own exchange.
        self.conf.set_override('control_exchange', 'aodh')
        self.transport = rpc.get_notification_transport(
            self.conf, url=transport_url)
        self.notifier = messaging.Notifier(
            self.transport, publisher_id='ceilometer.ha-e2e',
            driver='messagingv2', topics=['alarm.all'])

    def publish(self, event_type: str, traits: dict) -> None:
        import datetime
        import uuid
        event = {'message_id': str(uuid.uuid4()), 'event_type': event_type,
                 'generated': datetime.datetime.now(
                     datetime.timezone.utc).isoformat(),
                 'traits': [[k, 1, v] for k, v in sorted(traits.items())],
                 'raw': {}}
        self.notifier.sample(rpc.context(), 'event', [event])

    def close(self):
        self.transport.cleanup()


def _uuid(payload) -> str | None:
    try:
        return payload['nova_object.data']['uuid']
    except (KeyError, TypeError):
        return None


def host_facts(state: dict, host: str | None = None) -> dict:
    """libvirt_uri and libvirt_dir of compute ``host`` (default: the
    harness's first)."""
    host = host or state['compute_host']
    hosts = state.get('hosts') or {
        state['compute_host']: {'libvirt_uri': state['libvirt_uri'],
                                'libvirt_dir': state['libvirt_dir']}}
    if host not in hosts:
        raise ScenarioError('no compute host %r in the harness (hosts: %s)'
                            % (host, ', '.join(sorted(hosts))))
    return hosts[host]


class Domain:
    """The libvirt domain of a Nova server, seen from its compute host
    (``host``; default: the harness's first)."""

    def __init__(self, state: dict, instance_name: str,
                 host: str | None = None):
        import libvirt
        self.state = state
        self.name = instance_name
        self.host = host_facts(state, host)
        self.conn = libvirt.open(self.host['libvirt_uri'])
        self.dom = self.conn.lookupByName(instance_name)

    def close(self):
        self.conn.close()

    def hmp(self, command: str) -> str:
        import libvirt_qemu
        return libvirt_qemu.qemuMonitorCommand(
            self.dom, command,
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)

    def write(self, pattern: int, offset: int, length: int,
              target: str = 'vda') -> None:
        """Write ``length`` bytes of ``pattern`` at ``offset`` of disk
        ``target``.

        NOTE: HMP qemu-io on the disk's virtio device runs in the live
        QEMU, like a guest write (it goes through the active layer,
        whatever overlays and backups sit under it); an error comes back
        as text, not as a monitor error.
        """
        out = self.hmp('qemu-io -d %s/virtio-backend "write -P 0x%02x %d '
                       '%d"' % (self._disk(target).find('alias').get('name'),
                                pattern, offset, length))
        if out.strip():
            raise ScenarioError('qemu-io write into %s failed: %s'
                                % (self.name, out.strip()))

    def _disk(self, target: str):
        import xml.etree.ElementTree as ET
        root = ET.fromstring(self.dom.XMLDesc())
        for disk in root.iter('disk'):
            t = disk.find('target')
            if t is not None and t.get('dev') == target:
                return disk
        raise ScenarioError('domain %s has no %s disk' % (self.name,
                                                         target))

    def disk_path(self, target: str = 'vda') -> str:
        return self._disk(target).find('source').get('file')

    def qemu_pid(self) -> int:
        path = os.path.join(self.host['libvirt_dir'], 'run', 'qemu',
                            self.name + '.pid')
        with open(path) as f:
            return int(f.read().strip())

    def nsenter(self) -> list:
        """The command prefix that runs a program inside the compute
        host, where the disk paths libvirt reports resolve (each host's
        instances folder is mounted over the same path there)."""
        path = os.path.join(self.host['libvirt_dir'], 'libvirtd.pid')
        with open(path) as f:
            pid = int(f.read().strip())
        return ['nsenter', '--mount=/proc/%d/ns/mnt' % pid]


def copy_disk(disk_path: str, workdir: str, nsenter=(),
              fmt: str = 'qcow2') -> str:
    """A standalone copy of the disk (its whole backing chain), in
    format ``fmt`` (a raw one is sparse).

    ``nsenter``: Domain.nsenter(), to read the disk inside its host (the
    copy lands in ``workdir``, a path the same inside and out).

    NOTE: -U (force share): the live QEMU holds the disk's locks; the
    copy is taken once nothing writes (after the rebuild) and cannot
    change while it is read.
    """
    os.makedirs(workdir, exist_ok=True)
    copy = os.path.join(workdir, 'disk-copy.' + fmt)
    subprocess.run(list(nsenter) + ['qemu-img', 'convert', '-U', '-O',
                                    fmt, disk_path, copy],
                   check=True, capture_output=True, timeout=600)
    return copy


def holds_pattern(image: str, pattern: int, offset: int,
                  length: int, fmt: str = 'qcow2') -> bool:
    """Whether ``image`` (a copy_disk) holds ``pattern`` there (qemu-io)."""
    proc = subprocess.run(
        ['qemu-io', '-r', '-f', fmt, image, '-c',
         'read -P 0x%02x %d %d' % (pattern, offset, length)],
        capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    return proc.returncode == 0 and 'verification failed' not in out \
        and 'read %d/%d bytes' % (length, length) in out
