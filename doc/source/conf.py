# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Sphinx configuration of the ha-snapshot documentation."""

# -- General ------------------------------------------------------------------

project = 'ha-snapshot'
copyright = 'ha-snapshot developers'
author = 'ha-snapshot developers'

extensions = [
    'sphinx.ext.todo',
    # NOTE: the configuration reference and the sample file are generated
    # from the code (oslo.config.opts entry point), never written by hand.
    'oslo_config.sphinxext',
    'oslo_config.sphinxconfiggen',
    # NOTE: the openstack ha reference is generated from the commands'
    # own parsers (cli/openstack-ha.rst).
    'cliff.sphinxext',
    # NOTE: the policy reference and sample, from the oslo.policy.policies
    # entry point (configuration/policy.rst).
    'oslo_policy.sphinxext',
    'oslo_policy.sphinxpolicygen',
]

config_generator_config_file = (
    '../../etc/ha-snapshot/ha-snapshot-config-generator.conf')
sample_config_basename = '_static/ha-snapshot'
policy_generator_config_file = (
    '../../etc/ha-snapshot/ha-snapshot-policy-generator.conf')
sample_policy_basename = '_static/ha-snapshot'

master_doc = 'index'
source_suffix = {'.rst': 'restructuredtext'}
exclude_patterns = ['_build']
# NOTE: literal blocks are shown as typed unless they name a language.
highlight_language = 'none'
todo_include_todos = True

# -- HTML ---------------------------------------------------------------------

# NOTE: Sphinx's own theme, not openstackdocstheme: that theme stamps every
# page with docs.openstack.org branding, a Creative Commons licence notice
# and analytics, none of which fits this project's pages.
html_theme = 'alabaster'
html_theme_options = {
    'description': 'High availability by continuous incremental snapshots',
    'fixed_sidebar': True,
    'page_width': '1100px',
}
html_static_path = ['_static']
html_title = 'ha-snapshot'
html_show_sourcelink = False
