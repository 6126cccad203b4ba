"""The agents' side of several manager replicas (manager/rpcapi.py): a
delta's calls go to the owner the answers named, and a refusal or a
timeout changes where the next one goes. Two RPC servers on oslo.messaging's
in-process driver stand for two replicas (the real intake's refusal is
tested in test_manager.RoutingTestCase, the real bus in the functional
tests)."""

import oslo_messaging as messaging

from ha_snapshot import exception
from ha_snapshot.manager import rpcapi
from ha_snapshot import rpc
from ha_snapshot.tests import base

INSTANCE = '0b8a5e54-7f1e-4f0b-9d7c-0a9b6f1e2c3d'


class Replica:
    """put_part/commit_delta as a replica's intake answers them: taken by
    the owner, refused naming it elsewhere."""

    target = messaging.Target(version='1.3')

    def __init__(self, host, cluster):
        self.host = host
        self.cluster = cluster
        self.taken = []
        self.headers = []

    def _route(self):
        owner = self.cluster['owner']
        if owner != self.host:
            raise exception.WrongOwner(instance=INSTANCE, owner=owner,
                                       host=self.host)

    def register_instance(self, ctxt, instance, project, host, driver,
                          details):
        return {'owner': self.cluster['owner']}

    def put_part(self, ctxt, instance, sequence, part):
        self._route()
        self.taken.append(('part', sequence))
        return {'index': part['index'], 'owner': self.cluster['owner']}

    def commit_delta(self, ctxt, header, raise_parts_missing=False):
        self._route()
        self.taken.append(('commit', header['sequence']))
        self.headers.append(header)
        return {'restore_point': 'rp', 'owner': self.cluster['owner']}


def start_replicas(test, hosts) -> None:
    """Fake manager replicas ``hosts`` on a fake bus, the owner ``m2``:
    sets the test's ``transport``, ``cluster``, ``replicas`` and ``api``
    (a ManagerAPI client); the servers stop with the test."""
    test.transport = rpc.get_transport(base.make_conf(test.store_dir),
                                       url='fake:///')
    test.cluster = {'owner': 'm2'}
    test.replicas = {}
    for host in hosts:
        replica = Replica(host, test.cluster)
        server = rpc.get_server(test.transport, rpc.MANAGER_TOPIC, host,
                                [replica])
        server.start()
        test.addCleanup(server.wait)
        test.addCleanup(server.stop)
        test.replicas[host] = replica
    test.api = rpcapi.ManagerAPI(test.transport, timeout=5)


class ClientRoutingTest(base.TestCase):

    def setUp(self):
        super().setUp()
        start_replicas(self, ('m1', 'm2', 'm3'))

    def taken(self):
        return {h: r.taken for h, r in self.replicas.items() if r.taken}

    def test_registration_names_the_owner_and_the_delta_goes_there(self):
        self.assertIsNone(self.api.owner(INSTANCE))
        self.api.register_instance(INSTANCE, 'p1', 'c1', 'qemu', {})
        self.assertEqual('m2', self.api.owner(INSTANCE))
        for i in range(5):
            self.api.put_part(INSTANCE, 1, {'index': i})
        self.api.commit_delta({'instance': INSTANCE, 'sequence': 1})
        self.assertEqual({'m2': [('part', 1)] * 5 + [('commit', 1)]},
                         self.taken())

    def test_a_refusal_names_the_new_owner(self):
        self.api.register_instance(INSTANCE, 'p1', 'c1', 'qemu', {})
        # m3 joined and owns the instance now; m2 says so.
        self.cluster['owner'] = 'm3'
        e = self.assertRaises(exception.WrongOwner, self.api.put_part,
                              INSTANCE, 2, {'index': 0})
        self.assertEqual('m3', e.kwargs['owner'])
        self.assertEqual('m3', self.api.owner(INSTANCE))
        self.api.put_part(INSTANCE, 2, {'index': 0})
        self.assertEqual(
            'rp', self.api.commit_delta({'instance': INSTANCE,
                                         'sequence': 2})['restore_point'])
        self.assertEqual({'m3': [('part', 2), ('commit', 2)]}, self.taken())

    def test_a_timeout_sends_the_next_call_to_any_replica(self):
        # The owner it knows (a replica that died) does not answer.
        self.api._learn(INSTANCE, 'gone')
        self.assertRaises(messaging.MessagingTimeout, self.api.put_part,
                          INSTANCE, 3, {'index': 0}, timeout=1)
        self.assertIsNone(self.api.owner(INSTANCE))
        # The shared topic: whoever answers takes it (the owner) or
        # names the owner.
        for _ in range(3):
            try:
                self.api.put_part(INSTANCE, 3, {'index': 0})
                break
            except exception.WrongOwner as e:
                self.assertEqual('m2', e.kwargs['owner'])
        self.assertEqual('m2', self.api.owner(INSTANCE))
        self.assertEqual({'m2': [('part', 3)]}, self.taken())


class CommitVersionTest(ClientRoutingTest):
    """RPC 1.3 carries the snapshot's ``taken_at`` in the commit's header;
    a client capped below it (a manager not upgraded yet) leaves it out,
    since an older manager refuses header fields it does not know."""

    def commit(self, api):
        api.register_instance(INSTANCE, 'p1', 'c1', 'qemu', {})
        api.commit_delta({'instance': INSTANCE, 'sequence': 1,
                          'taken_at': 1700000000.5})
        return self.replicas['m2'].headers[-1]

    def test_taken_at_goes_at_1_3(self):
        self.assertEqual(1700000000.5, self.commit(self.api)['taken_at'])

    def test_capped_at_1_2_it_is_left_out(self):
        api = rpcapi.ManagerAPI(self.transport, timeout=5, version_cap='1.2')
        header = self.commit(api)
        self.assertNotIn('taken_at', header)
        self.assertEqual(1, header['sequence'])
