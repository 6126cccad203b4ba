"""``ipmi``: power the host off through its BMC, then force it down in Nova.

Runs ``ipmitool -I <interface> -H <address> -U <username> -f
<password_file> chassis power off``, then ``chassis power status`` until
the BMC reports the power off (``[host_monitor] ipmi_timeout``), then
forces the host's compute service down in Nova as ``nova-force-down``
does (Nova accepts evacuations only from a host it sees down). Each
host's BMC comes from the JSON file ``[host_monitor] ipmi_hosts_file``;
the password is given to ipmitool as a file (``-f``), never on a command
line. A host already off is not powered off again.

:meth:`IpmiFencing.powered_off` asks the BMC the power status: a silent
host whose BMC reports it off is failed even while Nova, which has not
noticed yet, still reports it up.
"""

import json
import os
import subprocess
import time

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot.fencing import base
from ha_snapshot.fencing import impl_nova

LOG = logging.getLogger(__name__)

POLL = 1.0


class IpmiFencing(base.FencingDriver):

    name = 'ipmi'

    def __init__(self, conf, *, connect=None, clock=time.monotonic,
                 sleep=time.sleep):
        kwargs = {} if connect is None else {'connect': connect}
        super().__init__(conf, **kwargs)
        self._clock = clock
        self._sleep = sleep
        self._unknown = {}
        """host -> the reason its power status was last unknown (said
        once, not at every round)."""

    def check(self) -> None:
        path = self.conf.host_monitor.ipmi_hosts_file
        if not path:
            raise exception.ConfigurationError(
                reason='[host_monitor] fencing_driver = ipmi needs '
                '[host_monitor] ipmi_hosts_file')
        try:
            with open(path) as f:
                hosts = json.load(f)
        except (OSError, ValueError) as e:
            raise exception.ConfigurationError(
                reason='[host_monitor] ipmi_hosts_file %s cannot be read: '
                '%s' % (path, e))
        bad = sorted(str(h) for h, bmc in (hosts.items() if isinstance(
            hosts, dict) else ()) if not isinstance(bmc, dict)
            or not bmc.get('address'))
        if not isinstance(hosts, dict) or bad:
            raise exception.ConfigurationError(
                reason='[host_monitor] ipmi_hosts_file %s must map host '
                'names to {"address": ...}%s' % (
                    path, '; without an address: %s' % ', '.join(bad)
                    if bad else ''))
        # NOTE: without -f ipmitool asks a terminal for the password (or
        # tries none): every BMC has a password file this process can
        # read, and no one else should.
        for host, bmc in sorted(hosts.items()):
            secret = bmc.get('password_file')
            if not secret or not os.access(secret, os.R_OK):
                raise exception.ConfigurationError(
                    reason='[host_monitor] ipmi_hosts_file %s: the BMC of '
                    '%s needs a readable "password_file" (%s)' % (
                        path, host, secret or 'none given'))
            if os.stat(secret).st_mode & 0o077:
                LOG.warning('BMC password file %s of host %s can be read '
                            'by other users: chmod 600 it', secret, host)

    def _bmc(self, host: str) -> dict:
        path = self.conf.host_monitor.ipmi_hosts_file
        if not path:
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='[host_monitor] ipmi_hosts_file is not set')
        try:
            with open(path) as f:
                hosts = json.load(f)
        except (OSError, ValueError) as e:
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='[host_monitor] ipmi_hosts_file %s cannot be read: '
                '%s' % (path, e))
        bmc = hosts.get(host) if isinstance(hosts, dict) else None
        if not isinstance(bmc, dict) or not bmc.get('address'):
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='no BMC address for this host in %s' % path)
        return bmc

    def _ipmitool(self, host: str, bmc: dict, *command: str) -> str:
        args = [self.conf.host_monitor.ipmitool_path,
                '-I', bmc.get('interface') or 'lanplus',
                '-H', bmc['address']]
        if bmc.get('username'):
            args += ['-U', bmc['username']]
        if bmc.get('password_file'):
            args += ['-f', bmc['password_file']]
        args += list(command)
        try:
            done = subprocess.run(
                args, capture_output=True, text=True,
                stdin=subprocess.DEVNULL,
                timeout=self.conf.host_monitor.ipmi_timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='ipmitool %s: %s' % (' '.join(command), e))
        if done.returncode != 0:
            raise exception.FencingError(
                host=host, driver=self.name,
                reason='ipmitool %s exited %d: %s'
                % (' '.join(command), done.returncode,
                   (done.stderr or done.stdout).strip()[:300]))
        return done.stdout

    def _status(self, host: str, bmc: dict) -> str:
        out = self._ipmitool(host, bmc, 'chassis', 'power', 'status')
        # NOTE: ipmitool prints "Chassis Power is on" / "... is off".
        words = out.strip().lower().split()
        if words[-1:] in (['on'], ['off']):
            return words[-1]
        raise exception.FencingError(
            host=host, driver=self.name,
            reason='ipmitool chassis power status said %r' % out.strip())

    def powered_off(self, host: str) -> bool:
        try:
            off = self._status(host, self._bmc(host)) == 'off'
        except exception.FencingError as e:
            if self._unknown.get(host) != str(e):
                LOG.warning('Power status of %s unknown: %s', host, e)
            self._unknown[host] = str(e)
            return False
        if self._unknown.pop(host, None) is not None:
            LOG.info('Power status of %s known again: %s', host,
                     'off' if off else 'on')
        return off

    def fence(self, host: str, service) -> str:
        bmc = self._bmc(host)
        done = []
        if self._status(host, bmc) == 'off':
            done.append('power was already off')
        else:
            self._ipmitool(host, bmc, 'chassis', 'power', 'off')
            deadline = self._clock() + self.conf.host_monitor.ipmi_timeout
            while self._status(host, bmc) != 'off':
                if self._clock() >= deadline:
                    raise exception.FencingError(
                        host=host, driver=self.name,
                        reason='the BMC %s still reports power on %.0f s '
                        'after power off' % (bmc['address'],
                                             self.conf.host_monitor
                                             .ipmi_timeout))
                self._sleep(POLL)
            done.append('powered off through BMC %s' % bmc['address'])
        if getattr(service, 'is_forced_down', False):
            done.append('compute service %s was already forced down'
                        % service.id)
        else:
            try:
                nova = impl_nova.compute(self.conf, self._connect, host,
                                         self.name)
                done.append(impl_nova.force_down(nova, host, service,
                                                 self.name))
            except exception.FencingError as e:
                # NOTE: the host is off, but Nova will not evacuate from a
                # host it sees up: not fenced as far as we are concerned.
                raise exception.FencingError(
                    host=host, driver=self.name, reason='%s, but %s' % (
                        '; '.join(done), e.kwargs.get('reason', e)))
        return '; '.join(done)
