"""The commands of the ha-snapshot API v1 (``openstack.ha.v1``)."""
