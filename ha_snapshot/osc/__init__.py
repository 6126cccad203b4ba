"""The ``openstack ha ...`` commands (an OpenStackClient plugin).

``plugin`` is what OpenStackClient loads (entry point
``openstack.cli.extension``), ``client`` talks to the REST API over the
keystoneauth session osc built, ``v1`` holds the commands.

May import osc-lib, keystoneauth1, openstacksdk and ha_snapshot.exception;
never the service side of ha_snapshot (no database, no RPC, no config):
the CLI runs on an operator's laptop with only the client installed.
"""
