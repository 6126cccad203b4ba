"""Where clients reach this API: the base of the URLs it hands out.

Alarm URLs carry a secret, so they are never built from the ``Host``
header a client sent (anyone can send any): from ``[api]
public_endpoint``, else from the public ``ha-snapshot`` endpoint of the
Keystone catalog that keystonemiddleware put in the request (never a
catalog header under ``noauth``, where a client could forge it), else
there is none and no alarm URL is shown.

May import oslo libraries, the standard library and ha_snapshot.api.
"""

import json

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

SERVICE_TYPE = 'ha-snapshot'
CATALOG_HEADER = 'HTTP_X_SERVICE_CATALOG'


def from_catalog(catalog, region: str | None = None) -> str | None:
    """The public URL of our service type in a v3 (or v2) catalog."""
    for service in catalog or ():
        if not isinstance(service, dict) or service.get(
                'type') != SERVICE_TYPE:
            continue
        for ep in service.get('endpoints') or ():
            if not isinstance(ep, dict):
                continue
            if region and ep.get('region_id', ep.get('region')) not in (
                    region, None):
                continue
            if ep.get('interface') == 'public' and ep.get('url'):
                return ep['url']
            if 'publicURL' in ep:
                return ep['publicURL']
    return None


def public_url(conf, environ) -> str | None:
    """The base URL of the API for clients, or None if unknown."""
    if conf.api.public_endpoint:
        return conf.api.public_endpoint.rstrip('/')
    if conf.api.auth_strategy != 'keystone':
        return None
    text = environ.get(CATALOG_HEADER)
    if not text:
        return None
    try:
        url = from_catalog(json.loads(text))
    except ValueError:
        LOG.warning('The service catalog of the request is not JSON')
        return None
    return url.rstrip('/') if url else None
