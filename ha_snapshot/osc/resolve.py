"""Names to IDs, as ``openstack server ...`` commands take them.

A UUID is used as it is, without asking Nova: the ha-snapshot API knows
servers by ID, and an operator recovering a server whose compute host is
gone must not depend on Nova answering. Anything else is a name, looked up
through the compute API with openstacksdk (the same ``find_server`` that
``openstack server show`` uses, over the same session); no match and more
than one match are clear errors. Projects likewise, through Keystone.

May import openstacksdk, keystoneauth1, oslo.utils and
ha_snapshot.exception.
"""

import logging
import re

from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as sdk_exc
from oslo_utils import uuidutils

from ha_snapshot import exception

LOG = logging.getLogger(__name__)
# NOTE: Keystone project IDs are 32 hex digits, no dashes.
_HEX_ID = re.compile(r'^[0-9a-fA-F]{32}$')


def server_id(client_manager, name_or_id: str) -> str:
    """The ID of the server named or identified by ``name_or_id``."""
    if uuidutils.is_uuid_like(name_or_id):
        return name_or_id
    try:
        compute = client_manager.compute
        server = compute.find_server(name_or_id, ignore_missing=False,
                                     details=False)
    except sdk_exc.DuplicateResource as e:
        ids = _duplicate_ids(client_manager, name_or_id)
        raise exception.AmbiguousServerName(
            server=name_or_id, count=max(len(ids), 2),
            ids=', '.join(ids) or 'see "openstack server list --name"'
        ) from e
    except sdk_exc.NotFoundException as e:
        raise exception.ServerNotFound(
            server=name_or_id,
            reason='the compute API knows no such server in this project'
        ) from e
    except (sdk_exc.SDKException, ks_exc.ClientException) as e:
        # NOTE: no compute endpoint (noauth without one), Nova down, ...:
        # a name cannot be resolved, an ID would not have needed Nova.
        # Anything else is a bug and shows as one.
        raise exception.ServerNotFound(
            server=name_or_id,
            reason='the name could not be looked up in the compute API '
                   '(%s); pass the server ID instead' % e) from e
    return server.id


def _duplicate_ids(client_manager, name: str) -> list:
    try:
        servers = client_manager.compute.servers(name='^%s$' % re.escape(
            name), details=False)
        return sorted(s.id for s in servers if s.name == name)
    except (sdk_exc.SDKException, ks_exc.ClientException) as e:
        # NOTE: only to help the message; the ambiguity is already known.
        LOG.debug('Servers named %r not listed: %s', name, e)
        return []


def project_id(client_manager, name_or_id: str) -> str:
    """The ID of a Keystone project given by name or ID.

    As osc's identity commands do, a value Keystone cannot be asked about
    (no identity endpoint, a user not allowed to list projects, noauth) is
    taken for an ID; one Keystone answers it does not know is an error.
    """
    if _HEX_ID.match(name_or_id) or uuidutils.is_uuid_like(name_or_id):
        return name_or_id
    try:
        identity = client_manager.sdk_connection.identity
        # NOTE: openstacksdk hands out a bare Proxy, without find_project,
        # when it cannot tell which identity API there is (noauth).
        find = getattr(identity, 'find_project', None)
        if find is None:
            LOG.debug('Project %r not looked up: no identity API; taken '
                      'for an ID', name_or_id)
            return name_or_id
        project = find(name_or_id, ignore_missing=False)
    except sdk_exc.DuplicateResource as e:
        raise exception.ClientError(
            reason='More than one project is named %r: use its ID.'
                   % name_or_id) from e
    except sdk_exc.NotFoundException as e:
        raise exception.ClientError(
            reason='Keystone knows no project with the name or ID %r.'
                   % name_or_id) from e
    except (sdk_exc.SDKException, ks_exc.ClientException) as e:
        LOG.debug('Project %r not looked up in Keystone (%s): taken for '
                  'an ID', name_or_id, e)
        return name_or_id
    return project.id
