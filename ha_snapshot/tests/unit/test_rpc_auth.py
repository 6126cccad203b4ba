"""Signed envelopes (ha_snapshot/rpc_auth.py) and the manager's host
authorization (ha_snapshot/manager/authz.py)."""

import datetime
import os
import time

import fixtures

from ha_snapshot.db import api as db_api
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot.manager import authz
from ha_snapshot import rpc
from ha_snapshot import rpc_auth
from ha_snapshot.tests import base

MASTER = b'm' * 64
NEW_MASTER = b'n' * 64
HOST = rpc_auth.host_identity('compute1')
OTHER = rpc_auth.host_identity('compute2')


class Ctxt:
    """What the RPC server hands an endpoint: a context with an envelope
    (serialized and read back, as over the bus)."""

    def __init__(self, envelope):
        s = rpc.RequestContextSerializer()
        wire = s.serialize_context(_with(envelope))
        self.ha_auth = s.deserialize_context(wire).ha_auth


def _with(envelope):
    ctxt = rpc.context()
    if envelope is not None:
        ctxt.ha_auth = envelope
    return ctxt


def agent_keys(identity=HOST, masters=(MASTER,)):
    return rpc_auth.Keys(own=identity, own_keys=[
        rpc_auth.derive(m, identity) for m in masters])


def manager_verifier(masters=(MASTER,), **kw):
    return rpc_auth.Verifier(rpc_auth.Keys(masters=masters),
                             rpc_auth.MANAGER, rpc_auth.manager_senders, **kw)


class SigningTest(base.TestCase):

    ARGS = {'instance': 'i-1', 'sequence': 3,
            'part': {'payload': 'QUJD', 'extents': [[0, 3, 'data']]}}

    def sign(self, keys=None, sender=HOST, args=None, method='put_part',
             audience=rpc_auth.MANAGER):
        signer = rpc_auth.Signer(sender, keys or agent_keys())
        return signer.envelope(audience, method, args or self.ARGS)

    def test_valid_message_names_its_sender(self):
        v = manager_verifier()
        self.assertEqual(HOST, v.verify(Ctxt(self.sign()), 'put_part',
                                        self.ARGS))

    def test_arguments_as_the_receiver_sees_them(self):
        # NOTE: tuples, int keys and datetimes travel as JSON.
        when = datetime.datetime(2026, 1, 2, 3, 4, 5)
        args = {'a': (1, 2), 'b': {10: 'x', 2: 'y'}, 'c': when}
        env = self.sign(args=args)
        wire = {'a': [1, 2], 'b': {'10': 'x', '2': 'y'},
                'c': rpc_auth.jsonutils.to_primitive(when)}
        self.assertEqual(HOST, manager_verifier().verify(
            Ctxt(env), 'put_part', wire))

    def refused(self, verifier, env, reason, method='put_part', args=None):
        e = self.assertRaises(exception.MessageAuthFailed, verifier.verify,
                              Ctxt(env), method, args or self.ARGS)
        self.assertIn(reason, str(e))
        return e

    def test_tampered_arguments(self):
        env = self.sign()
        args = dict(self.ARGS, instance='i-2')
        self.refused(manager_verifier(), env, 'bad signature', args=args)
        part = dict(self.ARGS['part'], payload='QUJE')
        self.refused(manager_verifier(), env, 'bad signature',
                     args=dict(self.ARGS, part=part))
        # A long payload (signed by its digest): one byte changed, or the
        # digest's own text put in its place.
        big = dict(self.ARGS, part=dict(self.ARGS['part'],
                                        payload='QUJD' * 4096))
        env = self.sign(args=big)
        self.assertEqual(HOST, manager_verifier().verify(
            Ctxt(env), 'put_part', big))
        for payload in ('QUJD' * 4095 + 'QUJE',
                        rpc_auth._digested('QUJD' * 4096),
                        rpc_auth._digested('QUJD' * 4096)[2:]):
            self.refused(manager_verifier(), env, 'bad signature',
                         args=dict(big, part=dict(big['part'],
                                                  payload=payload)))

    def test_tampered_method_sender_audience_time(self):
        v = manager_verifier()
        self.refused(v, self.sign(), 'bad signature', method='commit_delta')
        env = self.sign()
        env['sender'] = OTHER
        e = self.refused(v, env, 'bad signature')
        # NOTE: the log names the claimed sender, never a key.
        self.assertIn("claiming to come from 'host:compute2'", str(e))
        self.assertNotIn(rpc_auth.derive(MASTER, OTHER).decode(), str(e))
        env = self.sign()
        env['ts'] += 1
        self.refused(v, env, 'bad signature')
        env = self.sign(audience=rpc_auth.agent_audience('compute1'))
        self.refused(v, env, "addressed to 'agent:compute1'")

    def test_wrong_key(self):
        # Host 2's key signing as host 1 (a compromised host 2).
        keys = rpc_auth.Keys(own=HOST, own_keys=[
            rpc_auth.derive(MASTER, OTHER)])
        self.refused(manager_verifier(), self.sign(keys=keys),
                     'bad signature')
        # A key from another master.
        self.refused(manager_verifier(), self.sign(
            keys=agent_keys(masters=(NEW_MASTER,))), 'bad signature')

    def test_replay(self):
        v = manager_verifier()
        env = self.sign()
        v.verify(Ctxt(env), 'put_part', self.ARGS)
        self.refused(v, env, 'replayed')

    def test_stale_and_future_timestamps(self):
        v = manager_verifier(max_age=60)
        env = self.sign()
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.rpc_auth.time.time', lambda: env['ts'] + 61))
        self.refused(v, env, 'sent 61 s ago, more than [rpc_auth] '
                     'max_message_age (60 s)')
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.rpc_auth.time.time', lambda: env['ts'] - 61))
        self.refused(v, env, '61 s ahead')

    def test_missing_or_malformed_identity(self):
        v = manager_verifier()
        self.refused(v, None, 'carries no signed identity')
        env = self.sign()
        del env['mac']
        self.refused(v, env, 'malformed envelope')
        for old in (1, 3):
            # v1 carried a nonce where v2 numbers its messages.
            env = self.sign()
            env['v'] = old
            self.refused(v, env, 'unknown envelope format')
        env = self.sign(sender='host:', keys=rpc_auth.Keys(
            own='host:', own_keys=[MASTER]))
        self.refused(v, env, 'may not send to manager')
        # The agent takes only the manager as sender.
        agent = rpc_auth.Verifier(agent_keys(), rpc_auth.agent_audience(
            'compute1'), lambda s: s == rpc_auth.MANAGER)
        env = self.sign(audience=rpc_auth.agent_audience('compute1'))
        self.refused(agent, env, 'may not send to agent:compute1')

    def test_manager_to_agent(self):
        manager = rpc_auth.Signer(rpc_auth.MANAGER,
                                  rpc_auth.Keys(masters=[MASTER]))
        audience = rpc_auth.agent_audience('compute1')
        agent = rpc_auth.Verifier(agent_keys(), audience,
                                  lambda s: s == rpc_auth.MANAGER)
        env = manager.envelope(audience, 'unprotect', {'instance': 'i'})
        self.assertEqual(rpc_auth.MANAGER,
                         agent.verify(Ctxt(env), 'unprotect',
                                      {'instance': 'i'}))
        # The same message to host 2's agent: not its key.
        other = rpc_auth.Verifier(agent_keys(OTHER), audience.replace(
            'compute1', 'compute2'), lambda s: s == rpc_auth.MANAGER)
        self.refused(other, env, 'addressed to', method='unprotect',
                     args={'instance': 'i'})

    def test_rotation(self):
        # Step 1: the manager accepts both masters, signs with the old.
        manager = manager_verifier(masters=(MASTER, NEW_MASTER))
        old_agent = agent_keys()
        new_agent = agent_keys(masters=(NEW_MASTER, MASTER))
        for keys in (old_agent, new_agent):
            self.assertEqual(HOST, manager.verify(
                Ctxt(self.sign(keys=keys)), 'put_part', self.ARGS))
        # An agent with both keys checks the manager's messages signed
        # with either master.
        audience = rpc_auth.agent_audience('compute1')
        agent = rpc_auth.Verifier(new_agent, audience,
                                  lambda s: s == rpc_auth.MANAGER)
        for masters in ((MASTER, NEW_MASTER), (NEW_MASTER,)):
            env = rpc_auth.Signer(rpc_auth.MANAGER, rpc_auth.Keys(
                masters=masters)).envelope(audience, 'unprotect', {})
            self.assertEqual(rpc_auth.MANAGER,
                             agent.verify(Ctxt(env), 'unprotect', {}))
        # Last step: the old master is gone; its keys are refused.
        self.refused(manager_verifier(masters=(NEW_MASTER,)),
                     self.sign(keys=old_agent), 'bad signature')

    def test_messages_of_a_stream_out_of_order_once_each(self):
        v = manager_verifier(window=64)
        signer = rpc_auth.Signer(HOST, agent_keys())
        envs = [signer.envelope(rpc_auth.MANAGER, 'put_part', self.ARGS)
                for _ in range(100)]
        self.assertEqual(list(range(1, 101)), [e['seq'] for e in envs])
        # Late ones within the window are accepted, once.
        for i in (10, 99, 50, 40, 98):
            v.verify(Ctxt(envs[i]), 'put_part', self.ARGS)
        for i in (99, 50, 40, 98):
            self.refused(v, envs[i], 'replayed')
        # Beyond the window behind the newest (number 100): too old.
        self.refused(v, envs[10], 'older than the replay window')
        self.refused(v, envs[30], 'older than the replay window: 69 '
                     'messages of its stream came after it')
        v.verify(Ctxt(envs[36]), 'put_part', self.ARGS)
        # Another stream (another process of the same host) has its own.
        other = rpc_auth.Signer(HOST, agent_keys())
        v.verify(Ctxt(other.envelope(rpc_auth.MANAGER, 'put_part',
                                     self.ARGS)), 'put_part', self.ARGS)
        self.assertEqual(2, len(v.seen))

    def test_stream_number_and_id_are_signed(self):
        v = manager_verifier()
        for field, value in (('seq', 7), ('sid', 'f' * 16)):
            env = dict(self.sign(), **{field: value})
            self.refused(v, env, 'bad signature')
        for field, value in (('seq', 0), ('seq', '3'), ('seq', True),
                             ('sid', ''), ('sid', 'x' * 65), ('sid', 3)):
            env = dict(self.sign(), **{field: value})
            self.refused(v, env, 'malformed envelope')

    def test_memory_grows_with_streams_not_messages(self):
        clock = [time.time()]
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.rpc_auth.time.time', lambda: clock[0]))
        v = manager_verifier(max_age=60)
        signers = [rpc_auth.Signer(HOST, agent_keys()) for _ in range(3)]
        for _ in range(2000):
            for signer in signers:
                v.verify(Ctxt(signer.envelope(rpc_auth.MANAGER, 'put_part',
                                              self.ARGS)),
                         'put_part', self.ARGS)
            clock[0] += 0.01
        self.assertEqual(3, len(v.seen))
        # A stream silent for longer than max_message_age is forgotten;
        # its messages are stale by then.
        old = signers[0].envelope(rpc_auth.MANAGER, 'put_part', self.ARGS)
        clock[0] += 61
        fresh = rpc_auth.Signer(HOST, agent_keys())
        v.verify(Ctxt(fresh.envelope(rpc_auth.MANAGER, 'put_part',
                                     self.ARGS)), 'put_part', self.ARGS)
        self.assertEqual(1, len(v.seen))
        self.refused(v, old, 'more than [rpc_auth] max_message_age')


class KeyFileTest(base.TestCase):

    def conf(self, **kw):
        return base.make_conf(self.store_dir, **{
            'rpc_auth__' + k: v for k, v in kw.items()})

    def write(self, name, *keys):
        path = self.path(name)
        with open(path, 'w') as f:
            f.write('# keys, newest first\n' + ''.join(
                k.decode() + '\n' for k in keys))
        os.chmod(path, 0o600)
        return path

    def test_files(self):
        master = self.write('master', MASTER, NEW_MASTER)
        own = self.write('own', rpc_auth.derive(MASTER, HOST))
        keys = rpc_auth.Keys.from_conf(self.conf(master_key_file=master))
        self.assertEqual([rpc_auth.derive(MASTER, HOST),
                          rpc_auth.derive(NEW_MASTER, HOST)],
                         keys.keys_for(HOST))
        keys = rpc_auth.Keys.from_conf(self.conf(key_file=own,
                                                 master_key_file=master),
                                       HOST)
        self.assertEqual([rpc_auth.derive(MASTER, HOST)],
                         keys.keys_for(HOST))
        self.assertEqual([], keys.keys_for(OTHER))
        e = self.assertRaises(exception.ConfigurationError,
                              rpc_auth.Keys.from_conf,
                              self.conf(key_file=own))
        self.assertIn('needs [rpc_auth] master_key_file', str(e))

    def test_bad_files(self):
        short = self.write('short', b'x' * 10)
        e = self.assertRaises(exception.ConfigurationError,
                              rpc_auth.read_key_file, short)
        self.assertIn('key 1 shorter than 32 characters', str(e))
        e = self.assertRaises(exception.ConfigurationError,
                              rpc_auth.read_key_file, self.write('empty'))
        self.assertIn('holds no key', str(e))
        e = self.assertRaises(exception.ConfigurationError,
                              rpc_auth.read_key_file, self.path('none'))
        self.assertIn('cannot be read', str(e))

    def test_no_keys_is_the_ephemeral_key(self):
        log = self.useFixture(fixtures.FakeLogger(name='ha_snapshot'))
        keys = rpc_auth.Keys.from_conf(self.conf(), HOST)
        self.assertTrue(keys.ephemeral)
        self.assertIn('ephemeral key', log.output)

    def test_manage_derive(self):
        master = self.write('master', MASTER, NEW_MASTER)
        self.conf_file = self.path('ha.conf')
        with open(self.conf_file, 'w') as f:
            f.write('[rpc_auth]\nmaster_key_file = %s\n' % master)
        r = self.manage('rpc-key', 'derive', '--host', 'compute1')
        self.assertEqual([rpc_auth.derive(MASTER, HOST).decode(),
                          rpc_auth.derive(NEW_MASTER, HOST).decode()],
                         r.stdout.split())
        r = self.manage('rpc-key', 'derive', ok=False)
        self.assertEqual(1, r.returncode)
        self.assertIn('--host NAME or --api', r.stderr)


class AuthorizerTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf(self.store_dir, database__connection=(
            'sqlite:///' + self.path('db.sqlite')))
        migration.upgrade(self.conf)
        self.db = db_api.Database(self.conf)
        self.addCleanup(self.db.dispose)
        self.db.create_instance('i-1', 'p1', host='compute1',
                                status='protected')
        self.nova = {}
        self.authz = authz.Authorizer(self.conf, self.db, self.nova_server)

    def nova_server(self, instance):
        if instance not in self.nova:
            raise exception.InstanceNotFound('Nova has no server %s.'
                                             % instance, instance=instance)
        return self.nova[instance]

    def check(self, sender, method, **kw):
        return self.authz.check(sender, method, kw)

    def refused(self, reason, sender, method, **kw):
        e = self.assertRaises(exception.NotAuthorized, self.check, sender,
                              method, **kw)
        self.assertIn(reason, str(e))

    def register(self, sender, instance='i-1', host='compute2',
                 project='p1'):
        return self.check(sender, 'register_instance', instance=instance,
                          project=project, host=host, driver='qemu',
                          details={})

    def test_every_agent_method_checks_the_host(self):
        self.check(HOST, 'put_part', instance='i-1', sequence=0, part={})
        self.check(HOST, 'commit_delta', header={'instance': 'i-1'})
        self.check(HOST, 'get_manifest', instance='i-1', restore_point=None)
        self.check(HOST, 'get_chunk', instance='i-1', restore_point='r',
                   index=0)
        self.check(HOST, 'report_health', instance='i-1', host='compute1',
                   reason='r', details={})
        self.check(HOST, 'heartbeat', host='compute1', instances=[])
        for method, kw in (
                ('put_part', {'instance': 'i-1'}),
                ('commit_delta', {'header': {'instance': 'i-1'}}),
                ('get_manifest', {'instance': 'i-1'}),
                ('get_chunk', {'instance': 'i-1'})):
            self.refused('not on this host (recorded on compute1)', OTHER,
                         method, **kw)
        # A health report of a server recorded elsewhere: the agent is
        # told it moved (it stops protecting it).
        e = self.assertRaises(exception.InstanceMoved, self.check, OTHER,
                              'report_health', instance='i-1',
                              host='compute2')
        self.assertIn('moved to compute1', str(e))
        self.refused("names host 'compute1'", OTHER, 'heartbeat',
                     host='compute1')
        self.refused("names host 'compute1'", OTHER, 'report_health',
                     host='compute1', instance='i-1')
        self.refused('no instance named', HOST, 'commit_delta', header=[])
        self.assertRaises(exception.InstanceNotFound, self.check, HOST,
                          'get_manifest', instance='i-2')

    def test_guard_hands_a_commits_fresh_row_to_the_manager(self):
        """commit_delta's host check reads the row (never the cache) and
        the guard leaves it on the message's context for the manager;
        put_part's cached check leaves nothing there."""
        guard = authz.Guard(manager_verifier(), self.authz)
        signer = rpc_auth.Signer(HOST, agent_keys())

        def call(method, **kw):
            ctxt = Ctxt(signer.envelope(rpc_auth.MANAGER, method, kw))
            guard(ctxt, method, kw)
            return ctxt
        ctxt = call('put_part', instance='i-1', sequence=0, part={})
        self.assertFalse(hasattr(ctxt, authz.INSTANCE_ROW))
        # Changed after put_part's lookup (cached for authz.HOST_TTL):
        # the commit's row is the database's now.
        self.db.update_instance('i-1', driver='libvirt')
        ctxt = call('commit_delta', header={'instance': 'i-1'})
        row = getattr(ctxt, authz.INSTANCE_ROW)
        self.assertEqual(('i-1', 'compute1', 'libvirt'),
                         (row.uuid, row.host, row.driver))
        self.db.update_instance('i-1', host='compute2')
        self.assertRaises(exception.NotAuthorized, call, 'commit_delta',
                          header={'instance': 'i-1'})

    def test_api_methods(self):
        for method in authz.API_METHODS:
            self.check(rpc_auth.API, method, instance='i-1')
            self.refused('only ha-snapshot-api may call it', HOST, method,
                         instance='i-1')
        for method in authz.AGENT_METHODS:
            self.refused('the API may call only', rpc_auth.API, method,
                         instance='i-1')

    def test_registration(self):
        self.register(HOST, host='compute1')
        self.refused('belongs to another project', HOST, 'register_instance',
                     instance='i-1', host='compute1', project='p2')
        # Without [nova] a move is not taken from the agent's word: the
        # database's host stands, and the agent is told the server moved.
        e = self.assertRaises(exception.InstanceMoved, self.check, OTHER,
                              'register_instance', instance='i-1',
                              host='compute2', project='p1')
        self.assertIn('moved to compute1', str(e))
        self.refused('i-9 is not recorded', OTHER, 'register_instance',
                     instance='i-9', host='compute2', project='p1')

    def test_registration_of_a_move_needs_nova(self):
        self.conf.set_override('auth_type', 'none', group='nova')
        self.nova['i-1'] = {'host': 'compute1', 'project': 'p1'}
        e = self.assertRaises(exception.InstanceMoved, self.check, OTHER,
                              'register_instance', instance='i-1',
                              host='compute2', project='p1')
        self.assertIn('moved to compute1', str(e))
        self.refused('Nova cannot confirm it moved here', OTHER,
                     'register_instance', instance='i-9', host='compute2',
                     project='p1')
        self.nova['i-1'] = {'host': 'compute2', 'project': 'p1'}
        self.refused('Nova runs it on compute2', OTHER, 'register_instance',
                     instance='i-1', host='compute2', project='p2')
        self.register(OTHER)
        # The hot paths' cached host is dropped on registration.
        self.check(HOST, 'put_part', instance='i-1')
        self.db.update_instance('i-1', host='compute2')
        self.register(OTHER)
        self.check(OTHER, 'put_part', instance='i-1')
        self.refused('not on this host', HOST, 'put_part', instance='i-1')

    def test_hot_path_cache_expires(self):
        self.check(HOST, 'put_part', instance='i-1')
        self.db.update_instance('i-1', host='compute2')
        # NOTE: commit_delta always asks the database.
        self.refused('not on this host', HOST, 'commit_delta',
                     header={'instance': 'i-1'})
        later = time.monotonic() + authz.HOST_TTL + 1
        self.useFixture(fixtures.MonkeyPatch(
            'ha_snapshot.manager.authz.time.monotonic', lambda: later))
        self.refused('not on this host', HOST, 'put_part', instance='i-1')
