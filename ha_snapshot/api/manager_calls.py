"""Calls from ha-snapshot-api to the manager, with a deadline the message
bus cannot stretch.

oslo.messaging bounds a call's wait for its reply (``timeout``) and, with a
``retry`` count, its attempts to publish; but a transport's first call sets
up its reply queue and retries that for ever while the broker is down, and
a connection can stall in ways no timeout covers. A request thread stuck
there is a request that never answers, and enough of them freeze the API
and its shutdown. So:

* the reply queue is set up once by a background thread
  (:meth:`ManagerCalls.start`), never by a request: until it is ready a
  request that needs the manager waits at most its deadline, then gets 503;
* every call runs in its own daemon thread; the request waits at most
  ``[api] rpc_timeout`` (+1 s, so that oslo.messaging's own, more precise,
  timeout wins when it can), then answers 504 (the broker is reachable: the
  manager did not answer) or 503 (it is not), whatever the thread does;
* at most ``[api] rpc_max_pending`` calls are outstanding: a thread that
  outlived its request still holds its slot, so a dead bus costs a bounded
  number of threads and later requests get 503 at once;
* :meth:`ManagerCalls.stop` (SIGTERM) answers every waiting request 503.

Whether the broker is reachable is a TCP connect to the hosts of
``transport_url``, made only when a call failed or took too long, and
cached for a second.

May import oslo libraries, ha_snapshot.exception and the standard library.
"""

import socket
import threading
import time

from oslo_config import cfg
from oslo_log import log as logging
import oslo_messaging as messaging

from ha_snapshot import exception

LOG = logging.getLogger(__name__)

# NOTE: what the AMQP drivers listen on when a URL names no port.
DEFAULT_PORTS = {'rabbit': 5672, 'amqp': 5672, 'kombu': 5672}
PROBE_TIMEOUT = 1.0
PROBE_CACHE = 1.0
GRACE = 1.0


def broker_addresses(conf) -> list:
    """(host, port) of every broker in ``[DEFAULT] transport_url``; empty
    for transports without a network broker (``fake://``)."""
    try:
        url = messaging.TransportURL.parse(conf, conf.transport_url)
    except (messaging.InvalidTransportURL, cfg.Error) as e:
        LOG.warning('Cannot read the brokers of transport_url: %s', e)
        return []
    scheme = (url.transport or '').split('+')[0]
    out = []
    for host in url.hosts:
        port = host.port or DEFAULT_PORTS.get(scheme)
        if host.hostname and port:
            out.append((host.hostname, port))
    return out


def _reachable(addresses, timeout: float) -> bool:
    for address in addresses:
        try:
            with socket.create_connection(address, timeout=timeout):
                return True
        except OSError:
            continue
    return False


class _Outcome:

    def __init__(self):
        self.done = threading.Event()
        self.result = None
        self.error = None


class ManagerCalls:
    """The manager's RPC API (ha_snapshot.manager.rpcapi.ManagerAPI) for
    the API's handlers: same methods, bounded in time and in threads."""

    def __init__(self, manager_api, timeout: float, max_pending: int,
                 brokers=(), transport=None):
        self.api = manager_api
        self.deadline = timeout + GRACE
        self.brokers = list(brokers)
        self.transport = transport
        self._slots = threading.BoundedSemaphore(max_pending)
        self.max_pending = max_pending
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._probe_lock = threading.Lock()
        self._probed_at = 0.0
        self._probed_up = True
        self._started = False

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Set up the transport's reply queue in the background."""
        if self._started:
            return
        self._started = True
        driver = getattr(self.transport, '_driver', None)
        setup = getattr(driver, '_get_reply_q', None)
        if setup is None:
            # NOTE: fake:// and drivers without a shared reply queue.
            self._ready.set()
            return

        def warm_up():
            try:
                setup()
            except Exception:
                LOG.exception('Setting up the reply queue failed; calls '
                              'to the manager set it up themselves')
            self._ready.set()
            LOG.info('Reply queue for calls to the manager is ready')
        threading.Thread(target=warm_up, name='manager-reply-queue',
                         daemon=True).start()

    def stop(self) -> None:
        """Answer every waiting request 503 and start no call any more."""
        self._stopping.set()

    # --- the RPC API ---------------------------------------------------------

    def protect(self, *args, **kwargs) -> dict:
        return self._call('protect', args, kwargs)

    def unprotect(self, *args, **kwargs) -> None:
        return self._call('unprotect', args, kwargs)

    def recover(self, *args, **kwargs) -> dict:
        return self._call('recover', args, kwargs)

    def alarm(self, *args, **kwargs) -> str:
        return self._call('alarm', args, kwargs)

    def _call(self, method, args, kwargs):
        self._check_stopping()
        start = time.monotonic()
        if not self._ready.is_set():
            self.start()
            if self.brokers and not self._broker_up():
                raise exception.ManagerUnreachable(
                    method=method, reason='the message bus (%s) refuses '
                    'connections' % self._names())
            if not self._wait(self._ready, start):
                self._check_stopping()
                raise self._failure(method, waited=time.monotonic() - start,
                                    before_send=True)
        elif not self._probed_up and not self._broker_up():
            # NOTE: the broker was down a moment ago and still is: say so
            # at once rather than start a call that cannot go anywhere.
            raise exception.ManagerUnreachable(
                method=method, reason='the message bus (%s) refuses '
                'connections' % self._names())
        if not self._slots.acquire(blocking=False):
            raise exception.ManagerBusy(method=method, n=self.max_pending)
        outcome = _Outcome()
        LOG.debug('Calling %s on the manager', method)
        threading.Thread(target=self._run, args=(outcome, method, args,
                                                 kwargs),
                         name='manager-call-%s' % method, daemon=True).start()
        if not self._wait(outcome.done, start):
            self._check_stopping()
            raise self._failure(method, waited=time.monotonic() - start)
        if outcome.error is not None:
            if isinstance(outcome.error, (messaging.MessageDeliveryFailure,
                                          messaging.MessagingTimeout)):
                self._broker_up(force=True)
            raise outcome.error
        self._probed_up = True
        return outcome.result

    def _run(self, outcome, method, args, kwargs):
        try:
            outcome.result = getattr(self.api, method)(*args, **kwargs)
        except Exception as e:
            outcome.error = e
        finally:
            self._slots.release()
            outcome.done.set()

    def _wait(self, event, start) -> bool:
        """Wait for ``event`` until the deadline or stop(); True if set."""
        while not self._stopping.is_set():
            left = self.deadline - (time.monotonic() - start)
            if left <= 0:
                return event.is_set()
            if event.wait(min(left, 0.2)):
                return True
        return event.is_set()

    def _check_stopping(self):
        if self._stopping.is_set():
            raise exception.ApiStopping()

    def _failure(self, method, waited, before_send=False):
        if self.brokers and not self._broker_up(force=True):
            return exception.ManagerUnreachable(
                method=method, reason='the message bus (%s) refuses '
                'connections' % self._names())
        if before_send:
            return exception.ManagerUnreachable(
                method=method, reason='not connected to the message bus '
                'after %.0f s' % waited)
        return exception.ManagerTimeout(method=method, seconds=waited)

    def _names(self) -> str:
        return ', '.join('%s:%s' % a for a in self.brokers)

    def _broker_up(self, force: bool = False) -> bool:
        if not self.brokers:
            return True
        with self._probe_lock:
            now = time.monotonic()
            if force or now - self._probed_at > PROBE_CACHE:
                self._probed_up = _reachable(self.brokers, PROBE_TIMEOUT)
                self._probed_at = time.monotonic()
                if not self._probed_up:
                    LOG.warning('The message bus (%s) refuses connections',
                                self._names())
            return self._probed_up
