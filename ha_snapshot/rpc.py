"""oslo.messaging plumbing shared by the agent and the manager.

Transports are built from the ``ConfigOpts`` passed in. oslo.messaging
registers some option groups on the global ``cfg.CONF`` only but reads them
from the transport's conf; ConfFixture's constructor registers them on a
private one (tests run several services in one process). Calls always
carry a ``retry`` count: without one a call to a stopped broker blocks
forever. Contexts travel as oslo.context RequestContexts plus the signed
identity envelope of ha_snapshot/rpc_auth.py; everything else is plain
JSON. A server given a ``guard`` runs it before every method of its endpoints:
a message the guard refuses is never dispatched.
"""

import functools

from oslo_config import cfg
from oslo_context import context as oslo_context
import oslo_messaging as messaging
from oslo_messaging import conffixture

from oslo_log import log as logging

from ha_snapshot import exception
from ha_snapshot import rpc_auth

LOG = logging.getLogger(__name__)

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
        values = ctxt.to_dict()
        envelope = getattr(ctxt, rpc_auth.ENVELOPE, None)
        if envelope is not None:
            values[rpc_auth.ENVELOPE] = envelope
        return values

    def deserialize_context(self, ctxt):
        result = oslo_context.RequestContext.from_dict(ctxt)
        setattr(result, rpc_auth.ENVELOPE, ctxt.get(rpc_auth.ENVELOPE))
        return result


def context() -> oslo_context.RequestContext:
    return oslo_context.RequestContext(is_admin=True, overwrite=False)


def signed_context(signer: rpc_auth.Signer, audience: str, method: str,
                   kwargs: dict) -> oslo_context.RequestContext:
    """A context carrying ``signer``'s envelope for this one message."""
    ctxt = context()
    setattr(ctxt, rpc_auth.ENVELOPE,
            signer.envelope(audience, method, kwargs))
    return ctxt


class GuardedEndpoint:
    """An endpoint whose every public method first passes ``guard``
    (callable(ctxt, method, kwargs), raising to refuse)."""

    def __init__(self, endpoint, guard):
        self._endpoint = endpoint
        self._guard = guard

    def __getattr__(self, name):
        attr = getattr(self._endpoint, name)
        if name.startswith('_') or name == 'target' or not callable(attr):
            return attr

        @functools.wraps(attr)
        def guarded(ctxt, **kwargs):
            try:
                self._guard(ctxt, name, kwargs)
            except exception.HaSnapshotException as e:
                LOG.warning('Refused: %s', e)
                # NOTE: expected: the caller gets the typed error, and the
                # server logs no traceback for it.
                raise messaging.ExpectedException()
            return attr(ctxt, **kwargs)
        return guarded


def get_transport(conf, url: str | None = None):
    if conf is not cfg.CONF:
        conffixture.ConfFixture(conf)
    return messaging.get_rpc_transport(conf, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


def get_notification_transport(conf, url: str | None = None):
    if conf is not cfg.CONF:
        conffixture.ConfFixture(conf)
    return messaging.get_notification_transport(conf, url=url)


def get_server(transport, topic: str, server: str, endpoints, guard=None):
    target = messaging.Target(exchange=EXCHANGE, topic=topic, server=server)
    if guard is not None:
        endpoints = [GuardedEndpoint(e, guard) for e in endpoints]
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
