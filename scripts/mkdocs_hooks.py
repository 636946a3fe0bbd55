"""MkDocs hooks: links to repository files outside ``docs/``, and the API reference pages.

A page line ``<!-- api: flaxen.nn -->`` becomes one entry per public name of that module, so
a name added to the library appears in the reference without editing the page.

Links from a docs page to repository files outside ``docs/``:

On GitHub such links (``[train.py](../examples/mnist/train.py)``) open the file; the site
holds only ``docs/``, so MkDocs would report them as broken. This hook renders each one as
the repository path in code style, and reports a link whose target does not exist in the
repository as a warning (an error under ``mkdocs build --strict``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("mkdocs.plugins.flaxen_links")
REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[(?P<label>[^\]]+)\]\((?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs = Path(config["docs_dir"]).resolve()
    repo = Path(config["config_file_path"]).resolve().parent
    page_dir = (docs / page.file.src_path).parent

    def rewrite(m: re.Match[str]) -> str:
        target = m["target"]
        if "://" in target or target.startswith(("mailto:", "/")):
            return m[0]
        path = (page_dir / target).resolve()
        if path.is_relative_to(docs):
            return m[0]  # MkDocs checks links inside the site itself
        if not path.is_relative_to(repo) or not path.exists():
            log.warning("Doc file '%s' links to '%s', which is not a file of the repository.",
                        page.file.src_path, target)
            return m[0]
        rel = path.relative_to(repo).as_posix()
        label = m["label"]
        return label if label.strip("`") == rel else f"{label} (`{rel}`)"

    return LINK.sub(rewrite, expand_api_markers(markdown))


# -- API reference: one entry per public name ---------------------------------------------

API_MARKER = re.compile(r"^<!-- api: (?P<module>[\w.]+) -->$", flags=re.M)


def public_names(module: ModuleType) -> list[str]:
    """Names a user reaches as ``module.NAME``: not private, and not a module of its own."""
    return [name for name, obj in vars(module).items()
            if not name.startswith("_") and not inspect.ismodule(obj)
            and (getattr(obj, "__module__", "") or "").startswith(("flaxen", "jax", "optax"))]


def api_markdown(module_name: str) -> str:
    """mkdocstrings directives for every public name of a module, grouped by source file.

    Names defined in flaxen get their docstring rendered; names flaxen re-exports from JAX
    or optax get a table row pointing to the original (with an anchor of their flaxen path).
    """
    if str(REPO) not in sys.path:  # document the checked-out source, installed or not
        sys.path.insert(0, str(REPO))
    module = importlib.import_module(module_name)
    groups: dict[str, list[str]] = {}
    foreign: list[str] = []
    for name in public_names(module):
        source = getattr(module, name).__module__
        if source.startswith("flaxen"):
            groups.setdefault(source, []).append(name)
        else:
            foreign.append(name)
    out = [f"::: {module_name}\n    options:\n      members: false\n"]
    for source, names in groups.items():
        if source != module_name:
            doc = (inspect.getdoc(importlib.import_module(source)) or "").split("\n\n")[0]
            out.append(f"## `{source}`\n\n{doc}\n")
        for name in names:
            # `flaxen.nn.summary` is a function and a submodule; griffe resolves the dotted
            # path to the submodule, so such names are documented at their defining path.
            path = f"{module_name}.{name}"
            if path in sys.modules:  # a submodule of that name exists
                obj = getattr(module, name)
                path = f"{obj.__module__}.{obj.__qualname__}"
            out.append(f"::: {path}\n    options:\n      heading_level: 3\n")
    if foreign:
        out.append("## Re-exported\n\n| name | is |\n|---|---|")
        for name in foreign:
            obj = getattr(module, name)
            origin = f"{obj.__module__}.{getattr(obj, '__qualname__', name)}"
            out.append(f'| <a id="{module_name}.{name}"></a>`{name}` | `{origin}` |')
        out.append("")
    return "\n".join(out)


def expand_api_markers(markdown: str) -> str:
    return API_MARKER.sub(lambda m: api_markdown(m["module"]), markdown)
