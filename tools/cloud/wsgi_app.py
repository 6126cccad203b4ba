"""The WSGI app gunicorn serves, for any OpenStack API of the harness.

Runs inside the harness's OpenStack venv (gunicorn's interpreter), never in
the project's. ``HA_CLOUD_WSGI_MODULE`` names the service's own WSGI module
(``keystone.wsgi.api``, ``nova.wsgi.osapi_compute``...).

NOTE: those modules parse ``sys.argv`` with oslo.config when imported;
under gunicorn that is gunicorn's command line, which they refuse. They
find their config files through their OS_*_CONFIG_DIR variables instead.
"""

import importlib
import os
import sys

sys.argv = sys.argv[:1]
application = importlib.import_module(
    os.environ['HA_CLOUD_WSGI_MODULE']).application
