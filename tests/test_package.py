"""Packaging facts: the installed JAX is in the declared range; py.typed ships; the
README's quick start runs as written."""

import re
import tomllib
from pathlib import Path

import jax

import flaxen

ROOT = Path(__file__).resolve().parents[1]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_installed_jax_is_in_the_declared_range():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("jax>=")]
    low, high = re.match(r"jax>=([\d.]+),<([\d.]+)", spec).groups()
    assert _version_tuple(low) <= _version_tuple(jax.__version__) < _version_tuple(high)


def test_typed_marker_and_version():
    assert (Path(flaxen.__file__).parent / "py.typed").exists()
    assert re.fullmatch(r"\d+\.\d+\.\d+", flaxen.__version__)


def test_readme_quick_start_runs():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md quick start", "exec"), namespace)  # noqa: S102
    assert set(namespace["grads"].params) == {"Dense_0", "Dense_1"}
