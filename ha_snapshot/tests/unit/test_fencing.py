"""Fencing drivers against a scripted Nova and a scripted BMC.

``nova-force-down`` talks to the scripted Nova (exact request: the
microversion header and the body); ``ipmi`` runs a fake ``ipmitool``
put on PATH, which records its arguments and answers as ipmitool does
(no real BMC exists here) and forces the host down in the scripted Nova.
The classes are built directly: the shared venv's installed entry points
predate the ``ha_snapshot.fencing`` namespace, so one test checks that
every entry point of setup.cfg names an importable class instead.
"""

import configparser
import importlib
import json
import logging
import os
import stat
import sys

import fixtures
from stevedore import extension as stevedore_extension

from ha_snapshot import exception
from ha_snapshot import fencing
from ha_snapshot.fencing import base as fencing_base
from ha_snapshot.fencing import impl_ipmi
from ha_snapshot.fencing import impl_none
from ha_snapshot.fencing import impl_nova
from ha_snapshot.openstack import clients
from ha_snapshot.tests import base
from ha_snapshot.tests.unit import fake_openstack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))

# NOTE: a stand-in for ipmitool: records each call (argv) as a JSON line,
# keeps the chassis power in a file, answers as ipmitool 1.8 prints.
# STATE_DIR/off_after: status calls after a power off before the chassis
# reports off; STATE_DIR/fail: exit 1 with that message.
FAKE_IPMITOOL = r'''#!%(python)s
import json, os, sys
state = %(state)r
args = sys.argv[1:]
with open(os.path.join(state, 'calls'), 'a') as f:
    f.write(json.dumps(args) + '\n')
fail = os.path.join(state, 'fail')
if os.path.exists(fail):
    sys.stderr.write(open(fail).read())
    sys.exit(1)
power = os.path.join(state, 'power')
pending = os.path.join(state, 'off_after')
command = args[-3:]
if command == ['chassis', 'power', 'status']:
    now = open(power).read().strip()
    if now == 'pending':
        left = int(open(pending).read())
        if left <= 0:
            now = 'off'
            open(power, 'w').write('off')
        else:
            open(pending, 'w').write(str(left - 1))
            now = 'on'
    print('Chassis Power is %%s' %% now)
elif command == ['chassis', 'power', 'off']:
    open(power, 'w').write('pending')
    print('Chassis Power Control: Down/Off')
else:
    sys.stderr.write('Invalid command\n')
    sys.exit(1)
'''


class _NovaBase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.nova = fake_openstack.FakeNova()
        self.addCleanup(self.nova.stop)
        self.conf = base.make_conf(self.store_dir)
        self.conf.set_override('auth_type', 'none', group='nova')
        self.conf.set_override('endpoint_override', self.nova.url,
                               group='nova')

    def service(self, host='compute1', **kw):
        """The service as the monitor hands it: listed through the SDK."""
        self.nova.add_service(host, **kw)
        compute = clients.connection(self.conf, 'nova').compute
        return next(s for s in compute.services(binary='nova-compute')
                    if s.host == host)

    def puts(self):
        return [r for r in self.nova.endpoint.requests if r.method == 'PUT']


class NovaForceDownTestCase(_NovaBase):

    def test_forces_the_service_down_at_2_53_or_later(self):
        service = self.service(state='down')
        driver = impl_nova.NovaForceDown(self.conf)
        result = driver.fence('compute1', service)
        put, = self.puts()
        self.assertEqual('/v2.1/os-services/%s' % service.id, put.path)
        self.assertEqual({'forced_down': True}, put.json)
        version = put.headers['OpenStack-API-Version']
        self.assertTrue(version.startswith('compute 2.'), version)
        self.assertGreaterEqual(int(version.split('.')[1]), 53)
        self.assertTrue(self.nova.service_of('compute1')['forced_down'])
        self.assertIn('forced down in Nova', result)
        self.assertIn(service.id, result)

    def test_already_forced_down_sends_nothing(self):
        service = self.service(state='down', forced_down=True)
        result = impl_nova.NovaForceDown(self.conf).fence('compute1',
                                                          service)
        self.assertEqual([], self.puts())
        self.assertIn('already forced down', result)

    def test_nova_refusing_is_a_fencing_error(self):
        service = self.service(state='down')
        self.nova.service_update_fail.append((500, 'Unexpected API Error.'))
        e = self.assertRaises(exception.FencingError,
                              impl_nova.NovaForceDown(self.conf).fence,
                              'compute1', service)
        self.assertIn('Host compute1 not fenced (nova-force-down)', str(e))
        self.assertIn('HTTP 500', str(e))
        self.assertFalse(self.nova.service_of('compute1')['forced_down'])

    def test_nova_without_2_53_is_refused_before_any_request(self):
        # NOTE: before the first request: a client learns Nova's versions
        # once (the shared session caches the discovery).
        self.nova.max_version = '2.52'
        service = self.service(state='down')
        e = self.assertRaises(exception.FencingError,
                              impl_nova.NovaForceDown(self.conf).fence,
                              'compute1', service)
        self.assertIn('microversion 2.53', str(e))
        self.assertEqual([], self.puts())

    def test_nova_unreachable_is_a_fencing_error(self):
        service = self.service(state='down')
        self.conf.set_override('endpoint_override', 'http://127.0.0.1:9/v2.1',
                               group='nova')
        self.conf.set_override('timeout', 2, group='nova')
        e = self.assertRaises(exception.FencingError,
                              impl_nova.NovaForceDown(self.conf).fence,
                              'compute1', service)
        self.assertIn('compute1', str(e))


class NoFencingTestCase(_NovaBase):

    def test_only_nova_s_down_state_counts(self):
        driver = impl_none.NoFencing(self.conf)
        self.assertIn('nothing fenced',
                      driver.fence('compute1', self.service(state='down')))
        e = self.assertRaises(exception.FencingError, driver.fence,
                              'compute2', self.service('compute2'))
        self.assertIn('reports its compute service up', str(e))
        self.assertEqual([], self.puts())
        self.assertFalse(driver.powered_off('compute1'))


class IpmiFencingTestCase(_NovaBase):

    def setUp(self):
        super().setUp()
        self.bmc = self.path('bmc')
        os.makedirs(self.bmc)
        self.set_power('on')
        tool_dir = self.path('bin')
        os.makedirs(tool_dir)
        tool = os.path.join(tool_dir, 'ipmitool')
        with open(tool, 'w') as f:
            f.write(FAKE_IPMITOOL % {'python': sys.executable,
                                     'state': self.bmc})
        os.chmod(tool, os.stat(tool).st_mode | stat.S_IXUSR)
        self.useFixture(fixtures.EnvironmentVariable(
            'PATH', tool_dir + os.pathsep + os.environ['PATH']))
        self.password_file = self.path('compute1.password')
        with open(self.password_file, 'w') as f:
            f.write('s3cret\n')
        hosts = self.path('bmcs.json')
        with open(hosts, 'w') as f:
            json.dump({'compute1': {'address': '10.0.0.11',
                                    'username': 'admin',
                                    'password_file': self.password_file}},
                      f)
        self.conf.set_override('ipmi_hosts_file', hosts,
                               group='host_monitor')
        self.conf.set_override('ipmi_timeout', 10, group='host_monitor')
        self.sleeps = []
        self.driver = impl_ipmi.IpmiFencing(
            self.conf, sleep=self.sleeps.append)

    def set_power(self, power, off_after=0):
        with open(os.path.join(self.bmc, 'power'), 'w') as f:
            f.write(power)
        with open(os.path.join(self.bmc, 'off_after'), 'w') as f:
            f.write(str(off_after))

    def calls(self):
        try:
            with open(os.path.join(self.bmc, 'calls')) as f:
                return [json.loads(line) for line in f]
        except FileNotFoundError:
            return []

    def test_powers_off_waits_for_off_then_forces_down_in_nova(self):
        service = self.service(state='up')
        self.set_power('on', off_after=2)
        result = self.driver.fence('compute1', service)
        calls = self.calls()
        prefix = ['-I', 'lanplus', '-H', '10.0.0.11', '-U', 'admin', '-f',
                  self.password_file]
        self.assertEqual(
            [prefix + ['chassis', 'power', 'status'],
             prefix + ['chassis', 'power', 'off'],
             prefix + ['chassis', 'power', 'status'],
             prefix + ['chassis', 'power', 'status'],
             prefix + ['chassis', 'power', 'status']], calls)
        # The password never on a command line.
        self.assertNotIn('s3cret', json.dumps(calls))
        self.assertEqual([impl_ipmi.POLL] * 2, self.sleeps)
        put, = self.puts()
        self.assertEqual({'forced_down': True}, put.json)
        self.assertTrue(self.nova.service_of('compute1')['forced_down'])
        self.assertIn('powered off through BMC 10.0.0.11', result)
        self.assertIn('forced down in Nova', result)

    def test_already_off_is_not_powered_off_again(self):
        service = self.service(state='down')
        self.set_power('off')
        result = self.driver.fence('compute1', service)
        self.assertEqual([['chassis', 'power', 'status']],
                         [c[-3:] for c in self.calls()])
        self.assertIn('power was already off', result)
        self.assertEqual(1, len(self.puts()))

    def test_bmc_error_is_a_fencing_error_and_nova_is_not_told(self):
        service = self.service(state='down')
        with open(os.path.join(self.bmc, 'fail'), 'w') as f:
            f.write('Error: Unable to establish IPMI v2 / RMCP+ session\n')
        e = self.assertRaises(exception.FencingError, self.driver.fence,
                              'compute1', service)
        self.assertIn('Unable to establish IPMI v2', str(e))
        self.assertIn('exited 1', str(e))
        self.assertEqual([], self.puts())

    def test_power_that_never_goes_off_times_out(self):
        service = self.service(state='down')
        self.set_power('on', off_after=10 ** 6)
        clock = iter(range(0, 100, 4))
        driver = impl_ipmi.IpmiFencing(self.conf, clock=lambda: next(clock),
                                       sleep=lambda s: None)
        e = self.assertRaises(exception.FencingError, driver.fence,
                              'compute1', service)
        self.assertIn('still reports power on 10 s after power off', str(e))
        self.assertEqual([], self.puts())

    def test_host_without_a_bmc_cannot_be_fenced(self):
        e = self.assertRaises(exception.FencingError, self.driver.fence,
                              'compute9', self.service('compute9'))
        self.assertIn('no BMC address for this host', str(e))
        self.assertEqual([], self.calls())
        self.conf.clear_override('ipmi_hosts_file', group='host_monitor')
        e = self.assertRaises(exception.FencingError, self.driver.fence,
                              'compute1', self.service())
        self.assertIn('ipmi_hosts_file is not set', str(e))

    def test_check_refuses_a_bad_hosts_file_at_start(self):
        self.driver.check()
        hosts = self.conf.host_monitor.ipmi_hosts_file
        for content, text in (('{"compute1": {"username": "a"}}',
                               'without an address: compute1'),
                              ('{"compute1": {"address": "10.0.0.11"}}',
                               'compute1 needs a readable "password_file" '
                               '(none given)'),
                              ('{"compute1": {"address": "10.0.0.11", '
                               '"password_file": "/nonexistent"}}',
                               'needs a readable "password_file" '
                               '(/nonexistent)'),
                              ('["compute1"]', 'must map host names'),
                              ('{', 'cannot be read')):
            with open(hosts, 'w') as f:
                f.write(content)
            e = self.assertRaises(exception.ConfigurationError,
                                  self.driver.check)
            self.assertIn(text, str(e))
            self.assertIn('ipmi_hosts_file', str(e))
        self.conf.clear_override('ipmi_hosts_file', group='host_monitor')
        e = self.assertRaises(exception.ConfigurationError,
                              self.driver.check)
        self.assertIn('fencing_driver = ipmi needs', str(e))
        # The other drivers need nothing more.
        impl_nova.NovaForceDown(self.conf).check()
        impl_none.NoFencing(self.conf).check()

    def test_powered_off_asks_the_bmc(self):
        self.assertFalse(self.driver.powered_off('compute1'))
        self.set_power('off')
        self.assertTrue(self.driver.powered_off('compute1'))
        # Unknown host or BMC error: cannot tell, so False.
        self.assertFalse(self.driver.powered_off('compute9'))
        log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        with open(os.path.join(self.bmc, 'fail'), 'w') as f:
            f.write('Error: timeout\n')
        for _ in range(3):
            self.assertFalse(self.driver.powered_off('compute1'))
        # Said once, not at every round; and when it is known again.
        self.assertEqual(1, log.output.count('Power status of compute1 '
                                             'unknown'), log.output)
        os.unlink(os.path.join(self.bmc, 'fail'))
        self.assertTrue(self.driver.powered_off('compute1'))
        self.assertIn('Power status of compute1 known again: off',
                      log.output)


    def test_powered_off_but_nova_refuses_is_not_fenced(self):
        service = self.service(state='up')
        self.nova.service_update_fail.append((503, 'Service Unavailable'))
        e = self.assertRaises(exception.FencingError, self.driver.fence,
                              'compute1', service)
        self.assertIn('powered off through BMC 10.0.0.11, but Nova refused',
                      str(e))
        self.assertTrue(self.driver.powered_off('compute1'))

class FencingEntryPoints(fixtures.Fixture):
    """The ``ha_snapshot.fencing`` entry points of this tree's setup.cfg
    as an installed distribution on sys.path (the shared venv's install
    predates them), so that stevedore loads the drivers as it will once
    the package is installed again."""

    def __init__(self, tmp):
        super().__init__()
        self.tmp = tmp

    def _setUp(self):
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO, 'setup.cfg'))
        section = parser['entry_points'][fencing.NAMESPACE]
        info = os.path.join(self.tmp, 'hs_fencing_test-0.dist-info')
        os.makedirs(info)
        with open(os.path.join(info, 'METADATA'), 'w') as f:
            f.write('Metadata-Version: 2.1\nName: hs-fencing-test\n'
                    'Version: 0\n')
        with open(os.path.join(info, 'entry_points.txt'), 'w') as f:
            f.write('[ha_snapshot.fencing]\n%s\n' % section.strip())
        sys.path.append(self.tmp)
        self.addCleanup(sys.path.remove, self.tmp)
        # NOTE: stevedore keeps each namespace's entry points for the
        # life of the process: forget them now and after.
        cache = stevedore_extension.ExtensionManager.ENTRY_POINT_CACHE
        cache.pop(fencing.NAMESPACE, None)
        self.addCleanup(cache.pop, fencing.NAMESPACE, None)


class FencingPluginsTestCase(base.TestCase):

    def entry_points(self, namespace):
        parser = configparser.ConfigParser()
        parser.read(os.path.join(REPO, 'setup.cfg'))
        lines = parser['entry_points'][namespace].strip().splitlines()
        return dict(tuple(p.strip() for p in line.split('='))
                    for line in lines)

    def test_every_fencing_entry_point_names_its_driver_class(self):
        points = self.entry_points(fencing.NAMESPACE)
        self.assertEqual({'nova-force-down', 'ipmi', 'none'}, set(points))
        for name, target in points.items():
            module, _, attr = target.partition(':')
            cls = getattr(importlib.import_module(module), attr)
            self.assertTrue(issubclass(cls, fencing_base.FencingDriver),
                            target)
            self.assertEqual(name, cls.name)

    def test_default_driver_is_nova_force_down(self):
        conf = base.make_conf(self.store_dir)
        self.assertEqual('nova-force-down',
                         conf.host_monitor.fencing_driver)

    def test_unknown_driver_is_one_clear_error(self):
        conf = base.make_conf(self.store_dir)
        e = self.assertRaises(exception.FencingDriverNotFound,
                              fencing.get_driver, conf, 'stonith')
        self.assertIn("Fencing driver 'stonith'", str(e))
        self.assertIsInstance(e, exception.ConfigurationError)

    def test_stevedore_loads_each_driver_by_name(self):
        self.useFixture(FencingEntryPoints(self.path('dist')))
        conf = base.make_conf(self.store_dir)
        for name, cls in (('nova-force-down', impl_nova.NovaForceDown),
                          ('ipmi', impl_ipmi.IpmiFencing),
                          ('none', impl_none.NoFencing)):
            driver = fencing.get_driver(conf, name)
            self.assertIsInstance(driver, cls)
            self.assertIs(conf, driver.conf)
        self.assertIsInstance(fencing.get_driver(conf),
                              impl_nova.NovaForceDown)
