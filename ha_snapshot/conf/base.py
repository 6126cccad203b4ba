"""The one way option groups are registered on a ConfigOpts."""

from oslo_config import cfg


def register(conf: cfg.ConfigOpts, group: cfg.OptGroup, opts: list) -> None:
    # NOTE: a fresh OptGroup per ConfigOpts: register_group() only copies
    # a group shallowly, so overrides set on one conf would show on every
    # conf sharing the module-level group. Registering twice is harmless.
    conf.register_group(cfg.OptGroup(group.name, title=group.title,
                                     help=group.help))
    conf.register_opts(opts, group=group.name)
