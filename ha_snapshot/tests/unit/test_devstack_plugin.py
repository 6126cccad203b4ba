"""The devstack plugin, phase by phase, against stub devstack functions.

devstack itself cannot run in a unit test (it installs a whole cloud).
Instead a real bash sources ``devstack/settings`` and then
``devstack/plugin.sh`` once per phase, as stack.sh, unstack.sh and
clean.sh do, under ``set -euo pipefail`` and ``errtrace``, with a PATH
that holds only a few basic tools, and with stubs of the devstack
functions the plugin calls. Each stub records its call; ``iniset`` really
writes ini files. A command that is neither a stub nor an allowed tool, an
unset variable or a failing command fails the test: a typo in the plugin
fails CI.

The configuration the plugin writes is then checked against the options
the code registers (every option must exist and its value must parse), and
the real ``ha-snapshot-manage`` runs ``db sync`` and ``store verify`` with
it. shellcheck is required (bindep.txt installs it for tests).
"""

import configparser
import copy
import getpass
import importlib.metadata
import os
import shutil
import sqlite3
import stat
import subprocess
import sys

from oslo_config import cfg

from ha_snapshot import conf as ha_conf
from ha_snapshot.tests import base

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PLUGIN_DIR = os.path.join(ROOT, 'devstack')

# NOTE: the only external commands the plugin may run; anything else
# (openstack, mysql, curl, systemctl...) must go through a devstack
# function, stubbed here.
TOOLS = ('rm', 'install', 'seq', 'grep', 'cat', 'env', 'mkdir', 'id')

STUBS = r'''
_record() { local IFS=$'\t'; printf '%s\n' "$*" >> "$STUB_LOG"; }
command_not_found_handle() {
    printf '%s\n' "$*" >> "$UNKNOWN_LOG"
    echo "unknown command: $1" >&2
    return 127
}
_listed() { [[ ,$1, == *,"$2",* ]]; }
# NOTE: as devstack's: true if any argument is enabled; "nova" and "swift"
# stand for any n-* and s-* service.
is_service_enabled() {
    local s
    for s in "$@"; do
        _listed "$ENABLED_SERVICES" "$s" && return 0
        [[ $s == nova && ,$ENABLED_SERVICES == *,n-* ]] && return 0
        [[ $s == swift && ,$ENABLED_SERVICES == *,s-* ]] && return 0
    done
    return 1
}
enable_service() {
    local s
    for s in "$@"; do
        _listed "$DISABLED_SERVICES" "$s" && continue
        is_service_enabled "$s" || ENABLED_SERVICES+=",$s"
    done
}
get_python_exec_prefix() { echo "$STUB_BIN"; }
echo_summary() { _record echo_summary "$@"; }
die() { _record die "$@"; echo "die: $*" >&2; exit 1; }
iniset() { "$STUB_PYTHON" "$STUB_DIR/iniset.py" "$@"; }
get_transport_url() {
    echo "rabbit://stackrabbit:rabbitpw@$SERVICE_HOST:5672/${1:-}"
}
get_notification_url() { get_transport_url "$@"; }
iniset_rpc_backend() {
    _record iniset_rpc_backend "$@"
    iniset "$2" "${3:-DEFAULT}" transport_url "$(get_transport_url "${4:-}")"
}
database_connection_url() { echo "sqlite:///$STUB_DIR/$1.sqlite"; }
recreate_database() {
    _record recreate_database "$@"
    rm -f "$STUB_DIR/$1.sqlite"
}
is_ubuntu() { [[ $STUB_DISTRO == debian ]]; }
install_package() { _record install_package "$@"; }
setup_develop() { _record setup_develop "$@"; }
create_service_user() { _record create_service_user "$@"; }
get_or_create_service() { _record get_or_create_service "$@"; echo svc-0123; }
get_or_create_endpoint() { _record get_or_create_endpoint "$@"; echo ep-0123; }
configure_keystone_authtoken_middleware() {
    _record configure_keystone_authtoken_middleware "$@"
}
conductor_conf() { echo "$NOVA_CONF_DIR/nova_cell$1.conf"; }
generate_hex_string() {
    local i h=""
    for ((i = 0; i < $1; i++)); do h+=5a; done
    echo "$h"
}
# NOTE: as devstack's, these do nothing for a service not enabled.
run_process() { is_service_enabled "$1" && _record run_process "$@"; :; }
stop_process() { is_service_enabled "$1" && _record stop_process "$@"; :; }
wait_for_service() { _record wait_for_service "$@"; }
# NOTE: as devstack's (lib/apache), the part that matters here: the ini
# file with the module; the Apache site is recorded only.
write_uwsgi_config() {
    _record write_uwsgi_config "$@"
    rm -f "$1"
    iniset "$1" uwsgi module "$2"
    iniset "$1" uwsgi die-on-term true
    iniset "$1" uwsgi socket "/var/run/uwsgi/$5.socket"
}
remove_uwsgi_config() { _record remove_uwsgi_config "$@"; }
openstack() { _record openstack "$@"; }
sudo() { _record sudo "$@"; "$@"; }
'''

INISET = r'''
import configparser, os, sys
path, section, option = sys.argv[1:4]
value = sys.argv[4] if len(sys.argv) > 4 else ''
if section and option:  # NOTE: as devstack's iniset: no-op without them
    p = configparser.ConfigParser(interpolation=None,
                                  default_section='\x00')
    p.optionxform = str
    p.read(path)
    if not p.has_section(section):
        p.add_section(section)
    p.set(section, option, value)
    with open(path, 'w') as f:
        p.write(f)
'''

# NOTE: the real ha-snapshot-manage of this checkout, recorded, with the
# caller's PATH.
MANAGE = '''#!/bin/bash
printf 'ha-snapshot-manage\\t%s\\n' "$*" >> "$STUB_LOG"
PATH="$REAL_PATH" PYTHONPATH="$STUB_ROOT" \\
    exec "$STUB_PYTHON" -m ha_snapshot.cmd.manage "$@"
'''

RUNNER = r'''
set -euo pipefail
set -o errtrace
trap 'echo "failed: $BASH_COMMAND (${BASH_SOURCE[0]}:$LINENO)" >&2' ERR
source "$STUB_DIR/stubs.sh"
source "$STUB_DIR/env.sh"
source "$PLUGIN_DIR/settings"
for phase in "$@"; do
    _record PHASE "$phase"
    # shellcheck disable=SC2086
    source "$PLUGIN_DIR/plugin.sh" $phase
done
'''

SERVICE_PASSWORD = 'servicepw-3f9a'


def ini(path: str) -> configparser.ConfigParser:
    p = configparser.ConfigParser(interpolation=None, default_section='\x00')
    p.optionxform = str
    if not p.read(path):
        raise AssertionError('%s was not written' % path)
    return p


def console_scripts() -> set:
    p = configparser.ConfigParser(interpolation=None)
    p.read(os.path.join(ROOT, 'setup.cfg'))
    return {line.split('=')[0].strip() for line in
            p['entry_points']['console_scripts'].splitlines() if line}


def registered_conf(path: str):
    """``path`` parsed with every option the services register."""
    conf = cfg.ConfigOpts()
    known = {}
    for ep in importlib.metadata.entry_points(group='oslo.config.opts'):
        if ep.name not in ('ha_snapshot', 'oslo.messaging', 'oslo.log'):
            continue
        for group, opts in ep.load()():
            name = getattr(group, 'name', group) or 'DEFAULT'
            for opt in opts:
                if opt.dest not in known.setdefault(name, set()):
                    # NOTE: keystoneauth's auth_url is required only in
                    # the groups a service actually loads a plugin from.
                    opt = copy.copy(opt)
                    opt.required = False
                    conf.register_opt(
                        opt, group=None if name == 'DEFAULT' else name)
                    known[name].add(opt.dest)
    conf(['--config-file', path], project='ha-snapshot',
         default_config_files=[])
    return conf, known


class DevstackPluginTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.stubs = self.path('stubs')
        self.bin = self.path('bin')
        self.tools = self.path('tools')
        for d in (self.stubs, self.bin, self.tools):
            os.makedirs(d)
        self.plugin_dir = PLUGIN_DIR
        self.log = os.path.join(self.stubs, 'calls.log')
        self.unknown = os.path.join(self.stubs, 'unknown.log')
        for name in TOOLS:
            path = shutil.which(name)
            if path:
                os.symlink(path, os.path.join(self.tools, name))
        self._write(os.path.join(self.stubs, 'stubs.sh'), STUBS)
        self._write(os.path.join(self.stubs, 'iniset.py'), INISET)
        self._write(os.path.join(self.bin, 'ha-snapshot-manage'), MANAGE,
                    mode=0o755)
        self.nova_dir = self.path('etc', 'nova')
        os.makedirs(self.nova_dir)
        self.conf_dir = self.path('etc', 'ha-snapshot')
        self.conf_file = os.path.join(self.conf_dir, 'ha-snapshot.conf')
        self.state_dir = self.path('data', 'ha-snapshot')
        # NOTE: devstack's own globals, as stackrc and lib/* set them;
        # HA_SNAPSHOT_CONF_DIR is the one plugin variable a test moves.
        self.env = {
            'DEST': self.path('opt-stack'), 'DATA_DIR': self.path('data'),
            'STACK_USER': getpass.getuser(), 'SERVICE_HOST': '10.0.0.5',
            'SERVICE_PROTOCOL': 'http', 'REGION_NAME': 'RegionOne',
            'KEYSTONE_SERVICE_URI': 'http://10.0.0.5/identity',
            'SERVICE_PASSWORD': SERVICE_PASSWORD,
            'SERVICE_PROJECT_NAME': 'service',
            'SERVICE_DOMAIN_NAME': 'Default',
            'ENABLE_DEBUG_LOG_LEVEL': 'True', 'SERVICE_TIMEOUT': '60',
            'LIBVIRT_GROUP': 'libvirt', 'NOVA_CONF_DIR': self.nova_dir,
            'NOVA_CONF': os.path.join(self.nova_dir, 'nova.conf'),
            'NOVA_CPU_CONF': os.path.join(self.nova_dir, 'nova-cpu.conf'),
            'NOVA_NUM_CELLS': '1', 'NOVA_NOTIFICATION_FORMAT': 'unversioned',
            'HA_SNAPSHOT_CONF_DIR': self.conf_dir, 'STUB_DISTRO': 'debian',
            'DISABLED_SERVICES': '',
        }

    def _write(self, path, text, mode=0o644):
        with open(path, 'w') as f:
            f.write(text)
        os.chmod(path, mode)

    def write_env(self, services):
        env = dict(self.env, ENABLED_SERVICES=services)
        self._write(os.path.join(self.stubs, 'env.sh'), ''.join(
            '%s=%s\n' % (k, _quote(v)) for k, v in env.items()))

    def run_phases(self, services, *phases, ok=True):
        """One shell (stack.sh, unstack.sh or clean.sh) running phases."""
        self.write_env(services)
        start = len(self.calls())
        r = subprocess.run(
            ['/bin/bash', '-c', RUNNER, 'runner'] + list(phases),
            env={'PATH': self.tools, 'HOME': self.tmp, 'LANG': 'C.UTF-8',
                 'STUB_LOG': self.log, 'UNKNOWN_LOG': self.unknown,
                 'STUB_DIR': self.stubs, 'STUB_BIN': self.bin,
                 'STUB_PYTHON': sys.executable, 'STUB_ROOT': ROOT,
                 'PLUGIN_DIR': self.plugin_dir,
                 'REAL_PATH': os.environ.get('PATH', '/usr/bin:/bin')},
            capture_output=True, text=True, timeout=300)
        if ok:
            self.assertEqual(0, r.returncode, '%s failed:\n%s' % (
                phases, r.stderr[-4000:]))
            self.assertEqual([], self.unknown_commands())
        return r, self.calls()[start:]

    def calls(self):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [tuple(line.rstrip('\n').split('\t')) for line in f]

    def unknown_commands(self):
        if not os.path.exists(self.unknown):
            return []
        with open(self.unknown) as f:
            return f.read().splitlines()

    def named(self, calls, name):
        return [c[1:] for c in calls if c[0] == name]

    def assert_nova_notifications(self, path, fmt):
        nova = ini(path)
        self.assertEqual(fmt, nova['notifications']['notification_format'])
        self.assertEqual('messagingv2',
                         nova['oslo_messaging_notifications']['driver'])
        self.assertEqual('rabbit://stackrabbit:rabbitpw@10.0.0.5:5672/',
                         nova['oslo_messaging_notifications']['transport_url'])

    def assert_options_exist(self, path):
        conf, known = registered_conf(path)
        for section in ini(path).sections():
            for key in ini(path)[section]:
                self.assertIn(key, known.get(section, ()),
                              'the plugin writes [%s] %s, which no '
                              'service registers' % (section, key))
                # NOTE: raises when the value does not parse.
                group = conf if section == 'DEFAULT' else conf[section]
                group[key]
        return conf

    def assert_key_file(self, path, key):
        with open(path) as f:
            self.assertEqual(key + '\n', f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))

    def assert_ksa(self, section):
        s = ini(self.conf_file)[section]
        self.assertEqual(
            {'auth_type': 'password', 'username': 'ha-snapshot',
             'auth_url': 'http://10.0.0.5/identity',
             'password': SERVICE_PASSWORD, 'project_name': 'service',
             'user_domain_name': 'Default',
             'project_domain_name': 'Default', 'region_name': 'RegionOne',
             'interface': 'public'}, dict(s))

    def test_shellcheck(self):
        shellcheck = shutil.which('shellcheck')
        self.assertIsNotNone(shellcheck, 'shellcheck is not installed; '
                             'bindep.txt lists it for the test profile')
        r = subprocess.run([shellcheck, '-s', 'bash',
                            os.path.join(PLUGIN_DIR, 'plugin.sh'),
                            os.path.join(PLUGIN_DIR, 'settings')],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(0, r.returncode, r.stdout + r.stderr)

    def test_settings_defaults(self):
        del self.env['HA_SNAPSHOT_CONF_DIR']
        self.env['DISABLED_SERVICES'] = 'ha-snapshot-agent'
        self.write_env('key')
        r = subprocess.run(
            ['/bin/bash', '-c', 'set -eu; source "$1/stubs.sh"; '
             'source "$1/env.sh"; source "$2/settings"; '
             'echo "$HA_SNAPSHOT_CONF $HA_SNAPSHOT_SERVICE_PORT '
             '$HA_SNAPSHOT_BIN_DIR $ENABLED_SERVICES"', 'settings',
             self.stubs, PLUGIN_DIR],
            env={'PATH': self.tools, 'STUB_BIN': self.bin,
                 'STUB_LOG': self.log, 'UNKNOWN_LOG': self.unknown},
            capture_output=True, text=True, timeout=60)
        self.assertEqual(0, r.returncode, r.stderr)
        # NOTE: enable_service leaves what local.conf disabled alone.
        self.assertEqual(
            '/etc/ha-snapshot/ha-snapshot.conf 8799 %s '
            'key,ha-snapshot-api,ha-snapshot-manager' % self.bin,
            r.stdout.strip())

    def test_all_in_one(self):
        """Controller and compute host in one, no Swift: a file store."""
        services = 'key,mysql,rabbit,n-api,n-cond,n-sch,n-cpu,g-api'
        with open(conductor := os.path.join(self.nova_dir,
                                            'nova_cell1.conf'), 'w') as f:
            f.write('[database]\nconnection = sqlite://\n')
        r, calls = self.run_phases(
            services, 'stack install', 'stack post-config', 'stack extra',
            'stack test-config')

        # install
        self.assertIn((os.path.join(self.env['DEST'], 'ha-snapshot'),),
                      self.named(calls, 'setup_develop'))
        self.assertEqual([('qemu-utils', 'libvirt-dev', 'pkg-config')],
                         self.named(calls, 'install_package'))

        # post-config: Nova, then ha-snapshot.conf, then Keystone
        self.assert_nova_notifications(self.env['NOVA_CONF'], 'versioned')
        self.assert_nova_notifications(conductor, 'versioned')
        self.assertEqual('sqlite://', ini(conductor)['database']['connection'])
        conf = self.assert_options_exist(self.conf_file)
        self.assertEqual('rabbit://stackrabbit:rabbitpw@10.0.0.5:5672/',
                         conf.transport_url)
        self.assertEqual('keystone', conf.api.auth_strategy)
        self.assertEqual(8799, conf.api.port)
        self.assertEqual('5a' * 32, conf.api.alarm_secret_key)
        self.assertEqual('file://%s/store' % self.state_dir,
                         conf.storage.backend_url)
        self.assertEqual('libvirt', conf.agent.hypervisor)
        self.assertEqual('qemu:///system', conf.libvirt.connection_uri)
        self.assertEqual(os.path.join(self.state_dir, 'libvirt'),
                         conf.libvirt.backup_dir)
        self.assertEqual({'libvirt': 'rebuild'}, conf.recovery.actions)
        self.assertEqual(os.path.join(self.state_dir, 'recovery'),
                         conf.recovery.work_dir)
        self.assertEqual(60, conf.policy.rpo_target)
        self.assertEqual(os.path.join(self.state_dir, 'spool'),
                         conf.manager.spool_dir)
        # NOTE: one node: the manager, the API and the agent all derive
        # their bus keys from the master key, readable by the user only.
        master = os.path.join(self.conf_dir, 'rpc-master.key')
        self.assertEqual(master, conf.rpc_auth.master_key_file)
        self.assertIsNone(conf.rpc_auth.key_file)
        self.assert_key_file(master, '5a' * 32)
        self.assertNotIn('swift', ini(self.conf_file))
        self.assertNotIn('aodh', ini(self.conf_file))
        self.assert_ksa('nova')
        self.assert_ksa('glance')
        self.assertEqual([(self.conf_file, 'ha-snapshot')], self.named(
            calls, 'configure_keystone_authtoken_middleware'))
        self.assertEqual([('ha-snapshot', 'admin')],
                         self.named(calls, 'create_service_user'))
        self.assertEqual('ha-snapshot', self.named(
            calls, 'get_or_create_service')[0][1])
        self.assertEqual([('svc-0123', 'RegionOne',
                           'http://10.0.0.5/ha-snapshot')],
                         self.named(calls, 'get_or_create_endpoint'))
        self.assertEqual('http://10.0.0.5/ha-snapshot',
                         conf.api.public_endpoint)
        uwsgi_ini = os.path.join(self.conf_dir, 'ha-snapshot-api-uwsgi.ini')
        self.assertEqual([(uwsgi_ini, 'ha_snapshot.wsgi.api:application',
                           '/ha-snapshot', '', 'ha-snapshot-api')],
                         self.named(calls, 'write_uwsgi_config'))
        uwsgi = ini(uwsgi_ini)['uwsgi']
        self.assertEqual('true', uwsgi['disable-logging'])
        self.assertEqual('OS_HA_SNAPSHOT_CONFIG_DIR=' + self.conf_dir,
                         uwsgi['env'])

        # extra: the database really synced, the services started
        self.assertEqual([('ha_snapshot',)],
                         self.named(calls, 'recreate_database'))
        self.assertIn(('--config-file %s db sync' % self.conf_file,),
                      self.named(calls, 'ha-snapshot-manage'))
        with sqlite3.connect(os.path.join(self.stubs,
                                          'ha_snapshot.sqlite')) as db:
            tables = {t for t, in db.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        self.assertIn('alembic_version', tables)
        self.assertEqual([], self.named(calls, 'openstack'))
        started = {c[0]: c[1:] for c in self.named(calls, 'run_process')}
        self.assertEqual({'ha-snapshot-manager', 'ha-snapshot-api',
                          'ha-snapshot-agent'}, set(started))
        for name, args in started.items():
            if name == 'ha-snapshot-api':
                self.assertEqual(
                    '%s/uwsgi --procname-prefix ha-snapshot-api --ini %s'
                    % (self.bin, uwsgi_ini), args[0])
                continue
            self.assertEqual('%s/%s --config-file %s' % (
                self.bin, name, self.conf_file), args[0])
            self.assertIn(name, console_scripts())
        self.assertEqual(('libvirt',), started['ha-snapshot-agent'][1:])
        self.assertEqual([('60', 'http://10.0.0.5/ha-snapshot/')],
                         self.named(calls, 'wait_for_service'))

        # test-config: the real store verify, with the written file
        self.assertIn(('--config-file %s store verify' % self.conf_file,),
                      self.named(calls, 'ha-snapshot-manage'))
        self.assertIn('store file://%s/store: OK' % self.state_dir, r.stdout)

        # unstack (its own shell), then clean
        _, calls = self.run_phases(services, 'unstack')
        self.assertEqual({('ha-snapshot-api',), ('ha-snapshot-manager',),
                          ('ha-snapshot-agent',)},
                         set(self.named(calls, 'stop_process')))
        self.assertEqual([], self.named(calls, 'run_process'))
        self.assertTrue(os.path.exists(self.conf_file))
        _, calls = self.run_phases(services, 'clean')
        self.assertEqual([(uwsgi_ini, 'ha-snapshot-api')],
                         self.named(calls, 'remove_uwsgi_config'))
        self.assertFalse(os.path.exists(self.conf_dir))
        self.assertFalse(os.path.exists(self.state_dir))

    def test_embedded_server(self):
        """HA_SNAPSHOT_USE_UWSGI=False: ha-snapshot-api on its port."""
        self.env['HA_SNAPSHOT_USE_UWSGI'] = 'False'
        _, calls = self.run_phases('key,mysql,rabbit', 'stack post-config',
                                   'stack extra')
        conf = self.assert_options_exist(self.conf_file)
        self.assertEqual(('0.0.0.0', 8799), (conf.api.host, conf.api.port))
        self.assertEqual('http://10.0.0.5:8799', conf.api.public_endpoint)
        self.assertEqual([], self.named(calls, 'write_uwsgi_config'))
        started = {c[0]: c[1:] for c in self.named(calls, 'run_process')}
        self.assertEqual('%s/ha-snapshot-api --config-file %s' % (
            self.bin, self.conf_file), started['ha-snapshot-api'][0])
        self.assertEqual([('svc-0123', 'RegionOne', 'http://10.0.0.5:8799')],
                         self.named(calls, 'get_or_create_endpoint'))

    def test_host_monitor_toggle(self):
        """Off by default; HA_SNAPSHOT_HOST_MONITOR=True turns detection,
        fencing and evacuation on, with the driver chosen."""
        self.run_phases('key,mysql,rabbit', 'stack post-config')
        conf = self.parsed()
        self.assertEqual((False, 'nova-force-down', True),
                         (conf.host_monitor.enabled,
                          conf.host_monitor.fencing_driver,
                          conf.host_monitor.evacuate))
        self.env.update(HA_SNAPSHOT_HOST_MONITOR='True',
                        HA_SNAPSHOT_FENCING_DRIVER='none',
                        HA_SNAPSHOT_EVACUATE='False')
        self.run_phases('key,mysql,rabbit', 'stack post-config')
        conf = self.parsed()
        self.assertEqual((True, 'none', False),
                         (conf.host_monitor.enabled,
                          conf.host_monitor.fencing_driver,
                          conf.host_monitor.evacuate))

    def parsed(self):
        conf = cfg.ConfigOpts()
        ha_conf.register_opts(conf)
        conf([], project='ha-snapshot', default_config_files=[
            self.conf_file])
        return conf

    def test_three_manager_replicas(self):
        """HA_SNAPSHOT_MANAGERS=3: two more managers, each reading the
        shared file and then its own (host, spool); unstack stops all."""
        self.env['HA_SNAPSHOT_MANAGERS'] = '3'
        self.env['HOSTNAME'] = 'ctl'
        _, calls = self.run_phases('key,mysql,rabbit', 'stack post-config',
                                   'stack extra')
        started = {c[0]: c[1:] for c in self.named(calls, 'run_process')}
        for n in (2, 3):
            replica = os.path.join(self.conf_dir,
                                   'ha-snapshot-manager-%d.conf' % n)
            self.assertEqual('%s/ha-snapshot-manager --config-file %s '
                             '--config-file %s' % (self.bin, self.conf_file,
                                                   replica),
                             started['ha-snapshot-manager-%d' % n][0])
            conf = cfg.ConfigOpts()
            ha_conf.register_opts(conf)
            conf([], project='ha-snapshot',
                 default_config_files=[self.conf_file, replica])
            self.assertEqual(('ctl-manager-%d' % n,
                              os.path.join(self.state_dir, 'spool-%d' % n)),
                             (conf.manager.host, conf.manager.spool_dir))
        self.assertNotIn('ha-snapshot-manager-4', started)
        _, calls = self.run_phases('key,mysql,rabbit', 'unstack')
        self.assertTrue({('ha-snapshot-manager',), ('ha-snapshot-manager-2',),
                         ('ha-snapshot-manager-3',)} <= set(
                             self.named(calls, 'stop_process')))

    def test_controller_with_swift_and_ceilometer(self):
        services = ('key,mysql,rabbit,n-api,n-cond,n-sch,g-api,ceilometer,'
                    's-proxy,s-object,s-container,s-account,aodh-api')
        self.env['DISABLED_SERVICES'] = 'ha-snapshot-agent'
        _, calls = self.run_phases(
            services, 'stack install', 'stack post-config', 'stack extra')
        # NOTE: Ceilometer still reads the unversioned notifications.
        self.assert_nova_notifications(self.env['NOVA_CONF'], 'both')
        conf = self.assert_options_exist(self.conf_file)
        self.assertEqual('swift://ha-snapshot', conf.storage.backend_url)
        self.assert_ksa('swift')
        # NOTE: alarms verified with Aodh before a recovery.
        self.assert_ksa('aodh')
        created = self.named(calls, 'openstack')
        self.assertEqual(1, len(created))
        args = created[0]
        self.assertEqual(('container', 'create', 'ha-snapshot'), args[-3:])
        opts = dict(zip(args[:-3:2], args[1:-3:2]))
        self.assertEqual('ha-snapshot', opts['--os-username'])
        self.assertEqual('service', opts['--os-project-name'])
        self.assertEqual(SERVICE_PASSWORD, opts['--os-password'])
        self.assertEqual({'ha-snapshot-manager', 'ha-snapshot-api'},
                         {c[0] for c in self.named(calls, 'run_process')})

    def test_store_url_names_the_container(self):
        services = 'key,mysql,rabbit,n-api,s-proxy'
        self.env['HA_SNAPSHOT_STORE_URL'] = 'swift://recovery/site-a'
        _, calls = self.run_phases(services, 'stack post-config',
                                   'stack extra')
        conf = self.assert_options_exist(self.conf_file)
        self.assertEqual('swift://recovery/site-a', conf.storage.backend_url)
        self.assertEqual(('container', 'create', 'recovery'),
                         self.named(calls, 'openstack')[0][-3:])

    def test_rpm_distribution(self):
        self.env['STUB_DISTRO'] = 'fedora'
        _, calls = self.run_phases('key,n-cpu', 'stack install')
        self.assertEqual([('qemu-img', 'libvirt-devel', 'pkgconf-pkg-config')],
                         self.named(calls, 'install_package'))

    def test_compute_only_node(self):
        """An agent holds no credentials: no database, store, Keystone."""
        services = 'n-cpu,placement-client'
        self.env['DISABLED_SERVICES'] = 'ha-snapshot-api,ha-snapshot-manager'
        self.env['HA_SNAPSHOT_RPC_KEY'] = 'c0' * 32
        self.env['HA_SNAPSHOT_RPC_MASTER_KEY'] = 'not-written-here'
        # NOTE: a re-stack: nova-cpu.conf is left from the previous run.
        with open(self.env['NOVA_CPU_CONF'], 'w') as f:
            f.write('[DEFAULT]\nhost = compute1\n')
        _, calls = self.run_phases(
            services, 'stack install', 'stack post-config', 'stack extra',
            'stack test-config')
        self.assert_nova_notifications(self.env['NOVA_CONF'], 'versioned')
        self.assert_nova_notifications(self.env['NOVA_CPU_CONF'], 'versioned')
        self.assertEqual('compute1',
                         ini(self.env['NOVA_CPU_CONF'])['DEFAULT']['host'])
        self.assert_options_exist(self.conf_file)
        written = ini(self.conf_file)
        self.assertEqual({'DEFAULT', 'oslo_messaging_notifications', 'agent',
                          'libvirt', 'policy', 'rpc_auth'},
                         set(written.sections()))
        # NOTE: its own key only, never the master.
        self.assertEqual({'key_file': os.path.join(self.conf_dir, 'rpc.key')},
                         dict(written['rpc_auth']))
        self.assert_key_file(os.path.join(self.conf_dir, 'rpc.key'),
                             'c0' * 32)
        self.assertEqual(['ha-snapshot.conf', 'rpc.key'],
                         sorted(os.listdir(self.conf_dir)))
        with open(self.conf_file) as f:
            self.assertNotIn(SERVICE_PASSWORD, f.read())
        for name in ('recreate_database', 'ha-snapshot-manage',
                     'create_service_user', 'get_or_create_endpoint',
                     'openstack', 'wait_for_service'):
            self.assertEqual([], self.named(calls, name), name)
        self.assertEqual([('ha-snapshot-agent', '%s/ha-snapshot-agent '
                           '--config-file %s' % (self.bin, self.conf_file),
                           'libvirt')], self.named(calls, 'run_process'))
        _, calls = self.run_phases(services, 'unstack')
        self.assertEqual([('ha-snapshot-agent',)],
                         self.named(calls, 'stop_process'))

    def test_compute_only_node_without_a_key_fails(self):
        self.env['DISABLED_SERVICES'] = 'ha-snapshot-api,ha-snapshot-manager'
        r, calls = self.run_phases('n-cpu', 'stack install',
                                   'stack post-config', ok=False)
        self.assertNotEqual(0, r.returncode)
        died = self.named(calls, 'die')
        self.assertEqual(1, len(died))
        self.assertIn('HA_SNAPSHOT_RPC_KEY', ' '.join(died[0]))
        self.assertIn('rpc-key derive --host', ' '.join(died[0]))

    def test_not_enabled_does_nothing(self):
        self.env['DISABLED_SERVICES'] = ('ha-snapshot-api,ha-snapshot-agent,'
                                         'ha-snapshot-manager')
        _, calls = self.run_phases('key,n-cpu', 'stack install',
                                   'stack post-config', 'stack extra',
                                   'unstack', 'clean')
        self.assertEqual({'PHASE'}, {c[0] for c in calls})
        self.assertFalse(os.path.exists(self.conf_file))

    def _broken_plugin(self, old, new):
        """Run a copy of the plugin with one mistake in it."""
        self.plugin_dir = self.path('broken')
        shutil.copytree(PLUGIN_DIR, self.plugin_dir)
        path = os.path.join(self.plugin_dir, 'plugin.sh')
        with open(path) as f:
            text = f.read()
        self.assertIn(old, text)
        self._write(path, text.replace(old, new, 1))

    def test_a_misspelt_function_fails(self):
        self._broken_plugin('iniset_rpc_backend ha-snapshot',
                            'iniset_rpc_backnd ha-snapshot')
        r, _ = self.run_phases('key,n-cpu', 'stack install',
                               'stack post-config', ok=False)
        self.assertNotEqual(0, r.returncode)
        self.assertEqual(['iniset_rpc_backnd ha-snapshot %s DEFAULT'
                          % self.conf_file], self.unknown_commands())

    def test_a_misspelt_variable_fails(self):
        self._broken_plugin('"$HA_SNAPSHOT_STATE_DIR/spool"',
                            '"$HA_SNAPSHOT_STATE_DRI/spool"')
        r, _ = self.run_phases('key,n-cpu', 'stack post-config', ok=False)
        self.assertNotEqual(0, r.returncode)
        self.assertIn('HA_SNAPSHOT_STATE_DRI: unbound variable', r.stderr)


def _quote(value: str) -> str:
    return "'%s'" % value.replace("'", "'\\''")
