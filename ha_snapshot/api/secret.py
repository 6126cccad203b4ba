"""Per-server alarm secrets: HMAC-SHA256 of the server id under ``[api]
alarm_secret_key``. An alarm URL carrying its server's secret is accepted
without a Keystone token (see ha_snapshot.api.handlers.alarm).

May import the standard library only.
"""

import hashlib
import hmac
import urllib.parse


def secret_for(key: str, server_id: str) -> str:
    return hmac.new(key.encode(), server_id.encode(),
                    hashlib.sha256).hexdigest()


def is_valid(key: str, server_id: str, secret: str) -> bool:
    """Constant-time check of a secret sent by a caller."""
    return hmac.compare_digest(secret.encode(),
                               secret_for(key, server_id).encode())


def alarm_url(base_url: str, key: str, server_id: str) -> str:
    """The alarm action URL of a server, under the API's ``base_url``."""
    return alarm_urls(base_url, key)(server_id)


def alarm_urls(base_url: str, key: str):
    """``server id -> alarm URL`` for many servers under one key: the
    HMAC's key schedule and the URL's prefix are made once (a list of
    servers spent a quarter of its CPU on alarm URLs made one by one).
    The secret is hex and the id a UUID: neither needs quoting; an id
    that would is quoted anyway."""
    prefix = base_url.rstrip('/') + '/v1/alarms/'
    keyed = hmac.new(key.encode(), digestmod=hashlib.sha256)

    def url(server_id: str) -> str:
        mac = keyed.copy()
        mac.update(server_id.encode())
        return '%s%s?secret=%s' % (
            prefix, urllib.parse.quote(server_id, safe='-'),
            mac.hexdigest())
    return url
