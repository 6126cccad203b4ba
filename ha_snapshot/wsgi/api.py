"""The WSGI application of ha-snapshot-api, for WSGI servers.

``uwsgi --module ha_snapshot.wsgi.api:application`` or ``gunicorn
ha_snapshot.wsgi.api:application``. Importing this module reads the
configuration (see ha_snapshot.wsgi); nothing else reads it at import.
"""

import threading

from ha_snapshot import wsgi

_lock = threading.Lock()
application = None
with _lock:
    if application is None:
        application = wsgi.init_application()
