"""Sphinx configuration of the scgm_scvi documentation.

Build (from the repository root)::

    sphinx-build -W -b html docs docs/_build/html

Offline builds (CI, tests) set ``SCGM_DOCS_OFFLINE=1``: intersphinx links to anndata, scanpy,
scvi-tools and PyTorch are then left out, and so they are whenever an inventory cannot be
fetched in a few seconds. Notebooks are rendered from their saved outputs, never executed.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import scgm_scvi  # noqa: E402

project = "scgm_scvi"
author = "scgm_scvi developers"
copyright = "2025, scgm_scvi developers"  # noqa: A001
release = scgm_scvi.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinxcontrib.bibtex",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
master_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
templates_path = ["_templates"]

# ---------------------------------------------------------------------------- tutorials
# The notebooks live in tutorials/ at the repository root (where users run them); they are
# copied here at build time so that Sphinx can render them (docs/tutorials/ is git-ignored).
_NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
(HERE / "tutorials").mkdir(exist_ok=True)
for _nb in _NOTEBOOKS:
    _target = HERE / "tutorials" / _nb.name
    if not _target.exists() or _target.read_bytes() != _nb.read_bytes():
        shutil.copyfile(_nb, _target)

nb_execution_mode = "off"  # rendered from the committed outputs
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# ---------------------------------------------------------------------------- API reference
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autoclass_content = "class"
# methods overriding Lightning / scvi-tools ones would inherit docstrings written for their docs
autodoc_inherit_docstrings = False
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = True
napoleon_use_param = True
typehints_defaults = "comma"
typehints_use_rtype = False
always_use_bars_union = True
suppress_warnings = [
    # docstrings inherited from scvi-tools use its own cross-reference roles and formatting
    "ref.python",
]

# ---------------------------------------------------------------------------- citations
bibtex_bibfiles = ["references.bib"]
bibtex_default_style = "plain"
bibtex_reference_style = "author_year"

# ---------------------------------------------------------------------------- intersphinx
_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "anndata": "https://anndata.readthedocs.io/en/stable",
    "scanpy": "https://scanpy.readthedocs.io/en/stable",
    "scvi": "https://docs.scvi-tools.org/en/stable",
    "mudata": "https://mudata.readthedocs.io/en/latest",
    "torch": "https://docs.pytorch.org/docs/stable",
    "numpy": "https://numpy.org/doc/stable",
    "pandas": "https://pandas.pydata.org/docs",
}


def _reachable(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/objects.inv", timeout=timeout) as response:
            return response.status == 200
    except Exception:  # noqa: BLE001 - offline, DNS failure, timeout: link nothing
        return False


if os.environ.get("SCGM_DOCS_OFFLINE", "0") == "1":
    intersphinx_mapping = {}
else:
    intersphinx_mapping = {
        name: (url, None) for name, url in _INVENTORIES.items() if _reachable(url)
    }
intersphinx_timeout = 5

# ---------------------------------------------------------------------------- HTML
html_theme = "sphinx_book_theme"
html_title = f"scgm_scvi {release}"
html_theme_options = {"show_toc_level": 2}
html_static_path: list[str] = []

# ---------------------------------------------------------------------------- guide pages
# Pages listed in index.md's toctrees; any other top-level page (e.g. a new guide) is appended
# to the how-to guides, so adding a page never breaks the -W build.
_LISTED = set(re.findall(r"^(\w+)$", (HERE / "index.md").read_text(), flags=re.MULTILINE))
_EXTRA_GUIDES = sorted(p.stem for p in HERE.glob("*.md") if p.stem not in _LISTED | {"index"})


def _public_callables(module_name: str) -> list[str]:
    """The classes and functions in ``__all__`` of a subpackage (constants are left out)."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", [])
    return [
        n
        for n in names
        if inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n))
    ]


# autosummary writes its stub pages before the placeholders of api.md are filled in, so it also
# reads a (git-ignored) file listing the same names
_API_MODULES = re.findall(r"%API:([\w.]+)%", (HERE / "api.md").read_text())
_STUBS = HERE / "_api_stubs.rst"
_stub_text = "".join(
    f".. currentmodule:: {m}\n\n.. autosummary::\n   :toctree: generated\n\n"
    + "".join(f"   {name}\n" for name in _public_callables(m))
    + "\n"
    for m in _API_MODULES
)
if not _STUBS.exists() or _STUBS.read_text() != _stub_text:
    _STUBS.write_text(_stub_text)
autosummary_generate = ["api.md", _STUBS.name]
# stub pages of names no longer in the API would break the -W build ("not in any toctree")
shutil.rmtree(HERE / "generated", ignore_errors=True)
exclude_patterns.append(_STUBS.name)


def _fill_placeholders(app, docname, source):
    """``%EXTRA_GUIDES%`` in index.md and ``%API:<module>%`` lists in api.md."""
    text = source[0]
    if docname == "index":
        text = text.replace("%EXTRA_GUIDES%", "\n".join(_EXTRA_GUIDES))
    if docname == "api":
        for match in re.findall(r"%API:([\w.]+)%", text):
            entries = "\n".join(f"   {name}" for name in _public_callables(match))
            text = text.replace(f"%API:{match}%", entries)
    source[0] = text


def setup(app):
    app.connect("source-read", _fill_placeholders)
