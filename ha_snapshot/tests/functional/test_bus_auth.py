"""Message identity and host authorization over a real RabbitMQ.

A real ha-snapshot-manager service (in this process, its own database,
file store and spool) with an operator's master key, and a real
ha-snapshot-agent service for host B holding only B's derived key, on a
private RabbitMQ. The server of host B is recorded on B and has a restore
point made by B's own signed calls. A rogue client holding host A's key
(a compromised compute host A) then tries everything the issue names:
each refusal is typed, logged with the claimed sender, and leaves the
database and the store as they were; B's own calls go on working.
"""

import base64
import hashlib
import os
import time

import fixtures
import zstandard

from ha_snapshot.agent import rpcapi as agent_rpcapi
from ha_snapshot.agent import service as agent_service
from ha_snapshot.db import migration
from ha_snapshot import delta as delta_mod
from ha_snapshot import exception
from ha_snapshot import hypervisor
from ha_snapshot.manager import rpcapi as manager_rpcapi
from ha_snapshot.manager import service as manager_service
from ha_snapshot import rpc
from ha_snapshot import rpc_auth
from ha_snapshot.tests import base
from ha_snapshot.tests.fixtures import rabbitmq

KiB = 1 << 10
MiB = 1 << 20
PROJECT = 'tenant-b'
HOST_A = 'compute-a'
HOST_B = 'compute-b'


def _part(instance, sequence, raw):
    return {'instance': instance, 'sequence': sequence, 'index': 0,
            'extents': [[0, len(raw), delta_mod.DATA]],
            'raw_size': len(raw), 'compression': 'zstd',
            'sha256': hashlib.sha256(raw).hexdigest(),
            'payload': base64.b64encode(
                zstandard.ZstdCompressor().compress(raw)).decode()}


def _header(instance, sequence, parent, raw, project=PROJECT):
    return {'instance': instance, 'project': project, 'sequence': sequence,
            'parent': parent, 'virtual_size': MiB,
            'cluster_size': 64 * KiB, 'part_count': 1,
            'changed_bytes': len(raw), 'data_bytes': len(raw),
            'created_at': time.time(), 'format_version': 1}


def start_signed_manager(test, prefix: str) -> None:
    """A real manager service on the shared broker, on an exchange of its
    own (tests share the broker), signing with a master key the test
    holds; sets ``log``, ``master``, ``exchange``, ``conf``, ``transport``
    and ``manager`` on ``test``."""
    url = test.useFixture(rabbitmq.SharedRabbitMQ()).transport_url
    test.log = test.useFixture(fixtures.FakeLogger(
        name='ha_snapshot', level='INFO'))
    test.master = test.path('master.key')
    with open(test.master, 'w') as f:
        f.write(os.urandom(32).hex() + '\n')
    os.chmod(test.master, 0o600)
    test.exchange = '%s-%s' % (prefix, base.new_uuid()[:8])
    test.useFixture(fixtures.MonkeyPatch('ha_snapshot.rpc.EXCHANGE',
                                         test.exchange))
    test.conf = base.make_conf(
        test.path('store'),
        database__connection='sqlite:///' + test.path('db.sqlite'),
        manager__spool_dir=test.path('spool'),
        manager__host='manager-' + test.exchange,
        manager__listen_notifications=False,
        rpc_auth__master_key_file=test.master)
    migration.upgrade(test.conf)
    test.transport = rpc.get_transport(test.conf, url=url)
    test.addCleanup(test.transport.cleanup)
    test.manager = manager_service.ManagerService(test.conf, test.transport)
    test.manager.start()
    test.addCleanup(test.manager.stop)


class BusAuthTest(base.TestCase):

    def setUp(self):
        super().setUp()
        start_signed_manager(self, 'auth')
        self.db = self.manager.db
        self.inst = base.new_uuid()
        self.db.create_instance(self.inst, PROJECT, host=HOST_B,
                                status='protecting', driver='qemu')
        self.b = self.client(HOST_B)
        self.rogue = self.client(HOST_A)
        # Host B's own agent: registers, ships a baseline, gets it durable.
        self.b.register_instance(self.inst, PROJECT, HOST_B, 'qemu', {})
        self.raw = os.urandom(64 * KiB)
        self.b.put_part(self.inst, 0, _part(self.inst, 0, self.raw))
        self.rp = self.b.commit_delta(_header(self.inst, 0, None, self.raw))
        self.store_before = base.tree_digest(self.path('store'))

    def key_of(self, identity):
        with open(self.master) as f:
            return rpc_auth.derive(f.read().strip().encode(), identity)

    def client(self, host, sender=None):
        """A client holding only ``host``'s derived key, as a compute
        host does ([rpc_auth] key_file); it may claim ``sender``."""
        me = rpc_auth.host_identity(host)
        keys = rpc_auth.Keys(own=sender or me, own_keys=[self.key_of(me)])
        return manager_rpcapi.ManagerAPI(
            self.transport, timeout=30,
            signer=rpc_auth.Signer(sender or me, keys))

    def refused(self, exc_class, func, *args, **kwargs):
        e = self.assertRaises(exc_class, func, *args, **kwargs)
        self.assertEqual(exc_class.__name__ + '_Remote', type(e).__name__)
        self.assertIn('Refused: %s' % str(e).splitlines()[0],
                      self.log.output)
        return e

    def assert_untouched(self):
        row = self.db.get_instance(self.inst)
        self.assertEqual((HOST_B, 'protected', PROJECT),
                         (row.host, row.status, row.project_id))
        self.assertEqual([self.rp['restore_point']],
                         [p.id for p in self.db.list_restore_points(
                             self.inst)])
        self.assertEqual(self.store_before,
                         base.tree_digest(self.path('store')))

    # --- the normal loop ------------------------------------------------

    def test_own_host_goes_on(self):
        raw = os.urandom(64 * KiB)
        self.b.put_part(self.inst, 1, _part(self.inst, 1, raw))
        rp = self.b.commit_delta(_header(self.inst, 1,
                                         self.rp['restore_point'], raw))
        self.assertEqual(2, rp['number'])
        manifest = self.b.get_manifest(self.inst, None)
        self.assertEqual(rp['restore_point'], manifest['id'])
        chunk = base64.b64decode(self.b.get_chunk(self.inst, rp[
            'restore_point'], 0))
        self.assertEqual(raw, chunk[:len(raw)])

    # --- a rogue compute host -------------------------------------------

    def test_rogue_cannot_register_other_hosts_server(self):
        # NOTE: the database places it on B (and without [nova] a move is
        # not taken from an agent's word): A is told it moved there.
        e = self.refused(exception.InstanceMoved,
                         self.rogue.register_instance, self.inst, PROJECT,
                         HOST_A, 'qemu', {})
        self.assertIn('moved to %s' % HOST_B, str(e))
        # Naming B's host in the arguments does not help either.
        e = self.refused(exception.NotAuthorized,
                         self.rogue.register_instance, self.inst, PROJECT,
                         HOST_B, 'qemu', {})
        self.assertIn("names host '%s'" % HOST_B, str(e))
        self.assert_untouched()

    def test_rogue_cannot_commit_a_delta(self):
        raw = os.urandom(64 * KiB)
        self.refused(exception.NotAuthorized, self.rogue.put_part,
                     self.inst, 1, _part(self.inst, 1, raw))
        self.refused(exception.NotAuthorized, self.rogue.commit_delta,
                     _header(self.inst, 1, self.rp['restore_point'], raw))
        self.assert_untouched()

    def test_rogue_cannot_read_the_disk(self):
        self.refused(exception.NotAuthorized, self.rogue.get_manifest,
                     self.inst, None)
        self.refused(exception.NotAuthorized, self.rogue.get_chunk,
                     self.inst, self.rp['restore_point'], 0)

    def test_rogue_cannot_call_api_methods(self):
        for func, args in ((self.rogue.protect, (self.inst, PROJECT,
                                                 HOST_A)),
                           (self.rogue.unprotect, (self.inst,)),
                           (self.rogue.recover, (self.inst,)),
                           (self.rogue.alarm, (self.inst, {
                               'alarm_name': 'x'}))):
            e = self.refused(exception.NotAuthorized, func, *args)
            self.assertIn('only ha-snapshot-api may call it', str(e))
        self.assertEqual([], self.db.list_recoveries(self.inst))
        self.assert_untouched()

    def test_rogue_cannot_claim_another_identity(self):
        forged = self.client(HOST_A, sender=rpc_auth.host_identity(HOST_B))
        e = self.refused(exception.MessageAuthFailed, forged.get_manifest,
                         self.inst, None)
        self.assertIn('bad signature', str(e))
        self.assertIn("claiming to come from 'host:%s'" % HOST_B,
                      self.log.output)
        api = self.client(HOST_A, sender=rpc_auth.API)
        self.refused(exception.MessageAuthFailed, api.recover, self.inst)
        self.assert_untouched()

    def test_unsigned_message_refused(self):
        client = rpc.get_client(self.transport, rpc.MANAGER_TOPIC, '1.0',
                                timeout=30)
        e = self.refused(exception.MessageAuthFailed, client.call,
                         rpc.context(), 'get_manifest', instance=self.inst,
                         restore_point=None)
        self.assertIn('carries no signed identity', str(e))

    def test_rogue_casts_dropped(self):
        # NOTE: report_health is a call (a report must not be lost): the
        # rogue gets the refusal back.
        e = self.refused(exception.NotAuthorized, self.rogue.report_health,
                         self.inst, HOST_B, 'rogue says so', {})
        self.assertIn('may not call report_health', str(e))
        self.rogue.heartbeat(HOST_B, [self.inst])
        # NOTE: B's own heartbeat after the rogue's casts: once it is
        # recorded, the casts before it were handled (one queue, in order).
        self.b.heartbeat(HOST_B, [self.inst])
        base.wait_for(lambda: any(a.host == HOST_B
                                  for a in self.db.list_agents()), 30,
                      'host B\'s heartbeat recorded')
        self.assertIn('Refused: host:%s may not call report_health' % HOST_A,
                      self.log.output)
        self.assertIn('Refused: host:%s may not call heartbeat' % HOST_A,
                      self.log.output)
        self.assertNotIn('rogue says so', self.db.get_instance(
            self.inst).last_report_reason or '')
        self.assert_untouched()

    # --- the other direction: manager -> agent ----------------------------

    def test_agent_obeys_only_the_manager(self):
        conf = base.make_conf(
            self.path('store'),
            agent__host=HOST_B, agent__state_dir=self.path('agent-b'),
            agent__heartbeat_interval=3600,
            rpc_auth__key_file=self.path('b.key'))
        with open(self.path('b.key'), 'w') as f:
            f.write(self.key_of(rpc_auth.host_identity(HOST_B)).decode())
        os.chmod(self.path('b.key'), 0o600)
        agent = agent_service.AgentService(
            conf, self.transport, hypervisor.get_driver(conf, 'qemu'))
        agent.start()
        self.addCleanup(agent.stop)
        # A rogue holding A's key signs a "manager" message to B with it.
        a_key = self.key_of(rpc_auth.host_identity(HOST_A))
        rogue = agent_rpcapi.AgentAPI(
            self.transport, timeout=30,
            signer=rpc_auth.Signer(rpc_auth.MANAGER, rpc_auth.Keys(
                own=rpc_auth.host_identity(HOST_B), own_keys=[a_key])))
        for call in (lambda: rogue.restart(HOST_B, self.inst,
                                           self.rp['restore_point'], 30),
                     lambda: rogue.rebaseline(HOST_B, self.inst,
                                              self.rp['restore_point'], 30)):
            e = self.assertRaises(exception.MessageAuthFailed, call)
            self.assertEqual('MessageAuthFailed_Remote', type(e).__name__)
            self.assertIn('bad signature', str(e))
        # B's own key may not speak as the manager to B's agent either
        # (an envelope naming B as sender is refused by the agent).
        b_self = agent_rpcapi.AgentAPI(
            self.transport, timeout=30,
            signer=rpc_auth.Signer(rpc_auth.host_identity(HOST_B),
                                   rpc_auth.Keys(
                                       own=rpc_auth.host_identity(HOST_B),
                                       own_keys=[self.key_of(
                                           rpc_auth.host_identity(HOST_B))])))
        e = self.assertRaises(exception.MessageAuthFailed, b_self.restart,
                              HOST_B, self.inst, self.rp['restore_point'], 30)
        self.assertIn('may not send to agent:%s' % HOST_B, str(e))
        # Casts: dropped and logged (protect would start a snapshot agent).
        rogue.unprotect(HOST_B, self.inst)
        rogue.protect(HOST_B, self.inst, PROJECT, {'disk': '/etc/passwd'})
        # The manager's own message is dispatched, and refused by the
        # agent for what it is: this agent does not protect the server.
        e = self.assertRaises(exception.InstanceNotFound,
                              self.manager.manager.agent_api.restart,
                              HOST_B, self.inst, self.rp['restore_point'],
                              30)
        self.assertIn('is not protected on %s' % HOST_B, str(e))
        self.assertEqual({}, agent.instances)
        refusal = "claiming to come from 'manager' refused: bad signature"
        base.wait_for(lambda: self.log.output.count(refusal) >= 4, 30,
                      'the rogue casts refused by the agent')
        self.assertEqual({}, agent.instances)
