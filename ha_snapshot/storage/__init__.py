"""Recovery-image storage: drivers chosen by URL, and the store above them.

``get_driver(conf)`` parses ``[storage] backend_url`` and loads the driver
for its scheme from the stevedore namespace ``ha_snapshot.storage``, the way
oslo.messaging picks a transport. Drivers only move opaque objects; chunks,
manifests, merges and retention live in :mod:`ha_snapshot.storage.store`.
"""

import urllib.parse

from ha_snapshot import exception
from ha_snapshot import plugins

NAMESPACE = 'ha_snapshot.storage'


def get_driver(conf, url: str | None = None):
    url = url or conf.storage.backend_url
    parsed = urllib.parse.urlsplit(url)
    if not parsed.scheme:
        raise exception.BackendNotFound(url=url,
                                        reason='the URL has no scheme')
    return plugins.load(
        NAMESPACE, parsed.scheme, args=(parsed, conf),
        not_found=lambda reason: exception.BackendNotFound(
            url=url, reason=reason))
