"""WSGI entry points of ha-snapshot: :func:`init_application` builds the
API application from the configuration files; ha_snapshot.wsgi.api calls
it once, at import, for WSGI servers (uwsgi, gunicorn, mod_wsgi).

Config files: ``$OS_HA_SNAPSHOT_CONFIG_DIR/ha-snapshot.conf`` when that
variable is set, else oslo.config's default locations
(``/etc/ha-snapshot/ha-snapshot.conf``, ...). The WSGI server's own
command line is never parsed as ours.
"""

import logging as py_logging
import os

from oslo_config import cfg
from oslo_log import log as logging

from ha_snapshot.api import deploy
from ha_snapshot.api import log_safety
from ha_snapshot.api import policy
from ha_snapshot.cmd import common
from ha_snapshot import conf as ha_conf

CONFIG_FILE = 'ha-snapshot.conf'
CONFIG_DIR_ENV = 'OS_HA_SNAPSHOT_CONFIG_DIR'


def config_files(env=None) -> list | None:
    """The config files to read, or None for oslo.config's defaults."""
    env = os.environ if env is None else env
    directory = env.get(CONFIG_DIR_ENV, '').strip()
    if directory:
        return [os.path.join(directory, CONFIG_FILE)]
    return None


def init_application(conf: cfg.ConfigOpts | None = None):
    # NOTE: the global CONF: oslo.messaging registers some of its option
    # groups there only (see ha_snapshot.rpc).
    conf = conf or cfg.CONF
    ha_conf.register_opts(conf)
    policy.set_defaults(conf)
    logging.register_options(conf)
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + common.QUIET + ['routes=INFO']))
    conf([], project='ha-snapshot', default_config_files=config_files())
    logging.setup(conf, 'ha-snapshot')
    log_safety.install()
    py_logging.captureWarnings(True)
    return deploy.loadapp(conf)
