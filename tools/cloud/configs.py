"""The configuration files of the harness's services, as dicts.

Each function returns ``{section: {option: value}}`` for one service, the
way the devstack plugin (and devstack itself) would set it up on a single
node, but on 127.0.0.1 with the harness's ports, paths and passwords.
:func:`write_ini` writes one out.

Standard library only.
"""

import os

REGION = 'RegionOne'
# Keystone users: the admin, the demo user, one per service.
USERS = ('admin', 'demo', 'nova', 'glance', 'placement', 'ha-snapshot')


def write_ini(path: str, sections: dict) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        for section, options in sections.items():
            f.write('[%s]\n' % section)
            for key, value in options.items():
                if isinstance(value, bool):
                    value = 'true' if value else 'false'
                elif isinstance(value, (list, tuple)):
                    value = ','.join(str(v) for v in value)
                f.write('%s = %s\n' % (key, value))
            f.write('\n')
    return path


def ksa(c, user: str) -> dict:
    """keystoneauth password options of service user ``user``."""
    return {'auth_type': 'password', 'auth_url': c.keystone_url,
            'username': user, 'password': c.passwords[user],
            'project_name': 'service', 'user_domain_name': 'Default',
            'project_domain_name': 'Default', 'region_name': REGION}


def authtoken(c, user: str) -> dict:
    opts = ksa(c, user)
    opts.pop('region_name')
    opts['www_authenticate_uri'] = c.keystone_url
    # NOTE: no memcached here: tokens are cached in each process.
    opts['memcached_servers'] = ''
    return opts


def keystone(c) -> dict:
    d = c.path('keystone')
    return {
        'DEFAULT': {'debug': False},
        'database': {'connection': c.os_db['keystone']},
        # NOTE: every token issued checks a bcrypt hash; at the default
        # 12 rounds that is ~0.3 s of CPU on a busy 2-core host, for
        # passwords that live for one run.
        'identity': {'password_hash_rounds': 4},
        'fernet_tokens': {'key_repository': os.path.join(d, 'fernet')},
        'credential': {'key_repository': os.path.join(d, 'credential')},
        'cache': {'enabled': False},
    }


def glance(c) -> dict:
    d = c.path('glance')
    return {
        'DEFAULT': {'enabled_backends': 'fs:file', 'debug': False,
                    'image_size_cap': 10 * 1024 ** 3},
        'database': {'connection': c.os_db['glance']},
        'glance_store': {'default_backend': 'fs'},
        'fs': {'filesystem_store_datadir': os.path.join(d, 'images')},
        'os_glance_staging_store': {
            'filesystem_store_datadir': os.path.join(d, 'staging')},
        'os_glance_tasks_store': {
            'filesystem_store_datadir': os.path.join(d, 'tasks')},
        'keystone_authtoken': authtoken(c, 'glance'),
        'paste_deploy': {'flavor': 'keystone',
                         'config_file': c.etc('glance',
                                              'glance-api-paste.ini')},
        'oslo_concurrency': {'lock_path': os.path.join(d, 'locks')},
    }


def placement(c) -> dict:
    return {
        'DEFAULT': {'debug': False},
        'placement_database': {'connection': c.os_db['placement']},
        'api': {'auth_strategy': 'keystone'},
        'keystone_authtoken': authtoken(c, 'placement'),
    }


# NOTE: a killed host counts as down 20 s after its last report (Nova's
# defaults: 60 and 10), so that a test of host failure waits seconds, not
# a minute, when it does not force the service down.
SERVICE_DOWN_TIME = 20
REPORT_INTERVAL = 5


def nova(c, host=None) -> dict:
    """nova.conf of the control services, or with ``host`` (a
    tools.cloud.computes.ComputeHost) that compute host's nova-compute's:
    no database at all, its own host name, state, locks and libvirtd."""
    d = c.path('nova')
    state = host.dir + '/nova' if host is not None else d
    conf = {
        'DEFAULT': {
            'transport_url': c.transport_url,
            'host': host.name if host is not None else 'controller',
            'my_ip': '127.0.0.1', 'state_path': state,
            # NOTE: the same path on every host; each host's own folder
            # is bind-mounted over it inside its namespace.
            'instances_path': c.instances_path,
            'compute_driver': 'libvirt.LibvirtDriver',
            # NOTE: guests without an OS never answer an ACPI shutdown:
            # rebuilds, deletes and evacuations would wait 60 s for one.
            'shutdown_timeout': 0, 'debug': False,
            # NOTE: Nova formats a flavor's ephemeral disk; its default
            # for an image without os_type is vfat (dosfstools, not in
            # bindep.txt).
            'default_ephemeral_format': 'ext4',
            'instance_usage_audit': False,
            'graceful_shutdown_timeout': 5,
            'service_down_time': SERVICE_DOWN_TIME,
            'report_interval': REPORT_INTERVAL,
        },
        'wsgi': {'api_paste_config': c.etc('nova', 'api-paste.ini')},
        'api': {'auth_strategy': 'keystone'},
        'keystone_authtoken': authtoken(c, 'nova'),
        'placement': dict(ksa(c, 'nova'), valid_interfaces='public'),
        'glance': {'valid_interfaces': 'public', 'region_name': REGION},
        'neutron': dict(ksa(c, 'nova'), valid_interfaces='public'),
        'service_user': dict(ksa(c, 'nova'), send_service_user_token=True),
        'scheduler': {'discover_hosts_in_cells_interval': -1},
        'notifications': {'notification_format': 'versioned'},
        'oslo_messaging_notifications': {'driver': 'messagingv2'},
        'oslo_concurrency': {'lock_path': state + '/locks'},
        'libvirt': {'virt_type': 'qemu', 'cpu_mode': 'none',
                    'connection_uri': (host.libvirt_uri if host is not None
                                       else c.hosts[0].libvirt_uri)},
        # NOTE: as root already: the helper needs no sudo nor rootwrap;
        # each host's helper reads that host's file.
        'nova_sys_admin': {
            'helper_command': '%s --config-file %s' % (
                os.path.join(c.venv, 'bin', 'privsep-helper'),
                c.etc('nova', 'nova-compute-%s.conf' % host.name
                      if host is not None else 'nova.conf'))},
        'vnc': {'enabled': False},
        'spice': {'enabled': False},
        'serial_console': {'enabled': False},
        'cinder': {'os_region_name': REGION},
        # NOTE: the admin role (which the ha-snapshot service user has)
        # may force a service down and evacuate under these defaults.
        'oslo_policy': {'enforce_new_defaults': True, 'enforce_scope': True},
    }
    if host is None:
        conf['api_database'] = {'connection': c.nova_db['nova_api']}
        conf['database'] = {'connection': c.nova_db['nova']}
    return conf


def aodh(c) -> dict:
    """aodh.conf: API, listener (event alarms) and notifier (HTTP)."""
    return {
        'DEFAULT': {'transport_url': c.transport_url, 'debug': False,
                    # NOTE: no cache of each project's event alarms, or an
                    # alarm created after the project's first event would
                    # be seen only a minute later.
                    'event_alarm_cache_ttl': 0},
        'database': {'connection': c.aodh_db},
        'api': {'auth_mode': 'keystone'},
        'keystone_authtoken': authtoken(c, 'aodh'),
        'service_credentials': dict(ksa(c, 'aodh'), interface='public'),
        'listener': {'batch_size': 1, 'batch_timeout': 1},
        'notifier': {'batch_size': 1, 'batch_timeout': 1},
    }


def ha_snapshot(c) -> dict:
    """ha-snapshot.conf of the three daemons, as the devstack plugin does.

    ``c.ha_overrides`` ({section: {option: value}}) is applied last: the
    scenario makes the snapshot cycle and health checks faster.
    """
    d = c.path('ha-snapshot')
    conf = {
        'DEFAULT': {'transport_url': c.transport_url, 'debug': True},
        'database': {
            'connection': 'sqlite:///%s/ha-snapshot.sqlite' % d},
        'storage': {'backend_url': 'swift://ha-snapshot'},
        'swift': {'auth_type': 'none',
                  'endpoint_override': c.swift_endpoint},
        'manager': {'spool_dir': os.path.join(d, 'spool'),
                    'host': 'ha-manager', 'listen_notifications': True},
        # NOTE: the first compute host's agent; each agent also reads
        # its host's file (agent_host below), which overrides these.
        'agent': {'state_dir': os.path.join(d, 'agent'),
                  'host': c.compute_host, 'hypervisor': 'libvirt'},
        'libvirt': {'connection_uri': c.hosts[0].libvirt_uri,
                    'backup_dir': os.path.join(d, 'libvirt')},
        'policy': {'name': 'adaptive', 'rpo_target': 60},
        'recovery': {'actions': 'libvirt:rebuild',
                     'work_dir': os.path.join(d, 'recovery'),
                     # NOTE: the scenario waits for the sweep of a
                     # deleted server's recovery images.
                     'image_sweep_interval': 3},
        'nova': dict(ksa(c, 'ha-snapshot'), interface='public'),
        'glance': dict(ksa(c, 'ha-snapshot'), interface='public'),
        # NOTE: alarms are verified with Aodh before a recovery, as the
        # devstack plugin configures it when Aodh runs.
        **({'aodh': dict(ksa(c, 'ha-snapshot'), interface='public')}
           if c.with_aodh else {}),
        'api': {'host': '127.0.0.1', 'port': c.ports['ha-snapshot-api'],
                'auth_strategy': 'keystone',
                'public_endpoint': c.url('ha-snapshot-api'),
                'alarm_secret_key': c.passwords['alarm-key']},
        'keystone_authtoken': authtoken(c, 'ha-snapshot'),
        # NOTE: the manager signs and checks with the master key; the API
        # and the agent get their own derived keys (rpc_key_conf below).
        'rpc_auth': {'master_key_file': c.etc('ha-snapshot',
                                              'rpc-master.key')},
    }
    for section, options in (c.ha_overrides or {}).items():
        conf.setdefault(section, {}).update(options)
    return conf


def agent_host(host, key_file: str) -> dict:
    """The extra config file of ``host``'s ha-snapshot-agent: who it is,
    its libvirtd, its own state and its own bus key (an operator would
    write this file on each compute host)."""
    d = os.path.join(host.dir, 'ha-snapshot')
    return {'agent': {'host': host.name,
                      'state_dir': os.path.join(d, 'agent')},
            'libvirt': {'connection_uri': host.libvirt_uri,
                        'backup_dir': os.path.join(d, 'libvirt')},
            'rpc_auth': {'key_file': key_file}}


def rpc_key_conf(key_file: str) -> dict:
    """The extra config file of a daemon that holds only its own bus key
    (as a compute host or an API node would)."""
    return {'rpc_auth': {'key_file': key_file}}
