"""The Nova calls of a host evacuation (ha_snapshot.openstack.evacuation)
and the stop and wait it shares with the rebuild (openstack.servers):
the waits, against a scripted compute proxy and a fake clock."""

import functools
import types

from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc
import testtools

from ha_snapshot import exception
from ha_snapshot.openstack import evacuation
from ha_snapshot.openstack import servers
from ha_snapshot.tests import base

_wait_stopped = functools.partial(servers.wait_stopped,
                                  errors=evacuation.ERRORS)


class _Nova:
    """get_server answers from a script: a server view or an exception."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = 0

    def stop_server(self, server):
        self.stops = getattr(self, 'stops', 0) + 1
        raise sdk_exc.ConflictException('Cannot stop: task_state is set')

    def get_server(self, server_id):
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 \
            else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def server(host, status, task=None):
    return types.SimpleNamespace(compute_host=host, status=status,
                                 task_state=task, fault=None)


class WaitTest(testtools.TestCase):

    def wait(self, answers, fn=evacuation.wait_evacuated, **kwargs):
        clock = base.FakeClock()
        nova = _Nova(answers)
        args = ('s-1', 'dead') if fn is evacuation.wait_evacuated \
            else ('s-1',)
        result = fn(nova, *args, timeout=10, interval=1, clock=clock,
                    sleep=clock.sleep, **kwargs)
        return result, nova

    def test_unanswered_polls_are_tried_again_until_the_server_moves(self):
        busy = ksa_exc.ConnectFailure('connection refused')
        moved = server('compute2', 'SHUTOFF')
        got, nova = self.wait([busy, sdk_exc.HttpException('503'),
                               server('dead', 'ACTIVE', 'rebuilding'),
                               moved])
        self.assertIs(moved, got)
        self.assertEqual(4, nova.calls)

    def test_nova_silent_until_the_deadline_names_the_last_error(self):
        e = self.assertRaises(
            exception.EvacuationFailed, self.wait,
            [ksa_exc.ConnectFailure('connection refused')])
        self.assertIn('within 10 s; Nova did not answer', str(e))
        self.assertIn('connection refused', str(e))
        e = self.assertRaises(
            exception.EvacuationFailed, self.wait,
            [ksa_exc.ConnectFailure('refused')], fn=_wait_stopped)
        self.assertIn('not stopped within 10 s; Nova did not answer', str(e))

    def test_a_deleted_server_fails_at_once(self):
        clock = base.FakeClock()
        nova = _Nova([sdk_exc.NotFoundException('gone')])
        e = self.assertRaises(exception.EvacuationFailed,
                              evacuation.wait_evacuated, nova, 's-1', 'dead',
                              timeout=10, interval=1, clock=clock,
                              sleep=clock.sleep)
        self.assertIn('no such server', str(e))
        self.assertEqual((1, 0.0), (nova.calls, clock.now))

    def test_error_and_stopped(self):
        broken = server('compute2', 'ERROR')
        broken.fault = {'message': 'No valid host was found.'}
        e = self.assertRaises(exception.EvacuationFailed, self.wait,
                              [broken])
        self.assertIn('No valid host was found.', str(e))
        stopped = server('compute2', 'SHUTOFF')
        got, nova = self.wait([ksa_exc.ConnectFailure('x'),
                               server('compute2', 'ACTIVE', 'powering-off'),
                               stopped], fn=_wait_stopped)
        self.assertIs(stopped, got)


class SharedStopTest(testtools.TestCase):
    """servers.stop and servers.wait_stopped raise the caller's errors:
    the evacuation's or the rebuild's, and both try unanswered polls
    again."""

    def wait(self, answers, errors):
        clock = base.FakeClock()
        nova = _Nova(answers)
        return servers.wait_stopped(nova, 's-1', timeout=10, interval=1,
                                    errors=errors, clock=clock,
                                    sleep=clock.sleep), nova

    def test_the_rebuild_tries_an_unanswered_poll_again(self):
        stopped = server('compute1', 'SHUTOFF')
        got, nova = self.wait([ksa_exc.ConnectFailure('busy'), stopped],
                              servers.REBUILD)
        self.assertIs(stopped, got)
        self.assertEqual(2, nova.calls)

    def test_timeouts_name_the_callers_step(self):
        running = server('compute2', 'ACTIVE', 'powering-off')
        e = self.assertRaises(exception.EvacuationTimeout, self.wait,
                              [running], evacuation.ERRORS)
        self.assertIn('after its evacuation (status ACTIVE, task_state '
                      'powering-off)', str(e))
        e = self.assertRaises(exception.RebuildTimeout, self.wait,
                              [running], servers.REBUILD)
        self.assertIn('after its rebuild', str(e))
        e = self.assertRaises(exception.RebuildFailed, self.wait,
                              [ksa_exc.ConnectFailure('refused')],
                              servers.REBUILD)
        self.assertIn('not stopped within 10 s; Nova did not answer: ',
                      str(e))

    def test_stop_refused_unless_nova_stops_it_anyway(self):
        vm = server('compute2', 'ACTIVE')
        vm.id = 's-1'
        # NOTE: Conflict, and Nova is powering it off: left to Nova.
        servers.stop(_Nova([server('compute2', 'ACTIVE', 'powering-off')]),
                     vm, evacuation.ERRORS)
        e = self.assertRaises(
            exception.EvacuationFailed, servers.stop,
            _Nova([server('compute2', 'ACTIVE', 'rebuilding')]), vm,
            evacuation.ERRORS)
        self.assertIn('Nova refused to stop it (status ACTIVE, task '
                      'rebuilding)', str(e))


class WaitActiveTest(testtools.TestCase):
    """servers.wait_active (the rebuild's last wait) tries unanswered
    polls again too, and an unanswered poll breaks a run of ACTIVE."""

    IMAGE = 'img-1'

    def server(self, status, task=None):
        vm = server('compute1', status, task)
        vm.id = 's-1'
        vm.image = types.SimpleNamespace(id=self.IMAGE)
        return vm

    def wait(self, answers):
        clock = base.FakeClock()
        nova = _Nova(answers)
        return servers.wait_active(nova, 's-1', self.IMAGE, timeout=10,
                                   interval=1, clock=clock,
                                   sleep=clock.sleep), nova

    def test_an_unanswered_poll_is_tried_again(self):
        active = self.server('ACTIVE')
        got, nova = self.wait([ksa_exc.ConnectFailure('busy'), active,
                               ksa_exc.ConnectFailure('busy'), active,
                               active])
        self.assertIs(active, got)
        # NOTE: ACTIVE, unanswered, ACTIVE, ACTIVE: the unanswered poll
        # ended the first run, so two ACTIVE in a row came after it.
        self.assertEqual(5, nova.calls)

    def test_nova_silent_until_the_deadline_fails_naming_why(self):
        e = self.assertRaises(exception.RebuildFailed, self.wait,
                              [ksa_exc.ConnectFailure('refused')])
        self.assertIn('not running within 10 s; Nova did not answer: ',
                      str(e))

    def test_a_deleted_server_fails_at_once(self):
        e = self.assertRaises(exception.RebuildFailed, self.wait,
                              [sdk_exc.NotFoundException('gone')])
        self.assertIn('Nova has no such server any more', str(e))
