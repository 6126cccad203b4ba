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
    return '%s/v1/alarms/%s?%s' % (
        base_url.rstrip('/'), server_id,
        urllib.parse.urlencode({'secret': secret_for(key, server_id)}))
