"""oslo.messaging plumbing shared by the agent and the manager.

Transports are built from the ``ConfigOpts`` passed in. oslo.messaging
registers some option groups on the global ``cfg.CONF`` only but reads them
from the transport's conf; ConfFixture's constructor registers them on a
private one (tests run several services in one process). Calls always
carry a ``retry`` count: without one a call to a stopped broker blocks
forever. Contexts travel as oslo.context RequestContexts; everything else
is plain JSON.
"""

from oslo_config import cfg
from oslo_context import context as oslo_context
import oslo_messaging as messaging
from oslo_messaging import conffixture

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
    if conf is not cfg.CONF:
        conffixture.ConfFixture(conf)
    return messaging.get_rpc_transport(conf, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


def get_notification_transport(conf, url: str | None = None):
    if conf is not cfg.CONF:
        conffixture.ConfFixture(conf)
    return messaging.get_notification_transport(conf, url=url)


def get_server(transport, topic: str, server: str, endpoints):
    target = messaging.Target(exchange=EXCHANGE, topic=topic, server=server)
    # NOTE: the threading executor is the default without eventlet.
    return messaging.get_rpc_server(
        transport, target, endpoints,
        serializer=RequestContextSerializer(),
        access_policy=messaging.DefaultRPCAccessPolicy)


def get_client(transport, topic: str, version: str, version_cap=None,
               timeout: int | None = None, server: str | None = None,
               retry: int = 2):
    target = messaging.Target(exchange=EXCHANGE, topic=topic, version=version,
                              server=server)
    return messaging.get_rpc_client(
        transport, target, version_cap=version_cap, timeout=timeout,
        retry=retry, serializer=RequestContextSerializer())
