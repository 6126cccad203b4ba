"""The end-to-end scenario as a test (stestr), on the harness's cloud.

CI runs the same scenario through tools/e2e-openstack, which also prints
its measurements; this test is for a developer's ``stestr --test-path
ha_snapshot/tests/integration run``. It needs what tools/e2e-openstack
needs (root, the bindep.txt packages, a package index for the first
venv build) and takes minutes.
"""

import os

import testtools

from ha_snapshot.tests.integration import scenario
from tools.cloud import fixture


class TestHighAvailabilityOnOpenStack(testtools.TestCase):

    def test_scenario(self):
        cloud = self.useFixture(fixture.CloudFixture(
            ha_overrides=scenario.HA_OVERRIDES, with_aodh=True)).cloud
        result = scenario.run(cloud.state,
                              os.path.join(cloud.run_dir, 'scenario'))
        self.addDetail('scenario-result', testtools.content.json_content(
            result))
        self.assertEqual([], result['errors'])
        failed = [k for k, ok in result['checks'].items() if not ok]
        self.assertEqual([], failed)
        self.assertTrue(result['verified'])
