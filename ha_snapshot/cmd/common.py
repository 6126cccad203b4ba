"""What every daemon does first: options, config files, logging."""

import sys

from oslo_config import cfg
from oslo_log import log as logging

from ha_snapshot import conf as ha_conf


# NOTE: the format inspector warns about every overlay's backing file,
# which overlays have by definition (image/inspect.py decides what is fine).
QUIET = ['oslo_utils.imageutils.format_inspector=ERROR']


def prepare(argv=None, conf=None) -> cfg.ConfigOpts:
    # NOTE: daemons use the global CONF: oslo.messaging registers some of
    # its option groups there only.
    conf = conf or cfg.CONF
    ha_conf.register_opts(conf)
    logging.register_options(conf)
    logging.set_defaults(default_log_levels=(
        logging.get_default_log_levels() + QUIET))
    conf(sys.argv[1:] if argv is None else argv, project='ha-snapshot')
    logging.setup(conf, 'ha-snapshot')
    return conf
