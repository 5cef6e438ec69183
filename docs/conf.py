# Sphinx configuration for pike's documentation.
#
# Build with:  python -m sphinx -W --keep-going -b html docs docs/_build/html

import os
import sys

# Document the source tree this file belongs to, not whatever pike happens to
# be installed.
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, ROOT)

import pike  # noqa: E402

project = "pike"
author = "the pike developers"
copyright = "the pike developers"
version = pike.__version__
release = pike.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# No intersphinx: the docs build must not need the network.
nitpicky = False

autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = True

master_doc = "index"
exclude_patterns = ["_build"]
templates_path = []
html_static_path = []

html_theme = "alabaster"
html_title = "pike %s" % release
