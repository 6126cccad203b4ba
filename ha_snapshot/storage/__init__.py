"""Recovery-image storage: drivers chosen by URL, and the store above them.

``get_driver(conf)`` parses ``[storage] backend_url`` and loads the driver
for its scheme from the stevedore namespace ``ha_snapshot.storage``, the way
oslo.messaging picks a transport. Drivers only move opaque objects; chunks,
manifests, merges and retention live in :mod:`ha_snapshot.storage.store`.
"""

import urllib.parse

from stevedore import driver as stevedore_driver

from ha_snapshot import exception

NAMESPACE = 'ha_snapshot.storage'


def get_driver(conf, url: str | None = None):
    url = url or conf.storage.backend_url
    parsed = urllib.parse.urlsplit(url)
    if not parsed.scheme:
        raise exception.BackendNotFound(url=url,
                                        reason='the URL has no scheme')
    try:
        mgr = stevedore_driver.DriverManager(
            NAMESPACE, parsed.scheme, invoke_on_load=True,
            invoke_args=(parsed, conf))
    except exception.HaSnapshotException:
        raise
    except Exception as e:  # stevedore wraps load errors in many types
        cause = e.__cause__ or e
        raise exception.BackendNotFound(
            url=url, reason='%s: %s' % (type(cause).__name__, cause))
    return mgr.driver
