"""The WSGI application of ha-snapshot-api, for WSGI servers.

``uwsgi --module ha_snapshot.wsgi.api:application`` or ``gunicorn
ha_snapshot.wsgi.api:application``. Importing this module reads the
configuration (see ha_snapshot.wsgi); nothing else reads it at import.
"""

from ha_snapshot import wsgi

# NOTE: a WSGI server imports this module once per worker (Python's import
# lock serialises it), so building the application here is safe; it is the
# one module that reads the configuration when imported, as WSGI servers
# expect of a module named by "module:application".
application = wsgi.init_application()
