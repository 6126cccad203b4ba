"""oslo.messaging plumbing shared by the agent and the manager.

Transports are built from the ``ConfigOpts`` passed in (the daemons pass
the global ``cfg.CONF``: oslo.messaging registers some of its option groups
there only). Contexts travel as oslo.context RequestContexts; everything
else is plain JSON.
"""

from oslo_context import context as oslo_context
import oslo_messaging as messaging

from ha_snapshot import exception

EXCHANGE = 'ha_snapshot'
MANAGER_TOPIC = 'ha-snapshot-manager'
AGENT_TOPIC = 'ha-snapshot-agent'
# NOTE: our exceptions cross the bus with their class and message, so a
# caller can tell a rejected delta from a transport failure.
ALLOWED_EXMODS = [exception.__name__]


class RequestContextSerializer(messaging.Serializer):

    def serialize_entity(self, ctxt, entity):
        return entity

    def deserialize_entity(self, ctxt, entity):
        return entity

    def serialize_context(self, ctxt):
        return ctxt.to_dict()

    def deserialize_context(self, ctxt):
        return oslo_context.RequestContext.from_dict(ctxt)


def context() -> oslo_context.RequestContext:
    return oslo_context.RequestContext(is_admin=True, overwrite=False)


def get_transport(conf, url: str | None = None):
    return messaging.get_rpc_transport(conf, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


def get_server(transport, topic: str, server: str, endpoints):
    target = messaging.Target(exchange=EXCHANGE, topic=topic, server=server)
    return messaging.get_rpc_server(
        transport, target, endpoints, executor='threading',
        serializer=RequestContextSerializer(),
        access_policy=messaging.DefaultRPCAccessPolicy)


def get_client(transport, topic: str, version: str, version_cap=None,
               timeout: int | None = None, server: str | None = None):
    target = messaging.Target(exchange=EXCHANGE, topic=topic, version=version,
                              server=server)
    return messaging.get_rpc_client(
        transport, target, version_cap=version_cap, timeout=timeout,
        serializer=RequestContextSerializer())
