"""ha-snapshot-status: checks to run before (re)starting upgraded services.

    ha-snapshot-status [--config-file F] upgrade check [--json]

Each check reads the configuration the services would read and answers
Success, Warning or Failure with what to do (oslo.upgradecheck); the exit
code is the worst result (0, 1, 2; 255 when a check itself crashed):

* Database schema: the database is at the newest alembic revision this
  code knows (else run ``ha-snapshot-manage db sync``).
* Storage backend: the driver for ``[storage] backend_url`` loads.
* Plugins: the snapshot policy and the recovery actions named in the
  configuration are installed.
* Policy file: the oslo.policy file, if there is one, is YAML, parses,
  references only defined rules, and names no rule ha-snapshot does not
  know (a misspelt rule name is silently ignored by oslo.policy).

May import the configuration, the database migrations, the storage and
plugin loaders, the policy defaults; nothing that needs a running service.
"""

import importlib.metadata
import re
import sys

from oslo_config import cfg
from oslo_policy import opts as policy_opts
from oslo_policy import policy as oslo_policy
from oslo_upgradecheck import common_checks
from oslo_upgradecheck import upgradecheck
import yaml

from ha_snapshot import conf as ha_conf
from ha_snapshot.db import migration
from ha_snapshot import exception
from ha_snapshot import policies
from ha_snapshot import policy as snapshot_policy
from ha_snapshot import storage

Code = upgradecheck.Code
Result = upgradecheck.Result
RECOVERY_NAMESPACE = 'ha_snapshot.recovery'
# NOTE: the API's default file name (oslo.policy's own is policy.json).
POLICY_FILE = 'policy.yaml'
_RULE_REF = re.compile(r'rule:([\w.:-]+)')


def _plugins(namespace: str) -> set:
    return {ep.name for ep in
            importlib.metadata.entry_points(group=namespace)}


class Checks(upgradecheck.UpgradeCommands):
    """The upgrade checks of ha-snapshot, on the configuration given."""

    display_title = 'ha-snapshot upgrade check results'

    def __init__(self, conf: cfg.ConfigOpts):
        super().__init__()
        self.conf = conf

    def _check_database(self) -> Result:
        try:
            migration.check(self.conf)
        except exception.DatabaseNotUpToDate as e:
            return Result(Code.FAILURE, str(e))
        except Exception as e:
            return Result(Code.FAILURE, 'The database of [database] '
                          'connection cannot be read: %s' % e)
        return Result(Code.SUCCESS, 'The database is at the newest '
                      'revision, %s.' % migration.head())

    def _check_storage(self) -> Result:
        url = self.conf.storage.backend_url
        try:
            driver = storage.get_driver(self.conf)
        except exception.HaSnapshotException as e:
            return Result(Code.FAILURE, '[storage] backend_url: %s' % e)
        describe = getattr(driver, 'describe', None)
        return Result(Code.SUCCESS, 'Storage backend %s loads.' % (
            describe() if describe else url))

    def _check_plugins(self) -> Result:
        problems = []
        try:
            snapshot_policy.load_policy(self.conf,
                                        '00000000-0000-0000-0000-000000000000')
        except exception.HaSnapshotException as e:
            problems.append('[policy] name: %s' % e)
        installed = _plugins(RECOVERY_NAMESPACE)
        wanted = [('[recovery] action', self.conf.recovery.action)]
        # NOTE: the per-driver map (driver:action,...) where it exists.
        actions = getattr(self.conf.recovery, 'actions', None) or {}
        for driver, name in sorted(actions.items()):
            wanted.append(('[recovery] actions (%s)' % driver, name))
        for option, name in wanted:
            if name not in installed:
                problems.append(
                    '%s: no recovery action %r is installed (installed: %s)'
                    % (option, name, ', '.join(sorted(installed)) or 'none'))
        if problems:
            return Result(Code.FAILURE, '; '.join(problems))
        return Result(Code.SUCCESS, 'The snapshot policy %r and the '
                      'recovery actions load.' % self.conf.policy.name)

    def _check_policy_file(self) -> Result:
        policy_opts.set_defaults(self.conf, POLICY_FILE)
        json_result = common_checks.check_policy_json(self, self.conf)
        if json_result.code != Code.SUCCESS:
            return json_result
        path = self.conf.find_file(self.conf.oslo_policy.policy_file)
        if not path:
            return Result(Code.SUCCESS, 'No policy file: the defaults in '
                          'code apply.')
        try:
            with open(path) as f:
                rules = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            return Result(Code.FAILURE, 'Policy file %s cannot be read: '
                          '%s' % (path, e))
        if not isinstance(rules, dict):
            return Result(Code.FAILURE, 'Policy file %s is not a mapping of '
                          'rule names to check strings.' % path)
        enforcer = oslo_policy.Enforcer(self.conf, policy_file=path,
                                        use_conf=False)
        known = policies.list_rules()
        enforcer.register_defaults(known)
        names = {rule.name for rule in known}
        referenced = ' '.join(str(v) for v in rules.values())
        try:
            enforcer.load_rules(force_reload=True)
            enforcer.check_rules(raise_on_violation=True)
        except Exception as e:
            undefined = sorted(set(_RULE_REF.findall(referenced))
                               - names - set(rules))
            if undefined:
                e = '%s (undefined rules referenced: %s)' % (
                    e, ', '.join(undefined))
            return Result(Code.FAILURE, 'Policy file %s: %s' % (path, e))
        unknown = sorted(name for name in rules if name not in names
                         and 'rule:%s' % name not in referenced)
        if unknown:
            return Result(Code.WARNING, 'Policy file %s sets rules '
                          'ha-snapshot does not know, which therefore '
                          'change nothing (misspelt?): %s' % (
                              path, ', '.join(unknown)))
        return Result(Code.SUCCESS, 'Policy file %s is valid.' % path)

    _upgrade_checks = (
        ('Database schema', _check_database),
        ('Storage backend', _check_storage),
        ('Plugins', _check_plugins),
        ('Policy file', _check_policy_file),
    )


def main(argv=None, conf=None) -> int:
    conf = conf or cfg.ConfigOpts()
    ha_conf.register_opts(conf)
    return upgradecheck.main(
        conf, project='ha-snapshot', upgrade_command=Checks(conf),
        argv=sys.argv[1:] if argv is None else argv)
