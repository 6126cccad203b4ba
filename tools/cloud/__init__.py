"""A real OpenStack control plane for integration tests, on loopback.

``python3 -m tools.cloud start|stop|status|openrc`` (or ``tools/cloud/
harness``) for a developer; :class:`tools.cloud.fixture.CloudFixture` for
tests; :mod:`tools.cloud.cloud` does the work. See
doc/source/contributor/integration.rst.
"""
