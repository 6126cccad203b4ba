"""The REST API, declared in gabbi YAML files (gabbits/*.yaml), against the
application in process over a real database and a real manager."""

import os

from gabbi import driver

from ha_snapshot.tests.functional.api import fixtures

TESTS_DIR = 'gabbits'


def load_tests(loader, tests, pattern):
    test_dir = os.path.join(os.path.dirname(__file__), TESTS_DIR)
    return driver.build_tests(test_dir, loader, host=None,
                              test_loader_name=__name__,
                              intercept=fixtures.setup_app,
                              fixture_module=fixtures)
