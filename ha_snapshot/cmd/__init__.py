"""Console scripts. Each builds its own ConfigOpts; nothing at import but
:func:`quiet_third_party_warnings`, which must come before the imports
that raise them (oslo.messaging pulls in oslo.service's eventlet backend,
and eventlet dnspython)."""

import warnings


def quiet_third_party_warnings() -> None:
    """Silence, narrowly, the deprecation warnings our dependencies raise
    as they are imported: nothing an operator can act on, ~25 lines on
    stderr before a daemon or the demo says anything.

    * eventlet's EventletDeprecationWarning, raised where oslo.service's
      eventlet backend imports it (we use no eventlet; oslo.messaging's
      server module loads the backend);
    * cryptography's CryptographyDeprecationWarning for DSA, raised by
      dnspython's DNSSEC module (eventlet imports dnspython).

    Matched by message and the module the warning is attributed to, so
    other warnings of the same categories still show.
    """
    warnings.filterwarnings('ignore', message=r'\s*Eventlet is deprecated',
                            module=r'oslo_service\.|eventlet\.')
    warnings.filterwarnings('ignore', message=r'DSA is deprecated',
                            category=UserWarning, module=r'dns\.')


quiet_third_party_warnings()
