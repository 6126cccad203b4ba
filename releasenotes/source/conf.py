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

"""Sphinx configuration of the ha-snapshot release notes."""

project = 'ha-snapshot Release Notes'
copyright = 'ha-snapshot developers'
author = 'ha-snapshot developers'

extensions = ['reno.sphinxext']

master_doc = 'index'
source_suffix = {'.rst': 'restructuredtext'}
exclude_patterns = ['_build']
# NOTE: literal blocks are shown as typed unless they name a language.
highlight_language = 'none'

# NOTE: release notes carry no version of their own: reno takes the
# versions from the git tags.
version = ''
release = ''

html_static_path = ['_static']
# NOTE: the same theme as doc/source/conf.py, for the same reasons.
html_theme = 'alabaster'
html_show_sourcelink = False
