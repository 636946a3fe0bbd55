"""The documentation site: every docs page is in it, and the API reference misses no public name.

The site is built once with ``mkdocs build --strict`` into a temporary folder (about 15 s),
or read from ``$FLAXEN_DOCS_SITE`` when CI has just built it. Needs the ``docs`` extra.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The modules whose public names the API reference must document.
DOCUMENTED = ["flaxen", "flaxen.nn", "flaxen.optim", "flaxen.serialization", "flaxen.metrics",
              "flaxen.jax_utils", "flaxen.parallel", "flaxen.struct", "flaxen.traverse_util",
              "flaxen.errors", "flaxen.training", "flaxen.nn.initializers", "flaxen.nn.utils",
              "flaxen.convert", "flaxen.sharding", "flaxen.optim.sharded"]


def documented_modules() -> list[str]:
    import flaxen.training

    training = [f"flaxen.training.{m.name}" for m in pkgutil.iter_modules(
        flaxen.training.__path__) if not m.name.startswith("_")]
    return DOCUMENTED + training


def public_names(module_name: str) -> dict[str, object]:
    """``module.NAME`` a user can reach: not private, and a flaxen, JAX or optax object.

    Helpers a module merely imports (``Any``, ``Path``, ``jax``) do not count, nor do
    submodules; the modules themselves are checked separately.
    """
    module = importlib.import_module(module_name)
    names = {}
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        origin = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if inspect.ismodule(obj):
            continue
        if isinstance(origin, str) and origin.split(".")[0] in ("flaxen", "jax", "optax"):
            names[name] = obj
    return names


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    prebuilt = os.environ.get("FLAXEN_DOCS_SITE")
    if prebuilt and Path(prebuilt, "index.html").is_file():
        yield Path(prebuilt)
        return
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install .[docs]")
    pytest.importorskip("mkdocstrings", reason="the docs extra is not installed")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"flaxen-docs-site-{os.getpid()}"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                             "--site-dir", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-5000:]}"
    yield out
    shutil.rmtree(out, ignore_errors=True)


def html_ids(site: Path) -> set[str]:
    ids: set[str] = set()
    for page in site.glob("**/*.html"):
        ids.update(re.findall(r'id="([^"]+)"', page.read_text(errors="replace")))
    return ids


@pytest.mark.slow  # builds the site unless $FLAXEN_DOCS_SITE holds it
def test_every_docs_page_is_in_the_site(site):
    config = (REPO / "mkdocs.yml").read_text()
    assert not re.search(r"^nav:", config, flags=re.M), (
        "mkdocs.yml has a nav list; every page of docs/ must then be listed in it and tested")
    for page in (REPO / "docs").glob("**/*.md"):
        rel = page.relative_to(REPO / "docs").with_suffix("")
        built = site / (rel.parent if rel.name == "index" else rel) / "index.html"
        assert built.is_file(), f"docs/{page.relative_to(REPO / 'docs')} is not in the site"


@pytest.mark.slow  # builds the site unless $FLAXEN_DOCS_SITE holds it
def test_api_reference_documents_every_public_name(site):
    ids = html_ids(site)
    missing = [m for m in documented_modules() if m not in ids]
    for module_name in documented_modules():
        for name, obj in public_names(module_name).items():
            path = f"{module_name}.{name}"
            canonical = (obj.__name__ if inspect.ismodule(obj) else
                         f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', name)}")
            if path not in ids and canonical not in ids:
                missing.append(path)
    assert not missing, (f"the API reference (docs/api/) has no entry for {missing}; add an "
                         "`<!-- api: MODULE -->` line for a new module")


def test_public_names_are_found():
    """The check above is not vacuous: it sees the names a user reaches."""
    assert {"Dense", "Model", "BatchNorm", "summary", "relu"} <= set(public_names("flaxen.nn"))
    assert {"save_checkpoint", "restore_checkpoint"} <= set(
        public_names("flaxen.training.checkpoints"))
    assert "flaxen.training.checkpoints" in documented_modules()
    assert "Any" not in public_names("flaxen.nn.base")
