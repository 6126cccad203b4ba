"""The one way option groups (and keystoneauth's options) are registered."""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg


def register(conf: cfg.ConfigOpts, group: cfg.OptGroup, opts: list) -> None:
    # NOTE: a fresh OptGroup per ConfigOpts: register_group() only copies
    # a group shallowly, so overrides set on one conf would show on every
    # conf sharing the module-level group. Registering twice is harmless.
    conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                     help=group.help))
    conf.register_opts(opts, group=group.name)


def register_keystoneauth(conf: cfg.ConfigOpts, group: str,
                          timeout: int) -> None:
    """keystoneauth1's session and auth options in ``[group]``.

    The way a client of another OpenStack service is configured here
    ([swift], [nova], [glance]); ha_snapshot.openstack.clients builds the
    connection from them.
    """
    ks_loading.register_session_conf_options(conf, group)
    ks_loading.register_auth_conf_options(conf, group)
    # NOTE: keystoneauth's default is no timeout at all: a service that
    # accepts connections and never answers would hang its caller. This
    # bounds each request; an upload's request lasts as long as bytes keep
    # flowing (it is a read timeout).
    conf.set_default('timeout', timeout, group=group)


def keystoneauth_opts(timeout: int) -> list:
    """The options :func:`register_keystoneauth` adds, for list_opts.

    The sample documents the password plugin's options; any other
    keystoneauth plugin's options are read once auth_type names it.
    """
    opts = ks_loading.get_session_conf_options()  # NOTE: fresh copies
    for opt in opts:
        if opt.dest == 'timeout':
            opt.default = timeout
    return (opts + ks_loading.get_auth_common_conf_options()
            + ks_loading.get_auth_plugin_conf_options('password'))
